"""Speech VAEs over normalised log-mel frames: a temporal conv VAE and a frame-level MLP VAE.

Both map mel_BxTxF (and its frame mask) to a diagonal Gaussian posterior per
latent frame, and latents back to the mean of a Gaussian likelihood whose
per-mel-bin log scale is learned. `VAE.__call__` returns per-example terms
(reconstruction NLL and KL in nats); the train step reduces and weights them.
Randomness comes only from the `key` the caller passes.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models.layers import Conv1D, ResBlock, Upsample, downsample_mask, resolve_conv_impl

Dtype = Any


class _ConvStack(nn.Module):
  """The shape both halves of the conv VAE share (the decoder mirrors the encoder)."""

  channels: int
  channel_multipliers: Sequence[int]
  strides: Sequence[int]
  blocks_per_stage: int
  kernel_size: int
  impl: str
  dtype: Dtype


class ConvEncoder(_ConvStack):
  """mel_BxTxF -> (mean, logvar) of q(z|x), each [B, T / prod(strides), latent_channels]."""

  latent_channels: int

  @nn.compact
  def __call__(self, mel_BxTxF, mask_BxT):
    conv = lambda c, **kw: Conv1D(c, impl=self.impl, dtype=self.dtype, **kw)
    m = mask_BxT[..., None].astype(self.dtype)
    h = conv(self.channels, kernel_size=self.kernel_size)(mel_BxTxF) * m
    for stride, mult in zip(self.strides, self.channel_multipliers):
      for _ in range(self.blocks_per_stage):
        h = ResBlock(self.kernel_size, self.impl, self.dtype)(h, m)
      mask_BxT = downsample_mask(mask_BxT, stride)
      m = mask_BxT[..., None].astype(self.dtype)
      h = conv(self.channels * mult, kernel_size=self.kernel_size, stride=stride)(nn.gelu(h)) * m
    for _ in range(self.blocks_per_stage):
      h = ResBlock(self.kernel_size, self.impl, self.dtype)(h, m)
    stats = conv(2 * self.latent_channels, kernel_size=3)(nn.gelu(h)).astype(jnp.float32)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, logvar, mask_BxT


class ConvDecoder(_ConvStack):
  """z_BxTzxC -> mean of p(x|z), [B, Tz * prod(strides), n_mels]; mirrors ConvEncoder."""

  n_mels: int

  @nn.compact
  def __call__(self, z_BxTzxC, mask_BxT):
    conv = lambda c, **kw: Conv1D(c, impl=self.impl, dtype=self.dtype, **kw)
    masks = [mask_BxT]
    for stride in self.strides:
      masks.append(downsample_mask(masks[-1], stride))
    m = masks[-1][..., None].astype(self.dtype)
    h = conv(self.channels * self.channel_multipliers[-1], kernel_size=3)(z_BxTzxC) * m
    for _ in range(self.blocks_per_stage):
      h = ResBlock(self.kernel_size, self.impl, self.dtype)(h, m)
    stages = list(zip(self.strides, self.channel_multipliers, masks[:-1]))[::-1]
    for i, (stride, _, mask) in enumerate(stages):
      # The width after upsampling is the encoder's width before that stage.
      out_mult = stages[i + 1][1] if i + 1 < len(stages) else 1
      h = Upsample(self.channels * out_mult, stride, self.kernel_size, self.impl, self.dtype)(nn.gelu(h))
      m = mask[..., None].astype(self.dtype)
      h = h[:, :mask.shape[1]] * m
      for _ in range(self.blocks_per_stage):
        h = ResBlock(self.kernel_size, self.impl, self.dtype)(h, m)
    return conv(self.n_mels, kernel_size=self.kernel_size)(nn.gelu(h)).astype(jnp.float32)


def _mlp(x, widths: Sequence[int], out_features: int, dtype: Dtype) -> jax.Array:
  """Dense layers of `widths` with GELUs, then a linear one to `out_features` (float32 out).

  Called inside a compact method: the layers belong to the calling module.
  """
  h = x.astype(dtype)
  for width in widths:
    h = nn.gelu(nn.Dense(width, dtype=dtype)(h))
  return nn.Dense(out_features, dtype=dtype)(h).astype(jnp.float32)


class MLPEncoder(nn.Module):
  """Frame-level encoder: each frame -> (mean, logvar) of its own latent."""

  latent_channels: int
  hidden: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, mel_BxTxF, mask_BxT):
    stats = _mlp(mel_BxTxF, self.hidden, 2 * self.latent_channels, self.dtype)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, logvar, mask_BxT


class MLPDecoder(nn.Module):
  """Frame-level decoder mirroring MLPEncoder."""

  n_mels: int
  hidden: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxTxC, mask_BxT):
    return _mlp(z_BxTxC, tuple(reversed(self.hidden)), self.n_mels, self.dtype)


class VAE(nn.Module):
  """Gaussian-posterior VAE with a Gaussian likelihood of learned per-bin scale."""

  encoder: nn.Module
  decoder: nn.Module
  n_mels: int
  deterministic: bool = False
  init_log_scale: float = 0.0

  def setup(self):
    self.log_scale = self.param(
        "log_scale", nn.initializers.constant(self.init_log_scale), (self.n_mels,))

  def encode(self, mel_BxTxF, mask_BxT):
    """Posterior mean, log-variance and latent-frame mask."""
    return self.encoder(mel_BxTxF, mask_BxT)

  def decode(self, z_BxTzxC, mask_BxT):
    """Likelihood mean (normalised log-mel) for latents; mask_BxT is at the mel frame rate."""
    return self.decoder(z_BxTzxC, mask_BxT)

  def sample_posterior(self, key: jax.Array, mean_BxTzxC, logvar_BxTzxC):
    """z ~ q(z|x) (the mean for a deterministic model); `key` is one key or one per example."""
    if self.deterministic:
      return mean_BxTzxC
    return losses.reparameterize(key, mean_BxTzxC, logvar_BxTzxC)

  def nll(self, mel_BxTxF, recon_BxTxF, mask_BxT):
    """Per-example -log p(x|z) in nats over the valid frames, given the likelihood mean."""
    nll_BxTxF = losses.gaussian_nll(mel_BxTxF, recon_BxTxF, self.log_scale)
    return (nll_BxTxF * mask_BxT[..., None]).sum((1, 2))

  def __call__(self, mel_BxTxF, mask_BxT, key: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-example ELBO terms; `key` is one key or one key per example."""
    mean, logvar, mask_z = self.encode(mel_BxTxF, mask_BxT)
    z = self.sample_posterior(key, mean, logvar)
    kl_BxTzxC = jnp.zeros_like(mean) if self.deterministic else losses.kl_diag_gaussian(mean, logvar)
    recon_BxTxF = self.decode(z, mask_BxT)
    kl_BxC = (kl_BxTzxC * mask_z[..., None]).sum(1)
    return {
        "nll": self.nll(mel_BxTxF, recon_BxTxF, mask_BxT),
        "kl": kl_BxC.sum(-1),
        "kl_per_channel": kl_BxC,
        "sq_err": (((mel_BxTxF - recon_BxTxF) ** 2) * mask_BxT[..., None]).sum((1, 2)),
        "frames": mask_BxT.sum(-1),
        "latent_frames": mask_z.sum(-1),
    }


def build_model(config) -> VAE:
  """The VAE described by `config.model` for `config.features.n_mels` bins."""
  m, n_mels = config.model, config.features.n_mels
  dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
  if m.name == "conv":
    shared = dict(channels=m.channels, channel_multipliers=tuple(m.channel_multipliers),
                  strides=tuple(m.strides), blocks_per_stage=m.blocks_per_stage,
                  kernel_size=m.kernel_size, impl=resolve_conv_impl(m.conv_impl), dtype=dtype)
    encoder = ConvEncoder(latent_channels=m.latent_channels, **shared)
    decoder = ConvDecoder(n_mels=n_mels, **shared)
  elif m.name == "mlp":
    encoder = MLPEncoder(m.latent_channels, tuple(m.mlp_hidden), dtype)
    decoder = MLPDecoder(n_mels, tuple(m.mlp_hidden), dtype)
  else:
    raise ValueError(f"unknown model {m.name!r}")
  return VAE(encoder, decoder, n_mels, m.deterministic, m.init_log_scale)


def time_stride(config) -> int:
  """Mel frames per latent frame."""
  if config.model.name == "mlp":
    return 1
  s = 1
  for x in config.model.strides:
    s *= x
  return s
