"""Log-mel features with librosa: analysis, normalisation and inversion.

The feature of a clip is ln(max(M, log_floor)) where M = mel filterbank (Slaney
scale and area normalisation, librosa defaults) applied to the STFT magnitude
(power 1). Frames are centred (`center=True`, zero padding), so a clip of n
samples has 1 + n // hop_length frames.
"""

import dataclasses
import json
import warnings
from typing import Any, Mapping

import librosa
import numpy as np

from vae_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """The analysis parameters; every field is part of the feature cache key."""

  sample_rate: int = 16000
  n_fft: int = 512
  win_length: int = 512
  hop_length: int = 128
  window: str = "hann"
  n_mels: int = 64
  fmin: float = 0.0
  fmax: float = 8000.0
  log_floor: float = 1e-5

  @classmethod
  def from_config(cls, c: Mapping[str, Any]) -> "FeatureConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: c[k] for k in fields if k in c}).validated()

  def validated(self) -> "FeatureConfig":
    """Returns self, or raises ConfigError naming the first impossible field."""
    nyquist = self.sample_rate / 2
    checks = [
        (self.sample_rate >= 1000, "features.sample_rate", "an integer >= 1000 Hz"),
        (self.n_fft >= 16, "features.n_fft", "an integer >= 16"),
        (0 < self.win_length <= self.n_fft, "features.win_length", f"in [1, n_fft={self.n_fft}]"),
        (0 < self.hop_length <= self.win_length, "features.hop_length",
         f"in [1, win_length={self.win_length}] (a hop longer than the window skips samples)"),
        (self.n_mels >= 1, "features.n_mels", "an integer >= 1"),
        (0 <= self.fmin < self.fmax, "features.fmin", f"in [0, fmax={self.fmax})"),
        (self.fmax <= nyquist, "features.fmax", f"at most the Nyquist frequency {nyquist:g} Hz"),
        (self.log_floor > 0, "features.log_floor", "a positive amplitude, e.g. 1e-5"),
    ]
    for ok, name, accepted in checks:
      if not ok:
        value = getattr(self, name.split(".")[1])
        raise ConfigError(f"{name}={value!r} is not usable: it must be {accepted}")
    try:
      librosa.filters.get_window(self.window, self.win_length)
    except (ValueError, TypeError):  # What scipy raises for an unknown window; anything else is not the user's.
      raise ConfigError(f"features.window={self.window!r} is not a window librosa knows (e.g. 'hann')") from None
    with warnings.catch_warnings():  # librosa warns about empty bands; they are refused below.
      warnings.simplefilter("ignore", UserWarning)
      empty = int(np.sum(~np.any(mel_filterbank(self) > 0, axis=1)))
    if empty:
      raise ConfigError(
          f"features.n_mels={self.n_mels} is not usable: {empty} mel bands would be empty at "
          f"n_fft={self.n_fft}; lower features.n_mels or raise features.n_fft")
    return self

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @property
  def frames_per_second(self) -> float:
    return self.sample_rate / self.hop_length

  def num_frames(self, num_samples: int) -> int:
    """Frames of a clip: centring pads n_fft // 2 on each side, so 1 + n // hop for even n_fft."""
    return 1 + (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length


def mel_filterbank(fc: FeatureConfig) -> np.ndarray:
  """The [n_mels, 1 + n_fft // 2] filterbank librosa uses for these features."""
  return librosa.filters.mel(
      sr=fc.sample_rate, n_fft=fc.n_fft, n_mels=fc.n_mels, fmin=fc.fmin, fmax=fc.fmax
  ).astype(np.float32)


def log_mel(wave: np.ndarray, fc: FeatureConfig) -> np.ndarray:
  """Log-mel features [frames, n_mels] (float32) of a mono waveform."""
  mel_FxT = librosa.feature.melspectrogram(
      y=np.asarray(wave, np.float32), sr=fc.sample_rate, n_fft=fc.n_fft,
      hop_length=fc.hop_length, win_length=fc.win_length, window=fc.window,
      center=True, pad_mode="constant", power=1.0, n_mels=fc.n_mels,
      fmin=fc.fmin, fmax=fc.fmax,
  )
  return np.log(np.maximum(mel_FxT, fc.log_floor)).T.astype(np.float32)


def _griffinlim_seed(seed: int) -> dict[str, int]:
  """librosa 1.0 renamed griffinlim's random_state to rng (the old name warns)."""
  return {"rng" if int(librosa.__version__.split(".")[0]) >= 1 else "random_state": seed}


def mel_to_audio(log_mel_TxF: np.ndarray, fc: FeatureConfig, n_iter: int = 32,
                 length: int | None = None, seed: int = 0) -> np.ndarray:
  """Inverts log-mel features to a waveform with librosa's Griffin-Lim."""
  mel_FxT = np.exp(np.asarray(log_mel_TxF, np.float32)).T
  stft_mag = librosa.feature.inverse.mel_to_stft(
      mel_FxT, sr=fc.sample_rate, n_fft=fc.n_fft, power=1.0, fmin=fc.fmin, fmax=fc.fmax)
  wave = librosa.griffinlim(
      stft_mag, n_iter=n_iter, hop_length=fc.hop_length, win_length=fc.win_length,
      n_fft=fc.n_fft, window=fc.window, center=True, pad_mode="constant",
      length=length, **_griffinlim_seed(seed))
  return wave.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per-mel-bin mean and standard deviation, computed on the train split only."""

  mean: np.ndarray  # [n_mels]
  std: np.ndarray  # [n_mels]

  @classmethod
  def fit(cls, frames_NxF: np.ndarray, min_std: float = 1e-3) -> "Normalizer":
    frames = np.asarray(frames_NxF, np.float64)
    return cls(frames.mean(0).astype(np.float32),
               np.maximum(frames.std(0), min_std).astype(np.float32))

  def normalize(self, log_mel):
    return (log_mel - self.mean) / self.std

  def denormalize(self, x):
    return x * self.std + self.mean

  def to_dict(self) -> dict:
    return {"mean": self.mean.tolist(), "std": self.std.tolist()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Normalizer":
    return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))
