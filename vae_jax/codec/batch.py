"""Compressing and decompressing many files for the command line, one printed line per file.

A bad file prints one line naming it and the reason; the others are still
processed and the exit status is then 1.
"""

import math
import os
from typing import Any, Callable, Sequence

import numpy as np
import soundfile

from vae_jax import fileio
from vae_jax.codec import api
from vae_jax.errors import DataError, UserError
from vae_jax.eval import metrics

_MIN_STEP, _MAX_STEP = 1e-3, 1e3


def quality(trained, wave_ref: np.ndarray, wave_est: np.ndarray, mel_ref_TxF: np.ndarray,
            mel_est_TxF: np.ndarray) -> dict[str, float]:
  """Log-mel MSE, STOI and PESQ of a decoded utterance against its source; nan, and `<name>_missing`, where undefined."""
  m, sr = metrics, trained.feature_config.sample_rate
  out = {"logmel_mse": m.logmel_mse(mel_ref_TxF, mel_est_TxF)}
  for name, scored in (("stoi", m.stoi_scored(wave_ref, wave_est, sr)), ("pesq", m.pesq_scored(wave_ref, wave_est, sr))):
    out[name] = scored.or_nan()
    if scored.missing:
      out[f"{name}_missing"] = scored.missing
  return out


def step_for_bitrate(trained, log_mels: Sequence[np.ndarray], kbps: float, prior=None,
                     step_mode: str = api.DEFAULT_STEP_MODE, iters: int = 24) -> float:
  """The quant step whose files (headers included) average `kbps` over these utterances, by bisection.

  Header steps lie on an eighth-octave grid, so the rate is a staircase in the quant step;
  the bisection ends at a stair's edge: the finest step whose files do not exceed `kbps`.
  """
  if not (math.isfinite(kbps) and kbps > 0):
    raise UserError(f"--bitrate={kbps:g}: it must be positive (kbit/s)")
  fps = trained.feature_config.frames_per_second
  seconds = sum(len(m) for m in log_mels) / fps

  def rate(step: float) -> float:
    return 8e-3 * sum(len(api.compress(trained, m, prior, step, step_mode)) for m in log_mels) / seconds

  if rate(_MIN_STEP) < kbps:
    raise UserError(f"--bitrate={kbps:g}: above what these files reach with the finest step "
                    f"({rate(_MIN_STEP):.2f} kbit/s at --quant_step={_MIN_STEP:g})")
  lo, hi = math.log(_MIN_STEP), math.log(_MAX_STEP)  # The rate falls as the step grows.
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if rate(math.exp(mid)) > kbps else (lo, mid)
  return math.exp(hi)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _run(paths: Sequence[str], one: Callable[[str], dict[str, Any]], line: Callable) -> tuple[list, int]:
  rows, status = [], 0
  for path in paths:
    try:
      row = one(path)
    except DataError as e:
      print(f"error: {e}")
      status = 1
      continue
    rows.append(row)
    print(line(row))
  return rows, status


def _line(row: dict[str, Any]) -> str:
  """One file's line; an undefined metric is 'n/a' and its reason follows."""
  num = lambda key, digits: "n/a" if math.isnan(row[key]) else f"{row[key]:.{digits}f}"
  line = (f"{row['file']}: {row['bytes']} bytes, {row['kbps']:.2f} kbit/s, log-mel MSE "
          f"{row['logmel_mse']:.4f}, STOI {num('stoi', 3)}, PESQ {num('pesq', 2)}")
  missing = [f"{k} ({row[f'{k}_missing']})" for k in ("stoi", "pesq") if f"{k}_missing" in row]
  return line + (f"; missing: {'; '.join(missing)}" if missing else "")


def compress_files(trained, paths: Sequence[str], out_dir: str, prior=None, quant_step: float | None = None,
                   bitrate: float | None = None,
                   step_mode: str = api.DEFAULT_STEP_MODE) -> tuple[list[dict[str, Any]], int]:
  """Writes <name>.vjx and <name>.decoded.wav per file into out_dir; (one row per good file, exit status)."""
  if quant_step is not None and bitrate is not None:
    raise UserError("give --quant_step or --bitrate, not both")
  fileio.makedirs(out_dir)
  if bitrate is not None:
    good = []
    for p in paths:
      try:
        good.append(trained.load_audio(p)[1])
      except DataError:
        pass  # Reported in its turn below.
    if not good:
      raise DataError("--bitrate: none of the input files can be read")
    quant_step = step_for_bitrate(trained, good, bitrate, prior, step_mode)
  step = api.DEFAULT_QUANT_STEP if quant_step is None else quant_step
  sr = trained.feature_config.sample_rate

  def one(path: str) -> dict[str, Any]:
    wave, mel_TxF = trained.load_audio(path)
    out = os.path.join(out_dir, _stem(path) + ".vjx")
    data = api.encode_file(trained, path, out, prior, step, step_mode)
    _, mel_hat, wave_hat = api.decode_file(trained, out, prior)
    soundfile.write(os.path.join(out_dir, _stem(path) + ".decoded.wav"), wave_hat, sr)
    return {"file": path, "bytes": len(data), "seconds": len(wave) / sr, "quant_step": step,
            "kbps": 8e-3 * len(data) * sr / len(wave), **quality(trained, wave, wave_hat, mel_TxF, mel_hat)}

  return _run(paths, one, _line)


def decompress_files(trained, paths: Sequence[str], out_dir: str,
                     prior=None) -> tuple[list[dict[str, Any]], int]:
  """Writes <name>.decoded.wav per .vjx file into out_dir; (one row per good file, exit status)."""
  fileio.makedirs(out_dir)
  sr = trained.feature_config.sample_rate

  def one(path: str) -> dict[str, Any]:
    z_TzxC, _, wave = api.decode_file(trained, path, prior)
    out = os.path.join(out_dir, _stem(path) + ".decoded.wav")
    soundfile.write(out, wave, sr)
    return {"file": path, "out": out, "bytes": os.path.getsize(path), "seconds": len(wave) / sr,
            "latent_frames": len(z_TzxC)}

  return _run(paths, one, lambda r: f"{r['file']}: {r['bytes']} bytes -> {r['out']} ({r['seconds']:.2f} s)")
