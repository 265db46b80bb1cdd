"""Quantisation of a latent sequence [Tz, C] and its entropy coding under a prior, both ways.

Channel c is quantised with its own uniform step: q = rint(z / step_c), so the
dequantised latent is q * step_c. Each element is coded with the prior's mixture
for its frame: frame t's mixture is computed from the dequantised frames < t
(the learned prior), and within a frame channel c's probabilities are the mixture
conditioned on the bins of channels < c (component weights times each
component's mass on those bins), the exact chain rule of the mixture's mass on
the quantised frame. Symbols cover a window of bins around the mixture (its
components' means +- WINDOW_SIGMAS scales, within +- Z_RANGE); a value outside it is coded as the
escape symbol followed by its bin index, 16 bits uniform.
"""

import numpy as np

from vae_jax.codec import coder, entropy
from vae_jax.codec.priors import FrameMixture

WINDOW_SIGMAS = 8.0
# Windows stay within |z| <= Z_RANGE (the aggregate posterior has std <= ~1 per channel) ...
Z_RANGE = 8.0
MAX_HALF_BINS = 4095  # ... and this many bins either side of 0 (a table size cap).
MIN_WEIGHT = 1e-6  # Lighter mixture components are left out of the tables ...
WINDOW_WEIGHT = 1e-3  # ... and lighter than this, out of the window's span.
Q_LIMIT = 1 << 15  # Bin indices are clipped to [-Q_LIMIT, Q_LIMIT): escapes take 16 bits.
_MIN_MASS = 1e-200  # Keeps a component's weight positive after a value it gives no mass to.


def quantise(z_TxC: np.ndarray, steps_C: np.ndarray) -> np.ndarray:
  """Bin indices [Tz, C] (int64) of latents under per-channel steps."""
  q = np.rint(np.asarray(z_TxC, np.float64) / steps_C)
  return np.clip(q, -Q_LIMIT, Q_LIMIT - 1).astype(np.int64)


def dequantise(q_TxC: np.ndarray, steps_C: np.ndarray) -> np.ndarray:
  """Latents [Tz, C] (float32) at the centres of their bins."""
  return (np.asarray(q_TxC, np.float64) * steps_C).astype(np.float32)


class FrameTables:
  """One frame's per-channel windows and component bin masses; tables follow the channels coded so far."""

  def __init__(self, mix: FrameMixture, steps_C: np.ndarray):
    # Components too light to matter are dropped (both sides compare the same floats, so agree).
    keep = [k for k, w in enumerate(mix.weights) if w >= MIN_WEIGHT]
    self.weights = [mix.weights[k] for k in keep]
    self.mean_KxC, self.scale_KxC, self.steps_C = mix.mean_KxC[keep], mix.scale_KxC[keep], steps_C
    # The window spans the components that carry weight, within |z| <= Z_RANGE.
    span = [k for k, w in enumerate(self.weights) if w >= WINDOW_WEIGHT]
    reach = WINDOW_SIGMAS * self.scale_KxC[span]
    limit = np.minimum(np.ceil(Z_RANGE / steps_C), MAX_HALF_BINS)
    lo = np.clip(np.rint((self.mean_KxC[span] - reach).min(0) / steps_C), -limit, limit)
    hi = np.clip(np.rint((self.mean_KxC[span] + reach).max(0) / steps_C), -limit, limit)
    self.lo_C, self.hi_C = lo.astype(np.int64), np.maximum(hi, lo).astype(np.int64)
    self.bins_C = self.hi_C - self.lo_C + 1
    width = int(self.bins_C.max())
    self.masses_K = [entropy.component_masses(self.lo_C, width, steps_C, m, s)
                     for m, s in zip(self.mean_KxC, self.scale_KxC)]  # K x [C, width]

  def freq(self, c: int, weights: list[np.ndarray]) -> np.ndarray:
    """Integer table [bins + 1] of channel c given the component weights (escape last)."""
    n = int(self.bins_C[c])
    return entropy.frequencies(entropy.mix(weights, [m[c, :n] for m in self.masses_K]))

  def symbol(self, c: int, q: int) -> int:
    inside = self.lo_C[c] <= q <= self.hi_C[c]
    return int(q - self.lo_C[c]) if inside else int(self.bins_C[c])

  def reweighted(self, c: int, weights: list[np.ndarray], q: int) -> list[np.ndarray]:
    """Component weights after channel c took bin q (each scaled by its mass there, renormalised)."""
    if self.lo_C[c] <= q <= self.hi_C[c]:
      masses = [m[c, q - self.lo_C[c]] for m in self.masses_K]
    else:
      masses = [entropy.component_masses(np.float64(q), 1, self.steps_C[c], m[c], s[c])[0]
                for m, s in zip(self.mean_KxC, self.scale_KxC)]
    scaled = [w * np.maximum(m, _MIN_MASS) for w, m in zip(weights, masses)]
    total = scaled[0]
    for s in scaled[1:]:
      total = total + s
    return [s / total for s in scaled]


def encode_independent(writer: coder.Writer, q_TxC: np.ndarray, tables: FrameTables) -> None:
  """All frames under one frame's single-component tables: one call per channel, escapes last."""
  escaped = []
  for c in range(q_TxC.shape[1]):
    lo, hi = tables.lo_C[c], tables.hi_C[c]
    col = q_TxC[:, c]
    outside = (col < lo) | (col > hi)
    writer.categorical(np.where(outside, tables.bins_C[c], col - lo), tables.freq(c, tables.weights))
    escaped.append(col[outside])
  writer.uniform(np.concatenate(escaped) + Q_LIMIT, 2 * Q_LIMIT)


def decode_independent(reader: coder.Reader, num_frames: int, tables: FrameTables) -> np.ndarray:
  channels = len(tables.lo_C)
  sym_CxT = np.stack([reader.categorical(num_frames, tables.freq(c, tables.weights))
                      for c in range(channels)])
  q_CxT = sym_CxT + tables.lo_C[:, None]
  outside = sym_CxT == tables.bins_C[:, None]
  q_CxT[outside] = reader.uniform(int(outside.sum()), 2 * Q_LIMIT) - Q_LIMIT
  return q_CxT.T


def encode_frame(writer: coder.Writer, q_C: np.ndarray, tables: FrameTables) -> None:
  """One frame, channel by channel, each under the mixture conditioned on the channels before."""
  weights = tables.weights
  for c, q in enumerate(q_C.tolist()):
    s = tables.symbol(c, q)
    writer.categorical(np.array([s]), tables.freq(c, weights))
    if s == tables.bins_C[c]:
      writer.uniform(np.array([q + Q_LIMIT]), 2 * Q_LIMIT)
    weights = tables.reweighted(c, weights, q)


def decode_frame(reader: coder.Reader, tables: FrameTables) -> np.ndarray:
  weights = tables.weights
  q_C = np.zeros(len(tables.lo_C), np.int64)
  for c in range(len(q_C)):
    s = int(reader.categorical(1, tables.freq(c, weights))[0])
    q = s + int(tables.lo_C[c]) if s < tables.bins_C[c] else int(reader.uniform(1, 2 * Q_LIMIT)[0]) - Q_LIMIT
    q_C[c] = q
    weights = tables.reweighted(c, weights, q)
  return q_C


def encode_sequence(q_TxC: np.ndarray, steps_C: np.ndarray, prior) -> bytes:
  """The coded bytes of bin indices [Tz, C] under a prior (vae_jax.codec.priors)."""
  writer = coder.Writer()
  t, c = q_TxC.shape
  if prior.independent:
    encode_independent(writer, q_TxC, FrameTables(prior.frame(c), steps_C))
  else:
    buffer = np.zeros((prior.padded(t), c), np.float32)
    buffer[:t] = dequantise(q_TxC, steps_C)
    for i, mix in enumerate(prior.mixtures(buffer, t, slice(0, t))):
      encode_frame(writer, q_TxC[i], FrameTables(mix, steps_C))
  return writer.finish()


def decode_sequence(data: bytes, num_frames: int, steps_C: np.ndarray, prior) -> np.ndarray:
  """Bin indices [Tz, C] from encode_sequence's bytes; coder.Exhausted if the stream does not fit."""
  reader = coder.Reader(data)
  c = len(steps_C)
  if prior.independent:
    q_TxC = decode_independent(reader, num_frames, FrameTables(prior.frame(c), steps_C))
  else:
    q_TxC = np.zeros((num_frames, c), np.int64)
    buffer = np.zeros((prior.padded(num_frames), c), np.float32)
    for t in range(num_frames):
      (mix,) = prior.mixtures(buffer, num_frames, slice(t, t + 1))
      q_TxC[t] = decode_frame(reader, FrameTables(mix, steps_C))
      buffer[t] = dequantise(q_TxC[t:t + 1], steps_C)[0]
  reader.check_end()
  return q_TxC
