"""What `python eval.py` does: the test-split report, or files for given audio, samples and latent paths."""

import dataclasses
import json
import logging
import os
import sys
import time

import jax
import numpy as np

from vae_jax.eval import bounds, generate
from vae_jax import losses
from vae_jax.errors import DataError, UserError
from vae_jax.inference import load_trained
from vae_jax import fileio

log = logging.getLogger("vae_jax")
RD_QUANT_STEPS = (2.0, 4.0, 6.0, 8.0, 12.0, 16.0)  # The codec's operating points in --rate_distortion.


@dataclasses.dataclass
class EvalOptions:
  """eval.py's flags."""

  workdir: str
  step: int | None = None
  out: str | None = None  # Default: <workdir>/eval/<mode> (the report: <workdir>/eval).
  seed: int = 0
  data_path: str | None = None
  export: str | None = None  # A new (or empty) directory for the exported model (vae_jax/export.py).
  # The report.
  report: bool | None = None  # None: only when no other mode is asked for.
  report_dir: str | None = None  # Default: <workdir>/eval.
  baseline_workdir: str | None = None
  iwae_samples: int | None = None
  audio_metrics: bool | None = None
  max_utterances: int = 0
  # Other modes.
  audio: tuple[str, ...] = ()
  sample: int = 0
  seconds: float | None = None  # None: lengths drawn from the train split's (for the condition).
  temperature: float | None = None  # None: the prior config's (1 for N(0, I)).
  prior: str | None = None  # "learned" (a prior workdir's), "standard" (N(0, I)); None: the workdir's.
  condition: str | None = None  # e.g. "digit=7,speaker=jackson" (a learned, conditional prior).
  guidance: float | None = None  # None: the prior config's.
  sample_quality: bool = False  # Only the generation report (bound and sample quality) of a prior workdir.
  sample_clips: int = 0  # Clips per sample-quality row (0: as many as test utterances).
  interpolate: tuple[str, ...] = ()
  steps: int = 8
  method: str = "slerp"
  align: str = "resample"
  traverse: bool = False
  utterance: str | None = None
  traverse_channels: int = 4
  traverse_range: float = 3.0
  traverse_steps: int = 7
  # The codec (vae_jax/codec): files, and its rate-distortion against Codec2 and Opus.
  compress: tuple[str, ...] = ()
  decompress: tuple[str, ...] = ()
  quant_step: float | None = None  # None: the codec's default (or the step --bitrate picks).
  bitrate: float | None = None
  rate_distortion: bool = False
  rd_workdirs: tuple[str, ...] = ()
  rd_clips: int = 100
  # Generalisation (vae_jax/eval/generalisation.py): in-split test, unseen class, other corpora.
  generalisation: bool = False
  cross_corpus: tuple[str, ...] = ()  # "synthetic", "fsdd:PATH" or "folder:PATH".


def run(o: EvalOptions) -> int:
  """Runs every mode the options ask for; returns the exit status (1 if an input file failed)."""
  from vae_jax.prior import is_prior_workdir, load_prior  # pylint: disable=g-import-not-at-top

  if o.export:
    from vae_jax import export  # pylint: disable=g-import-not-at-top

    export.check_target(o.export)  # Before the minutes of loading: nothing there is overwritten.
  prior = load_prior(o.workdir, o.step) if is_prior_workdir(o.workdir) else None
  trained = prior.vae_run if prior else load_trained(o.workdir, o.step)
  if o.sample_quality and prior is None:
    raise UserError(f"--sample_quality needs a prior workdir; {o.workdir} holds a VAE "
                    "(train one with configs/fsdd_prior.py)")
  if o.prior == "learned" and prior is None:
    raise UserError(f"--prior=learned needs a prior workdir; {o.workdir} holds a VAE (train one with "
                    "configs/fsdd_prior.py and pass its workdir, or leave out --prior)")
  other = bool(o.audio or o.sample or o.interpolate or o.traverse or o.sample_quality or o.export
               or o.compress or o.decompress or o.rate_distortion)
  other = other or o.generalisation
  status = 0
  if o.export:
    if prior is not None:
      raise UserError(f"--export takes a VAE workdir; {o.workdir} holds a learned prior")
    paths = export.export(trained, o.export)
    print(f"export: step {trained.step} in {o.export} ({len(paths)} files; model card {paths['README.md']})")
  if o.report or (o.report is None and not other):
    _report(o, trained, prior)
  elif o.sample_quality:
    _generation_only(o, prior)
  if o.audio:
    status = _audio(o, trained)
  status = max(status, _codec(o, trained, prior))
  if o.generalisation:
    _generalisation(o, trained)
  utterances = generate.Utterances(trained, o.data_path)
  if o.sample:
    paths = _samples(o, trained, prior, utterances)
    print(f"samples: {len(paths) - 1} WAVs, samples.json and {paths[-1]}")
  if o.interpolate:
    if len(o.interpolate) != 2:
      raise UserError(f"--interpolate takes two utterances (files or corpus names), got {len(o.interpolate)}")
    a, b = (utterances.log_mel(s) for s in o.interpolate)
    paths = generate.write_interpolation(trained, a, b, _out(o, "interpolate"), o.steps, o.method,
                                         o.align, o.seed)
    print(f"interpolation: {len(paths) - 2} steps, {paths[-2]} and {paths[-1]}")
  if o.traverse:
    if o.utterance:
      utt = utterances.log_mel(o.utterance)
    else:
      try:
        utt = utterances.median_test()
      except DataError as e:
        raise DataError(f"{e} (name an audio file with --utterance)") from None
    kl = _kl_per_channel(o, trained, utterances, utt[1])
    paths = generate.write_traversal(trained, utt, kl, _out(o, "traverse"), o.traverse_channels,
                                     o.traverse_range, o.traverse_steps, o.seed)
    print(f"traversal: {len(paths) - 1} WAVs and {paths[-1]}")
  return status


def _out(o: EvalOptions, mode: str) -> str:
  return o.out or os.path.join(o.workdir, "eval", mode)


def _report(o: EvalOptions, trained, prior) -> None:
  from vae_jax.eval import report, render  # pylint: disable=g-import-not-at-top

  r = report.evaluate_workdir(trained.workdir, baseline_workdir=o.baseline_workdir,
                              num_samples=o.iwae_samples, audio_metrics=o.audio_metrics,
                              max_utterances=o.max_utterances, data_path=o.data_path, seed=o.seed,
                              trained=trained)
  if prior is not None:
    m, r.sections = _generation(o, prior)
    r.metrics.update(m)
  paths = render.write_report(r, o.report_dir or report.default_dir(o.workdir))
  print(render.summary_table(r.metrics))
  if prior is not None:
    print("\n".join(r.sections))
  print(f"report:  {paths['report']}")
  print(f"metrics: {paths['metrics']}")


def _generation(o: EvalOptions, prior):
  from vae_jax.prior import report as prior_report  # pylint: disable=g-import-not-at-top

  k = o.iwae_samples or prior.vae_run.config.eval.iwae_samples
  return prior_report.generation_report(prior, num_samples=k, n=o.sample_clips, seed=o.seed,
                                        guidance=o.guidance, temperature=o.temperature,
                                        data_path=o.data_path)


def _codec(o: EvalOptions, trained, prior) -> int:
  """--compress / --decompress files and the --rate_distortion report; the exit status of the files."""
  from vae_jax.codec import batch, rd  # pylint: disable=g-import-not-at-top  (constriction, pycodec2)

  status = 0
  if o.compress:
    coding_prior = None if o.prior == "standard" else prior
    status = batch.compress_files(trained, o.compress, _out(o, "compress"), coding_prior, o.quant_step,
                                  o.bitrate)[1]
  if o.decompress:
    status = max(status, batch.decompress_files(trained, o.decompress, _out(o, "decompress"), prior)[1])
  if o.rate_distortion:
    paths = trained.dataset(o.data_path).test.paths[:o.rd_clips]
    others = [load_trained(w) for w in o.rd_workdirs]
    rows = rd.rate_distortion(trained, paths, RD_QUANT_STEPS, prior=prior, others=others)
    out = rd.write_rate_distortion(rows, o.report_dir or os.path.join(o.workdir, "eval"), len(paths))
    print(f"rate-distortion: {out['md']} and {out['png']}")
  return status


def _generalisation(o: EvalOptions, trained) -> None:
  """--generalisation: in-split test, unseen and cross-corpus rows as generalisation.{md,json}."""
  from vae_jax.eval import generalisation  # pylint: disable=g-import-not-at-top

  rows = generalisation.evaluate(trained, data_path=o.data_path, cross_corpora=o.cross_corpus,
                                 audio_metrics=o.audio_metrics, max_utterances=o.max_utterances,
                                 seed=o.seed)
  paths = generalisation.write(rows, trained, o.report_dir or os.path.join(o.workdir, "eval"))
  print(generalisation.table(rows, trained), end="")
  print(f"generalisation report: {paths['md']} and {paths['json']}")


def _generation_only(o: EvalOptions, prior) -> None:
  """--sample_quality: the generation section alone, as generation.md and generation.json."""
  m, lines = _generation(o, prior)
  out = o.report_dir or os.path.join(o.workdir, "eval")
  fileio.makedirs(out)
  fileio.write_text(os.path.join(out, "generation.md"), "\n".join(lines) + "\n")
  fileio.write_json(os.path.join(out, "generation.json"),
                    {"workdir": prior.workdir, "step": prior.step, **m}, indent=1)
  print("\n".join(lines))
  print(f"generation report: {os.path.join(out, 'generation.md')}")


def _samples(o: EvalOptions, trained, prior, utterances: generate.Utterances) -> list[str]:
  """--sample: draws from the learned prior (when the workdir has one, unless --prior=standard) or N(0, I)."""
  fps = trained.feature_config.frames_per_second
  if prior is not None and o.prior != "standard":
    draws = prior.sample(o.sample, condition=o.condition, guidance=o.guidance, temperature=o.temperature,
                         seconds=o.seconds, seed=o.seed)
    g = prior.config.prior.guidance if o.guidance is None else o.guidance
    info = [{"prior": "learned", "guidance": g, "condition": {
        k: prior.label_names[k][v] for k, v in d.condition.items()}} for d in draws]
    titles = [f"sample {i}" + "".join(f", {k}={v}" for k, v in r["condition"].items())
              for i, r in enumerate(info)]
    return generate.write_samples(trained, [d.log_mel for d in draws], _out(o, "samples"), titles,
                                  o.seed, info)
  if o.condition:
    raise UserError("--condition needs a learned conditional prior: pass its workdir as --workdir "
                    "(and leave out --prior=standard)")
  if o.seconds is not None:
    if o.seconds <= 0:
      raise UserError(f"--seconds={o.seconds:g}: it must be positive")
    frames = np.full(o.sample, max(1, round(o.seconds * fps)))
  elif prior is not None:
    rng = np.random.default_rng([o.seed % 2**32, 7])
    frames = prior.draw_lengths(o.sample, {}, rng)
  else:
    frames = _train_lengths(trained, utterances, o.sample, o.seed)
  temperature = 1.0 if o.temperature is None else o.temperature
  mels = generate.standard_prior_mels(trained, frames, o.seed, temperature)
  info = [{"prior": "standard", "temperature": temperature}] * len(mels)
  return generate.write_samples(trained, mels, _out(o, "samples"),
                                [f"sample {i} (N(0, I), T={temperature:g})" for i in range(len(mels))],
                                o.seed, info)


def _audio(o: EvalOptions, trained) -> int:
  """--audio: reconstructs each file, printing its line as it is done; 1 if a file failed."""
  out = _out(o, "audio")
  on_error = lambda line: print(f"error: {line}", file=sys.stderr, flush=True)
  on_result = lambda name, r: print(_file_line(name, r), flush=True)
  t0 = time.perf_counter()
  results, errors = generate.reconstruct_files(trained, o.audio, out, o.seed, on_error, on_result)
  diverged = [name for name, r in results.items() if r.get("nonfinite_output")]
  summary = f"{len(results)} of {len(o.audio)} files in {out} ({time.perf_counter() - t0:.0f} s)"
  if diverged:
    summary += f", {len(diverged)} with non-finite model output (their metrics are missing)"
  print(f"{summary}; metrics: {os.path.join(out, 'metrics.json')}", flush=True)
  if diverged:
    print(f"warning: the model decodes {', '.join(diverged[:5])}{', ...' if len(diverged) > 5 else ''} "
          "to NaN or infinite values (diverged parameters?); their .recon.wav files hold zeros there",
          file=sys.stderr, flush=True)
  return 1 if errors else 0


def _file_line(name: str, r: dict) -> str:
  """One file's metrics on one line; a missing one is 'n/a' and its reasons follow."""
  num = lambda key, digits: "n/a" if r.get(key) is None else f"{r[key]:.{digits}f}"
  line = (f"{name}: log-mel MSE {num('logmel_mse', 3)}, mel LSD {num('mel_lsd_db', 2)} dB, "
          f"MCD {num('mcd_db', 2)} dB (oracle {num('oracle_mcd_db', 2)}), "
          f"STOI {num('stoi', 3)} (oracle {num('oracle_stoi', 3)})")
  if "pesq" in r:
    line += f", PESQ {num('pesq', 2)} (oracle {num('oracle_pesq', 2)})"
  reasons: dict[str, list[str]] = {}
  for key, reason in r.items():
    if key.endswith("_missing"):
      reasons.setdefault(reason, []).append(key[:-len("_missing")])
  if reasons:
    line += "; missing: " + "; ".join(f"{', '.join(keys)} ({why})" for why, keys in reasons.items())
  return line


def _train_lengths(trained, utterances: generate.Utterances, n: int, seed: int) -> np.ndarray:
  """n mel-frame lengths drawn from the train split's (the training segment length without the corpus)."""
  try:
    lengths = utterances.data.train.lengths
  except DataError as e:
    frames = int(trained.config.data.segment_frames)
    log.warning("%s: samples get the training segment length, %d frames (set --seconds)", e, frames)
    return np.full(n, frames)
  return np.random.default_rng([seed % 2**32, 7]).choice(lengths, size=n)


def _kl_per_channel(o: EvalOptions, trained, utterances: generate.Utterances,
                    log_mel_TxF: np.ndarray) -> np.ndarray:
  """Test-split KL per channel (from the report's metrics.json when it matches), else the utterance's own."""
  path = os.path.join(o.report_dir or os.path.join(o.workdir, "eval"), "metrics.json")
  if fileio.exists(path):
    saved = json.loads(fileio.read_text(path))
    if saved.get("step") == trained.step and "eval/kl_per_channel" in saved:
      return np.asarray(saved["eval/kl_per_channel"], np.float64)
  try:
    test = utterances.data.test
  except DataError as e:
    log.warning("%s: channels ranked by the KL of the traversed utterance alone", e)
    mean, logvar = trained.encode(log_mel_TxF)
    return np.asarray(losses.kl_diag_gaussian(mean, logvar)).mean(0)
  p = bounds.run_split(trained, test, jax.random.key(o.seed), decode=False,
                         batch_size=trained.config.eval.batch_size,
                         length_multiple=trained.length_multiple)
  return bounds.latent_metrics(p)["eval/kl_per_channel"]
