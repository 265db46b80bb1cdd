"""Reconstruction and audio-quality metrics on numpy arrays.

Spectral metrics take natural-log mel amplitudes, ln(A) as produced by
`vae_jax.audio.features.log_mel`, shaped [..., T, F] (frames, mel bins); an optional
mask [..., T] marks the valid frames, so padded frames never count. Averages
are taken over all valid frames together.

Waveform metrics (STOI, PESQ, the standard mel-cepstral distortion) wrap pystoi,
pesq and pysptk and trim both signals to the shorter length. `stoi_scored` and `pesq_scored` never raise: a clip the wrapped
library cannot take (too short, too long, silent, non-finite) is screened out
before it reaches native code and comes back as a `Scored` with no value and the
reason; `stoi` and `pesq` return nan instead.
"""

import dataclasses
import logging
import math
import warnings

import numpy as np
import pesq as pesq_lib
import pysptk
import pystoi
import scipy.fft

# 20 / ln(10): natural-log amplitude difference -> dB of power (10 log10 A^2).
_DB_PER_NEPER = 20.0 / math.log(10.0)
# pystoi needs this many STFT frames (N in pystoi.stoi; 12.8 ms hops at
# 10 kHz, so about 0.4 s) left after dropping frames 40 dB below the loudest.
STOI_MIN_FRAMES = 30
# Shorter clips can never hold STOI_MIN_FRAMES frames (pystoi raises an AxisError below 25.6 ms).
STOI_MIN_SECONDS = 0.4
_PESQ_MODES = {8000: "nb", 16000: "wb"}
# The PESQ library refuses less than a quarter of a second.
PESQ_MIN_SECONDS = 0.25
# The PESQ library keeps at most 50 utterances in fixed arrays and writes past them
# when the reference has more: a corrupted score, then SIGSEGV (3 min of speech with
# pauses crashes it). An utterance takes >= 0.4 s (speech >= 200 ms, pauses > 200 ms),
# so clips up to ~20 s stay within bounds; 15 s leaves a margin.
PESQ_MAX_SECONDS = 15.0
NONFINITE = "non-finite samples"

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


def mel_log_spectral_distance_db(ref_TxF: np.ndarray, est_TxF: np.ndarray,
                             mask_T: np.ndarray | None = None) -> float:
  """Log-spectral distance (dB) between natural-log mel amplitudes, mean over frames.

  Per frame, LSD = sqrt(mean_f (10 log10 A_f^2 - 10 log10 A'_f^2)^2), i.e. the
  RMS over bins of the power-spectrum dB difference, (20 / ln 10) (ln A - ln A').
  A constant amplitude gain g therefore gives exactly |20 log10 g| dB.
  """
  ref, est = _valid_frames(ref_TxF, est_TxF, mask_T)
  diff_db = _DB_PER_NEPER * (ref - est)
  return float(np.mean(np.sqrt(np.mean(diff_db ** 2, axis=-1))))


def logmel_cepstra(log_mel_TxF: np.ndarray, n: int = 24) -> np.ndarray:
  """DCT cepstra c_1..c_n [..., T, n] of the log-mel: orthonormal DCT-II of the natural-log mel, c_0 dropped."""
  log_mel = np.asarray(log_mel_TxF, np.float64)
  if not 1 <= n < log_mel.shape[-1]:
    raise ValueError(f"n={n} cepstra need more than n mel bins, got {log_mel.shape[-1]}")
  return scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[..., 1:n + 1]


def logmel_cepstral_distance_db(ref_TxF: np.ndarray, est_TxF: np.ndarray,
                                mask_T: np.ndarray | None = None, n_coeffs: int = 24) -> float:
  """MCD's formula on DCT cepstra of the log-mel (dB), mean over valid frames; not the standard MCD.

  It grows with the number of mel bins for the same spectral error, so it compares
  runs with the same features only; `mcd_scored` is the standard one (from the waveforms).

  The cepstra are c_d = sqrt(2/F) sum_f ln(A_f) cos(pi d (2f + 1) / (2F)) for
  d = 1..n_coeffs (scipy.fft.dct type 2, norm='ortho', of the natural-log mel
  amplitude over F bins); c_0, the overall level, is excluded so a constant
  gain does not count. Per frame MCD = (10 / ln 10) sqrt(2 sum_d (c_d - c'_d)^2).
  """
  ref, est = _valid_frames(ref_TxF, est_TxF, mask_T)
  diff_VxD = logmel_cepstra(ref, n_coeffs) - logmel_cepstra(est, n_coeffs)
  per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff_VxD ** 2, axis=-1))
  return float(np.mean(per_frame))


@dataclasses.dataclass(frozen=True)
class Scored:
  """A metric's value, or None and the reason it could not be computed."""

  value: float | None
  missing: str | None = None

  def or_nan(self) -> float:
    return math.nan if self.value is None else self.value


def _aligned(ref_wave: np.ndarray, est_wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both mono waveforms as float64, trimmed to the shorter length."""
  ref = np.asarray(ref_wave, np.float64).reshape(-1)
  est = np.asarray(est_wave, np.float64).reshape(-1)
  n = min(ref.size, est.size)
  return ref[:n], est[:n]


def _screen(ref: np.ndarray, est: np.ndarray, sample_rate: int, min_seconds: float) -> str | None:
  """Why an aligned pair cannot be scored at all (non-finite, too short, silent), else None."""
  for name, x in (("reference", ref), ("estimate", est)):
    if not np.all(np.isfinite(x)):
      return f"{NONFINITE} in the {name}"
  if ref.size < min_seconds * sample_rate:
    return f"clip shorter than {min_seconds:g} s"
  if not np.any(ref):
    return "silent reference"
  return None


def stoi_scored(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> Scored:
  """Short-time objective intelligibility (pystoi, classic STOI), or the reason it is undefined.

  pystoi resamples to 10 kHz, drops frames more than 40 dB below the loudest
  and needs STOI_MIN_FRAMES of what remains (about 0.4 s of speech); for less
  it would return a placeholder 1e-5. Both signals are scaled by 1 / peak(ref)
  first: STOI ignores a common gain, but pystoi's epsilons do not (it scores a
  clip at 1e-30 full scale about 1e-39).
  """
  ref, est = _aligned(ref_wave, est_wave)
  reason = _screen(ref, est, sample_rate, STOI_MIN_SECONDS)
  if reason is not None:
    return Scored(None, reason)
  gain = 1.0 / float(np.max(np.abs(ref)))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      score = float(pystoi.stoi(gain * ref, gain * est, sample_rate, extended=False))
    except Exception as e:  # pylint: disable=broad-except  # a metric must not end the run
      return Scored(None, f"pystoi failed ({type(e).__name__}: {e})")
  if any("Not enough STFT frames" in str(w.message) for w in caught):
    return Scored(None, f"fewer than {STOI_MIN_FRAMES} non-silent STOI frames")
  for w in caught:
    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  if not math.isfinite(score):
    return Scored(None, "pystoi returned NaN")
  return Scored(score)


def pesq_mode(sample_rate: int) -> str | None:
  """'nb' at 8 kHz, 'wb' at 16 kHz, None at rates PESQ does not support."""
  return _PESQ_MODES.get(sample_rate)


def pesq_scored(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> Scored:
  """PESQ MOS-LQO (narrow-band at 8 kHz, wide-band at 16 kHz), or the reason it is undefined.

  Clips outside [PESQ_MIN_SECONDS, PESQ_MAX_SECONDS], non-finite or silent
  signals never reach the library; its own refusals (no utterance, a NaN score)
  come back as reasons too.
  """
  mode = pesq_mode(sample_rate)
  if mode is None:
    return Scored(None, f"PESQ needs 8 or 16 kHz audio, not {sample_rate} Hz")
  ref, est = _aligned(ref_wave, est_wave)
  reason = _screen(ref, est, sample_rate, PESQ_MIN_SECONDS)
  if reason is None and ref.size > PESQ_MAX_SECONDS * sample_rate:
    reason = f"clip longer than {PESQ_MAX_SECONDS:g} s (the PESQ library overflows on long clips)"
  if reason is None:
    reason = _pesq_silence(ref, est)
  if reason is not None:
    return Scored(None, reason)
  try:
    return Scored(float(pesq_lib.pesq(sample_rate, ref, est, mode)))
  except pesq_lib.NoUtterancesError:
    return Scored(None, "PESQ detected no utterance")
  except pesq_lib.PesqError as e:
    return Scored(None, f"PESQ failed ({type(e).__name__}: {_text(e)})")
  except ValueError:  # The library's score was NaN: it cannot convert it to an error code.
    return Scored(None, "PESQ score undefined (the library returned NaN)")


def _pesq_silence(ref: np.ndarray, est: np.ndarray) -> str | None:
  """'silent ...' if a signal is all zeros once scaled to the joint peak in float32, as PESQ does."""
  peak = max(float(np.max(np.abs(ref))), float(np.max(np.abs(est))))
  for name, x in (("reference", ref), ("estimate", est)):
    if not np.any((x / peak).astype(np.float32)):
      return f"silent {name}" + ("" if not np.any(x) else " relative to the other signal")
  return None


def _text(e: Exception) -> str:
  msg = e.args[0] if e.args else ""
  return msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)


def stoi(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> float:
  """STOI as stoi_scored, nan where it is undefined (the clip too short, silent or non-finite)."""
  scored = stoi_scored(ref_wave, est_wave, sample_rate)
  if scored.missing is not None:
    _log.debug("STOI undefined: %s", scored.missing)
  return scored.or_nan()


def pesq(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int) -> float | None:
  """PESQ as pesq_scored: None at rates other than 8 and 16 kHz, nan where it is undefined."""
  if pesq_mode(sample_rate) is None:
    return None
  scored = pesq_scored(ref_wave, est_wave, sample_rate)
  if scored.missing is not None:
    _log.debug("PESQ undefined: %s", scored.missing)
  return scored.or_nan()


# Standard mel-cepstral distortion (Kubichek, 1993), as TTS and vocoder papers report it.
MCD_ORDER = 24  # c_1..c_24 compared; c_0 (the frame's energy) is excluded.
MCD_HOP_SECONDS = 0.005
MCD_SPEECH_DB = 40.0  # Frames more than this far below the reference's loudest are silence.


def mel_cepstrum(wave: np.ndarray, sample_rate: int, order: int = MCD_ORDER) -> tuple[np.ndarray, np.ndarray]:
  """SPTK mel-cepstra [T, order + 1] (pysptk.mcep, all-pass constant for the rate) and frame energies (dB).

  Blackman-windowed frames of the power of two above 25 ms, every 5 ms.
  """
  n = 1 << int(math.ceil(math.log2(0.025 * sample_rate)))
  hop = max(1, int(round(MCD_HOP_SECONDS * sample_rate)))
  x = np.pad(np.asarray(wave, np.float64), (n // 2, n // 2))
  frames_TxN = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.blackman(n)
  energy_db = 10.0 * np.log10(np.sum(frames_TxN ** 2, axis=1) + 1e-20)
  mc = pysptk.mcep(np.ascontiguousarray(frames_TxN), order=order, alpha=pysptk.util.mcepalpha(sample_rate),
                   etype=1, eps=1e-10)
  return mc, energy_db


def mcd_scored(ref_wave: np.ndarray, est_wave: np.ndarray, sample_rate: int,
               ref_cepstrum: tuple[np.ndarray, np.ndarray] | None = None) -> Scored:
  """Mel-cepstral distortion (dB) over the speech frames of the time-aligned pair, or the reason it is undefined.

  Per frame (10 / ln 10) sqrt(2 sum_{d=1..24} (c_d - c'_d)^2) on SPTK mel-cepstra of
  both waveforms, averaged over the frames where the reference is within
  MCD_SPEECH_DB of its loudest. The re-synthesis is frame-aligned with its
  reference here, so no time warping is applied. `ref_cepstrum` (mel_cepstrum of
  the whole reference) saves recomputing it for each system scored against it.
  """
  ref, est = _aligned(ref_wave, est_wave)
  reason = _screen(ref, est, sample_rate, 0.025)
  if reason is not None:
    return Scored(None, reason)
  mc_ref, energy_db = ref_cepstrum or mel_cepstrum(ref, sample_rate)
  mc_est, _ = mel_cepstrum(est, sample_rate)
  t = min(len(mc_ref), len(mc_est))  # Frames from the start: both signals begin together.
  mc_ref, mc_est, energy_db = mc_ref[:t], mc_est[:t], energy_db[:t]
  speech = energy_db > energy_db.max() - MCD_SPEECH_DB
  diff = mc_ref[speech, 1:] - mc_est[speech, 1:]
  per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff ** 2, axis=1))
  return Scored(float(per_frame.mean()))
