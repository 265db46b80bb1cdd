"""The two commands, shared by train.py / eval.py and the console scripts vae-jax-train / vae-jax-eval.

Flags are defined when a command starts, not at import: both commands have a --workdir.
Only os, signal and sys load at import, so train's stop-signal handlers go in first.
"""

import os
import signal
import sys

# Stop signals that arrived before training could handle them (during the imports, say).
_EARLY_SIGNALS: list[str] = []


def configs_dir() -> str:
  """The directory of the shipped configs: vae_jax.configs when installed, else the checkout's configs/."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  try:
    spec = importlib.util.find_spec("vae_jax.configs")
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def resolve_config(value: str) -> str:
  """A --config value as a file: a path as given, or a shipped config's name (`fsdd` -> .../fsdd.py)."""
  from vae_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top

  if os.path.sep in value or value.endswith(".py") or os.path.exists(value):
    return value
  path = os.path.join(configs_dir(), f"{value}.py")
  if not os.path.isfile(path):
    names = sorted(n[:-3] for n in os.listdir(configs_dir()) if n.endswith(".py") and n != "__init__.py")
    raise ConfigError(f"--config={value}: no such config file or shipped config (shipped: {', '.join(names)})")
  return path


def _resolve_config_arg(argv: list[str]) -> list[str]:
  """argv with a short `--config=NAME` (or `--config NAME`) replaced by the shipped config's path."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def _quiet_known_warnings() -> None:
  """pysptk imports pkg_resources, whose deprecation warning would precede every one-line message."""
  import warnings  # pylint: disable=g-import-not-at-top

  warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def _list_in_helpshort(before: set[str]) -> None:
  """Flags defined since `before` count as the command's own, which --helpshort lists."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  for name in sorted(set(flags.FLAGS) - before):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def _record_early_signals() -> None:
  for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda signum, frame: _EARLY_SIGNALS.append(signal.Signals(signum).name))


def train_main() -> None:
  """`vae-jax-train` / `python train.py`: [--config=NAME|PATH] [--config.a.b=value] [--workdir=W]."""
  _record_early_signals()  # From the first moment: a stop signal during the imports ends the run cleanly.
  _quiet_known_warnings()
  from vae_jax.cli import run_main  # pylint: disable=g-import-not-at-top
  from vae_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  try:
    sys.argv = _resolve_config_arg(sys.argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  before = set(flags.FLAGS)
  _define_train_flags()
  _list_in_helpshort(before)
  app.define_help_flags()  # --help, --helpshort, --helpfull.
  run_main(_train)


def _define_train_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
      "config", os.path.join(configs_dir(), "default.py"),
      "Config: a shipped config's name (default, fsdd, ...) or a Python file with get_config(); "
      "override fields with --config.a.b=value.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (rerunning in it resumes); default runs/<config name>.")
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                    "Join a multi-process JAX cluster: auto = when the flags below are "
                    "given or a SLURM / TPU-pod environment is detected.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Processes in the cluster.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def _train(argv: list[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  from vae_jax import distributed, train  # pylint: disable=g-import-not-at-top
  from vae_jax.cli import check_backend, default_workdir  # pylint: disable=g-import-not-at-top
  from vae_jax.eval import render  # pylint: disable=g-import-not-at-top
  from vae_jax.workdir import disk_full_error  # pylint: disable=g-import-not-at-top

  if _EARLY_SIGNALS:
    print(f"received {_EARLY_SIGNALS[0]} before training started: nothing to save; "
          "rerun the same command to start", flush=True)
    return
  f = flags.FLAGS
  distributed.initialize(f.distributed, f.coordinator_address, f.num_processes, f.process_id)
  check_backend()  # After joining the cluster: JAX starts its backends only once.
  workdir = f.workdir or default_workdir()
  result = train.train_and_evaluate(f.config, workdir)
  try:
    render.print_training_summary(workdir, result)
  except OSError as e:  # The report is written after the run: a full disk can still meet it.
    raise disk_full_error(e, workdir) or e from None


def eval_main() -> None:
  """`vae-jax-eval` / `python eval.py`: --workdir=W [modes]."""
  _quiet_known_warnings()
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  from vae_jax.cli import run_main  # pylint: disable=g-import-not-at-top

  before = set(flags.FLAGS)
  _define_eval_flags()
  _list_in_helpshort(before)
  app.define_help_flags()  # --help, --helpshort, --helpfull.
  flags.FLAGS.set_gnu_getopt(True)  # `--audio a.wav b.wav --out DIR`: files and flags may mix.
  run_main(_eval)


def _define_eval_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  d = flags
  d.DEFINE_string("workdir", None, "Training workdir to evaluate.", required=True)
  d.DEFINE_string("step", "latest", "Checkpoint: 'latest', 'best' (lowest eval/loss, kept by the "
                  "checkpointer) or a step number.")
  d.DEFINE_string("out", None, "Output directory for --audio/--sample/--interpolate/"
                  "--traverse (default: <workdir>/eval/<mode>).")
  d.DEFINE_integer("seed", 0, "Seed of the posterior samples, prior draws and Griffin-Lim phases.")
  d.DEFINE_string("data_path", None, "Corpus audio directory, if it moved since training.")
  d.DEFINE_string("export", None, "Write the model for use without this package into this new "
                  "(or empty) directory: parameters, config, normaliser, model card, jax.export'ed "
                  "encode/decode.")
  d.DEFINE_bool("report", None, "Write the test-split report (default: when no other mode is given).")
  d.DEFINE_string("report_dir", None, "Where the report goes (default: <workdir>/eval).")
  d.DEFINE_string("baseline_workdir", None, "Workdir of a deterministic autoencoder "
                  "(configs/fsdd_ae.py) to compare on the same metrics.")
  d.DEFINE_integer("iwae_samples", None, "Importance samples of the IWAE bound "
                   "(default: config.eval.iwae_samples).", lower_bound=1)
  d.DEFINE_bool("audio_metrics", None, "Griffin-Lim re-synthesis, STOI and PESQ "
                "(default: config.eval.audio_metrics).")
  d.DEFINE_integer("max_utterances", 0, "Evaluate the first N test utterances only (0: all).", lower_bound=0)
  d.DEFINE_multi_string("audio", [], "Audio files to reconstruct (more may follow as plain arguments).")
  d.DEFINE_integer("sample", 0, "Utterances to draw from the prior: the learned one of a "
                   "prior workdir, else N(0, I).", lower_bound=0)
  d.DEFINE_float("seconds", None, "Length of every sample (default: lengths drawn from the "
                 "train split's, among utterances matching --condition).")
  d.DEFINE_float("temperature", None, "Sampling temperature (default: the prior config's, "
                 "1 for N(0, I)). With N(0, I) the same seed at another temperature "
                 "gives the same draws scaled; with a learned prior it scales each "
                 "mixture component's standard deviation.")
  d.DEFINE_enum("prior", None, ["learned", "standard"], "Prior to sample (--sample) and to code "
                "under (--compress): 'learned' (needs a prior workdir) or 'standard' (the VAE's "
                "N(0, I)); default: the workdir's.")
  d.DEFINE_string("condition", None, "Labels for the learned prior, e.g. "
                  "digit=7,speaker=jackson (each optional).")
  d.DEFINE_float("guidance", None, "Classifier-free guidance scale (0: unconditional, "
                 "1: conditional, > 1: stronger; default: the prior config's).")
  d.DEFINE_bool("sample_quality", False, "Prior workdirs: only the generation "
                "report (learned-prior bound and sample-quality table).")
  d.DEFINE_integer("sample_clips", 0, "Clips per sample-quality row (0: as many as "
                   "test utterances).", lower_bound=0)
  d.DEFINE_multi_string("interpolate", [], "Two utterances (audio files or corpus "
                        "names) to interpolate between; the second may be a plain argument.")
  d.DEFINE_integer("steps", 8, "Points on the interpolation path, endpoints included.", lower_bound=2)
  d.DEFINE_enum("method", "slerp", ["slerp", "lerp"], "Interpolation method.")
  d.DEFINE_enum("align", "resample", ["resample", "crop"], "How the longer latent "
                "sequence is brought to the shorter length.")
  d.DEFINE_bool("traverse", False, "Decode an utterance with its highest-KL channels shifted.")
  d.DEFINE_string("utterance", None, "--traverse: audio file or corpus name "
                  "(default: the median-length test utterance).")
  d.DEFINE_integer("traverse_channels", 4, "Channels to traverse.", lower_bound=1)
  d.DEFINE_float("traverse_range", 3.0, "Largest shift, in prior standard deviations.")
  d.DEFINE_integer("traverse_steps", 7, "Shifts per channel.", lower_bound=2)
  d.DEFINE_multi_string("compress", [], "Audio files to code into <out>/<name>.vjx (and "
                        "<name>.decoded.wav); with a prior workdir, under the learned prior "
                        "(--prior=standard: N(0, I)).")
  d.DEFINE_multi_string("decompress", [], ".vjx files to decode into <out>/<name>.decoded.wav.")
  d.DEFINE_float("quant_step", None, "--compress: quantisation step, in posterior standard "
                 "deviations per channel (default 2; larger: fewer bits).")
  d.DEFINE_float("bitrate", None, "--compress: target kbit/s over the given files (picks the step).")
  d.DEFINE_bool("rate_distortion", False, "Rate-distortion of the codec on test clips against "
                "Codec2, Opus and the Griffin-Lim oracle: <report_dir>/rate_distortion.{md,json,png}.")
  d.DEFINE_list("rd_workdirs", [], "--rate_distortion: more VAE workdirs (e.g. other betas) to add curves for.")
  d.DEFINE_integer("rd_clips", 100, "--rate_distortion: test clips (the first N of the split).", lower_bound=1)
  d.DEFINE_bool("generalisation", False, "Log-mel MSE, STOI and PESQ on the in-split test, the unseen "
                "split (data.holdout) and --cross_corpus: <report_dir>/generalisation.{md,json}.")
  d.DEFINE_multi_string("cross_corpus", [], "--generalisation: another corpus to evaluate on: "
                        "'synthetic', 'fsdd:PATH' or 'folder:PATH' (repeatable).")


def _eval(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  from vae_jax.api import resolve_step  # pylint: disable=g-import-not-at-top
  from vae_jax.cli import check_backend  # pylint: disable=g-import-not-at-top
  from vae_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from vae_jax.eval import cli as eval_cli  # pylint: disable=g-import-not-at-top

  check_backend()
  f = flags.FLAGS
  extra = list(argv[1:])
  # Plain arguments after the flags are more files for the one file-list flag given.
  files = {"audio": list(f.audio), "interpolate": list(f.interpolate), "compress": list(f.compress),
           "decompress": list(f.decompress)}
  given = [name for name, paths in files.items() if paths]
  if extra and len(given) != 1:
    where = (f"with --{' and --'.join(given)}, repeat the flag before each file" if given
             else "files follow --audio, --interpolate, --compress or --decompress")
    raise UserError(f"unexpected arguments {' '.join(extra)}: {where}")
  if extra:
    files[given[0]] += extra
  audio, interpolate, compress = files["audio"], files["interpolate"], files["compress"]
  options = eval_cli.EvalOptions(
      workdir=f.workdir, step=resolve_step(f.workdir, f.step), out=f.out, seed=f.seed,
      data_path=f.data_path, export=f.export, report=f.report, report_dir=f.report_dir,
      baseline_workdir=f.baseline_workdir, iwae_samples=f.iwae_samples, audio_metrics=f.audio_metrics,
      max_utterances=f.max_utterances, audio=tuple(audio), sample=f.sample, seconds=f.seconds,
      temperature=f.temperature, prior=f.prior, condition=f.condition, guidance=f.guidance,
      sample_quality=f.sample_quality, sample_clips=f.sample_clips, interpolate=tuple(interpolate),
      steps=f.steps, method=f.method, align=f.align, traverse=f.traverse, utterance=f.utterance,
      traverse_channels=f.traverse_channels, traverse_range=f.traverse_range,
      traverse_steps=f.traverse_steps, compress=tuple(compress), decompress=tuple(files["decompress"]),
      quant_step=f.quant_step, bitrate=f.bitrate, rate_distortion=f.rate_distortion,
      rd_workdirs=tuple(f.rd_workdirs), rd_clips=f.rd_clips, generalisation=f.generalisation,
      cross_corpus=tuple(f.cross_corpus))
  sys.exit(eval_cli.run(options))
