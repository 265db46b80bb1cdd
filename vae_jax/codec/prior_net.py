"""The learned prior's forward pass for entropy coding: one latent frame per call, bit for bit anywhere.

The codec's tables must come out the same in the encoder and in the decoder, on any
machine. XLA and BLAS pick summation orders per CPU and per shape, so the flax
model's float32 outputs can differ in their last bits between machines (and between
a whole-sequence pass and a cached one), and one differing table desynchronises the
stream. Here the same parameters are evaluated by numba loops in which every sum runs
in one fixed order, with no fused multiply-adds (numba's default), and whose only
transcendental function is an exp made of basic IEEE operations: frame t's
mixture is a function of the parameters and of frames < t alone, the same on every
machine. Keys and values of the frames before are cached, so a frame costs one
transformer position: about 0.12 ms for configs/fsdd_prior.py's prior on 2 CPU cores,
where a jitted flax step with flax's key-value cache took 0.7-1.1 ms (XLA's per-op
overhead on small CPU programs) and a whole-buffer pass per frame 1.3-1.6 ms.

It computes what vae_jax.prior.model.LatentPrior computes (unknown labels, i.e. the
unconditional model; tests check agreement to float32 precision), not its bits.
"""

from typing import NamedTuple

import numba
import numpy as np

_F32 = np.float32
_LN_EPS = 1e-6  # flax.linen.LayerNorm's epsilon.
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
# exp for a float32 network: x = k ln 2 + r with |r| <= ln(2) / 2, e^r by its Taylor polynomial of
# degree 7 (relative error < 6e-9, a tenth of float32's), times 2^k built from its exponent bits.
_LN2 = float(np.log(2.0))
_INV_LN2 = 1.0 / _LN2
_EXP_MAX = 87.0  # exp(+-87) spans float32's range (and 2^k stays a normal float64).
_TAYLOR7 = np.array([1.0 / np.prod(np.arange(1.0, n + 1)) for n in range(8)])


class Net(NamedTuple):
  """A LatentPrior's parameters as float32 arrays, the per-block ones stacked over blocks [L, ...]."""

  in_w: np.ndarray  # [C, D] projection of the frame before.
  in_b: np.ndarray
  start: np.ndarray  # [D] input of frame 0.
  position: np.ndarray  # [P, D]
  remaining: np.ndarray  # [P + 1, D]
  labels: np.ndarray  # [D]: the sum of every label's "unknown" embedding.
  ln0_s: np.ndarray  # [L, D]
  ln0_b: np.ndarray
  qkv_w: np.ndarray  # [L, D, 3 D]: query, key, value (head-major columns).
  qkv_b: np.ndarray
  out_w: np.ndarray  # [L, D, D]
  out_b: np.ndarray
  ln1_s: np.ndarray
  ln1_b: np.ndarray
  mlp0_w: np.ndarray  # [L, D, M]
  mlp0_b: np.ndarray
  mlp1_w: np.ndarray  # [L, M, D]
  mlp1_b: np.ndarray
  final_s: np.ndarray  # [D]
  final_b: np.ndarray
  head_w: np.ndarray  # [D, K + 2 K C]: logits, means, log-scales.
  head_b: np.ndarray
  heads: int
  mixtures: int


def pack(model, params) -> Net:
  """The Net of a LatentPrior module and its parameters (unknown labels)."""
  f = lambda x: np.ascontiguousarray(np.asarray(x, _F32))
  d = model.width
  blocks = [params[f"Block_{i}"] for i in range(model.depth)]
  att = [b["MultiHeadDotProductAttention_0"] for b in blocks]
  stack = lambda fn: f(np.stack([fn(i) for i in range(model.depth)]))
  labels = np.zeros(d, _F32)
  for i, n in enumerate(model.num_classes):
    labels = labels + f(params[f"label_{i}"]["embedding"][n])
  return Net(
      in_w=f(params["Dense_0"]["kernel"]), in_b=f(params["Dense_0"]["bias"]), start=f(params["start"]),
      position=f(params["position"]["embedding"]), remaining=f(params["remaining"]["embedding"]),
      labels=labels,
      ln0_s=stack(lambda i: blocks[i]["LayerNorm_0"]["scale"]), ln0_b=stack(lambda i: blocks[i]["LayerNorm_0"]["bias"]),
      qkv_w=stack(lambda i: np.concatenate([np.reshape(att[i][n]["kernel"], (d, d)) for n in ("query", "key", "value")], 1)),
      qkv_b=stack(lambda i: np.concatenate([np.ravel(att[i][n]["bias"]) for n in ("query", "key", "value")])),
      out_w=stack(lambda i: np.reshape(att[i]["out"]["kernel"], (d, d))), out_b=stack(lambda i: att[i]["out"]["bias"]),
      ln1_s=stack(lambda i: blocks[i]["LayerNorm_1"]["scale"]), ln1_b=stack(lambda i: blocks[i]["LayerNorm_1"]["bias"]),
      mlp0_w=stack(lambda i: blocks[i]["Dense_0"]["kernel"]), mlp0_b=stack(lambda i: blocks[i]["Dense_0"]["bias"]),
      mlp1_w=stack(lambda i: blocks[i]["Dense_1"]["kernel"]), mlp1_b=stack(lambda i: blocks[i]["Dense_1"]["bias"]),
      final_s=f(params["LayerNorm_0"]["scale"]), final_b=f(params["LayerNorm_0"]["bias"]),
      head_w=f(np.concatenate([params[n]["kernel"] for n in ("logits", "mean", "log_scale")], 1)),
      head_b=f(np.concatenate([params[n]["bias"] for n in ("logits", "mean", "log_scale")])),
      heads=model.heads, mixtures=model.num_mixtures)


def empty_cache(net: Net, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Keys and values [L, T, D] of the frames coded so far (none yet)."""
  shape = (net.ln0_s.shape[0], num_frames, net.in_b.shape[0])
  return np.zeros(shape, _F32), np.zeros(shape, _F32)


_jit = numba.njit(cache=True, nogil=True)


@_jit
def _dense(x_I, w_IxO, b_O):
  """x @ w + b in float32; output o sums over i in increasing order (the loop over o vectorises)."""
  acc = np.zeros(w_IxO.shape[1], _F32)
  for i in range(x_I.shape[0]):
    xi = x_I[i]
    for o in range(acc.shape[0]):
      acc[o] += xi * w_IxO[i, o]
  for o in range(acc.shape[0]):
    acc[o] += b_O[o]
  return acc


@_jit
def _layer_norm(x_D, scale_D, bias_D):
  n = x_D.shape[0]
  mean = 0.0
  for i in range(n):
    mean += x_D[i]
  mean /= n
  var = 0.0
  for i in range(n):
    var += (x_D[i] - mean) * (x_D[i] - mean)
  inv = 1.0 / np.sqrt(var / n + _LN_EPS)
  out = np.empty(n, _F32)
  for i in range(n):
    out[i] = (x_D[i] - mean) * inv * scale_D[i] + bias_D[i]
  return out


@_jit
def _exp(x_N):
  """exp elementwise (float64), in loops that vectorise: no table lookups, no library calls."""
  n = x_N.shape[0]
  p = np.empty(n)
  bits = np.empty(n, np.int64)
  for i in range(n):
    x = min(max(x_N[i], -_EXP_MAX), _EXP_MAX)
    k = np.rint(x * _INV_LN2)
    r = x - k * _LN2
    v = _TAYLOR7[7]
    for d in range(6, -1, -1):
      v = v * r + _TAYLOR7[d]
    p[i] = v
    bits[i] = (np.int64(k) + 1023) << 52
  return p * bits.view(np.float64)


@_jit
def _gelu(y_N):
  """flax's gelu (its tanh approximation), in place: tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2 |v|)."""
  v = np.empty(y_N.shape[0])
  for i in range(v.shape[0]):
    x = float(y_N[i])
    v[i] = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
  e = _exp(-2.0 * np.abs(v))
  for i in range(v.shape[0]):
    t = (1.0 - e[i]) / (1.0 + e[i])
    y_N[i] = 0.5 * float(y_N[i]) * (1.0 + (t if v[i] >= 0 else -t))


@_jit
def _attend(q_D, keys_TxD, values_TxD, frames, heads):
  """Multi-head attention of one query over the first `frames` cached keys and values."""
  d = q_D.shape[0]
  dh = d // heads
  scale = 1.0 / np.sqrt(float(dh))
  out = np.zeros(d, _F32)
  scores = np.empty(frames)
  for h in range(heads):
    top = -np.inf
    for s in range(frames):
      dot = 0.0
      for j in range(h * dh, (h + 1) * dh):
        dot += q_D[j] * keys_TxD[s, j]
      scores[s] = dot * scale
      top = max(top, scores[s])
    scores = _exp(scores - top)
    total = 0.0
    for s in range(frames):
      total += scores[s]
    for s in range(frames):
      p = scores[s] / total
      for j in range(h * dh, (h + 1) * dh):
        out[j] += p * values_TxD[s, j]
  return out


@_jit
def step(net, keys_LxTxD, values_LxTxD, z_prev_C, t, length):
  """Frame t's mixture (weights [K], means [K, C], scales [K, C], float64) given the frame before.

  Stores frame t's keys and values in the caches; z_prev_C is unused at t = 0.
  """
  d = net.in_b.shape[0]
  p = net.position.shape[0]
  h = net.start.copy() if t == 0 else _dense(z_prev_C.astype(_F32), net.in_w, net.in_b)
  rem = min(max(length - t, 0), p)
  for j in range(d):
    h[j] = ((h[j] + net.position[min(t, p - 1), j]) + net.remaining[rem, j]) + net.labels[j]
  for layer in range(net.ln0_s.shape[0]):
    y = _layer_norm(h, net.ln0_s[layer], net.ln0_b[layer])
    qkv = _dense(y, net.qkv_w[layer], net.qkv_b[layer])
    keys_LxTxD[layer, t] = qkv[d:2 * d]
    values_LxTxD[layer, t] = qkv[2 * d:]
    att = _attend(qkv[:d], keys_LxTxD[layer], values_LxTxD[layer], t + 1, net.heads)
    h = h + _dense(att, net.out_w[layer], net.out_b[layer])
    y = _dense(_layer_norm(h, net.ln1_s[layer], net.ln1_b[layer]), net.mlp0_w[layer], net.mlp0_b[layer])
    _gelu(y)
    h = h + _dense(y, net.mlp1_w[layer], net.mlp1_b[layer])
  out = _dense(_layer_norm(h, net.final_s, net.final_b), net.head_w, net.head_b)
  k = net.mixtures
  c = (out.shape[0] - k) // (2 * k)
  logits = out[:k].astype(np.float64)
  weights = _exp(logits - logits.max())
  total = 0.0
  for i in range(k):
    total += weights[i]
  weights /= total
  mean = out[k:k + k * c].astype(np.float64).reshape(k, c)
  # The model's bounded log-scale, 5 tanh(x / 5) = 5 (1 - e) / (1 + e) with e = exp(-2 x / 5).
  e = _exp(-0.4 * out[k + k * c:].astype(np.float64))
  scale = _exp(5.0 * (1.0 - e) / (1.0 + e)).reshape(k, c)
  return weights, mean, scale
