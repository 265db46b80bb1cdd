"""The ELBO's terms against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import losses


def test_kl_closed_form_matches_monte_carlo():
  mean = jnp.array([0.5, -1.0, 2.0])
  logvar = jnp.array([-1.0, 0.3, 0.0])
  z = losses.reparameterize(jax.random.key(0), jnp.broadcast_to(mean, (200_000, 3)),
                            jnp.broadcast_to(logvar, (200_000, 3)))
  mc = (losses.log_normal(z, mean, logvar) - losses.log_normal(z, 0.0, 0.0)).mean(0)
  np.testing.assert_allclose(losses.kl_diag_gaussian(mean, logvar), mc, atol=0.02)


def test_kl_is_zero_only_at_the_prior():
  assert float(losses.kl_diag_gaussian(jnp.zeros(4), jnp.zeros(4)).sum()) == 0.0
  assert float(losses.kl_diag_gaussian(jnp.full(4, 0.1), jnp.zeros(4)).min()) > 0


def test_reparameterize_moments_and_gradients():
  key = jax.random.key(1)
  mean, logvar = jnp.array([1.5]), jnp.array([np.log(4.0)])
  z = losses.reparameterize(key, jnp.broadcast_to(mean, (100_000, 1)), jnp.broadcast_to(logvar, (100_000, 1)))
  assert abs(float(z.mean()) - 1.5) < 0.03 and abs(float(z.std()) - 2.0) < 0.03
  # d/dmean E[z^2] = 2 mean; d/dlogvar E[z^2] = exp(logvar) for z = mean + exp(logvar/2) eps.
  f = lambda m, lv: (losses.reparameterize(key, jnp.broadcast_to(m, (100_000, 1)),
                                           jnp.broadcast_to(lv, (100_000, 1))) ** 2).mean()
  g_mean, g_logvar = jax.grad(f, argnums=(0, 1))(mean, logvar)
  np.testing.assert_allclose(g_mean, 2 * mean, rtol=0.03)
  np.testing.assert_allclose(g_logvar, jnp.exp(logvar), rtol=0.03)


def test_reparameterize_per_example_keys_are_independent_of_batching():
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(2), jnp.arange(6))
  mean, logvar = jnp.zeros((6, 5, 3)), jnp.zeros((6, 5, 3))
  full = losses.reparameterize(keys, mean, logvar)
  halves = [losses.reparameterize(keys[i:i + 3], mean[i:i + 3], logvar[i:i + 3]) for i in (0, 3)]
  np.testing.assert_array_equal(full, jnp.concatenate(halves))
  assert not np.allclose(full[0], full[1])


def test_gaussian_nll_matches_scipy():
  from scipy.stats import norm

  x, mu, ls = np.array([0.3, -2.0]), np.array([0.0, 1.0]), np.array([-0.5, 0.7])
  np.testing.assert_allclose(losses.gaussian_nll(x, mu, ls), -norm.logpdf(x, mu, np.exp(ls)), rtol=1e-6)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (50, 0.25), (100, 0.5), (500, 0.5)])
def test_kl_warmup(step, expected):
  assert float(losses.kl_weight(jnp.asarray(step), 0.5, 100)) == pytest.approx(expected)


def test_free_bits_floors_only_channels_under_the_threshold():
  kl_BxC = jnp.array([[0.1, 3.0], [0.3, 5.0]])
  latent_frames = jnp.array([1.0, 1.0])
  batch_mean = kl_BxC.mean(0)  # [0.2, 4.0]
  out = losses.free_bits_kl(kl_BxC, latent_frames, batch_mean, free_bits=0.5)
  np.testing.assert_allclose(out, [0.5 + 3.0, 0.5 + 5.0])
  grad = jax.grad(lambda k: losses.free_bits_kl(k, latent_frames, batch_mean, 0.5).sum())(kl_BxC)
  np.testing.assert_array_equal(grad, [[0.0, 1.0], [0.0, 1.0]])
