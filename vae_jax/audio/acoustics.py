"""Acoustic measurements of a waveform: f0 (pYIN) and formant (LPC) tracks.

Tracks are on the frames of the log-mel features and of the synthetic corpus's
ground-truth factors: centred frames, `1 + n // hop_length` of them for n samples,
frame i describing sample i * hop_length. So audio decoded from a latent can be
measured and set beside the ground truth of the utterances it came from.
"""

import librosa
import numpy as np

PRE_EMPHASIS = 0.97


def f0_track(wave: np.ndarray, sample_rate: int, hop_length: int, fmin: float = 60.0,
             fmax: float = 500.0) -> np.ndarray:
  """[1 + n // hop_length] f0 in Hz by pYIN; 0 where a frame is judged unvoiced, as in the ground truth."""
  wave = np.asarray(wave, np.float32)
  num_frames = 1 + len(wave) // hop_length
  # pYIN compares half-frame windows up to one longest period apart, so a frame needs two
  # periods; the smallest power of two holding 2.5 leaves a margin.
  frame_length = 1 << int(np.ceil(np.log2(2.5 * sample_rate / fmin)))
  if not np.any(wave):
    return np.zeros(num_frames)
  f0, voiced, _ = librosa.pyin(wave, fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=frame_length,
                               hop_length=hop_length, center=True)
  return np.where(voiced & np.isfinite(f0), f0, 0.0)[:num_frames].astype(np.float64)


def formant_track(wave: np.ndarray, sample_rate: int, hop_length: int, num_formants: int = 3, *,
                  window_s: float = 0.025, order: int | None = None, min_hz: float = 90.0,
                  max_bandwidth_hz: float = 500.0, floor_db: float = -40.0) -> np.ndarray:
  """[1 + n // hop_length, num_formants] formant frequencies in Hz by LPC, lowest first; nan where not found.

  Each frame (window_s long, centred, zero-padded at the ends) is pre-emphasised,
  Hamming-windowed and fitted with an LPC polynomial of `order` (default
  2 + sample_rate / 1000: a resonance per kHz, plus the spectral tilt). Its
  formants are the resonances above min_hz narrower than max_bandwidth_hz.
  Frames more than -floor_db dB below the loudest frame are silence: all nan.
  """
  x = np.asarray(wave, np.float64)
  x = np.append(x[:1], x[1:] - PRE_EMPHASIS * x[:-1])
  win = max(int(round(window_s * sample_rate)), 2)
  order = order or 2 + sample_rate // 1000
  num_frames = 1 + len(x) // hop_length
  padded = np.pad(x, (win // 2, win))
  frames = padded[np.arange(num_frames)[:, None] * hop_length + np.arange(win)] * np.hamming(win)
  rms = np.sqrt(np.mean(frames ** 2, axis=1))
  out = np.full((num_frames, num_formants), np.nan)
  if not rms.max() > 0:
    return out
  for t in np.flatnonzero(rms > rms.max() * 10.0 ** (floor_db / 20.0)):
    try:
      roots = np.roots(librosa.lpc(frames[t], order=order))
    except FloatingPointError:  # An ill-conditioned frame (e.g. a pure tone) has no usable fit.
      continue
    roots = roots[roots.imag > 0]
    freqs = np.angle(roots) * sample_rate / (2 * np.pi)
    bandwidths = -np.log(np.abs(roots)) * sample_rate / np.pi
    found = np.sort(freqs[(freqs > min_hz) & (bandwidths < max_bandwidth_hz)])[:num_formants]
    out[t, :len(found)] = found
  return out


def voiced_medians(f0_T: np.ndarray, formants_TxK: np.ndarray) -> np.ndarray:
  """[1 + K]: the median f0 and formants over the voiced frames (f0 > 0); nan where there are none."""
  voiced = np.asarray(f0_T) > 0
  columns = [np.asarray(f0_T, np.float64)[voiced]]
  columns += list(np.asarray(formants_TxK, np.float64)[voiced].T)
  # Unvoiced utterances and unfound formants are nan, not a warning per empty column.
  return np.array([np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in columns])
