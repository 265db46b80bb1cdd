"""A multi-scale patch discriminator over normalised log-mel spectrograms, and its GAN losses.

Each scale sees the log-mel at a time resolution pooled by its factor (1: every frame) and
is a small stack of 2-D convolutions over (time, mel bin): a log-mel patch is an image
whose harmonics, formants and onsets are local textures. Every layer after the first halves
time and frequency; the last maps to one logit per patch. The hidden activations are the
features of the feature-matching loss.

Padded frames are zero in both the real and the reconstructed input, and every loss is a
mean over the valid positions only (a position is valid when any frame it covers is).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.models.layers import downsample_mask

# Slope of the leaky ReLUs (MelGAN, HiFi-GAN and RAVE use 0.2).
LEAK = 0.2


class PatchDiscriminator(nn.Module):
  """mel_BxTxF -> (hidden features [B, T_i, F_i, C_i] per layer, patch logits [B, T_L, F_L])."""

  channels: Sequence[int]
  kernel_size: int

  @nn.compact
  def __call__(self, mel_BxTxF: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    k = (self.kernel_size, self.kernel_size)
    h = mel_BxTxF[..., None]
    features = []
    for i, c in enumerate(self.channels):
      stride = (1, 1) if i == 0 else (2, 2)
      h = nn.leaky_relu(nn.Conv(c, k, strides=stride, padding="SAME")(h), LEAK)
      features.append(h)
    return features, nn.Conv(1, k, padding="SAME")(h)[..., 0]


def pool_time(x_BxTx: jax.Array, factor: int) -> jax.Array:
  """Mean over groups of `factor` frames (the last group zero-padded)."""
  if factor == 1:
    return x_BxTx
  b, t = x_BxTx.shape[:2]
  pad = -t % factor
  x = jnp.pad(x_BxTx, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxTx.ndim - 2))
  return x.reshape((b, (t + pad) // factor, factor) + x.shape[2:]).mean(2)


class MultiScaleDiscriminator(nn.Module):
  """One PatchDiscriminator per time scale; returns [(features, logits)] in scale order."""

  channels: Sequence[int]
  kernel_size: int
  scales: Sequence[int]

  @nn.compact
  def __call__(self, mel_BxTxF: jax.Array) -> list[tuple[list[jax.Array], jax.Array]]:
    return [PatchDiscriminator(tuple(self.channels), self.kernel_size, name=f"scale_{s}")(
        pool_time(mel_BxTxF, s)) for s in self.scales]


def build_discriminator(config) -> MultiScaleDiscriminator:
  a = config.adversarial
  return MultiScaleDiscriminator(tuple(a.disc_channels), a.disc_kernel, tuple(a.disc_scales))


def output_masks(mask_BxT: jax.Array, scales: Sequence[int], num_layers: int) -> list[list[jax.Array]]:
  """Per scale, the time masks [B, T_i] of each hidden layer and then of the logits."""
  out = []
  for s in scales:
    m = downsample_mask(mask_BxT, s)
    per_layer = []
    for i in range(num_layers):
      if i:
        m = downsample_mask(m, 2)
      per_layer.append(m)
    out.append(per_layer + [m])  # The logit layer keeps the last hidden layer's resolution.
  return out


def masked_sum(x_BxTx: jax.Array, mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of x over valid positions, number of valid elements): x is [B, T, ...]."""
  m = mask_BxT.reshape(mask_BxT.shape + (1,) * (x_BxTx.ndim - 2)).astype(x_BxTx.dtype)
  m = jnp.broadcast_to(m, x_BxTx.shape)
  return (x_BxTx * m).sum(), m.sum()


def disc_loss_terms(kind: str, real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Elementwise discriminator loss on real and on fake logits."""
  if kind == "hinge":
    return jax.nn.relu(1.0 - real_logits), jax.nn.relu(1.0 + fake_logits)
  if kind == "lsgan":
    return (real_logits - 1.0) ** 2, fake_logits ** 2
  raise ValueError(f"unknown GAN loss {kind!r}")


def gen_loss_term(kind: str, fake_logits: jax.Array) -> jax.Array:
  """Elementwise generator (adversarial) loss on fake logits."""
  if kind == "hinge":
    return -fake_logits
  if kind == "lsgan":
    return (fake_logits - 1.0) ** 2
  raise ValueError(f"unknown GAN loss {kind!r}")
