"""The embedded `synthetic` corpus: source-filter speech whose causes are known.

Each utterance is one word of a small vocabulary shared by all speakers, said by
one of `num_speakers` synthetic voices. The synthesiser is a Klatt-style cascade
formant synthesiser:

  source   Rosenberg glottal pulses along an f0 contour (declination plus a
           rise-fall accent on the first, stressed syllable) with per-period
           jitter and shimmer. The flow is differentiated, which folds in lip
           radiation, and breath noise is gated by the glottal opening.
  filter   five 2-pole resonators in cascade (F1-F5 with bandwidths). Their
           frequencies glide between phone targets (half-cosine glides between
           steady-state points) and the coefficients are updated every sample with the
           filter state carried, so transitions are smooth and click-free.
  noise    fricatives /s sh f/ and plosive bursts /p t k/ are band-filtered noise
           added in parallel; a plosive is closure silence, a burst and
           aspiration (noise through the cascade).
  speaker  a vocal-tract length factor that scales every formant, and a pitch
           range; voices are spread from low (90 Hz) to high (260 Hz) means.

Every utterance carries its ground truth: speaker, word, vowel of the stressed
syllable, phone boundaries, and f0 and F1-F3 tracks at frame rate.

Factor frames follow the feature front end (librosa, center=True): a clip of n
samples has 1 + n // factor_hop frames and frame i describes sample
i * factor_hop (the last sample for a frame centred past the end). `f0_hz` is 0
exactly in frames whose sample lies in an unvoiced phone (silence, fricative,
plosive). `formants_hz` is the resonator track, defined everywhere: it glides
through consonants and holds through silences, so mask it with f0_hz > 0 where
only audible vowel formants matter.
"""

import dataclasses
import functools
import io
import json
import os
import shutil
import tempfile
import time
from typing import Sequence

import numba
import numpy as np
import scipy.signal
import soundfile as sf

from vae_jax.errors import ConfigError, DataError

# Bump whenever the synthesis changes, so that cached corpora are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
FACTORS = "factors.npz"
_FORMAT = "vae-jax-synthetic-corpus"

VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u")
CONSONANTS: tuple[str, ...] = ("m", "n", "l", "s", "sh", "f", "p", "t", "k")
PHONES: tuple[str, ...] = ("sil",) + VOWELS + CONSONANTS
VOICED_PHONES = frozenset(VOWELS + ("m", "n", "l"))
FRICATIVES = ("s", "sh", "f")
PLOSIVES = ("p", "t", "k")

# Three words per stressed vowel, 1-3 syllables, using every consonant.
WORDS: tuple[str, ...] = (
    "ma", "tak", "sanuli",
    "em", "pesa", "shen",
    "ki", "lima", "ifo",
    "so", "tomi", "nopeka",
    "fu", "kulo", "mus",
)

MIN_SAMPLE_RATE = 8000
_NUM_FORMANTS = 5
# F1-F5 (Hz) of a reference adult male vocal tract. Vowels: Peterson & Barney
# (1952) for /a i u/, Hillenbrand et al. (1995) for /e o/. Consonant rows are
# loci (where transitions point) or nasal/lateral murmur resonances.
_FORMANTS_HZ = {
    "a": (730, 1090, 2440, 3400, 4500),
    "e": (476, 2089, 2691, 3500, 4500),
    "i": (270, 2290, 3010, 3600, 4500),
    "o": (497, 910, 2459, 3400, 4500),
    "u": (300, 870, 2240, 3300, 4500),
    "m": (280, 1000, 2200, 3300, 4500),
    "n": (280, 1600, 2600, 3400, 4500),
    "l": (360, 1150, 2700, 3400, 4500),
    "s": (300, 1700, 2700, 3500, 4500),
    "sh": (300, 1900, 2400, 3400, 4500),
    "f": (300, 1100, 2300, 3400, 4500),
    "p": (250, 900, 2200, 3300, 4500),
    "t": (250, 1800, 2700, 3500, 4500),
    "k": (250, 2000, 2300, 3400, 4500),
}
_VOWEL_BANDWIDTHS_HZ = (80, 90, 150, 250, 300)
# Nasal and lateral murmurs are damped above F1, and closures widen F1.
_BANDWIDTHS_HZ = {
    "m": (100, 300, 400, 400, 400),
    "n": (100, 300, 400, 400, 400),
    "l": (90, 150, 250, 300, 400),
}
_CLOSURE_BANDWIDTHS_HZ = (150, 150, 200, 300, 400)
# How far a consonant target sits from its locus towards the nearest vowel.
_COARTICULATION = {"m": 0.3, "n": 0.3, "l": 0.3}
_DEFAULT_COARTICULATION = 0.5

# Level of the voiced source in each voiced phone, relative to a stressed vowel.
_VOICE_GAIN = {"m": 0.25, "n": 0.25, "l": 0.45}
_UNSTRESSED_GAIN = 0.7
# Noise band (Hz, for the reference vocal tract) and level (dB re the stressed vowel RMS).
_FRICATIVE_BANDS = {"s": (4000, 7500, -12.0), "sh": (2200, 5000, -10.0), "f": (1000, 7000, -20.0)}
_BURST_BANDS = {"p": (300, 2500, -12.0), "t": (2800, 7000, -6.0), "k": (1300, 3000, -6.0)}
_ASPIRATION_DB = -16.0

# Duration ranges in seconds at a speaking rate of 1.
_DURATIONS_S = {
    "stressed": (0.15, 0.22), "vowel": (0.08, 0.12), "m": (0.06, 0.09), "n": (0.06, 0.09),
    "l": (0.06, 0.09), "s": (0.10, 0.14), "sh": (0.10, 0.14), "f": (0.08, 0.12),
    "closure": (0.05, 0.08), "release": (0.02, 0.045), "lead": (0.05, 0.12), "trail": (0.06, 0.15),
}
_FINAL_LENGTHENING = 1.3
MIN_DURATION_S = 0.4
MAX_DURATION_S = 1.2

# Random streams derived from the corpus seed: [seed, stream, ...].
_SPEAKER_STREAM, _UTTERANCE_STREAM, _WORD_STREAM, _SPLIT_STREAM = range(4)
TEST_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class SpeakerParams:
  """One synthetic voice; fixed by the corpus seed."""

  index: int
  f0_mean_hz: float  # Pitch of an utterance before its accent and declination.
  f0_range_st: float  # Largest accent height in semitones.
  vtl_factor: float  # Formant scaling: > 1 is a shorter vocal tract (higher formants).
  jitter: float  # Standard deviation of the relative period perturbation.
  shimmer: float  # Standard deviation of the relative pulse amplitude perturbation.
  breathiness: float  # Breath noise level relative to the unit-RMS voiced source.
  open_quotient: float  # Open fraction of each glottal period.
  rate: float  # Duration scaling: > 1 is slower speech.


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
  """One generated word with its ground-truth factors; arrays are read-only."""

  name: str  # e.g. "spk3_0042": unique, the stem of the wav file.
  speaker: int
  word: int  # Index into WORDS.
  vowel: int  # Index into VOWELS: the vowel of the first (stressed) syllable.
  phones: tuple[tuple[str, float, float], ...]  # (phone, start_s, end_s), "sil" at both ends.
  split: str  # "train" or "test".
  num_samples: int
  f0_hz: np.ndarray  # [1 + num_samples // factor_hop] float32, 0 where unvoiced.
  formants_hz: np.ndarray  # [1 + num_samples // factor_hop, 3] float32: F1-F3.

  def __eq__(self, other) -> bool:
    if not isinstance(other, Utterance):
      return NotImplemented
    return (self._key() == other._key()
            and np.array_equal(self.f0_hz, other.f0_hz)
            and np.array_equal(self.formants_hz, other.formants_hz))

  def __hash__(self) -> int:
    return hash(self._key())

  def _key(self) -> tuple:
    return (self.name, self.speaker, self.word, self.vowel, self.phones, self.split,
            self.num_samples)


def word_phones(word: int) -> tuple[str, ...]:
  """The phones of WORDS[word], reading two-letter phones ("sh") first."""
  spelling, phones = WORDS[word], []
  while spelling:
    phone = next(p for p in sorted(PHONES, key=len, reverse=True) if spelling.startswith(p))
    phones.append(phone)
    spelling = spelling[len(phone):]
  return tuple(phones)


def word_vowel(word: int) -> int:
  """The vowel label of a word: its first vowel, which carries the stress."""
  return VOWELS.index(next(p for p in word_phones(word) if p in VOWELS))


def make_speakers(num_speakers: int, seed: int) -> tuple[SpeakerParams, ...]:
  """The voices of a corpus; pitch means are stratified so low and high voices mix."""
  rng = np.random.default_rng([seed, _SPEAKER_STREAM])
  n = num_speakers
  # One speaker per stratum of log pitch, in random order.
  u = (rng.permutation(n) + rng.uniform(size=n)) / n
  f0_mean = 90.0 * (260.0 / 90.0) ** u
  # Higher voices tend to have shorter vocal tracts.
  vtl = np.clip(0.85 + 0.35 * u + rng.normal(0.0, 0.03, n), 0.85, 1.2)
  f0_range = rng.uniform(2.0, 5.0, n)
  jitter = rng.uniform(0.004, 0.012, n)
  shimmer = rng.uniform(0.02, 0.06, n)
  breathiness = rng.uniform(0.1, 0.35, n)
  open_quotient = rng.uniform(0.5, 0.7, n)
  rate = rng.uniform(0.85, 1.15, n)
  return tuple(
      SpeakerParams(i, float(f0_mean[i]), float(f0_range[i]), float(vtl[i]), float(jitter[i]),
                    float(shimmer[i]), float(breathiness[i]), float(open_quotient[i]),
                    float(rate[i]))
      for i in range(n))


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Phone sequence of an utterance with sample boundaries."""

  phones: tuple[str, ...]
  bounds: np.ndarray  # [P + 1] sample boundaries.
  release: np.ndarray  # [P] samples of burst + aspiration at the end of each plosive.
  stressed: int  # Phone index of the stressed vowel.


def _plan(rng: np.random.Generator, speaker: SpeakerParams, word: int,
          sample_rate: int) -> _Plan:
  """Draws phone durations (with final lengthening) and fits them into 0.4-1.2 s."""
  phones = ("sil",) + word_phones(word) + ("sil",)
  stressed = next(i for i, p in enumerate(phones) if p in VOWELS)
  tempo = speaker.rate * rng.uniform(0.9, 1.1)
  dur = np.zeros(len(phones))
  release = np.zeros(len(phones))
  for i, p in enumerate(phones):
    if p == "sil":
      continue
    if p in PLOSIVES:
      release[i] = tempo * rng.uniform(*_DURATIONS_S["release"])
      dur[i] = tempo * rng.uniform(*_DURATIONS_S["closure"]) + release[i]
    else:
      key = "stressed" if i == stressed else ("vowel" if p in VOWELS else p)
      dur[i] = tempo * rng.uniform(*_DURATIONS_S[key])
  dur[-2] *= _FINAL_LENGTHENING
  release[-2] *= _FINAL_LENGTHENING
  dur[0] = rng.uniform(*_DURATIONS_S["lead"])
  dur[-1] = rng.uniform(*_DURATIONS_S["trail"])
  total = dur.sum()
  if total > MAX_DURATION_S:
    scale = (MAX_DURATION_S - dur[0] - dur[-1]) / dur[1:-1].sum()
    dur[1:-1] *= scale
    release *= scale
  elif total < MIN_DURATION_S:
    dur[[0, -1]] += (MIN_DURATION_S - total) / 2
  bounds = np.round(np.concatenate([[0.0], np.cumsum(dur)]) * sample_rate).astype(np.int64)
  return _Plan(phones, bounds, np.round(release * sample_rate).astype(np.int64), stressed)


def _phone_index(plan: _Plan) -> np.ndarray:
  """[N] index of the phone each sample belongs to."""
  return np.repeat(np.arange(len(plan.phones)), np.diff(plan.bounds))


def _raised_cosine(n: int) -> np.ndarray:
  """[n] rising half-cosine from just above 0 to just below 1."""
  return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / max(n, 1))


# ----------------------------------------------------------------------------- contours


def _control_grid(num_samples: int, sample_rate: int) -> np.ndarray:
  """Sample positions (every ~2 ms, both ends included) where contours are computed."""
  step = max(1, sample_rate // 500)
  return np.unique(np.append(np.arange(0, num_samples, step), num_samples - 1))


def _formant_targets(rng: np.random.Generator, plan: _Plan,
                     speaker: SpeakerParams) -> tuple[np.ndarray, np.ndarray]:
  """Per-phone formant and bandwidth targets [P, 5] (Hz) for this speaker and token."""
  phones = plan.phones
  # Silences get no control point, so their (placeholder) rows are never used.
  f = np.array([_FORMANTS_HZ.get(p, _FORMANTS_HZ["a"]) for p in phones], np.float64)
  bw = np.array([_BANDWIDTHS_HZ.get(p, _CLOSURE_BANDWIDTHS_HZ if p in FRICATIVES + PLOSIVES
                                    else _VOWEL_BANDWIDTHS_HZ) for p in phones], np.float64)
  # Token-to-token variability of each vowel.
  is_vowel = np.array([p in VOWELS for p in phones])
  f[is_vowel, :3] *= np.exp(rng.normal(0.0, 0.03, (int(is_vowel.sum()), 3)))
  vowel_idx = np.flatnonzero(is_vowel)
  for i, p in enumerate(phones):
    if p in CONSONANTS:
      # Consonants point towards the following vowel, or the preceding one at the end.
      after = vowel_idx[vowel_idx > i]
      v = after[0] if after.size else vowel_idx[vowel_idx < i][-1]
      w = _COARTICULATION.get(p, _DEFAULT_COARTICULATION)
      f[i, :3] = (1 - w) * f[i, :3] + w * f[v, :3]
  return f * speaker.vtl_factor, bw


def _formant_tracks(rng: np.random.Generator, plan: _Plan, speaker: SpeakerParams,
                    grid_G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Formant frequencies and bandwidths [5, G] (Hz) at grid_G, gliding between phone targets."""
  f_Px5, bw_Px5 = _formant_targets(rng, plan, speaker)
  times, values = [], []
  for i, p in enumerate(plan.phones):
    start, end = plan.bounds[i], plan.bounds[i + 1]
    if p == "sil":
      continue
    if p in VOWELS:
      # A steady state in the middle of the vowel, transitions at both sides.
      points = (start + 0.3 * (end - start), end - 0.3 * (end - start))
    else:
      points = (0.5 * (start + end),)
    for t in points:
      times.append(t)
      values.append(np.concatenate([f_Px5[i], bw_Px5[i]]))
  tracks_10xG = _cosine_interp(grid_G, np.array(times), np.array(values).T)
  return tracks_10xG[:_NUM_FORMANTS], tracks_10xG[_NUM_FORMANTS:]


def _cosine_interp(x_G: np.ndarray, knots_J: np.ndarray, values_CxJ: np.ndarray) -> np.ndarray:
  """[C, G] half-cosine glides between knots: flat at every knot, held beyond the ends.

  Flat at the knots gives steady vowel targets and smooth turns at consonant
  loci, and a glide never overshoots its end points.
  """
  x = np.clip(x_G, knots_J[0], knots_J[-1])
  j = np.clip(np.searchsorted(knots_J, x, side="right") - 1, 0, len(knots_J) - 2)
  u = (x - knots_J[j]) / (knots_J[j + 1] - knots_J[j])
  w = 0.5 - 0.5 * np.cos(np.pi * u)
  return values_CxJ[:, j] + w * (values_CxJ[:, j + 1] - values_CxJ[:, j])


def _f0_contour(rng: np.random.Generator, plan: _Plan, speaker: SpeakerParams,
                grid_G: np.ndarray, sample_rate: int) -> np.ndarray:
  """[G] f0 in Hz: declination, a rise-fall accent on the stressed vowel, sometimes a final rise."""
  t = grid_G / sample_rate
  start, end = plan.bounds[1] / sample_rate, plan.bounds[-2] / sample_rate
  base_st = rng.normal(0.0, 0.7)
  decline_st = rng.uniform(1.0, 3.0)
  decl = decline_st * (0.5 - np.clip((t - start) / (end - start), 0.0, 1.0))
  s0, s1 = plan.bounds[plan.stressed] / sample_rate, plan.bounds[plan.stressed + 1] / sample_rate
  centre = 0.5 * (s0 + s1) + rng.uniform(-0.02, 0.04)
  width = rng.uniform(0.06, 0.12)
  accent = rng.uniform(0.4, 1.0) * speaker.f0_range_st * np.exp(-0.5 * ((t - centre) / width) ** 2)
  rise = np.zeros_like(t)
  if rng.uniform() < 0.2:
    ramp = np.clip((t - (end - 0.15)) / 0.15, 0.0, 1.0)
    rise = rng.uniform(2.0, 4.0) * ramp**2
  f0 = speaker.f0_mean_hz * 2.0 ** ((base_st + decl + accent + rise) / 12.0)
  return np.clip(f0, 50.0, 500.0)


# ----------------------------------------------------------------------------- source


@numba.njit(cache=True)
def _pulse_starts(grid_G, f0_G, eps_K, jitter, sample_rate, num_samples):
  """Fractional sample positions and lengths of glottal periods along f0, with jitter."""
  starts = np.empty(eps_K.shape[0])
  periods = np.empty(eps_K.shape[0])
  t = 0.0
  k = 0
  g = 0
  while t < num_samples and k < eps_K.shape[0]:
    while g + 2 < grid_G.shape[0] and grid_G[g + 1] <= t:
      g += 1
    w = min(max((t - grid_G[g]) / (grid_G[g + 1] - grid_G[g]), 0.0), 1.0)
    f0 = f0_G[g] + w * (f0_G[g + 1] - f0_G[g])
    starts[k] = t
    periods[k] = sample_rate / f0 * (1.0 + jitter * eps_K[k])
    t += periods[k]
    k += 1
  return starts[:k], periods[:k]


def _rosenberg(phase: np.ndarray, open_quotient: float) -> np.ndarray:
  """Rosenberg glottal flow in [0, 1] at `phase` in [0, 1) of a period."""
  tp, tn = 0.7 * open_quotient, 0.3 * open_quotient  # Opening is slower than closing.
  rise = 0.5 * (1.0 - np.cos(np.pi * phase / tp))
  fall = np.cos(0.5 * np.pi * np.clip(phase - tp, 0.0, tn) / tn)
  return np.where(phase < tp, rise, np.where(phase < tp + tn, fall, 0.0))


def _glottal_source(rng: np.random.Generator, grid_G: np.ndarray, f0_G: np.ndarray, n: int,
                    speaker: SpeakerParams, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """Differentiated glottal flow [n] (unit RMS) and the flow [n] in [0, ~1]."""
  max_pulses = int(n * f0_G.max() / sample_rate * 1.2) + 8
  eps_K = np.clip(rng.standard_normal(max_pulses), -3.0, 3.0)
  starts_K, periods_K = _pulse_starts(grid_G.astype(np.float64), f0_G, eps_K, speaker.jitter,
                                      float(sample_rate), n)
  amp_K = np.exp(speaker.shimmer * np.clip(rng.standard_normal(starts_K.shape[0]), -3.0, 3.0))
  samples = np.arange(n, dtype=np.float64)
  k = np.searchsorted(starts_K, samples, side="right") - 1
  phase = np.clip((samples - starts_K[k]) / periods_K[k], 0.0, 1.0 - 1e-9)
  flow = _rosenberg(phase, speaker.open_quotient) * amp_K[k]
  dflow = np.diff(flow, prepend=0.0)
  return dflow / (np.sqrt(np.mean(dflow**2)) + 1e-12), flow


def _voicing_envelope(plan: _Plan, sample_rate: int) -> np.ndarray:
  """[N] voiced source gain: 0 exactly in unvoiced phones, smooth ramps inside voiced ones."""
  num_samples = int(plan.bounds[-1])
  gain = np.array([
      _VOICE_GAIN.get(p, 1.0 if i == plan.stressed else _UNSTRESSED_GAIN) if p in VOICED_PHONES
      else 0.0 for i, p in enumerate(plan.phones)])
  # Level steps between voiced phones (a -> n -> u) become linear crossfades of up
  # to 20 ms; the gate below takes care of the edges of voicing.
  knots, values = [0.0], [gain[0]]
  for i in range(1, len(gain)):
    b = float(plan.bounds[i])
    half = min(0.01 * sample_rate, (b - plan.bounds[i - 1]) / 3, (plan.bounds[i + 1] - b) / 3)
    knots += [b - half, b + half]
    values += [gain[i - 1], gain[i]]
  gain_N = np.interp(np.arange(num_samples), knots, values)
  gate = np.zeros(num_samples)
  voiced = [p in VOICED_PHONES for p in plan.phones]
  i = 0
  while i < len(voiced):
    if not voiced[i]:
      i += 1
      continue
    j = i
    while j + 1 < len(voiced) and voiced[j + 1]:
      j += 1
    start, end = int(plan.bounds[i]), int(plan.bounds[j + 1])
    # Onsets after silence and offsets before it are slower than at obstruents.
    on_s = 0.025 if plan.phones[i - 1] == "sil" else 0.010
    off_s = 0.040 if plan.phones[j + 1] == "sil" else 0.015
    on = min(int(on_s * sample_rate), (end - start) // 3)
    off = min(int(off_s * sample_rate), (end - start) // 3)
    gate[start:end] = 1.0
    gate[start:start + on] = _raised_cosine(on)
    gate[end - off:end] = _raised_cosine(off)[::-1]
    i = j + 1
  return gate * gain_N


# ----------------------------------------------------------------------------- filters


@numba.njit(cache=True)
def _cascade(x_N, grid_G, a_KxG, b_KxG, c_KxG):
  """Runs x through K 2-pole resonators in series; coefficients glide linearly between grid points.

  The state is carried from sample to sample, and since the stability triangle
  of (b, c) is convex, interpolating stable coefficients keeps every pole inside
  the unit circle.
  """
  num_k = a_KxG.shape[0]
  y1 = np.zeros(num_k)
  y2 = np.zeros(num_k)
  out = np.empty_like(x_N)
  g = 0
  for n in range(x_N.shape[0]):
    while g + 2 < grid_G.shape[0] and grid_G[g + 1] <= n:
      g += 1
    w = min(max((n - grid_G[g]) / (grid_G[g + 1] - grid_G[g]), 0.0), 1.0)
    v = x_N[n]
    for k in range(num_k):
      a = a_KxG[k, g] + w * (a_KxG[k, g + 1] - a_KxG[k, g])
      b = b_KxG[k, g] + w * (b_KxG[k, g + 1] - b_KxG[k, g])
      c = c_KxG[k, g] + w * (c_KxG[k, g + 1] - c_KxG[k, g])
      v = a * v + b * y1[k] + c * y2[k]
      y2[k] = y1[k]
      y1[k] = v
    out[n] = v
  return out


def _resonator_coefficients(f_KxG: np.ndarray, bw_KxG: np.ndarray,
                            sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Klatt resonator coefficients (unity gain at DC) for formants and bandwidths in Hz."""
  r = np.exp(-np.pi * bw_KxG / sample_rate)
  b = 2.0 * r * np.cos(2.0 * np.pi * f_KxG / sample_rate)
  c = -r * r
  return 1.0 - b - c, b, c


@functools.lru_cache(maxsize=512)
def _band_sos(lo_hz: int, hi_hz: int, sample_rate: int) -> np.ndarray:
  """A 6th-order Butterworth band-pass, its edges kept below Nyquist."""
  hi = min(hi_hz, int(0.45 * sample_rate))
  lo = min(lo_hz, int(0.6 * hi))
  return scipy.signal.butter(3, [lo, hi], btype="bandpass", fs=sample_rate, output="sos")


def _band_noise(rng: np.random.Generator, n: int, lo_hz: float, hi_hz: float,
                sample_rate: int) -> np.ndarray:
  """[n] unit-RMS noise in a band; the filter is warmed up on extra noise first."""
  warm = int(0.02 * sample_rate)
  sos = _band_sos(int(lo_hz), int(hi_hz), sample_rate)
  x = scipy.signal.sosfilt(sos, rng.standard_normal(n + warm))[warm:]
  return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _fricative_envelope(n: int, sample_rate: int) -> np.ndarray:
  """[n] fade in and out over a quarter of the phone each (at least 10 ms)."""
  ramp = min(n // 2, max(int(0.01 * sample_rate), n // 4))
  env = np.ones(n)
  env[:ramp] = _raised_cosine(ramp)
  env[n - ramp:] = _raised_cosine(ramp)[::-1]
  return env


def _release_envelopes(rng: np.random.Generator, n: int,
                       sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """[n] burst envelope (1 ms onset, fast decay) and [n] aspiration envelope."""
  t = np.arange(n) / sample_rate
  onset = max(2, int(0.001 * sample_rate))
  taper = max(2, min(n // 3, int(0.003 * sample_rate)))
  burst = np.exp(-t / rng.uniform(0.003, 0.006))
  burst[:onset] *= _raised_cosine(onset)
  burst[n - taper:] *= _raised_cosine(taper)[::-1]
  asp = np.exp(-t / rng.uniform(0.015, 0.03))
  ramp = max(2, int(0.003 * sample_rate))
  asp[:ramp] *= _raised_cosine(ramp)
  tail = max(2, n // 3)
  asp[n - tail:] *= _raised_cosine(tail)[::-1]
  return burst, asp


# ----------------------------------------------------------------------------- utterance


def _check_rates(sample_rate: int, factor_hop: int) -> None:
  """Raises ConfigError unless the rates are usable integers."""
  if not isinstance(sample_rate, (int, np.integer)) or sample_rate < MIN_SAMPLE_RATE:
    raise ConfigError(f"synthetic corpus: sample_rate={sample_rate!r} must be an integer >= "
                      f"{MIN_SAMPLE_RATE} Hz")
  if not isinstance(factor_hop, (int, np.integer)) or factor_hop < 1:
    raise ConfigError(f"synthetic corpus: factor_hop={factor_hop!r} must be a positive integer")


def synthesize_utterance(rng: np.random.Generator, speaker: SpeakerParams, word: int,
                         sample_rate: int, factor_hop: int, *, name: str = "",
                         split: str = "") -> tuple[np.ndarray, Utterance]:
  """One word said by `speaker`: waveform [N] float32 and its factors."""
  _check_rates(sample_rate, factor_hop)
  plan = _plan(rng, speaker, word, sample_rate)
  num_samples = int(plan.bounds[-1])
  grid_G = _control_grid(num_samples, sample_rate)
  f_KxG, bw_KxG = _formant_tracks(rng, plan, speaker, grid_G)
  # Resonators that would reach Nyquist (F4, F5 at low rates) are left out; F1-F3 are
  # kept below it, and the stored tracks are the frequencies actually used.
  f_KxG[:3] = np.minimum(f_KxG[:3], 0.45 * sample_rate)
  keep = [k for k in range(_NUM_FORMANTS) if k < 3 or f_KxG[k].max() < 0.45 * sample_rate]
  f0_G = _f0_contour(rng, plan, speaker, grid_G, sample_rate)

  excitation_N = _voiced_excitation(rng, plan, grid_G, f0_G, speaker, sample_rate)
  aspiration_N, noise_segments = _obstruent_noise(rng, plan, speaker, sample_rate)
  a, b, c = _resonator_coefficients(f_KxG[keep], bw_KxG[keep], sample_rate)
  wave_N = _cascade(excitation_N + aspiration_N, grid_G.astype(np.float64), a, b, c)
  # Noise levels are set against the RMS of the middle of the stressed vowel.
  s0, s1 = plan.bounds[plan.stressed], plan.bounds[plan.stressed + 1]
  ref = np.sqrt(np.mean(wave_N[s0 + (s1 - s0) // 4:s1 - (s1 - s0) // 4] ** 2))
  for start, seg in noise_segments:
    wave_N[start:start + seg.shape[0]] += ref * seg
  wave_N = _normalise(rng, wave_N)

  f0_T, formants_Tx3 = _frame_factors(plan, grid_G, f0_G, f_KxG, factor_hop)
  phones = tuple((p, float(plan.bounds[i]) / sample_rate, float(plan.bounds[i + 1]) / sample_rate)
                 for i, p in enumerate(plan.phones))
  utt = _utterance(name, speaker.index, word, word_vowel(word), phones, split, num_samples,
                   f0_T, formants_Tx3)
  return wave_N, utt


def _voiced_excitation(rng: np.random.Generator, plan: _Plan, grid_G: np.ndarray,
                       f0_G: np.ndarray, speaker: SpeakerParams, sample_rate: int) -> np.ndarray:
  """[N] glottal source with breath noise, gated to the voiced phones."""
  num_samples = int(plan.bounds[-1])
  dflow_N, flow_N = _glottal_source(rng, grid_G, f0_G, num_samples, speaker, sample_rate)
  # Turbulence at the glottis only while it is open.
  breath_N = speaker.breathiness * flow_N * rng.standard_normal(num_samples)
  return _voicing_envelope(plan, sample_rate) * (dflow_N + breath_N)


def _obstruent_noise(rng: np.random.Generator, plan: _Plan, speaker: SpeakerParams,
                     sample_rate: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
  """Aspiration [N] for the cascade, and (start, samples) of fricative and burst noise.

  The noise samples are relative to the RMS of the stressed vowel.
  """
  aspiration_N = np.zeros(int(plan.bounds[-1]))
  asp_level = 10.0 ** ((_ASPIRATION_DB + rng.normal(0.0, 2.0)) / 20.0)
  # Smaller vocal tracts have higher noise bands.
  scale = np.sqrt(speaker.vtl_factor)
  segments = []
  for i, p in enumerate(plan.phones):
    start, end = int(plan.bounds[i]), int(plan.bounds[i + 1])
    if p in FRICATIVES:
      lo, hi, db = _FRICATIVE_BANDS[p]
      env = _fricative_envelope(end - start, sample_rate)
    elif p in PLOSIVES:
      lo, hi, db = _BURST_BANDS[p]
      start = end - int(plan.release[i])  # The closure before it stays silent.
      env, asp = _release_envelopes(rng, end - start, sample_rate)
      # Aspiration is breath through the vocal tract, so it is shaped by the formants.
      aspiration_N[start:end] = asp_level * asp * rng.standard_normal(end - start)
    else:
      continue
    noise = _band_noise(rng, end - start, lo * scale, hi * scale, sample_rate)
    gain = 10.0 ** ((db + rng.normal(0.0, 2.0)) / 20.0)
    segments.append((start, gain * env * noise))
  return aspiration_N, segments


def _normalise(rng: np.random.Generator, wave_N: np.ndarray) -> np.ndarray:
  """Adds a faint noise floor and scales the peak to -12..-6 dBFS; float32."""
  peak = np.max(np.abs(wave_N))
  wave_N = wave_N + peak * 10.0 ** (rng.uniform(-70.0, -60.0) / 20.0) * rng.standard_normal(
      wave_N.shape[0])
  level = 10.0 ** (rng.uniform(-12.0, -6.0) / 20.0)
  return (wave_N * (level / np.max(np.abs(wave_N)))).astype(np.float32)


def _frame_factors(plan: _Plan, grid_G: np.ndarray, f0_G: np.ndarray, f_KxG: np.ndarray,
                   factor_hop: int) -> tuple[np.ndarray, np.ndarray]:
  """f0 [T] (0 in unvoiced phones) and F1-F3 [T, 3] at the factor frames."""
  num_samples = int(plan.bounds[-1])
  # Frame i describes sample i * factor_hop, as centred feature frames do.
  centres_T = np.minimum(np.arange(1 + num_samples // factor_hop) * factor_hop, num_samples - 1)
  voiced_P = np.array([p in VOICED_PHONES for p in plan.phones])
  voiced_T = voiced_P[_phone_index(plan)[centres_T]]
  f0_T = np.where(voiced_T, np.interp(centres_T, grid_G, f0_G), 0.0)
  formants_Tx3 = np.stack([np.interp(centres_T, grid_G, f_KxG[k]) for k in range(3)], axis=1)
  return f0_T, formants_Tx3


def _utterance(name: str, speaker: int, word: int, vowel: int, phones: Sequence[Sequence],
               split: str, num_samples: int, f0_T: np.ndarray,
               formants_Tx3: np.ndarray) -> Utterance:
  """An Utterance with read-only float32 factor arrays."""
  f0_T = np.array(f0_T, np.float32)
  formants_Tx3 = np.array(formants_Tx3, np.float32)
  f0_T.setflags(write=False)
  formants_Tx3.setflags(write=False)
  return Utterance(str(name), int(speaker), int(word), int(vowel),
                   tuple((str(p), float(s), float(e)) for p, s, e in phones), str(split),
                   int(num_samples), f0_T, formants_Tx3)


# ----------------------------------------------------------------------------- corpus


def speaker_words(seed: int, speaker: int, n: int) -> np.ndarray:
  """[n] word labels of a speaker: successive shuffles of the vocabulary, so words are balanced."""
  rng = np.random.default_rng([seed, _WORD_STREAM, speaker])
  blocks = [rng.permutation(len(WORDS)) for _ in range(-(-n // len(WORDS)))]
  return np.concatenate(blocks)[:n]


def assign_splits(speaker_U: Sequence[int], word_U: Sequence[int], seed: int,
                  test_fraction: float = TEST_FRACTION) -> list[str]:
  """'train'/'test' per utterance: ~test_fraction of each speaker, spread over the words.

  Every speaker with two or more utterances and, as far as that quota allows,
  every word said at least twice gets utterances in both splits.
  """
  speaker_U, word_U = np.asarray(speaker_U), np.asarray(word_U)
  rng = np.random.default_rng([seed, _SPLIT_STREAM])
  order = rng.permutation(len(speaker_U))  # Breaks ties between equally good choices.
  spk_total = {int(s): int(c) for s, c in zip(*np.unique(speaker_U, return_counts=True))}
  quota = {s: min(max(round(test_fraction * c), 1), c - 1) for s, c in spk_total.items()}
  train_words = {int(w): int(c) for w, c in zip(*np.unique(word_U, return_counts=True))}
  test_spk = dict.fromkeys(spk_total, 0)
  test_words = dict.fromkeys(train_words, 0)
  is_test = np.zeros(len(speaker_U), bool)

  def can_take(i: int) -> bool:
    s, w = int(speaker_U[i]), int(word_U[i])
    return not is_test[i] and test_spk[s] < quota[s] and train_words[w] > 1

  def take(i: int) -> None:
    is_test[i] = True
    test_spk[int(speaker_U[i])] += 1
    train_words[int(word_U[i])] -= 1
    test_words[int(word_U[i])] += 1

  # First one test utterance per word, from the speaker with the most quota left.
  for w in rng.permutation(sorted(train_words)):
    candidates = [i for i in order if word_U[i] == w and can_take(i)]
    if candidates:
      take(max(candidates, key=lambda i: quota[speaker_U[i]] - test_spk[speaker_U[i]]))
  # Then fill each speaker's quota with the words least represented in test so far.
  for s in sorted(spk_total):
    while test_spk[s] < quota[s]:
      candidates = [i for i in order if speaker_U[i] == s and can_take(i)]
      if not candidates:
        break
      take(min(candidates, key=lambda i: test_words[word_U[i]]))
  return ["test" if t else "train" for t in is_test]


def plan_corpus(num_speakers: int, utterances_per_speaker: int,
                seed: int) -> list[tuple[str, int, int, str]]:
  """(name, speaker, word, split) of every utterance, without synthesising anything."""
  speaker_U = np.repeat(np.arange(num_speakers), utterances_per_speaker)
  word_U = np.concatenate([speaker_words(seed, s, utterances_per_speaker)
                           for s in range(num_speakers)])
  splits = assign_splits(speaker_U, word_U, seed)
  width = max(4, len(str(utterances_per_speaker - 1)))
  names = [f"spk{s}_{i:0{width}d}" for s in range(num_speakers)
           for i in range(utterances_per_speaker)]
  return [(n, int(s), int(w), sp) for n, s, w, sp in zip(names, speaker_U, word_U, splits)]


def generate_corpus(out_dir: str, *, sample_rate: int = 16000, num_speakers: int = 8,
                    utterances_per_speaker: int = 200, seed: int = 0, factor_hop: int = 128,
                    progress: bool = False) -> list[Utterance]:
  """Writes the corpus to out_dir (wavs, manifest, factors) unless it is already there."""
  args = _corpus_args(sample_rate, num_speakers, utterances_per_speaker, seed, factor_hop)
  if _is_complete(out_dir, args):
    return load_corpus(out_dir)
  if os.path.exists(out_dir) and not _is_replaceable(out_dir):
    raise DataError(f"{out_dir} exists and is not a synthetic corpus: choose another cache "
                    "directory or remove it")
  parent, base = os.path.split(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  _remove_stale_temporaries(parent, base)
  tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
  try:
    speakers = make_speakers(num_speakers, seed)
    utterances = []
    plan = plan_corpus(num_speakers, utterances_per_speaker, seed)
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top

      plan = tqdm.tqdm(plan, desc="synthetic corpus", unit="utt", disable=None)
    for index, (name, s, w, split) in enumerate(plan):
      rng = np.random.default_rng([seed, _UTTERANCE_STREAM, s, index % utterances_per_speaker])
      wave, utt = synthesize_utterance(rng, speakers[s], w, sample_rate, factor_hop, name=name,
                                       split=split)
      _write_wav(os.path.join(tmp, name + ".wav"), wave, sample_rate)
      utterances.append(utt)
    _write_factors(tmp, utterances)
    _write_manifest(tmp, args, speakers, utterances)  # Last: its presence marks completeness.
    _install(tmp, out_dir, args)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return utterances


def load_corpus(out_dir: str) -> list[Utterance]:
  """The utterances of a generated corpus, equal to what generate_corpus returned."""
  manifest = _read_manifest(out_dir)
  if manifest is None:
    raise DataError(f"{out_dir} holds no complete synthetic corpus (no valid {MANIFEST})")
  with np.load(os.path.join(out_dir, FACTORS)) as z:
    f0_all, formants_all, offsets = z["f0_hz"], z["formants_hz"], z["frame_offsets"]
  return [
      _utterance(u["name"], u["speaker"], u["word"], u["vowel"], u["phones"], u["split"],
                 u["num_samples"], f0_all[offsets[i]:offsets[i + 1]],
                 formants_all[offsets[i]:offsets[i + 1]])
      for i, u in enumerate(manifest["utterances"])]


def _corpus_args(sample_rate: int, num_speakers: int, utterances_per_speaker: int, seed: int,
                 factor_hop: int) -> dict:
  """The manifest's record of the arguments; raises ConfigError on impossible ones."""
  _check_rates(sample_rate, factor_hop)
  for name, value, low in (("num_speakers", num_speakers, 1),
                           ("utterances_per_speaker", utterances_per_speaker, 1),
                           ("seed", seed, 0)):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ConfigError(f"synthetic corpus: {name}={value!r} must be an integer >= {low}")
  return {"generator_version": GENERATOR_VERSION, "sample_rate": int(sample_rate),
          "num_speakers": int(num_speakers), "utterances_per_speaker": int(utterances_per_speaker),
          "seed": int(seed), "factor_hop": int(factor_hop)}


def _write_wav(path: str, wave: np.ndarray, sample_rate: int) -> None:
  """Writes 16-bit PCM; encoding in memory skips the per-file disk sync of libsndfile."""
  buffer = io.BytesIO()
  sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
  with open(path, "wb") as f:
    f.write(buffer.getbuffer())


def _write_factors(directory: str, utterances: Sequence[Utterance]) -> None:
  lengths = [u.f0_hz.shape[0] for u in utterances]
  np.savez(os.path.join(directory, FACTORS),
           f0_hz=np.concatenate([u.f0_hz for u in utterances]),
           formants_hz=np.concatenate([u.formants_hz for u in utterances]),
           frame_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _write_manifest(directory: str, args: dict, speakers: Sequence[SpeakerParams],
                    utterances: Sequence[Utterance]) -> None:
  manifest = {
      "format": _FORMAT, "args": args, "vowels": list(VOWELS), "words": list(WORDS),
      "speakers": [dataclasses.asdict(s) for s in speakers],
      "utterances": [{"name": u.name, "speaker": u.speaker, "word": u.word, "vowel": u.vowel,
                      "split": u.split, "num_samples": u.num_samples,
                      "phones": [list(p) for p in u.phones]} for u in utterances],
  }
  with open(os.path.join(directory, MANIFEST), "w") as f:
    json.dump(manifest, f)


def _read_manifest(out_dir: str) -> dict | None:
  """The manifest of a corpus directory, or None if absent or not ours."""
  try:
    with open(os.path.join(out_dir, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
    return None
  return manifest


def _is_complete(out_dir: str, args: dict) -> bool:
  """Whether out_dir holds a whole corpus generated with exactly these arguments."""
  manifest = _read_manifest(out_dir)
  if manifest is None or manifest.get("args") != args:
    return False
  if not os.path.isfile(os.path.join(out_dir, FACTORS)):
    return False
  return all(os.path.isfile(os.path.join(out_dir, u["name"] + ".wav"))
             for u in manifest["utterances"])


def _is_replaceable(out_dir: str) -> bool:
  """Only an empty directory or one of our corpora may be replaced."""
  return os.path.isdir(out_dir) and (not os.listdir(out_dir) or _read_manifest(out_dir) is not None)


def _install(tmp: str, out_dir: str, args: dict) -> None:
  """Moves a finished corpus into place; out_dir is never seen half-written."""
  if _is_complete(out_dir, args):
    return  # Another process finished the same corpus first.
  old = None
  if os.path.exists(out_dir):
    if not _is_replaceable(out_dir):
      raise DataError(f"{out_dir} exists and is not a synthetic corpus")
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(tmp)}.old-", dir=os.path.dirname(tmp))
    os.replace(out_dir, os.path.join(old, "corpus"))
  os.replace(tmp, out_dir)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temporaries(parent: str, base: str, max_age_s: float = 3600.0) -> None:
  """Deletes temporaries of interrupted runs; a live run finishes long before max_age_s."""
  now = time.time()
  for entry in os.scandir(parent):
    if entry.name.startswith(f".{base}.tmp-") and entry.is_dir(follow_symlinks=False):
      try:
        if now - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
          shutil.rmtree(entry.path, ignore_errors=True)
      except OSError:
        pass
