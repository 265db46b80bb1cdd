"""The terms of the ELBO and the IWAE bound, in nats."""

import math

import jax
import jax.numpy as jnp

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I); `key` is one key or one per example."""
  if jnp.ndim(key) == 0:
    eps = jax.random.normal(key, mean.shape, mean.dtype)
  else:
    eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(key)
  return mean + jnp.exp(0.5 * logvar) * eps


def kl_diag_gaussian(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) per element."""
  return 0.5 * (mean**2 + jnp.exp(logvar) - 1.0 - logvar)


def gaussian_nll(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """-log N(x; mean, exp(log_scale)^2) per element."""
  return 0.5 * ((x - mean) * jnp.exp(-log_scale)) ** 2 + log_scale + HALF_LOG_2PI


def log_normal(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(x; mean, exp(logvar)) per element."""
  return -0.5 * ((x - mean) ** 2 * jnp.exp(-logvar) + logvar) - HALF_LOG_2PI


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
  """beta, ramped linearly from 0 over the first `warmup_steps` steps."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def free_bits_kl(kl_per_channel_BxC: jax.Array, latent_frames_B: jax.Array,
                 batch_mean_kl_C: jax.Array, free_bits: float) -> jax.Array:
  """Per-example KL where channels whose batch-mean KL per latent frame is under `free_bits` are not penalised.

  `batch_mean_kl_C` (KL per latent frame, averaged over the global batch) decides
  which channels are free, so every device makes the same choice.
  """
  if free_bits <= 0:
    return kl_per_channel_BxC.sum(-1)
  penalised_C = jax.lax.stop_gradient(batch_mean_kl_C) > free_bits
  floor_BxC = free_bits * latent_frames_B[:, None]
  return jnp.where(penalised_C, kl_per_channel_BxC, jax.lax.stop_gradient(floor_BxC)).sum(-1)
