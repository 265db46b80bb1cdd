"""f0 and formant tracks measured on synthetic speech, against the synthesiser's ground truth."""

import numpy as np
import pytest

from vae_jax.audio import acoustics
from vae_jax.data import synthetic


def _vowel_frames(utt: synthetic.Utterance, sample_rate: int, hop: int, margin: int = 2) -> np.ndarray:
  """Frames inside a vowel, `margin` frames away from its edges (formant glides)."""
  inside = np.zeros(len(utt.f0_hz), bool)
  for phone, start, end in utt.phones:
    if phone in synthetic.VOWELS:
      inside[int(start * sample_rate / hop) + margin:int(end * sample_rate / hop) - margin] = True
  return inside


@pytest.mark.parametrize("sample_rate,hop", [(8000, 64), (16000, 128)])
@pytest.mark.parametrize("f0_mean_hz,vtl_factor", [(100.0, 0.9), (200.0, 1.1)])
@pytest.mark.parametrize("word", ["ma", "ki"])
def test_tracks_follow_the_ground_truth(sample_rate, hop, f0_mean_hz, vtl_factor, word):
  speaker = synthetic.SpeakerParams(index=0, f0_mean_hz=f0_mean_hz, f0_range_st=3.0,
                                    vtl_factor=vtl_factor, jitter=0.008, shimmer=0.04,
                                    breathiness=0.2, open_quotient=0.6, rate=1.0)
  wave, utt = synthetic.synthesize_utterance(np.random.default_rng(0), speaker,
                                             synthetic.WORDS.index(word), sample_rate, hop)
  f0 = acoustics.f0_track(wave, sample_rate, hop)
  formants = acoustics.formant_track(wave, sample_rate, hop)
  assert f0.shape == utt.f0_hz.shape and formants.shape == utt.formants_hz.shape

  assert np.mean((f0 > 0) == (utt.f0_hz > 0)) > 0.85
  both = (f0 > 0) & (utt.f0_hz > 0)
  assert both.sum() > 10
  assert np.median(np.abs(f0[both] / utt.f0_hz[both] - 1)) < 0.03

  vowel = _vowel_frames(utt, sample_rate, hop)
  assert np.all(np.isfinite(formants[vowel, :2]))
  rel = np.abs(formants[vowel, :2] / utt.formants_hz[vowel, :2] - 1)
  assert np.median(rel[:, 0]) < 0.25 and np.median(rel[:, 1]) < 0.08, np.median(rel, 0)


def test_silence_has_no_pitch_and_no_formants():
  f0 = acoustics.f0_track(np.zeros(8000, np.float32), 8000, 64)
  formants = acoustics.formant_track(np.zeros(8000, np.float32), 8000, 64)
  assert f0.shape == (126,) and not f0.any()
  assert formants.shape == (126, 3) and np.isnan(formants).all()


def test_formant_track_leaves_quiet_frames_out():
  rng = np.random.default_rng(0)
  wave = np.concatenate([np.zeros(4000), 0.1 * rng.standard_normal(4000)])
  formants = acoustics.formant_track(wave, 8000, 64, num_formants=2)
  # Frames whose 25 ms window holds none of the noise are silence.
  assert np.isnan(formants[:60]).all()
  assert np.isfinite(formants[70:]).any()


def test_voiced_medians_skip_unvoiced_frames_and_unfound_formants():
  f0 = np.array([0.0, 100.0, 120.0, 0.0, 110.0])
  formants = np.array([[900, np.nan, 1], [500, 1500, np.nan], [700, 1700, np.nan], [5, 5, 5],
                       [600, np.nan, np.nan]], np.float64)
  np.testing.assert_allclose(acoustics.voiced_medians(f0, formants), [110, 600, 1600, np.nan])
  assert np.isnan(acoustics.voiced_medians(np.zeros(3), np.ones((3, 2)))).all()
