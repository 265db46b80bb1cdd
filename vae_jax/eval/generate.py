"""Files for listening and looking: reconstructions of any audio, prior samples, interpolations, traversals.

Every function takes a `vae_jax.inference.Trained`, writes WAVs (Griffin-Lim) and
spectrogram PNGs into `out_dir`, and returns the paths it wrote.
"""

import logging
import os
import re
from typing import Any, Callable, Sequence

import numpy as np

from vae_jax import fileio, latents, plots
from vae_jax.audio import io as audio_io
from vae_jax.data.store import Dataset
from vae_jax.errors import DataError, UserError
from vae_jax.eval import metrics
from vae_jax.inference import Trained, griffin_lim_batch

GAP_SECONDS = 0.15  # Silence between the parts of a concatenated WAV.

_log = logging.getLogger(__name__)


def _stem(path: str) -> str:
  name = os.path.splitext(os.path.basename(path))[0]
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "audio"


def _unique(names: Sequence[str]) -> list[str]:
  seen: dict[str, int] = {}
  out = []
  for n in names:
    seen[n] = seen.get(n, 0) + 1
    out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
  return out


def synthesize(trained: Trained, mels: Sequence[np.ndarray], lengths: Sequence[int] | None = None,
               seed: int = 0) -> list[np.ndarray]:
  """Griffin-Lim waveforms of log-mels [T_i, F] with the run's iteration count, batched by length."""
  return griffin_lim_batch(list(mels), trained.feature_config, trained.config.eval.griffin_lim_iters,
                           lengths=lengths, seed=seed)


def concat_audio(waves: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
  """The waveforms back to back, GAP_SECONDS of silence between them."""
  gap = np.zeros(int(GAP_SECONDS * sample_rate), np.float32)
  parts = []
  for w in waves:
    parts += [np.asarray(w, np.float32), gap]
  return np.concatenate(parts[:-1])


NONFINITE_OUTPUT = "non-finite model output"


def reconstruct_files(trained: Trained, paths: Sequence[str], out_dir: str,
                      seed: int = 0, on_error: Callable[[str], None] | None = None,
                      on_result: Callable[[str, dict[str, Any]], None] | None = None,
                      ) -> tuple[dict[str, dict[str, Any]], list[str]]:
  """Encodes, decodes and re-synthesises each file; writes audio, PNGs and metrics.json.

  Returns ({name: metrics}, error lines). A file that cannot be read or processed
  is one error line naming it (also passed to `on_error` at once) and the others
  go on. metrics.json is rewritten atomically after every file, so a crash loses
  at most the file in hand; `on_result(name, metrics)` hears of each file as it is done.
  """
  fileio.makedirs(out_dir)
  json_path = os.path.join(out_dir, "metrics.json")
  results, errors = {}, []
  fileio.write_json(json_path, results, indent=1)  # A metrics.json of an earlier run must not pass for this one's.
  for path, name in zip(paths, _unique([_stem(p) for p in paths])):
    try:
      results[name] = reconstruct_file(trained, path, name, out_dir, seed)
    except Exception as e:  # pylint: disable=broad-except  # one file must not end the run
      errors.append(_error_line(path, e))
      if on_error is not None:
        on_error(errors[-1])
      continue
    fileio.write_json(json_path, results, indent=1)
    if on_result is not None:
      on_result(name, results[name])
  return results, errors


def _error_line(path: str, e: Exception) -> str:
  """DataError's own message (it names the file); anything else as its type and first line."""
  if isinstance(e, DataError):
    return str(e)
  _log.debug("%s failed", path, exc_info=True)
  text = str(e).strip().splitlines()
  return f"{path}: failed ({type(e).__name__}{': ' + text[0][:200] if text else ''})"


def reconstruct_file(trained: Trained, path: str, name: str, out_dir: str, seed: int = 0
                     ) -> dict[str, Any]:
  """Writes <name>.recon.wav, <name>.oracle.wav and <name>.png for one file; returns its metrics.

  Non-finite reconstruction samples (a diverged model) are written as zeros, with a note.
  """
  fc = trained.feature_config
  wave, log_mel = trained.load_audio(path)
  with np.errstate(over="ignore", invalid="ignore"):  # A diverged model overflows: reported below.
    recon = trained.reconstruct(log_mel)
    recon_wave, oracle_wave = synthesize(trained, [recon, log_mel], [len(wave)] * 2, seed)
  bad = ~np.isfinite(recon_wave)
  audio_io.write_audio(os.path.join(out_dir, f"{name}.recon.wav"), np.where(bad, 0.0, recon_wave),
                    fc.sample_rate)
  audio_io.write_audio(os.path.join(out_dir, f"{name}.oracle.wav"), oracle_wave, fc.sample_rate)
  plots.save_figure(_figure(name, log_mel, recon, fc.frames_per_second),
                    os.path.join(out_dir, f"{name}.png"))
  out = file_metrics(path, wave, log_mel, recon, recon_wave, oracle_wave, fc.sample_rate)
  if bad.any():
    out["note"] = (f"{int(bad.sum())} of {bad.size} reconstructed samples are NaN or infinite; "
                   f"{name}.recon.wav holds zeros there")
  return out


def _figure(name: str, log_mel: np.ndarray, recon: np.ndarray, frames_per_second: float):
  """Input over reconstruction; non-finite values are drawn at the input's range, on its colour scale."""
  title = f"{name}: reconstruction"
  vmin = vmax = None
  if not np.all(np.isfinite(recon)):
    vmin, vmax = float(np.min(log_mel)), float(np.max(log_mel))
    recon = np.clip(np.nan_to_num(recon, nan=vmin, posinf=vmax, neginf=vmin), vmin, vmax)
    title += " (non-finite)"
  return plots.spectrogram_grid([(f"{name}: input", log_mel), (title, recon)], frames_per_second,
                                ncols=1, vmin=vmin, vmax=vmax)


def file_metrics(path: str, wave: np.ndarray, log_mel: np.ndarray, recon: np.ndarray,
                 recon_wave: np.ndarray, oracle_wave: np.ndarray, sample_rate: int) -> dict[str, Any]:
  """Spectral and waveform metrics of one reconstructed file (PESQ only at 8 or 16 kHz).

  A metric that cannot be computed is None, its reason under `<metric>_missing`.
  NaN or infinite values in the reconstruction (log-mel or re-synthesised
  waveform) set `nonfinite_output` and make every metric over them missing.
  """
  n_coeffs = min(24, log_mel.shape[1] - 1)
  out: dict[str, Any] = {
      "path": os.path.abspath(path),
      "seconds": len(wave) / sample_rate,
      "frames": len(log_mel),
  }
  mel_ok, wave_ok = bool(np.all(np.isfinite(recon))), bool(np.all(np.isfinite(recon_wave)))
  if not (mel_ok and wave_ok):
    out["nonfinite_output"] = True
  nonfinite = metrics.Scored(None, NONFINITE_OUTPUT)
  spectral = {
      "logmel_mse": metrics.logmel_mse,
      "logmel_l1": metrics.logmel_l1,
      "mel_lsd_db": metrics.mel_log_spectral_distance_db,
      "logmel_cd_db": lambda a, b: metrics.logmel_cepstral_distance_db(a, b, n_coeffs=n_coeffs),
  }
  for key, fn in spectral.items():
    _put(out, key, metrics.Scored(fn(log_mel, recon)) if mel_ok else nonfinite)
  waveform = {"stoi": metrics.stoi_scored, "mcd_db": metrics.mcd_scored}
  if metrics.pesq_mode(sample_rate) is not None:
    waveform["pesq"] = metrics.pesq_scored
  for key, fn in waveform.items():
    _put(out, key, fn(wave, recon_wave, sample_rate) if mel_ok and wave_ok else nonfinite)
    _put(out, f"oracle_{key}", fn(wave, oracle_wave, sample_rate))
  return out


def _put(out: dict[str, Any], key: str, scored: metrics.Scored) -> None:
  out[key] = scored.value
  if scored.missing is not None:
    out[f"{key}_missing"] = scored.missing


class Utterances:
  """Looks up utterances by file path or by corpus name; loads the corpus only when needed."""

  def __init__(self, trained: Trained, data_path: str | None = None):
    self.trained, self.data_path = trained, data_path
    self._data: Dataset | None = None

  @property
  def data(self) -> Dataset:
    if self._data is None:
      self._data = self.trained.dataset(self.data_path)
    return self._data

  def log_mel(self, spec: str) -> tuple[str, np.ndarray]:
    """(name, log-mel [T, F]) of an audio file, or of a test or train utterance of the corpus."""
    if os.path.exists(spec):
      return _stem(spec), self.trained.load_audio(spec)[1]
    for split in (self.data.test, self.data.train):
      if spec in split.names:
        return _stem(spec), np.asarray(split.utterance(split.names.index(spec)))
    raise DataError(f"{spec}: neither an audio file nor an utterance of the "
                    f"{self.data.corpus} corpus")

  def median_test(self) -> tuple[str, np.ndarray]:
    """The test utterance of median length."""
    test = self.data.test
    i = int(np.argsort(test.lengths, kind="stable")[len(test) // 2])
    return _stem(test.names[i]), np.asarray(test.utterance(i))


MAX_GRID_PANELS = 32  # Spectrograms in a samples PNG; more draws are written as WAVs only.


def standard_prior_mels(trained: Trained, mel_frames_N: Sequence[int], seed: int = 0,
                        temperature: float = 1.0) -> list[np.ndarray]:
  """Log-mels decoded from N(0, temperature^2 I) draws (latents.sample_prior), one length per draw."""
  zs = latents.sample_prior(seed, [trained.latent_frames(int(t)) for t in mel_frames_N],
                            trained.latent_channels, temperature)
  return [trained.decode(z, int(t)) for z, t in zip(zs, mel_frames_N)]


def write_samples(trained: Trained, mels: Sequence[np.ndarray], out_dir: str, titles: Sequence[str],
                  seed: int = 0, info: Sequence[dict] | None = None) -> list[str]:
  """WAVs of sampled log-mels (names padded to sort), a grid PNG of the first MAX_GRID_PANELS and samples.json."""
  if not mels:
    raise UserError("--sample=0: ask for at least one sample")
  fileio.makedirs(out_dir)
  fc = trained.feature_config
  width = max(2, len(str(len(mels) - 1)))
  paths = []
  for i, wave in enumerate(synthesize(trained, mels, seed=seed)):
    paths.append(os.path.join(out_dir, f"sample_{i:0{width}d}.wav"))
    audio_io.write_audio(paths[-1], wave, fc.sample_rate)
  rows = [{"wav": os.path.basename(p), "seconds": len(m) / fc.frames_per_second, **(info[i] if info else {})}
          for i, (p, m) in enumerate(zip(paths, mels))]
  fileio.write_json(os.path.join(out_dir, "samples.json"), rows, indent=1)
  shown = list(zip(titles, mels))[:MAX_GRID_PANELS]
  fig = plots.spectrogram_grid(shown, fc.frames_per_second, ncols=4)
  paths.append(plots.save_figure(fig, os.path.join(out_dir, "samples.png")))
  return paths


def write_interpolation(trained: Trained, a: tuple[str, np.ndarray], b: tuple[str, np.ndarray],
                        out_dir: str, steps: int = 8, method: str = "slerp",
                        align: str = "resample", seed: int = 0) -> list[str]:
  """Decodes `interpolation` between two utterances: a WAV per step, all steps in one WAV, a PNG grid."""
  (name_a, mel_a), (name_b, mel_b) = a, b
  fileio.makedirs(out_dir)
  fc = trained.feature_config
  _, mels = interpolation(trained, mel_a, mel_b, steps, method, align)
  waves = synthesize(trained, mels, seed=seed)
  stem = f"interp_{name_a}_{name_b}_{method}"
  out = []
  for i, w in enumerate(waves):
    out.append(os.path.join(out_dir, f"{stem}_{i:02d}.wav"))
    audio_io.write_audio(out[-1], w, fc.sample_rate)
  out.append(os.path.join(out_dir, f"{stem}.wav"))
  audio_io.write_audio(out[-1], concat_audio(waves, fc.sample_rate), fc.sample_rate)
  ts = np.linspace(0.0, 1.0, steps)
  panels = [(f"{name_a} (input)", mel_a)] + [(f"t = {t:.2f}", m) for t, m in zip(ts, mels)]
  panels.append((f"{name_b} (input)", mel_b))
  fig = plots.spectrogram_grid(panels, fc.frames_per_second, ncols=min(steps + 2, 6))
  out.append(plots.save_figure(fig, os.path.join(out_dir, f"{stem}.png")))
  return out


def interpolation(trained: Trained, mel_a: np.ndarray, mel_b: np.ndarray, steps: int = 8,
                  method: str = "slerp", align: str = "resample") -> tuple[np.ndarray, list[np.ndarray]]:
  """The path [steps, Tz, C] between two utterances' posterior means, and the log-mels it decodes to.

  The two latent sequences are brought to the shorter length first: the longer
  is linearly time-resampled (align='resample') or cut (align='crop'). Slerp
  treats each whole latent sequence as one vector. The decodes have the
  shorter utterance's length, so the path's end at it is its reconstruction.
  """
  za, zb = trained.encode(mel_a)[0], trained.encode(mel_b)[0]
  za, zb = latents.align(za, zb, align)
  shorter = mel_a if len(mel_a) <= len(mel_b) else mel_b
  num_frames = len(shorter) if trained.latent_frames(len(shorter)) == len(za) else len(za) * trained.stride
  path_z = latents.interpolation_path(za, zb, steps, method)
  return path_z, [trained.decode(z, num_frames) for z in path_z]


def write_traversal(trained: Trained, utterance: tuple[str, np.ndarray], kl_per_channel: np.ndarray,
                    out_dir: str, num_channels: int = 4, max_shift: float = 3.0, num_shifts: int = 7,
                    seed: int = 0) -> list[str]:
  """Shifts the posterior mean of the highest-KL channels over [-max_shift, max_shift] (prior stds).

  Writes one grid PNG (a row per channel, a column per shift) and one WAV per
  channel with the shifted decodes in order, separated by short silences.
  """
  name, mel = utterance
  fileio.makedirs(out_dir)
  fc = trained.feature_config
  z = trained.encode(mel)[0]
  shifts = np.linspace(-max_shift, max_shift, num_shifts)
  channels = latents.top_channels(kl_per_channel, min(num_channels, trained.latent_channels))
  panels, out = [], []
  for c in channels:
    mels = [trained.decode(zz, len(mel)) for zz in latents.traverse(z, int(c), shifts)]
    panels += [(f"channel {c} ({kl_per_channel[c]:.2f} nats): {s:+.1f}", m) for s, m in zip(shifts, mels)]
    waves = synthesize(trained, mels, seed=seed)
    out.append(os.path.join(out_dir, f"traverse_{name}_c{int(c):02d}.wav"))
    audio_io.write_audio(out[-1], concat_audio(waves, fc.sample_rate), fc.sample_rate)
  fig = plots.spectrogram_grid(panels, fc.frames_per_second, ncols=num_shifts)
  out.append(plots.save_figure(fig, os.path.join(out_dir, f"traverse_{name}.png")))
  return out
