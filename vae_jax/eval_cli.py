"""What `python eval.py` does: the test-split report, or files for given audio, samples and latent paths."""

import dataclasses
import json
import logging
import os
import sys
import time

import jax
import numpy as np

from vae_jax import evaluate, generate, losses
from vae_jax.errors import DataError, UserError
from vae_jax.inference import load_trained

log = logging.getLogger("vae_jax")


@dataclasses.dataclass
class EvalOptions:
  """eval.py's flags."""

  workdir: str
  step: int | None = None
  out: str | None = None  # Default: <workdir>/eval/<mode> (the report: <workdir>/eval).
  seed: int = 0
  data_path: str | None = None
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
  seconds: float | None = None
  temperature: float = 1.0
  interpolate: tuple[str, ...] = ()
  steps: int = 8
  method: str = "slerp"
  align: str = "resample"
  traverse: bool = False
  utterance: str | None = None
  traverse_channels: int = 4
  traverse_range: float = 3.0
  traverse_steps: int = 7


def run(o: EvalOptions) -> int:
  """Runs every mode the options ask for; returns the exit status (1 if an input file failed)."""
  trained = load_trained(o.workdir, o.step)
  other = bool(o.audio or o.sample or o.interpolate or o.traverse)
  status = 0
  if o.report or (o.report is None and not other):
    _report(o, trained)
  if o.audio:
    status = _audio(o, trained)
  utterances = generate.Utterances(trained, o.data_path)
  if o.sample:
    frames = (round(o.seconds * trained.feature_config.frames_per_second) if o.seconds
              else _median_test_frames(trained, utterances))
    paths = generate.write_samples(trained, o.sample, _out(o, "samples"), max(frames, 1), o.seed,
                                   o.temperature)
    print(f"samples: {len(paths) - 1} WAVs and {paths[-1]}")
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


def _report(o: EvalOptions, trained) -> None:
  from vae_jax import report, report_md  # pylint: disable=g-import-not-at-top

  r = report.evaluate_workdir(o.workdir, baseline_workdir=o.baseline_workdir,
                              num_samples=o.iwae_samples, audio_metrics=o.audio_metrics,
                              max_utterances=o.max_utterances, data_path=o.data_path, seed=o.seed,
                              trained=trained)
  paths = report_md.write_report(r, o.report_dir or report.default_dir(o.workdir))
  print(report_md.summary_table(r.metrics))
  print(f"report:  {paths['report']}")
  print(f"metrics: {paths['metrics']}")


def _audio(o: EvalOptions, trained) -> int:
  out = _out(o, "audio")
  on_error = lambda line: print(f"error: {line}", file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  results, errors = generate.reconstruct_files(trained, o.audio, out, o.seed, on_error)
  for name, r in results.items():
    pesq = f", PESQ {r['pesq']:.2f} (oracle {r['oracle_pesq']:.2f})" if "pesq" in r else ""
    print(f"{name}: log-mel MSE {r['logmel_mse']:.3f}, LSD {r['lsd_db']:.2f} dB, MCD {r['mcd_db']:.2f} dB, "
          f"STOI {r['stoi']:.3f} (oracle {r['oracle_stoi']:.3f}){pesq}")
  print(f"{len(results)} of {len(o.audio)} files in {out} ({time.perf_counter() - t0:.0f} s); "
        f"metrics: {os.path.join(out, 'metrics.json')}")
  return 1 if errors else 0


def _median_test_frames(trained, utterances: generate.Utterances) -> int:
  try:
    return utterances.median_test_frames()
  except DataError as e:
    frames = int(trained.config.data.segment_frames)
    log.warning("%s: samples get the training segment length, %d frames (set --seconds)", e, frames)
    return frames


def _kl_per_channel(o: EvalOptions, trained, utterances: generate.Utterances,
                    log_mel_TxF: np.ndarray) -> np.ndarray:
  """Test-split KL per channel (from the report's metrics.json when it matches), else the utterance's own."""
  path = os.path.join(o.report_dir or os.path.join(o.workdir, "eval"), "metrics.json")
  if os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("step") == trained.step and "eval/kl_per_channel" in saved:
      return np.asarray(saved["eval/kl_per_channel"], np.float64)
  try:
    test = utterances.data.test
  except DataError as e:
    log.warning("%s: channels ranked by the KL of the traversed utterance alone", e)
    mean, logvar = trained.encode(log_mel_TxF)
    return np.asarray(losses.kl_diag_gaussian(mean, logvar)).mean(0)
  p = evaluate.run_split(trained, test, jax.random.key(o.seed), decode=False,
                         batch_size=trained.config.eval.batch_size,
                         length_multiple=trained.length_multiple)
  return evaluate.latent_metrics(p)["eval/kl_per_channel"]
