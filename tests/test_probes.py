"""Tests for vae_jax.eval.probes: the logistic-regression probe, pooling, MFCCs and chance."""

import math

import numpy as np
import pytest

from vae_jax.eval import probes


def _blobs(n: int, k: int, d: int, seed: int, spread: float = 6.0):
  rng = np.random.default_rng(seed)
  centers = spread * rng.normal(size=(k, d))
  y = rng.integers(0, k, n)
  return centers[y] + rng.normal(size=(n, d)), y


def test_probe_separates_linearly_separable_classes():
  rng_centers = np.random.default_rng(0)
  k, d = 6, 8
  centers = 6.0 * rng_centers.normal(size=(k, d))
  rng = np.random.default_rng(1)
  y_train, y_test = rng.integers(0, k, 600), rng.integers(0, k, 200)
  x_train = centers[y_train] + rng.normal(size=(600, d))
  x_test = centers[y_test] + rng.normal(size=(200, d))
  probe = probes.fit_probe(x_train, y_train)
  assert probe.accuracy(x_train, y_train) == 1.0
  assert probe.accuracy(x_test, y_test) >= 0.99


def test_probe_on_shuffled_labels_is_at_chance():
  x, y = _blobs(1000, 5, 8, seed=2)
  rng = np.random.default_rng(3)
  y_shuffled = rng.permutation(y)
  x_test, y_test = _blobs(1000, 5, 8, seed=4)
  probe = probes.fit_probe(x, y_shuffled)
  # Five balanced classes: chance is 0.2; 1000 test examples put 3 sigma at about 0.04.
  assert abs(probe.accuracy(x_test, y_test) - 0.2) < 0.06


def test_probe_labels_reports_every_label_and_chance():
  x, y = _blobs(300, 3, 4, seed=5)
  xt, yt = _blobs(90, 3, 4, seed=5)
  labels = {"a": y, "b": np.zeros_like(y)}
  out = probes.probe_labels(x, xt, labels, {"a": yt, "b": np.zeros_like(yt)},
                            {"a": ("x", "y", "z"), "b": ("only",)})
  assert set(out) == {"a", "b"}
  assert out["a"]["classes"] == 3 and out["b"]["classes"] == 1
  assert out["b"]["accuracy"] == 1.0 and out["b"]["chance"] == 1.0
  assert out["a"]["chance"] == pytest.approx(np.mean(yt == np.bincount(y).argmax()))


def _signal_and_noise(n: int, noise_dims: int, separation: float, seed: int):
  """Two classes apart along 2 dimensions, beside `noise_dims` pure-noise dimensions."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  signal = (2 * y[:, None] - 1) * separation + rng.normal(size=(n, 2))
  return np.concatenate([signal, rng.normal(size=(n, noise_dims))], 1), y


def test_cross_validation_regularises_noisy_data_and_not_clean_data():
  # Cross-validated log loss must choose a strong penalty (small C) where a probe would fit
  # noise, and a weak one (large C) where classes are far apart and examples plentiful.
  noisy = probes.fit_probe(*_signal_and_noise(60, 40, 0.5, seed=6))
  clean = probes.fit_probe(*_signal_and_noise(600, 2, 3.0, seed=6))
  assert noisy.c <= 0.1 and clean.c >= 10.0, (noisy.c, clean.c)


def test_chance_is_the_majority_class_of_train():
  assert probes.chance_accuracy(np.array([0, 1, 1, 2]), np.array([1, 1, 0, 2, 2])) == pytest.approx(0.4)


def test_pool_mean_std():
  x = np.array([[1.0, 0.0], [3.0, 0.0]])
  np.testing.assert_allclose(probes.pool_mean_std(x), [2.0, 0.0, 1.0, 0.0])


def test_mfcc_is_the_orthonormal_dct_of_the_log_mel():
  rng = np.random.default_rng(0)
  lm = rng.normal(size=(3, 10))
  out = probes.mfcc(lm, n=4)
  assert out.shape == (3, 4)
  f = 10
  for d in range(4):
    scale = math.sqrt((1 if d == 0 else 2) / f)
    want = scale * sum(lm[:, i] * math.cos(math.pi * d * (2 * i + 1) / (2 * f)) for i in range(f))
    np.testing.assert_allclose(out[:, d], want, atol=1e-12)
  assert probes.mfcc(lm, n=40).shape == (3, 10)
