"""A learned prior p(z_1:T | c, T) over a VAE's latent sequences: a causal transformer (GIVT-style).

Each latent frame z_t [C] gets a Gaussian mixture with diagonal components whose
parameters are computed from z_<t, the labels c and the sequence length T; the
log-density of a sequence is the sum of its frames' mixture log-densities. Labels
are embedded with one extra "unknown" class per label, which classifier-free
guidance uses as the unconditional model. Randomness comes only from the keys the
caller passes: training's dropout masks come from per-example keys, so an example's
masks do not depend on the batch it is in or on the device count.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.rng import stream_keys


def residual_dropout(x_BxTxD: jax.Array, keys_B: jax.Array | None, rate: float) -> jax.Array:
  """Inverted dropout with one key per example (flax's nn.Dropout draws one mask for the whole batch)."""
  if keys_B is None or rate == 0.0:
    return x_BxTxD
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x_BxTxD.shape[1:]))(keys_B)
  return jnp.where(keep, x_BxTxD / (1.0 - rate), 0.0)


class Block(nn.Module):
  """Pre-norm causal self-attention and MLP, each with residual dropout when keys are given."""

  width: int
  heads: int
  mlp_ratio: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, h_BxTxD, causal_BxHxTxT, keys_B=None):
    k_att, k_mlp = (None, None) if keys_B is None else (stream_keys(keys_B, 0), stream_keys(keys_B, 1))
    y = nn.LayerNorm()(h_BxTxD)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y, mask=causal_BxHxTxT)
    h = h_BxTxD + residual_dropout(y, k_att, self.dropout)
    y = nn.Dense(self.mlp_ratio * self.width)(nn.LayerNorm()(h))
    return h + residual_dropout(nn.Dense(self.width)(nn.gelu(y)), k_mlp, self.dropout)


class LatentPrior(nn.Module):
  """(z_BxTxC, lengths_B, labels_BxL) -> mixture parameters of every frame given the frames before it.

  `labels_BxL[:, i]` is a class index of label i, or `num_classes[i]` for "unknown".
  `dropout_keys_B` (training only) turns on residual dropout at rate `dropout`.
  """

  latent_channels: int
  num_classes: Sequence[int]  # Classes of each conditioning label (may be empty).
  max_frames: int
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  num_mixtures: int = 8
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z_BxTxC, lengths_B, labels_BxL, dropout_keys_B=None):
    b, t, c = z_BxTxC.shape
    k = self.num_mixtures
    # Frame t sees z_<t: the inputs are the sequence shifted right by one learned start frame.
    start = self.param("start", nn.initializers.normal(0.02), (self.width,))
    h = nn.Dense(self.width)(z_BxTxC[:, :-1])
    h = jnp.concatenate([jnp.broadcast_to(start, (b, 1, self.width)), h], axis=1)
    position_T = jnp.arange(t)
    # Frames still to come (clipped at 0 past the end): the model plans the utterance's shape.
    remaining_BxT = jnp.clip(lengths_B[:, None] - position_T[None], 0, self.max_frames)
    h = h + nn.Embed(self.max_frames, self.width, name="position")(jnp.minimum(position_T, self.max_frames - 1))
    h = h + nn.Embed(self.max_frames + 1, self.width, name="remaining")(remaining_BxT)
    for i, n in enumerate(self.num_classes):
      h = h + nn.Embed(n + 1, self.width, name=f"label_{i}")(labels_BxL[:, i])[:, None]
    causal = nn.make_causal_mask(jnp.zeros((b, t)))
    for i in range(self.depth):
      keys = None if dropout_keys_B is None else stream_keys(dropout_keys_B, i)
      h = Block(self.width, self.heads, self.mlp_ratio, self.dropout)(h, causal, keys)
    h = nn.LayerNorm()(h)
    logits = nn.Dense(k, name="logits")(h)
    mean = nn.Dense(k * c, name="mean")(h).reshape(b, t, k, c)
    log_scale = nn.Dense(k * c, name="log_scale", kernel_init=nn.initializers.zeros)(h).reshape(b, t, k, c)
    # Bounded scales: a collapsing component would give an unbounded density on the train set.
    log_scale = 5.0 * jnp.tanh(log_scale / 5.0)
    return {"logits": logits, "mean": mean, "log_scale": log_scale}


def mixture_log_prob(z_BxTxC: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  """log sum_k pi_k N(z_t; mean_k, scale_k^2 I) per frame: [B, T]."""
  log_pi = jax.nn.log_softmax(p["logits"], axis=-1)
  comp = losses.log_normal(z_BxTxC[:, :, None, :], p["mean"], 2.0 * p["log_scale"]).sum(-1)
  return jax.nn.logsumexp(log_pi + comp, axis=-1)


def guide(cond: dict[str, jax.Array], uncond: dict[str, jax.Array], scale: float) -> dict[str, jax.Array]:
  """Classifier-free guidance on the mixture parameters: uncond + scale * (cond - uncond).

  Scale 0 is the unconditional model, 1 the conditional one, > 1 pushes further
  from the unconditional model. Guidance acts on the parameters (mixture logits,
  means and log-scales) because a power of a mixture density has no closed form
  to sample from; both passes share the component heads, so components line up.
  """
  return jax.tree.map(lambda u, c: u + scale * (c - u), uncond, cond)


def sample_mixture(key: jax.Array, p: dict[str, jax.Array], temperature: float) -> jax.Array:
  """One draw from one mixture (parameters [K] and [K, C]); temperature scales every component's std."""
  k_comp, k_noise = jax.random.split(key)
  comp = jax.random.categorical(k_comp, p["logits"])
  eps = jax.random.normal(k_noise, p["mean"].shape[-1:])
  return p["mean"][comp] + temperature * jnp.exp(p["log_scale"][comp]) * eps
