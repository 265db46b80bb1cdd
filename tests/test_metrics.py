"""Tests for vae_jax.eval.metrics."""

import math

import numpy as np
import pytest

from vae_jax.audio.features import FeatureConfig, log_mel
from vae_jax.audio.io import read_audio
from vae_jax.eval import metrics

FC8K = FeatureConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64,
                     n_mels=64, fmax=4000.0)


def _long_clip(fsdd_dir, min_samples: int = 8000) -> np.ndarray:
  """The first FSDD clip (sorted by name) of at least min_samples samples."""
  for path in sorted(fsdd_dir.glob("*.wav")):
    wave = read_audio(str(path), 8000)
    if wave.size >= min_samples:
      return wave
  pytest.skip(f"no FSDD clip of {min_samples} samples")


@pytest.fixture(scope="module")
def clip(fsdd_dir) -> np.ndarray:
  return _long_clip(fsdd_dir)


def _dct_ortho(x_F: np.ndarray, d: int) -> float:
  """Coefficient d of the orthonormal DCT-II, from its definition."""
  n = x_F.size
  scale = math.sqrt(1.0 / n) if d == 0 else math.sqrt(2.0 / n)
  return scale * sum(x_F[f] * math.cos(math.pi * d * (2 * f + 1) / (2 * n)) for f in range(n))


def test_mse_and_l1_on_hand_made_arrays():
  ref = np.array([[0.0, 0.0], [1.0, 1.0]])
  est = np.array([[1.0, 0.0], [1.0, 3.0]])
  assert metrics.logmel_mse(ref, est) == pytest.approx(5 / 4)
  assert metrics.logmel_l1(ref, est) == pytest.approx(3 / 4)
  assert metrics.logmel_mse(ref, est, np.array([True, False])) == pytest.approx(1 / 2)
  assert metrics.logmel_l1(ref, est, np.array([0, 1])) == pytest.approx(1.0)


def test_identical_features_have_zero_distances(clip):
  lm = log_mel(clip, FC8K)
  assert metrics.logmel_mse(lm, lm) == 0.0
  assert metrics.logmel_l1(lm, lm) == 0.0
  assert metrics.mel_log_spectral_distance_db(lm, lm) == 0.0
  assert metrics.logmel_cepstral_distance_db(lm, lm) == 0.0


def test_gain_gives_exact_lsd_and_leaves_mcd_unchanged(clip):
  lm = log_mel(clip, FC8K).astype(np.float64)
  rng = np.random.default_rng(0)
  est = lm + 0.3 * rng.normal(size=lm.shape)
  for gain in (0.5, 2.0, 10.0):
    assert metrics.mel_log_spectral_distance_db(lm, lm + math.log(gain)) == pytest.approx(
        abs(20 * math.log10(gain)), rel=1e-12)
    assert metrics.logmel_cepstral_distance_db(lm, lm + math.log(gain)) == pytest.approx(
        0.0, abs=1e-9)
    assert metrics.logmel_cepstral_distance_db(lm, est + math.log(gain)) == pytest.approx(
        metrics.logmel_cepstral_distance_db(lm, est), rel=1e-9)
  assert metrics.logmel_cepstral_distance_db(lm, est) > 1.0


def test_lsd_averages_per_frame_rms():
  ref = np.zeros((2, 2))
  est = np.array([[1.0, 1.0], [0.0, 2.0]]) * math.log(10) / 20  # dB differences 1,1 and 0,2
  assert metrics.mel_log_spectral_distance_db(ref, est) == pytest.approx((1.0 + math.sqrt(2.0)) / 2)


def test_mcd_closed_form_two_bins():
  # With F=2 bins, c_1 = (x_0 - x_1) / sqrt(2); frame 1 differs by c_1 = 1/sqrt(2),
  # so its MCD is (10/ln10) sqrt(2 * 1/2) and frame 2 contributes 0.
  ref = np.array([[0.0, 0.0], [2.0, 2.0]])
  est = np.array([[1.0, 0.0], [2.0, 2.0]])
  assert metrics.logmel_cepstral_distance_db(ref, est, n_coeffs=1) == pytest.approx(5 / math.log(10))


def test_mcd_matches_dct_written_out():
  rng = np.random.default_rng(1)
  ref, est = rng.normal(size=(2, 8)), rng.normal(size=(2, 8))
  n_coeffs = 3
  per_frame = []
  for t in range(2):
    sq = sum((_dct_ortho(ref[t], d) - _dct_ortho(est[t], d)) ** 2 for d in range(1, n_coeffs + 1))
    per_frame.append(10 / math.log(10) * math.sqrt(2 * sq))
  got = metrics.logmel_cepstral_distance_db(ref, est, n_coeffs=n_coeffs)
  assert got == pytest.approx(np.mean(per_frame), rel=1e-12)
  cep = metrics.logmel_cepstra(ref, n=n_coeffs)
  assert cep.shape == (2, n_coeffs)
  assert cep[1, 0] == pytest.approx(_dct_ortho(ref[1], 1), rel=1e-12)
  with pytest.raises(ValueError):
    metrics.logmel_cepstra(ref, n=8)


@pytest.mark.parametrize("metric", [
    metrics.logmel_mse, metrics.logmel_l1, metrics.mel_log_spectral_distance_db,
    metrics.logmel_cepstral_distance_db])
def test_mask_excludes_padded_frames(metric):
  rng = np.random.default_rng(2)
  ref_BxTxF = rng.normal(size=(2, 10, 32))
  est_BxTxF = ref_BxTxF + 0.1 * rng.normal(size=ref_BxTxF.shape)
  mask_BxT = np.arange(10)[None, :] < np.array([[7], [4]])
  value = metric(ref_BxTxF, est_BxTxF, mask_BxT)
  changed = est_BxTxF.copy()
  changed[~mask_BxT] += 5.0 * rng.normal(size=changed[~mask_BxT].shape)
  assert metric(ref_BxTxF, changed, mask_BxT) == pytest.approx(value, rel=1e-12)
  assert metric(ref_BxTxF, changed) != pytest.approx(metric(ref_BxTxF, est_BxTxF), rel=1e-3)
  # Pooling the valid frames of a batch equals concatenating them.
  flat = metric(ref_BxTxF[mask_BxT], est_BxTxF[mask_BxT])
  assert value == pytest.approx(flat, rel=1e-12)


def test_mask_errors():
  x = np.zeros((3, 4))
  with pytest.raises(ValueError, match="no valid frames"):
    metrics.logmel_mse(x, x, np.zeros(3, bool))
  with pytest.raises(ValueError, match="mask shape"):
    metrics.logmel_mse(x, x, np.ones(4, bool))
  with pytest.raises(ValueError):
    metrics.logmel_mse(x, np.zeros((3, 5)))


def test_stoi_of_a_clip_with_itself_and_with_noise(clip):
  assert metrics.stoi(clip, clip, 8000) >= 0.99
  noisy = clip + np.random.default_rng(4).normal(0, 3 * clip.std(), clip.shape)
  assert metrics.stoi(clip, noisy, 8000) < 0.8
  # The longer signal is trimmed to the shorter one.
  padded = np.concatenate([noisy, np.ones(37)])
  assert metrics.stoi(clip, padded, 8000) == metrics.stoi(clip, noisy, 8000)


def test_stoi_too_short_is_nan(clip):
  assert math.isnan(metrics.stoi(clip[:2000], clip[:2000], 8000))


def test_pesq_narrow_band(clip):
  assert metrics.pesq(clip, clip, 8000) >= 4.0
  noise = np.random.default_rng(5).normal(0, 3 * clip.std(), clip.shape)
  assert metrics.pesq(clip, clip + noise, 8000) < 2.0


def test_pesq_wide_band_and_other_rates(clip):
  import librosa  # pylint: disable=g-import-not-at-top

  wave16k = librosa.resample(clip, orig_sr=8000, target_sr=16000)
  assert metrics.pesq(wave16k, wave16k, 16000) >= 4.0
  assert metrics.pesq(clip, clip, 22050) is None


def test_pesq_undefined_cases_are_nan(clip):
  t = np.arange(8000) / 8000
  # A tone above the narrow-band pass band: PESQ detects no utterance.
  tone = 0.1 * np.sin(2 * np.pi * 3950 * t)
  assert math.isnan(metrics.pesq(tone, tone, 8000))
  assert math.isnan(metrics.pesq(clip, np.zeros_like(clip), 8000))
  assert math.isnan(metrics.pesq(clip[:400], clip[:400], 8000))


# The standard mel-cepstral distortion, from waveforms.


def test_mcd_is_the_formula_over_speech_frames(monkeypatch):
  # Hand-set cepstra: frames 0 and 1 differ by 1 in c_1 (and in c_0, which must not count),
  # frame 2 by 3 in c_2 but is 50 dB below the loudest frame: silence, left out.
  ref_mc, est_mc = np.zeros((3, metrics.MCD_ORDER + 1)), np.zeros((3, metrics.MCD_ORDER + 1))
  est_mc[:2, 0], est_mc[:2, 1], est_mc[2, 2] = 5.0, 1.0, 3.0
  energy = np.array([0.0, -10.0, -50.0])
  fake = iter([(ref_mc, energy), (est_mc, energy)])
  monkeypatch.setattr(metrics, "mel_cepstrum", lambda wave, sr: next(fake))
  noise = np.random.default_rng(0).normal(size=800)
  got = metrics.mcd_scored(noise, noise, 8000).value
  assert got == pytest.approx(10.0 / math.log(10.0) * math.sqrt(2.0))  # 6.14 dB


def test_mcd_of_real_speech_is_zero_to_itself_gain_invariant_and_grows_with_noise(clip):
  assert metrics.mcd_scored(clip, clip, 8000).value == pytest.approx(0.0, abs=1e-9)
  # A gain only moves c_0, which is excluded.
  assert metrics.mcd_scored(clip, 0.25 * clip, 8000).value < 0.05
  rng = np.random.default_rng(1)
  light, heavy = (metrics.mcd_scored(clip, clip + rng.normal(0, s * clip.std(), clip.shape), 8000).value
                  for s in (0.05, 0.5))
  assert 0.5 < light < heavy, (light, heavy)


def test_mcd_cepstra_are_sptk_mel_cepstra_with_the_rate_s_all_pass_constant(clip):
  import pysptk  # pylint: disable=g-import-not-at-top

  mc, energy_db = metrics.mel_cepstrum(clip, 8000)
  assert mc.shape == (len(energy_db), metrics.MCD_ORDER + 1)
  n, hop = 256, 40  # The power of two above 25 ms, and 5 ms, at 8 kHz.
  assert len(energy_db) == 1 + (len(clip) + 2 * (n // 2) - n) // hop
  frame = np.pad(clip, n // 2)[10 * hop:10 * hop + n] * np.blackman(n)
  np.testing.assert_allclose(mc[10], pysptk.mcep(frame, order=24, alpha=0.312, etype=1, eps=1e-10),
                             rtol=1e-6, atol=1e-9)


def test_mcd_of_unusable_clips_is_missing_with_the_reason():
  assert metrics.mcd_scored(np.zeros(800), np.ones(800), 8000).missing == "silent reference"
  assert "non-finite" in metrics.mcd_scored(np.ones(800), np.full(800, np.nan), 8000).missing
  assert "shorter" in metrics.mcd_scored(np.ones(100), np.ones(100), 8000).missing
