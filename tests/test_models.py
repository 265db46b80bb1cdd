"""Shapes, dtypes, the two conv formulations, masking and determinism of the VAEs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax.models import build_model, time_stride
from vae_jax.models.layers import conv1d, resolve_conv_impl
from vae_jax.models.vae import VAE


class _Jitted:
  """model.apply under jit: eager op-by-op execution of a whole model is slow."""

  def __init__(self, model):
    self.model = model
    self.apply = jax.jit(model.apply, static_argnames="method")


def _init(c, t=32, b=2):
  model = _Jitted(build_model(c))
  mel = jax.random.normal(jax.random.key(0), (b, t, c.features.n_mels))
  mask = jnp.ones((b, t))
  params = jax.jit(model.model.init)(jax.random.key(1), mel, mask, jax.random.key(2))["params"]
  return model, params, mel, mask


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 3, 4, 5])
def test_conv_impls_agree(stride, kernel):
  x = jax.random.normal(jax.random.key(0), (2, 17, 6))
  w = jax.random.normal(jax.random.key(1), (kernel, 6, 5))
  a, b = conv1d(x, w, stride, "lax"), conv1d(x, w, stride, "matmul")
  assert a.shape == (2, -(-17 // stride), 5)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_auto_conv_impl_resolves_to_a_formulation():
  assert resolve_conv_impl("auto") in ("lax", "matmul")
  assert resolve_conv_impl("matmul") == "matmul" and resolve_conv_impl("lax") == "lax"


def test_matmul_conv_is_a_convolution():
  # y[t] = sum_k x[t + k - pad] w[k] with pad = (K-1)//2, written out by hand.
  x = np.arange(10, dtype=np.float32).reshape(1, 10, 1)
  w = np.array([1.0, 10.0, 100.0], np.float32).reshape(3, 1, 1)
  y = np.asarray(conv1d(jnp.asarray(x), jnp.asarray(w), 1, "matmul"))[0, :, 0]
  xp = np.pad(x[0, :, 0], (1, 1))
  np.testing.assert_allclose(y, [xp[t] + 10 * xp[t + 1] + 100 * xp[t + 2] for t in range(10)])


@pytest.mark.parametrize("name", ["conv", "mlp"])
def test_shapes_and_dtypes(name):
  c = smoke_config(overrides={"model.name": name})
  model, params, mel, mask = _init(c)
  mean, logvar, mask_z = model.apply({"params": params}, mel, mask, method=VAE.encode)
  tz = 32 // time_stride(c)
  assert mean.shape == logvar.shape == (2, tz, c.model.latent_channels)
  assert mask_z.shape == (2, tz)
  recon = model.apply({"params": params}, mean, mask, method=VAE.decode)
  assert recon.shape == mel.shape and recon.dtype == jnp.float32
  terms = model.apply({"params": params}, mel, mask, jax.random.key(3))
  for k in ("nll", "kl", "sq_err", "frames", "latent_frames"):
    assert terms[k].shape == (2,) and terms[k].dtype == jnp.float32, k
  assert terms["kl_per_channel"].shape == (2, c.model.latent_channels)
  assert params["log_scale"].shape == (c.features.n_mels,)


def test_conv_model_impls_give_same_outputs_for_same_params():
  model_l, params, mel, mask = _init(smoke_config(overrides={"model.conv_impl": "lax"}))
  model_m = _Jitted(build_model(smoke_config(overrides={"model.conv_impl": "matmul"})))
  a = model_l.apply({"params": params}, mel, mask, jax.random.key(5))
  b = model_m.apply({"params": params}, mel, mask, jax.random.key(5))
  for k in ("nll", "kl"):
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4)


def test_bfloat16_compute_keeps_float32_params():
  model, params, mel, mask = _init(smoke_config(overrides={"model.dtype": "bfloat16"}))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  terms = model.apply({"params": params}, mel, mask, jax.random.key(3))
  assert terms["nll"].dtype == jnp.float32 and np.all(np.isfinite(terms["nll"]))


def test_deterministic_for_a_key_and_random_across_keys():
  model, params, mel, mask = _init(smoke_config())
  a = model.apply({"params": params}, mel, mask, jax.random.key(7))
  b = model.apply({"params": params}, mel, mask, jax.random.key(7))
  c = model.apply({"params": params}, mel, mask, jax.random.key(8))
  np.testing.assert_array_equal(a["nll"], b["nll"])
  assert not np.allclose(a["nll"], c["nll"])


def test_deterministic_encoder_ignores_the_key_and_has_no_kl():
  model, params, mel, mask = _init(smoke_config(overrides={"model.deterministic": True}))
  a = model.apply({"params": params}, mel, mask, jax.random.key(7))
  b = model.apply({"params": params}, mel, mask, jax.random.key(8))
  np.testing.assert_array_equal(a["nll"], b["nll"])
  assert float(jnp.abs(a["kl"]).max()) == 0.0


def test_padding_does_not_change_valid_frames():
  """An utterance gives the same terms alone and padded with garbage (masked) frames."""
  c = smoke_config()
  model, params, _, _ = _init(c)
  x = jax.random.normal(jax.random.key(4), (1, 20, c.features.n_mels))
  short_mask = jnp.ones((1, 20))
  padded = jnp.concatenate([x, 5 * jnp.ones((1, 12, c.features.n_mels))], axis=1)
  padded_mask = jnp.concatenate([short_mask, jnp.zeros((1, 12))], axis=1)
  key = jax.random.key(9)
  a = model.apply({"params": params}, x, short_mask, key)
  mean_a, _, _ = model.apply({"params": params}, x, short_mask, method=VAE.encode)
  mean_b, _, _ = model.apply({"params": params}, padded * padded_mask[..., None], padded_mask, method=VAE.encode)
  np.testing.assert_allclose(mean_a, mean_b[:, :mean_a.shape[1]], atol=1e-5)
  assert float(a["frames"][0]) == 20.0
