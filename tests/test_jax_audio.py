"""Tests for vae_jax.audio.spectral against the librosa reference front end."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from vae_jax.audio import features, spectral
from vae_jax.audio.features import FeatureConfig
from vae_jax.audio.io import read_audio

FC8K = FeatureConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64,
                     n_mels=64, fmax=4000.0)
FC16K = FeatureConfig()  # 16 kHz, n_fft 512, hop 128, 64 mels up to 8 kHz.


def spectral_convergence(ref_mag: np.ndarray, est_mag: np.ndarray) -> float:
  """||S - S'||_F / ||S||_F of STFT magnitudes: how far Griffin-Lim's STFT is from the target."""
  return float(np.linalg.norm(ref_mag - est_mag) / np.linalg.norm(ref_mag))


@pytest.fixture(scope="module")
def clips(fsdd_dir) -> list[np.ndarray]:
  """Five FSDD clips from different digits and speakers."""
  paths = sorted(fsdd_dir.glob("*.wav"))[7::600][:5]
  return [read_audio(str(p), 8000) for p in paths]


def _librosa_stft_TxK(wave: np.ndarray, fc: FeatureConfig) -> np.ndarray:
  return librosa.stft(wave, n_fft=fc.n_fft, hop_length=fc.hop_length, win_length=fc.win_length,
                      window=fc.window, center=True, pad_mode="constant").T


def _mel_relative_error(ref_log_mel: np.ndarray, est_log_mel: np.ndarray) -> float:
  """Max |A' - A| / max(A, 1e-3 * loudest A in the frame), A the mel amplitude.

  Plain relative error where a bin is within 60 dB of its frame's loudest bin;
  further down it is measured against that -60 dB level, because float32 FFT
  rounding there is ~1e-7 of the frame peak (librosa's STFT runs in float64
  because its window is float64).
  """
  ref = np.exp(ref_log_mel.astype(np.float64))
  est = np.exp(est_log_mel.astype(np.float64))
  scale = np.maximum(ref, 1e-3 * ref.max(axis=-1, keepdims=True))
  return float(np.max(np.abs(est - ref) / scale))


def _padded_batch(waves: list[np.ndarray]) -> np.ndarray:
  """Clips zero-padded to one length, so a batched call compiles once."""
  n = max(w.size for w in waves)
  return np.stack([np.pad(w, (0, n - w.size)) for w in waves])


def test_stft_matches_librosa(clips):
  waves_BxN = _padded_batch(clips)
  got_BxTxK = np.asarray(spectral.stft(waves_BxN, FC8K))
  assert got_BxTxK.shape == (len(clips), 1 + waves_BxN.shape[1] // 64, 129)
  for wave, got_TxK in zip(waves_BxN, got_BxTxK):
    ref_TxK = _librosa_stft_TxK(wave, FC8K)
    assert np.max(np.abs(got_TxK - ref_TxK)) <= 1e-6 * np.max(np.abs(ref_TxK))


@pytest.mark.parametrize("fc", [
    FeatureConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=64, fmax=4000.0),
    FeatureConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=100, fmax=4000.0),
], ids=["short_window", "hop_not_dividing_n_fft"])
def test_stft_and_istft_match_librosa_for_other_geometries(clips, fc):
  wave = clips[0]
  ref_TxK = _librosa_stft_TxK(wave, fc)
  got_TxK = np.asarray(spectral.stft(wave, fc))
  assert got_TxK.shape == ref_TxK.shape
  assert np.max(np.abs(got_TxK - ref_TxK)) <= 1e-6 * np.max(np.abs(ref_TxK))
  ref_wave = librosa.istft(ref_TxK.T, n_fft=fc.n_fft, hop_length=fc.hop_length,
                           win_length=fc.win_length, window=fc.window, length=wave.size)
  got_wave = np.asarray(spectral.istft(got_TxK, fc, length=wave.size))
  np.testing.assert_allclose(got_wave, ref_wave, atol=1e-6)


def test_istft_matches_librosa_with_and_without_length(clips):
  wave = clips[1]
  stft_TxK = _librosa_stft_TxK(wave, FC8K)
  # Random phases make the frames inconsistent, so normalisation and cropping
  # errors are not hidden by perfect reconstruction.
  phase = np.exp(2j * np.pi * np.random.default_rng(0).random(stft_TxK.shape))
  stft_TxK = (np.abs(stft_TxK) * phase).astype(np.complex64)
  for length in (None, wave.size - 100, wave.size, wave.size + 300):
    ref = librosa.istft(stft_TxK.T, n_fft=256, hop_length=64, length=length)
    got = np.asarray(spectral.istft(stft_TxK, FC8K, length=length))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-6 * np.abs(ref).max())


def test_istft_inverts_stft(clips):
  wave = clips[2]
  back = np.asarray(spectral.istft(spectral.stft(wave, FC8K), FC8K, length=wave.size))
  np.testing.assert_allclose(back, wave, atol=1e-6)


def test_batched_shapes_under_jit():
  wave_BxCxN = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 1000))
  stft_BxCxTxK = spectral.stft(wave_BxCxN, FC8K)
  assert stft_BxCxTxK.shape == (2, 3, 1 + 1000 // 64, 129)
  assert spectral.istft(stft_BxCxTxK, FC8K, length=1000).shape == (2, 3, 1000)
  assert spectral.istft(stft_BxCxTxK, FC8K).shape == (2, 3, 1000 // 64 * 64)
  log_mel_BxCxTxF = spectral.log_mel(wave_BxCxN, FC8K)
  assert log_mel_BxCxTxF.shape == (2, 3, 1 + 1000 // 64, 64)
  # Each batch element is analysed on its own.
  np.testing.assert_allclose(log_mel_BxCxTxF[1, 2], spectral.log_mel(wave_BxCxN[1, 2], FC8K),
                             atol=1e-6)


@pytest.mark.parametrize("fc", [FC8K, FC16K], ids=["8k", "16k"])
def test_log_mel_matches_librosa(clips, fc):
  waves = [librosa.resample(w, orig_sr=8000, target_sr=fc.sample_rate).astype(np.float32)
           for w in clips]
  waves_BxN = _padded_batch(waves)
  got_BxTxF = np.asarray(spectral.log_mel(waves_BxN, fc))
  assert got_BxTxF.dtype == np.float32
  for wave, got_TxF in zip(waves_BxN, got_BxTxF):
    ref_TxF = features.log_mel(wave, fc)
    assert got_TxF.shape == ref_TxF.shape
    assert _mel_relative_error(ref_TxF, got_TxF) <= 1e-4
    assert np.max(np.abs(got_TxF - ref_TxF)) <= 1e-3


def test_mel_to_magnitude_fits_better_than_clipped_pinv(clips):
  mel_TxF = np.exp(features.log_mel(clips[3], FC8K))
  basis_FxK = features.mel_filterbank(FC8K).astype(np.float64)

  def residual(n_iter):
    mag_TxK = np.asarray(spectral.mel_to_magnitude(mel_TxF, FC8K, n_iter), np.float64)
    assert mag_TxK.shape == (mel_TxF.shape[0], 129) and mag_TxK.min() >= 0
    return np.linalg.norm(mag_TxK @ basis_FxK.T - mel_TxF)

  assert residual(30) < 0.9 * residual(0)


def test_griffin_lim_iterations_match_librosa_from_zero_phase(clips):
  wave = clips[3]
  mag_TxK = np.abs(_librosa_stft_TxK(wave, FC8K)).astype(np.float32)
  for n_iter in (8, 32):
    ref = librosa.griffinlim(mag_TxK.T, n_iter=n_iter, hop_length=64, n_fft=256, init=None,
                             length=wave.size, pad_mode="constant")
    got = np.asarray(spectral.griffin_lim_magnitude(
        mag_TxK, FC8K, jax.random.PRNGKey(0), n_iter=n_iter, length=wave.size, init=None))
    assert got.shape == ref.shape
    # float32 rounding differences grow slowly with the momentum iterations.
    assert np.linalg.norm(got - ref) <= (1e-4 if n_iter == 8 else 1e-3) * np.linalg.norm(ref)


def test_griffin_lim_is_no_worse_than_librosa(clips):
  # Random initial phases move a clip's spectral convergence by ~0.01, so
  # average over seeds; the padded batch compiles once.
  n_seeds = 4
  waves = _padded_batch(clips)
  n = waves.shape[1]
  log_mels = np.stack([features.log_mel(w, FC8K) for w in waves])
  true_mags = [np.abs(_librosa_stft_TxK(w, FC8K)) for w in waves]

  def sc(wave_N, i):
    return spectral_convergence(true_mags[i], np.abs(_librosa_stft_TxK(wave_N, FC8K)))

  ref_sc = [sc(features.mel_to_audio(lm, FC8K, n_iter=32, length=n, seed=s), i)
            for i, lm in enumerate(log_mels) for s in range(n_seeds)]
  log_mels_BxSxTxF = np.repeat(log_mels[:, None], n_seeds, axis=1)
  out_BxSxN = np.asarray(spectral.griffin_lim(log_mels_BxSxTxF, FC8K, n_iter=32, length=n, key=0))
  assert out_BxSxN.shape == (len(clips), n_seeds, n)
  jax_sc = [sc(w, i) for i in range(len(clips)) for w in out_BxSxN[i]]
  assert np.mean(jax_sc) <= np.mean(ref_sc) + 0.003, (np.mean(jax_sc), np.mean(ref_sc))
  # The iterations must improve on the random initial phase.
  out0_BxSxN = np.asarray(
      spectral.griffin_lim(log_mels_BxSxTxF, FC8K, n_iter=0, length=n, key=0))
  assert sc(out0_BxSxN[0, 0], 0) > jax_sc[0] + 0.1


def test_griffin_lim_is_deterministic_for_a_seed(clips):
  log_mel_TxF = features.log_mel(clips[4], FC8K)
  a = np.asarray(spectral.griffin_lim(log_mel_TxF, FC8K, n_iter=4, key=1))
  b = np.asarray(spectral.griffin_lim(log_mel_TxF, FC8K, n_iter=4, key=jax.random.PRNGKey(1)))
  c = np.asarray(spectral.griffin_lim(log_mel_TxF, FC8K, n_iter=4, key=2))
  # Without `length` the output covers the frames' centres, (T - 1) hops.
  assert a.shape == ((log_mel_TxF.shape[0] - 1) * 64,)
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(a - c)) > 1e-3


def test_griffin_lim_rejects_a_length_with_other_frame_count():
  with pytest.raises(ValueError, match="frames"):
    spectral.griffin_lim(jnp.zeros((20, 64)), FC8K, n_iter=2, length=5000)
