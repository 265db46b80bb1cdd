"""Augmented copies of training utterances: speed, pitch, gain, spectral colouring and additive noise.

Each train utterance gets `augment.copies` copies, entries of the train split named
`<name>~aug<k>` whose `augment` field spells out the drawn parameters. The draws come
from a hash of (augment.seed, utterance name, copy index), never from global state,
so a copy is the same in every run and process; and since the spelled-out parameters
enter the feature cache key, changing any augmentation setting extracts again.
"""

import dataclasses
import hashlib
from typing import Any

import numpy as np

from vae_jax.data.corpora import Corpus, Entry
from vae_jax.errors import ConfigError

# Bumped whenever `apply` changes what it computes for the same parameters: the key changes with it.
AUGMENT_VERSION = 2
NOISE_MAX_SNR_DB = 40.0  # The cleanest copy when additive noise is on.
_MAX_SPEED = 0.5
_MAX_SEMITONES = 12.0
_MAX_GAIN_DB = 24.0
_MAX_EQ_DB = 24.0
EQ_TERMS = 3  # Cosines of the colouring curve over 0 .. Nyquist: a tilt, a bump or dip, a ripple.


@dataclasses.dataclass(frozen=True)
class Params:
  """The drawn perturbation of one copy."""

  speed: float = 1.0  # Playback-rate factor (resampling: duration / speed, pitch and formants x speed).
  semitones: float = 0.0  # Pitch shift at constant duration.
  gain_db: float = 0.0
  snr_db: float | None = None  # None: no additive noise.
  noise_seed: int = 0
  eq_db: tuple[float, ...] = ()  # dB of each cosine of the colouring curve; () or zeros: none.

  def spec(self) -> str:
    """The canonical text of the parameters, as stored in Entry.augment (and hashed by the cache key)."""
    snr = "none" if self.snr_db is None else f"{self.snr_db:.6f}"
    # Written only when on, so copies without colouring keep the keys they had before it existed.
    eq = f";eq_db={','.join(f'{x:.6f}' for x in self.eq_db)}" if any(self.eq_db) else ""
    return (f"v{AUGMENT_VERSION};speed={self.speed:.6f};semitones={self.semitones:.6f};"
            f"gain_db={self.gain_db:.6f};snr_db={snr};noise_seed={self.noise_seed}{eq}")

  @classmethod
  def from_spec(cls, spec: str) -> "Params":
    fields = dict(part.split("=", 1) for part in spec.split(";")[1:])
    snr = fields["snr_db"]
    eq = tuple(float(x) for x in fields["eq_db"].split(",")) if "eq_db" in fields else ()
    return cls(float(fields["speed"]), float(fields["semitones"]), float(fields["gain_db"]),
               None if snr == "none" else float(snr), int(fields["noise_seed"]), eq)


def settings(config) -> Any:
  """The config's augment section, checked; None when there is none (runs from before it existed)."""
  a = config.get("augment")
  if a is None:
    return None
  for field, value, low, high in (("copies", a.copies, 0, 64), ("speed", a.speed, 0.0, _MAX_SPEED),
                                  ("pitch_semitones", a.pitch_semitones, 0.0, _MAX_SEMITONES),
                                  ("gain_db", a.gain_db, 0.0, _MAX_GAIN_DB),
                                  ("eq_db", a.get("eq_db", 0.0), 0.0, _MAX_EQ_DB),
                                  ("noise_snr_db", a.noise_snr_db, -20.0, NOISE_MAX_SNR_DB)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
      raise ConfigError(f"config field augment.{field}={value!r} is out of range: it must be a number "
                        f"in [{low:g}, {high:g}]")
  if not isinstance(a.seed, int) or isinstance(a.seed, bool):
    raise ConfigError(f"config field augment.seed={a.seed!r} has the wrong type: it must be an integer")
  return a


def draw(name: str, copy: int, a) -> Params:
  """The parameters of copy `copy` of utterance `name`: a function of them and of the augment section."""
  digest = hashlib.sha256(f"{a.seed}\0{name}\0{copy}".encode()).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  u = rng.uniform(-1.0, 1.0, size=3)  # Drawn whatever is on, so turning one on does not move the others.
  snr_u, noise_seed = rng.uniform(), int(rng.integers(2**31))
  eq_u = rng.uniform(-1.0, 1.0, size=EQ_TERMS)  # Drawn last: the draws before it are as they were.
  noise = a.noise_snr_db != 0
  eq_db = a.get("eq_db", 0.0)
  return Params(speed=round(1.0 + a.speed * u[0], 6), semitones=round(a.pitch_semitones * u[1], 6),
                gain_db=round(a.gain_db * u[2], 6),
                snr_db=round(a.noise_snr_db + (NOISE_MAX_SNR_DB - a.noise_snr_db) * snr_u, 6) if noise else None,
                noise_seed=noise_seed,
                eq_db=tuple(round(eq_db * x / EQ_TERMS, 6) for x in eq_u) if eq_db else ())


def augmented_corpus(corpus: Corpus, config) -> Corpus:
  """The corpus with `augment.copies` augmented copies of each train utterance added to the train split."""
  a = settings(config)
  if a is None or a.copies == 0:
    return corpus
  extra = [Entry(name=f"{e.name}~aug{k}", path=e.path, split="train", labels=e.labels,
                 augment=draw(e.name, k, a).spec())
           for e in corpus.entries if e.split == "train" for k in range(a.copies)]
  return dataclasses.replace(corpus, entries=corpus.entries + tuple(extra))


def apply(wave: np.ndarray, spec: str, sample_rate: int) -> np.ndarray:
  """The waveform perturbed as `spec` (Params.spec) says: speed, pitch, colouring, gain, then noise."""
  import librosa  # pylint: disable=g-import-not-at-top  (feature workers import this module)

  p = Params.from_spec(spec)
  y = np.asarray(wave, np.float32)
  if p.speed != 1.0:  # Read at sample_rate * speed, played at sample_rate.
    y = librosa.resample(y, orig_sr=sample_rate * p.speed, target_sr=sample_rate)
  if p.semitones != 0.0:
    # A 64 ms phase-vocoder frame: librosa's default of 2048 samples outlasts short clips at 8 kHz.
    n_fft = 1 << max(int(np.ceil(np.log2(0.064 * sample_rate))), 6)
    y = librosa.effects.pitch_shift(y, sr=sample_rate, n_steps=p.semitones, n_fft=n_fft,
                                    hop_length=n_fft // 4)
  if any(p.eq_db):
    y = colour(y, p.eq_db)
  y = y * np.float32(10.0 ** (p.gain_db / 20.0))
  if p.snr_db is not None:
    power = float(np.mean(np.square(y, dtype=np.float64)))
    noise = np.random.default_rng(p.noise_seed).standard_normal(len(y))
    y = y + (np.sqrt(power / 10.0 ** (p.snr_db / 10.0)) * noise).astype(np.float32)
  return np.asarray(y, np.float32)


def colour(wave: np.ndarray, eq_db: tuple[float, ...]) -> np.ndarray:
  """The waveform through a zero-phase filter of gain sum_j eq_db[j] cos(pi (j + 1) f / Nyquist) dB.

  A smooth curve over frequency, as a microphone, a room or a voice's timbre colours speech:
  at most sum |eq_db| dB anywhere. Applied in one FFT, zero-padded so nothing wraps around.
  """
  n = len(wave)
  size = 1 << int(np.ceil(np.log2(2 * n)))
  f = np.linspace(0.0, 1.0, size // 2 + 1)  # Frequency over Nyquist.
  gain_db = sum(g * np.cos(np.pi * (j + 1) * f) for j, g in enumerate(eq_db))
  spectrum = np.fft.rfft(wave.astype(np.float64), size) * 10.0 ** (gain_db / 20.0)
  return np.fft.irfft(spectrum, size)[:n].astype(np.float32)
