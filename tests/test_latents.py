"""Tests for vae_jax.latents: interpolation, alignment, prior samples, traversals, arithmetic."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vae_jax import latents

_vectors = hnp.arrays(np.float64, st.integers(2, 12),
                      elements=st.floats(-10, 10, allow_nan=False, allow_infinity=False))


def test_lerp_is_the_weighted_mean():
  a, b = np.array([0.0, 2.0]), np.array([4.0, -2.0])
  np.testing.assert_allclose(latents.lerp(a, b, 0.25), [1.0, 1.0])
  np.testing.assert_allclose(latents.lerp(a, b, 0.0), a)
  np.testing.assert_allclose(latents.lerp(a, b, 1.0), b)


def test_slerp_on_orthogonal_unit_vectors_follows_the_circle():
  a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  for t in np.linspace(0, 1, 7):
    np.testing.assert_allclose(latents.slerp(a, b, t), [np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)],
                               atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(_vectors, st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_slerp_keeps_the_norm_when_endpoint_norms_are_equal(a, seed, t):
  if np.linalg.norm(a) < 1e-3:
    return
  b = np.random.default_rng(seed).normal(size=a.shape)
  b *= np.linalg.norm(a) / np.linalg.norm(b)
  out = latents.slerp(a, b, t)
  cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
  if 1 - abs(cos) > 1e-6:  # Not (anti-)parallel: the spherical path.
    assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(a), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(_vectors, st.integers(0, 2**31 - 1))
def test_paths_start_and_end_at_the_endpoints(a, seed):
  b = np.random.default_rng(seed).normal(size=a.shape)
  for method in ("lerp", "slerp"):
    path = latents.interpolation_path(a, b, 5, method)
    assert path.shape == (5,) + a.shape
    np.testing.assert_allclose(path[0], a, atol=1e-9)
    np.testing.assert_allclose(path[-1], b, atol=1e-9)


def test_slerp_falls_back_to_lerp_for_parallel_and_zero_vectors():
  a = np.array([1.0, 2.0, 3.0])
  for b in (2.5 * a, -a, np.zeros(3), a.copy()):
    for t in (0.0, 0.3, 1.0):
      out = latents.slerp(a, b, t)
      assert np.all(np.isfinite(out))
      np.testing.assert_allclose(out, latents.lerp(a, b, t), atol=1e-12)


def test_slerp_along_an_axis_is_per_vector():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  out = latents.slerp(a, b, 0.4, axis=-1)
  for i in range(4):
    np.testing.assert_allclose(out[i], latents.slerp(a[i], b[i], 0.4), atol=1e-12)
  whole = latents.slerp(a, b, 0.4)
  np.testing.assert_allclose(whole.ravel(), latents.slerp(a.ravel(), b.ravel(), 0.4), atol=1e-12)


def test_interpolation_path_rejects_bad_arguments():
  with pytest.raises(ValueError, match="at least 2"):
    latents.interpolation_path(np.zeros(2), np.ones(2), 1)
  with pytest.raises(ValueError, match="unknown interpolation"):
    latents.interpolation_path(np.zeros(2), np.ones(2), 3, "cubic")
  with pytest.raises(ValueError, match="equal shapes"):
    latents.slerp(np.zeros(2), np.ones(3), 0.5)


def test_time_resample_and_align():
  z = np.arange(5.0)[:, None] * np.array([[1.0, -1.0]])
  r = latents.time_resample(z, 9)
  np.testing.assert_allclose(r[:, 0], np.arange(9) / 2)
  np.testing.assert_allclose(latents.time_resample(z, 5), z)
  np.testing.assert_allclose(latents.time_resample(z, 3)[:, 0], [0.0, 2.0, 4.0])
  a, b = latents.align(z, z[:3], "crop")
  np.testing.assert_allclose(a, z[:3])
  a, b = latents.align(z, z[:3], "resample")
  np.testing.assert_allclose(a[:, 0], [0.0, 2.0, 4.0])
  np.testing.assert_allclose(b, z[:3])
  with pytest.raises(ValueError):
    latents.align(z, z, "stretch")


def test_sample_prior_is_seeded_standard_normal_and_independent_per_draw():
  a = latents.sample_prior(3, [50] * 40, 16)
  assert [x.shape for x in a] == [(50, 16)] * 40
  np.testing.assert_array_equal(np.stack(a), np.stack(latents.sample_prior(3, [50] * 40, 16)))
  assert not np.array_equal(np.stack(a), np.stack(latents.sample_prior(4, [50] * 40, 16)))
  assert abs(np.stack(a).mean()) < 0.02 and abs(np.stack(a).std() - 1) < 0.02
  # Temperature scales the same draws; more or longer draws keep the first ones' values.
  np.testing.assert_allclose(np.stack(latents.sample_prior(3, [50] * 40, 16, 0.5)), 0.5 * np.stack(a))
  more = latents.sample_prior(3, [50, 80, 7], 16)
  np.testing.assert_array_equal(more[0], a[0])
  assert [len(x) for x in more] == [50, 80, 7]


def test_traverse_shifts_one_channel():
  z = np.arange(12.0).reshape(4, 3)
  out = latents.traverse(z, 1, [-1.0, 0.0, 2.0])
  assert out.shape == (3, 4, 3)
  np.testing.assert_array_equal(out[:, :, [0, 2]], np.repeat(z[None][:, :, [0, 2]], 3, 0))
  np.testing.assert_array_equal(out[:, :, 1], z[None, :, 1] + np.array([[-1.0], [0.0], [2.0]]))


def test_top_channels_and_arithmetic():
  np.testing.assert_array_equal(latents.top_channels(np.array([0.1, 3.0, 0.0, 2.0]), 2), [1, 3])
  a, b = np.zeros((3, 2)), np.ones((5, 2))
  d = latents.attribute_direction([b, 3 * b], [a])
  np.testing.assert_allclose(d, [2.0, 2.0])
  np.testing.assert_allclose(latents.add_direction(a, d, 0.5), np.ones((3, 2)))
