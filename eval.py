"""Evaluates a trained speech VAE: `python eval.py --workdir=W` writes W/eval/report.md and metrics.json.

  python eval.py --workdir=W                                # test-split report
  python eval.py --workdir=W --baseline_workdir=W_ae        # ... with the deterministic AE beside it
  python eval.py --workdir=W --audio a.wav b.flac --out=DIR # reconstruct any audio files
  python eval.py --workdir=W --sample=8                     # decode draws from the prior
  python eval.py --workdir=P --sample=8 --condition=digit=7 --guidance=2  # a learned prior workdir P
  python eval.py --workdir=P --sample_quality               # its bound and sample-quality table
  python eval.py --workdir=W --interpolate a.wav b.wav --steps=8 --method=slerp
  python eval.py --workdir=W --traverse                     # shift the highest-KL latent channels
"""

from absl import app, flags

from vae_jax.cli import run_main

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to evaluate.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory for --audio/--sample/--interpolate/"
                           "--traverse (default: <workdir>/eval/<mode>).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the posterior samples, prior draws and Griffin-Lim phases.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "Corpus audio directory, if it moved since training.")

_REPORT = flags.DEFINE_bool("report", None, "Write the test-split report (default: when no other mode is given).")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Where the report goes (default: <workdir>/eval).")
_BASELINE = flags.DEFINE_string("baseline_workdir", None, "Workdir of a deterministic autoencoder "
                                "(configs/fsdd_ae.py) to compare on the same metrics.")
_IWAE = flags.DEFINE_integer("iwae_samples", None, "Importance samples of the IWAE bound "
                             "(default: config.eval.iwae_samples).", lower_bound=1)
_AUDIO_METRICS = flags.DEFINE_bool("audio_metrics", None, "Griffin-Lim re-synthesis, STOI and PESQ "
                                   "(default: config.eval.audio_metrics).")
_MAX_UTT = flags.DEFINE_integer("max_utterances", 0, "Evaluate the first N test utterances only (0: all).",
                                lower_bound=0)

_AUDIO = flags.DEFINE_multi_string("audio", [], "Audio files to reconstruct (more may follow as "
                                   "plain arguments).")
_SAMPLE = flags.DEFINE_integer("sample", 0, "Utterances to draw from the prior: the learned one of a "
                               "prior workdir, else N(0, I).", lower_bound=0)
_SECONDS = flags.DEFINE_float("seconds", None, "Length of every sample (default: lengths drawn from the "
                              "train split's, among utterances matching --condition).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature (default: the prior config's, "
                                  "1 for N(0, I)). With N(0, I) the same seed at another temperature "
                                  "gives the same draws scaled; with a learned prior it scales each "
                                  "mixture component's standard deviation.")
_PRIOR = flags.DEFINE_enum("prior", "learned", ["learned", "standard"], "For a prior workdir: sample "
                           "its learned prior or the VAE's N(0, I).")
_CONDITION = flags.DEFINE_string("condition", None, "Labels for the learned prior, e.g. "
                                 "digit=7,speaker=jackson (each optional).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (0: unconditional, "
                               "1: conditional, > 1: stronger; default: the prior config's).")
_SAMPLE_QUALITY = flags.DEFINE_bool("sample_quality", False, "Prior workdirs: only the generation "
                                    "report (learned-prior bound and sample-quality table).")
_SAMPLE_CLIPS = flags.DEFINE_integer("sample_clips", 0, "Clips per sample-quality row (0: as many as "
                                     "test utterances).", lower_bound=0)
_INTERPOLATE = flags.DEFINE_multi_string("interpolate", [], "Two utterances (audio files or corpus "
                                         "names) to interpolate between; the second may be a plain argument.")
_STEPS = flags.DEFINE_integer("steps", 8, "Points on the interpolation path, endpoints included.",
                              lower_bound=2)
_METHOD = flags.DEFINE_enum("method", "slerp", ["slerp", "lerp"], "Interpolation method.")
_ALIGN = flags.DEFINE_enum("align", "resample", ["resample", "crop"], "How the longer latent "
                           "sequence is brought to the shorter length.")
_TRAVERSE = flags.DEFINE_bool("traverse", False, "Decode an utterance with its highest-KL channels shifted.")
_UTTERANCE = flags.DEFINE_string("utterance", None, "--traverse: audio file or corpus name "
                                 "(default: the median-length test utterance).")
_TRAVERSE_CHANNELS = flags.DEFINE_integer("traverse_channels", 4, "Channels to traverse.", lower_bound=1)
_TRAVERSE_RANGE = flags.DEFINE_float("traverse_range", 3.0, "Largest shift, in prior standard deviations.")
_TRAVERSE_STEPS = flags.DEFINE_integer("traverse_steps", 7, "Shifts per channel.", lower_bound=2)


def main(argv: list[str]) -> None:
  import sys  # pylint: disable=g-import-not-at-top

  from vae_jax.eval import cli as eval_cli  # pylint: disable=g-import-not-at-top
  from vae_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  extra = list(argv[1:])
  audio, interpolate = list(_AUDIO.value), list(_INTERPOLATE.value)
  if extra and audio and interpolate:
    raise UserError(f"unexpected arguments {' '.join(extra)}: with both --audio and --interpolate, "
                    "repeat the flag before each file")
  if extra and not (audio or interpolate):
    raise UserError(f"unexpected arguments {' '.join(extra)}: audio files follow --audio")
  (audio if audio else interpolate).extend(extra)
  options = eval_cli.EvalOptions(
      workdir=_WORKDIR.value, step=_STEP.value, out=_OUT.value, seed=_SEED.value,
      data_path=_DATA_PATH.value, report=_REPORT.value, report_dir=_REPORT_DIR.value,
      baseline_workdir=_BASELINE.value,
      iwae_samples=_IWAE.value, audio_metrics=_AUDIO_METRICS.value, max_utterances=_MAX_UTT.value,
      audio=tuple(audio), sample=_SAMPLE.value, seconds=_SECONDS.value, temperature=_TEMPERATURE.value,
      prior=_PRIOR.value, condition=_CONDITION.value, guidance=_GUIDANCE.value,
      sample_quality=_SAMPLE_QUALITY.value, sample_clips=_SAMPLE_CLIPS.value,
      interpolate=tuple(interpolate), steps=_STEPS.value, method=_METHOD.value, align=_ALIGN.value,
      traverse=_TRAVERSE.value, utterance=_UTTERANCE.value, traverse_channels=_TRAVERSE_CHANNELS.value,
      traverse_range=_TRAVERSE_RANGE.value, traverse_steps=_TRAVERSE_STEPS.value)
  sys.exit(eval_cli.run(options))


if __name__ == "__main__":
  app.define_help_flags()  # --help, --helpshort, --helpfull.
  flags.FLAGS.set_gnu_getopt(True)  # `--audio a.wav b.wav --out DIR`: files and flags may mix.
  run_main(main)
