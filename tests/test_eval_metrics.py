"""Evaluation arithmetic on hand-made inputs: bounds, active units, PCA/PPCA, audio aggregation."""

import math

import numpy as np
import pytest
import scipy.stats

from vae_jax.audio.features import FeatureConfig, Normalizer
from vae_jax.eval import bounds, metrics, scoring
from vae_jax.eval.baselines import PCA, matched_components
from vae_jax.inference import griffin_lim_batch


def test_log_mean_exp():
  x = np.log(np.array([[1.0, 2.0, 3.0], [1e-300, 1e-300, 1e-300]]))
  np.testing.assert_allclose(bounds.log_mean_exp(x, axis=1), [math.log(2.0), math.log(1e-300)])
  big = np.array([1000.0, 1000.0])
  assert bounds.log_mean_exp(big) == pytest.approx(1000.0)


def test_iwae_curve_averages_disjoint_groups():
  w = np.log(np.array([[1.0, 3.0, 2.0, 6.0]]))
  curve = bounds.iwae_curve(w)
  assert set(curve) == {1, 2, 4}
  assert curve[1] == pytest.approx(np.mean(w))
  assert curve[2] == pytest.approx((math.log(2.0) + math.log(4.0)) / 2)
  assert curve[4] == pytest.approx(math.log(3.0))
  # Jensen: the bound never decreases with k for any fixed set of weights here.
  assert curve[1] <= curve[2] <= curve[4]


def _pass(log_w, nll, kl, frames):
  n, kl = len(frames), np.asarray(kl, np.float64)
  return bounds.SplitPass(mean=[np.zeros((1, kl.shape[1]))] * n, logvar=[np.zeros((1, kl.shape[1]))] * n,
                            recon=None, log_weights_NxK=np.asarray(log_w, np.float64),
                            nll_N=np.asarray(nll, np.float64), kl_NxC=np.asarray(kl, np.float64),
                            frames_N=np.asarray(frames, np.float64), latent_frames_N=np.ones(n))


def test_bound_metrics_per_frame_per_bin_and_unnormalised():
  p = _pass(log_w=[[-10.0, -12.0], [-30.0, -30.0]], nll=[8.0, 25.0], kl=[[1.0, 1.0], [2.0, 1.0]],
            frames=[2, 3])
  norm = Normalizer(np.zeros(4, np.float32), np.array([1.0, 2.0, 0.5, math.e], np.float32))
  m = bounds.bound_metrics(p, norm)
  assert m["eval/nll"] == pytest.approx(33.0 / 5)
  assert m["eval/kl"] == pytest.approx(5.0 / 5)
  assert m["eval/neg_elbo"] == pytest.approx(38.0 / 5)
  assert m["eval/neg_elbo_per_bin"] == pytest.approx(38.0 / 5 / 4)
  assert m["eval/log_std_per_frame"] == pytest.approx(1.0, rel=1e-6)  # log 2 + log 0.5 + 1.
  assert m["eval/neg_elbo_logmel"] == pytest.approx(38.0 / 5 + 1.0, rel=1e-6)
  want_iwae = -(math.log((math.exp(-10) + math.exp(-12)) / 2) - 30.0) / 5
  assert m["eval/neg_iwae"] == pytest.approx(want_iwae)
  assert m["eval/neg_elbo_mc"] == pytest.approx((11.0 + 30.0) / 5)
  assert m["eval/neg_iwae_k/1"] == pytest.approx(m["eval/neg_elbo_mc"])
  assert m["eval/neg_iwae_k/2"] == pytest.approx(m["eval/neg_iwae"])


def test_active_units_on_a_constructed_case():
  rng = np.random.default_rng(0)
  means = np.stack([rng.normal(0, 1.0, 5000),      # varies: active
                    np.full(5000, 3.0),            # constant (even if far from 0): inactive
                    rng.normal(0, 0.05, 5000),     # variance 0.0025: inactive
                    rng.normal(0, 0.2, 5000)], 1)  # variance 0.04: active
  assert bounds.active_units(means) == 2
  assert bounds.active_units(means, threshold=0.001) == 3
  p = _pass([[0.0]], [0.0], np.ones((2, 4)), [1, 1])
  p.mean = [means[:2500], means[2500:]]
  lm = bounds.latent_metrics(p)
  assert lm["eval/active_units"] == 2
  np.testing.assert_allclose(lm["eval/posterior_mean_variance"], means.var(0))
  np.testing.assert_allclose(lm["eval/kl_per_channel"], [1.0, 1.0, 1.0, 1.0])


def test_pca_reconstruction_is_the_hand_computed_projection():
  # Frames on a tilted plane plus a little off-plane noise: the top-2 subspace is the plane.
  rng = np.random.default_rng(0)
  u = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) / np.array([[math.sqrt(2)], [1.0]])
  x = 5.0 + rng.normal(size=(2000, 2)) * [3.0, 2.0] @ u + 0.01 * rng.normal(size=(2000, 3))
  pca = PCA.fit(x, 2)
  mean = x.mean(0)
  v = np.linalg.svd(x - mean, full_matrices=False)[2][:2]
  frame = np.array([[1.0, 2.0, 3.0]])
  want = mean + (frame - mean) @ v.T @ v
  np.testing.assert_allclose(pca.reconstruct(frame), want, atol=1e-9)
  # The projection onto span{(1, 1, 0), (0, 0, 1)} through the mean, by hand.
  d = frame[0] - mean
  by_hand = mean + np.array([(d[0] + d[1]) / 2, (d[0] + d[1]) / 2, d[2]])
  np.testing.assert_allclose(pca.reconstruct(frame)[0], by_hand, atol=1e-3)
  chunks = PCA.fit_chunks([x[:700], x[700:]], 2)
  np.testing.assert_allclose(np.abs(chunks.components_KxF), np.abs(pca.components_KxF), atol=1e-9)


def test_ppca_nll_is_the_gaussian_with_the_ppca_covariance():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3000, 5)) @ rng.normal(size=(5, 5)) + 2.0
  pca = PCA.fit(x, 2)
  w = pca.components_KxF.T
  s2 = pca.noise_variance
  assert s2 == pytest.approx(pca.eigenvalues_F[2:].mean())
  cov = w @ np.diag(pca.eigenvalues_F[:2] - s2) @ w.T + s2 * np.eye(5)
  want = -scipy.stats.multivariate_normal(pca.mean_F, cov).logpdf(x[:10])
  np.testing.assert_allclose(pca.ppca_nll(x[:10]), want, rtol=1e-9)
  # With every component kept PPCA is the full-covariance Gaussian fitted to the data.
  full = PCA.fit(x, 5)
  want_full = -scipy.stats.multivariate_normal(x.mean(0), np.cov(x.T, bias=True)).logpdf(x[:10])
  np.testing.assert_allclose(full.ppca_nll(x[:10]), want_full, rtol=1e-6)


def test_matched_components():
  assert matched_components(16, 4) == 4
  assert matched_components(4, 4) == 1
  assert matched_components(2, 4) == 1
  assert matched_components(24, 4) == 6


def test_reconstruction_metrics_pool_all_frames():
  rng = np.random.default_rng(0)
  refs = [rng.normal(size=(5, 30)), rng.normal(size=(9, 30))]
  ests = [r + 0.1 * rng.normal(size=r.shape) for r in refs]
  m = scoring.reconstruction_metrics(refs, ests, "eval/x")
  ref, est = np.concatenate(refs), np.concatenate(ests)
  assert m["eval/x/logmel_mse"] == pytest.approx(metrics.logmel_mse(ref, est))
  assert m["eval/x/logmel_l1"] == pytest.approx(metrics.logmel_l1(ref, est))
  assert m["eval/x/mel_lsd_db"] == pytest.approx(metrics.mel_log_spectral_distance_db(ref, est))
  assert m["eval/x/logmel_cd_db"] == pytest.approx(metrics.logmel_cepstral_distance_db(ref, est))
  # Fewer than 25 bins: MCD uses every cepstrum but c_0.
  small = scoring.reconstruction_metrics([r[:, :10] for r in refs], [e[:, :10] for e in ests], "p")
  assert small["p/logmel_cd_db"] == pytest.approx(
      metrics.logmel_cepstral_distance_db(ref[:, :10], est[:, :10], n_coeffs=9))


def _speechlike(seconds: float, seed: int, sr: int = 8000) -> np.ndarray:
  """Noise under a 4 Hz syllable-rate envelope: enough structure for STOI."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * rng.normal(size=t.size)).astype(np.float64)


def test_score_audio_counts_undefined_clips_and_scores_the_concatenation():
  sr = 8000
  refs = [_speechlike(0.25, i) for i in range(4)] + [_speechlike(1.5, 9)]
  rng = np.random.default_rng(5)
  ests = [r + 0.05 * rng.normal(size=r.size) for r in refs]
  scores = scoring.score_audio(refs, ests, sr, groups=["a", "a", "b", "b", "b"])
  assert np.isnan(scores.stoi_N[:4]).all()  # 0.25 s clips: too short for pystoi.
  assert np.isfinite(scores.stoi_N[4])
  assert 0 < scores.stoi_concat <= 1
  assert set(scores.stoi_per_group) == {"a", "b"}
  assert scores.pesq_N is not None and len(scores.pesq_N) == 5
  m = scoring.audio_metrics(scores, "eval/vae")
  assert m["eval/vae/stoi_clips_scored"] == 1 and m["eval/vae/clips"] == 5
  assert m["eval/vae/stoi_clip_mean"] == pytest.approx(scores.stoi_N[4])
  assert math.isfinite(m["eval/vae/stoi_group_mean"])
  # A perfect estimate scores (almost) 1 on the concatenation even though no short clip scores alone.
  assert scoring.score_audio(refs[:4], refs[:4], sr).stoi_concat > 0.99
  # Quiet clips are scaled up before concatenation, so they still count.
  quiet = scoring.score_audio([refs[4], 1e-3 * refs[4]], [ests[4], 1e-3 * ests[4]], sr)
  same = scoring.score_audio([refs[4], refs[4]], [ests[4], ests[4]], sr)
  assert quiet.stoi_concat == pytest.approx(same.stoi_concat, abs=1e-6)


def test_score_audio_without_pesq_at_other_rates():
  refs = [_speechlike(1.0, 0, sr=11025)]
  scores = scoring.score_audio(refs, refs, 11025)
  assert scores.pesq_N is None
  assert "eval/x/pesq_clip_mean" not in scoring.audio_metrics(scores, "eval/x")


def test_griffin_lim_batch_returns_each_requested_length_in_input_order():
  fc = FeatureConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, n_mels=32, fmax=4000.0)
  rng = np.random.default_rng(0)
  mels = [rng.normal(-4, 1, size=(t, 32)).astype(np.float32) for t in (40, 7, 33)]
  lengths = [40 * 64 + 17, 7 * 64, 33 * 64 - 5]
  waves = griffin_lim_batch(mels, fc, n_iter=2, lengths=lengths, batch_size=2)
  assert [len(w) for w in waves] == lengths
  assert all(np.all(np.isfinite(w)) for w in waves)
  default = griffin_lim_batch(mels, fc, n_iter=2)
  assert [len(w) for w in default] == [(t - 1) * 64 for t in (40, 7, 33)]
