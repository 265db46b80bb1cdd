"""Temporal convolution layers with two formulations of the same parameters.

`impl="lax"` calls lax.conv_general_dilated; `impl="matmul"` stacks the K time
shifts of the input along channels and does one matmul. They compute the same
function of the same [K, C_in, C_out] kernel; which is faster depends on the
backend and the XLA version, so it is a config choice, and `impl="auto"` picks
the one measured faster (`python -m bench.run --sections variants`; figures in
BENCHMARKS.md).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


# The measured-faster formulation per backend. CPU (jaxlib 0.10.2, 2-core AVX2
# AMD EPYC): lax.conv (Eigen) was 1.2-1.3x faster per train step than the
# stacked matmul (YNNPACK dot) with kernels 3 and 5, and as fast or faster for
# most conv shapes of the FSDD model; the stacked form pays for materialising
# the K shifted copies and for summing them back in the backward pass.
# Accelerators have native convolutions.
_AUTO_CONV_IMPL = {"cpu": "lax"}


def resolve_conv_impl(impl: str) -> str:
  """'auto' picks the measured-faster formulation for the default backend."""
  if impl == "auto":
    return _AUTO_CONV_IMPL.get(jax.default_backend(), "lax")
  return impl


def conv1d(x_BxTxC: jax.Array, kernel_KxCxD: jax.Array, stride: int, impl: str) -> jax.Array:
  """'Same'-padded temporal convolution; output length is ceil(T / stride)."""
  k = kernel_KxCxD.shape[0]
  pad = ((k - 1) // 2, k - 1 - (k - 1) // 2)
  if impl == "lax":
    return lax.conv_general_dilated(
        x_BxTxC, kernel_KxCxD, window_strides=(stride,), padding=[pad],
        dimension_numbers=("NWC", "WIO", "NWC"))
  if impl != "matmul":
    raise ValueError(f"unknown conv impl {impl!r}")
  t_out = -(-x_BxTxC.shape[1] // stride)
  x = jnp.pad(x_BxTxC, ((0, 0), pad, (0, 0)))
  shifts = [x[:, i:i + (t_out - 1) * stride + 1:stride] for i in range(k)]
  stacked_BxTxKC = jnp.concatenate(shifts, axis=-1) if k > 1 else shifts[0]
  return stacked_BxTxKC @ kernel_KxCxD.reshape(-1, kernel_KxCxD.shape[-1])


class Conv1D(nn.Module):
  """Temporal convolution over [B, T, C] with 'same' padding."""

  features: int
  kernel_size: int
  stride: int = 1
  impl: str = "matmul"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, x_BxTxC.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    y = conv1d(x_BxTxC.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.impl)
    return y + bias.astype(self.dtype)


class Upsample(nn.Module):
  """Time upsampling by `factor`: a conv to factor x features, then a reshape (sub-pixel)."""

  features: int
  factor: int
  kernel_size: int
  impl: str = "matmul"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
    y = Conv1D(self.features * self.factor, self.kernel_size, impl=self.impl, dtype=self.dtype)(x_BxTxC)
    b, t, _ = y.shape
    return y.reshape(b, t * self.factor, self.features)


class ResBlock(nn.Module):
  """Pre-norm residual block of two temporal convolutions; padded frames stay zero."""

  kernel_size: int
  impl: str = "matmul"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array, mask_BxTx1: jax.Array) -> jax.Array:
    c = x_BxTxC.shape[-1]
    h = nn.gelu(nn.LayerNorm(dtype=self.dtype)(x_BxTxC))
    h = Conv1D(c, self.kernel_size, impl=self.impl, dtype=self.dtype)(h) * mask_BxTx1
    h = nn.gelu(nn.LayerNorm(dtype=self.dtype)(h))
    h = Conv1D(c, self.kernel_size, impl=self.impl, dtype=self.dtype)(h) * mask_BxTx1
    return x_BxTxC + h


def downsample_mask(mask_BxT: jax.Array, stride: int) -> jax.Array:
  """A coarse frame is valid when any of the fine frames it covers is valid."""
  b, t = mask_BxT.shape
  pad = -t % stride
  m = jnp.pad(mask_BxT, ((0, 0), (0, pad)))
  return m.reshape(b, (t + pad) // stride, stride).max(-1)
