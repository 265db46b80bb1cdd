"""Reconstruction and audio-quality metrics on numpy arrays.

Spectral metrics take natural-log mel amplitudes, ln(A) as produced by
`vae_jax.features.log_mel`, shaped [..., T, F] (frames, mel bins); an optional
mask [..., T] marks the valid frames, so padded frames never count. Averages
are taken over all valid frames together.

Waveform metrics (STOI, PESQ) wrap pystoi and pesq, trim both signals to the
shorter length, and return nan where the wrapped measure is undefined for the
clip instead of raising, so a batch evaluation survives odd clips.
"""

import logging
import math
import warnings

import numpy as np
import pesq as pesq_lib
import pystoi
import scipy.fft

# 20 / ln(10): natural-log amplitude difference -> dB of power (10 log10 A^2).
_DB_PER_NEPER = 20.0 / math.log(10.0)
# pystoi needs this many STFT frames (N in pystoi.stoi; 12.8 ms hops at
# 10 kHz, so about 0.4 s) left after dropping frames 40 dB below the loudest.
STOI_MIN_FRAMES = 30
_PESQ_MODES = {8000: "nb", 16000: "wb"}

_log = logging.getLogger(__name__)


def _valid_frames(ref_TxF: np.ndarray, est_TxF: np.ndarray,
                  mask_T: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """The valid frames [V, F] of both inputs, as float64."""
  ref = np.asarray(ref_TxF, np.float64)
  est = np.asarray(est_TxF, np.float64)
  if ref.shape != est.shape or ref.ndim < 2:
    raise ValueError(
        f"expected two [..., T, F] arrays of one shape, got {ref.shape} and {est.shape}")
  if mask_T is None:
    ref_VxF, est_VxF = ref.reshape(-1, ref.shape[-1]), est.reshape(-1, est.shape[-1])
  else:
    mask = np.asarray(mask_T)
    if mask.shape != ref.shape[:-1]:
      raise ValueError(f"mask shape {mask.shape} does not match the frames {ref.shape[:-1]}")
    mask = mask.astype(bool)
    ref_VxF, est_VxF = ref[mask], est[mask]
  if ref_VxF.shape[0] == 0:
    raise ValueError("no valid frames to compare")
  return ref_VxF, est_VxF


def logmel_mse(ref_TxF: np.ndarray, est_TxF: np.ndarray, mask_T: np.ndarray | None = None) -> float:
  """Mean squared difference of log-mel values over valid frames and all bins."""
  ref, est = _valid_frames(ref_TxF, est_TxF, mask_T)
  return float(np.mean((ref - est) ** 2))


def logmel_l1(ref_TxF: np.ndarray, est_TxF: np.ndarray, mask_T: np.ndarray | None = None) -> float:
  """Mean absolute difference of log-mel values over valid frames and all bins."""
  ref, est = _valid_frames(ref_TxF, est_TxF, mask_T)
  return float(np.mean(np.abs(ref - est)))


def log_spectral_distance_db(ref_TxF: np.ndarray, est_TxF: np.ndarray,
                             mask_T: np.ndarray | None = None) -> float:
  """Log-spectral distance (dB) between natural-log mel amplitudes, mean over frames.

  Per frame, LSD = sqrt(mean_f (10 log10 A_f^2 - 10 log10 A'_f^2)^2), i.e. the
  RMS over bins of the power-spectrum dB difference, (20 / ln 10) (ln A - ln A').
  A constant amplitude gain g therefore gives exactly |20 log10 g| dB.
  """
  ref, est = _valid_frames(ref_TxF, est_TxF, mask_T)
  diff_db = _DB_PER_NEPER * (ref - est)
  return float(np.mean(np.sqrt(np.mean(diff_db ** 2, axis=-1))))


def mel_cepstra(log_mel_TxF: np.ndarray, n: int = 24) -> np.ndarray:
  """Mel cepstra c_1..c_n [..., T, n]: orthonormal DCT-II of the natural-log mel, c_0 dropped."""
  log_mel = np.asarray(log_mel_TxF, np.float64)
  if not 1 <= n < log_mel.shape[-1]:
    raise ValueError(f"n={n} cepstra need more than n mel bins, got {log_mel.shape[-1]}")
  return scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[..., 1:n + 1]


def mel_cepstral_distortion_db(ref_TxF: np.ndarray, est_TxF: np.ndarray,
                               mask_T: np.ndarray | None = None, n_coeffs: int = 24) -> float:
  """Mel cepstral distortion (dB), mean over valid frames.

  The cepstra are c_d = sqrt(2/F) sum_f ln(A_f) cos(pi d (2f + 1) / (2F)) for
  d = 1..n_coeffs (scipy.fft.dct type 2, norm='ortho', of the natural-log mel
  amplitude over F bins); c_0, the overall level, is excluded so a constant
  gain does not count. Per frame MCD = (10 / ln 10) sqrt(2 sum_d (c_d - c'_d)^2).
  """
  ref, est = _valid_frames(ref_TxF, est_TxF, mask_T)
  diff_VxD = mel_cepstra(ref, n_coeffs) - mel_cepstra(est, n_coeffs)
  per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff_VxD ** 2, axis=-1))
  return float(np.mean(per_frame))


def spectral_convergence(ref_mag: np.ndarray, est_mag: np.ndarray) -> float:
  """||S - S'||_F / ||S||_F for STFT magnitudes S (reference) and S' of one shape."""
  ref = np.asarray(ref_mag, np.float64)
  est = np.asarray(est_mag, np.float64)
  if ref.shape != est.shape:
    raise ValueError(f"magnitude shapes differ: {ref.shape} and {est.shape}")
  norm = np.linalg.norm(ref)
  if norm == 0:
    raise ValueError("the reference magnitude is all zero")
  return float(np.linalg.norm(ref - est) / norm)


def _aligned(ref_wave: np.ndarray, est_wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both mono waveforms as float64, trimmed to the shorter length."""
  ref = np.asarray(ref_wave, np.float64).reshape(-1)
  est = np.asarray(est_wave, np.float64).reshape(-1)
  n = min(ref.size, est.size)
  return ref[:n], est[:n]


def stoi(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> float:
  """Short-time objective intelligibility (pystoi, classic STOI), nan if the clip is too short.

  pystoi resamples to 10 kHz, drops frames more than 40 dB below the loudest
  and needs STOI_MIN_FRAMES of what remains (about 0.4 s of speech); for less,
  where pystoi would return a placeholder 1e-5, this returns nan.
  """
  ref, est = _aligned(ref_wave, est_wave)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    score = float(pystoi.stoi(ref, est, sample_rate, extended=False))
  if any("Not enough STFT frames" in str(w.message) for w in caught):
    _log.debug("STOI undefined: fewer than %d non-silent frames", STOI_MIN_FRAMES)
    return math.nan
  for w in caught:
    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  return score


def pesq(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> float | None:
  """PESQ MOS-LQO: narrow-band at 8 kHz, wide-band at 16 kHz, None at other rates.

  Returns nan when PESQ finds no utterance, the clip is too short for it, or
  either signal is all zeros (the PESQ library cannot level-align silence).
  """
  mode = _PESQ_MODES.get(sample_rate)
  if mode is None:
    return None
  ref, est = _aligned(ref_wave, est_wave)
  if not (np.any(ref) and np.any(est)):
    return math.nan
  try:
    return float(pesq_lib.pesq(sample_rate, ref, est, mode))
  except (pesq_lib.NoUtterancesError, pesq_lib.BufferTooShortError) as e:
    _log.debug("PESQ undefined: %s", e)
    return math.nan
