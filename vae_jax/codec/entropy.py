"""Integer probability tables of quantised latents under a diagonal Gaussian mixture, bit-exact anywhere.

A latent z is quantised to the bin index q = rint(z / step); bin q covers
[(q - 1/2) step, (q + 1/2) step]. A table covers a window of bins [lo, hi] and
one escape symbol for everything outside it. Each symbol's probability is the
mixture's mass over its bins, scaled to integers that sum to TOTAL = 2^PRECISION
with at least 1 each, the form constriction's coders take.

Every float operation here is an IEEE-754 basic operation (+, -, *, /, floor,
rint, ldexp) applied elementwise in float64, and sums over mixture components
are explicit loops: numpy's exp/erf (SIMD code paths chosen per CPU) and its
pairwise reductions (grouping chosen per array shape) could differ in the last
bit between machines or between the encoder's batched and the decoder's
frame-by-frame shapes, and one differing table desynchronises the stream.
"""

import math

import numba
import numpy as np

PRECISION = 24  # constriction's default coders quantise probabilities to 24 bits.
TOTAL = 1 << PRECISION
# Integer mass kept back for the escape symbol, so rounding can never overfill a table.
_SLACK = 16
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^11.
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2_HI = 1.0 / _LN2_HI
_EXP_TAYLOR = np.array([1.0 / np.prod(np.arange(1, n + 1, dtype=np.float64)) for n in range(14)])
# Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7 everywhere).
_ERFC_COEFFS = np.array([-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                         -1.13520398, 1.48851587, -0.82215223, 0.17087277])
_INV_SQRT2 = 1.0 / np.sqrt(2.0)


_jit = numba.njit(cache=True, nogil=True)  # No fastmath: IEEE operations in program order, no FMA.


@_jit
def exp_scalar(x: float) -> float:
  """exp(x) in float64 from basic operations only (relative error < 1e-15)."""
  x = min(max(x, -700.0), 700.0)
  k = np.rint(x * _INV_LN2_HI)
  r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2.
  p = _EXP_TAYLOR[-1]
  for i in range(len(_EXP_TAYLOR) - 2, -1, -1):
    p = p * r + _EXP_TAYLOR[i]
  return math.ldexp(p, int(k))


@_jit
def tail_scalar(x: float) -> float:
  """P(N(0, 1) > |x|), from Numerical Recipes' erfc."""
  u = abs(x) * _INV_SQRT2
  t = 1.0 / (1.0 + 0.5 * u)
  poly = _ERFC_COEFFS[-1]
  for i in range(len(_ERFC_COEFFS) - 2, -1, -1):
    poly = poly * t + _ERFC_COEFFS[i]
  return 0.5 * t * exp_scalar(poly - u * u)


exp_det = numba.vectorize(["float64(float64)"], cache=True)(exp_scalar)
exp_det.__doc__ = "exp(x) elementwise (exp_scalar)."
gauss_tail = numba.vectorize(["float64(float64)"], cache=True)(tail_scalar)
gauss_tail.__doc__ = "P(N(0, 1) > |x|) elementwise (tail_scalar)."


def edge_masses(edges: np.ndarray) -> np.ndarray:
  """P(e_i < N(0, 1) < e_i+1) [..., n] for increasing edges [..., n + 1], from the tails at each edge once.

  Masses come from the tails so that no small mass is a difference of two near-ones.
  """
  tail = gauss_tail(edges)
  a, b, ta, tb = edges[..., :-1], edges[..., 1:], tail[..., :-1], tail[..., 1:]
  mass = np.where(b <= 0, tb - ta, np.where(a >= 0, ta - tb, (1.0 - ta) - tb))
  return np.maximum(mass, 0.0)


def component_masses(lo_q: np.ndarray, num_bins: int, step: np.ndarray, mean: np.ndarray,
                     scale: np.ndarray) -> np.ndarray:
  """Masses [..., num_bins] of bins lo_q .. lo_q + num_bins - 1 under N(mean, scale^2) (broadcast)."""
  lo_q, step = np.asarray(lo_q, np.float64)[..., None], np.asarray(step, np.float64)[..., None]
  mean, scale = np.asarray(mean, np.float64)[..., None], np.asarray(scale, np.float64)[..., None]
  return edge_masses(((lo_q + np.arange(num_bins + 1, dtype=np.float64) - 0.5) * step - mean) / scale)


def frequencies(masses_N: np.ndarray) -> np.ndarray:
  """Integer frequencies [N + 1] (the last one: escape) of bin masses [N]: >= 1 each, summing to TOTAL."""
  n = masses_N.shape[-1] + 1
  free = TOTAL - n - _SLACK
  body = np.floor(np.minimum(masses_N, 1.0) * free).astype(np.int64) + 1
  # Masses sum to <= 1 + 1e-6, so the floors overfill `free` by at most a few units: the slack absorbs it.
  escape = TOTAL - body.sum(-1, keepdims=True)
  return np.concatenate([body, escape], -1)


# The learned prior's tables (format version 3), built once per latent frame while coding, so
# speed matters: each component's mass is counted only on the bins within SUPPORT_SIGMAS of its
# scales from its mean, and the tail comes from a table of tail_scalar at 1/_TAIL_TICKS steps,
# interpolated linearly (absolute error < 5e-7; the fit itself is within 1.2e-7): 6 ns a bin
# edge instead of 44 here. The table is computed from basic operations too, so it is the same
# everywhere, and the interpolation is monotone, so no mass is negative.
SUPPORT_SIGMAS = 8.0
WINDOW_WEIGHT = 1e-3  # Lighter components are left out of a frame's tables (the rest renormalised).
Z_RANGE = 8.0  # Windows stay within |z| <= Z_RANGE (the aggregate posterior has std <= ~1) ...
MAX_HALF_BINS = 4095  # ... and this many bins either side of 0 (a table size cap).
_TAIL_TICKS = 256
_TAIL_TABLE = gauss_tail(np.arange(9 * _TAIL_TICKS + 2) / _TAIL_TICKS)  # |x| <= 9; 0 beyond.
_TAIL_LAST = float(9 * _TAIL_TICKS)


@_jit
def tail_fast(x: float) -> float:
  """tail_scalar(x) interpolated in _TAIL_TABLE; 0 for |x| >= 9 (the tail there is < 1.2e-19)."""
  u = abs(x) * _TAIL_TICKS
  if u >= _TAIL_LAST:
    return 0.0
  j = int(u)
  return _TAIL_TABLE[j] + (_TAIL_TABLE[j + 1] - _TAIL_TABLE[j]) * (u - j)


@_jit
def mixture_tables(weights_K, mean_KxC, scale_KxC, steps_C):
  """(lo_C, freq_CxS) of one latent frame: channel c's table over bins lo_c .. lo_c + S - 2, escape last.

  Each channel is coded under the mixture's marginal for it (one table per channel, all
  of the same size S, so that a frame is one call of the coder).
  """
  k_n, c_n = mean_KxC.shape
  total = 0.0
  for k in range(k_n):
    if weights_K[k] >= WINDOW_WEIGHT:
      total += weights_K[k]
  first = np.empty((k_n, c_n), np.int64)  # Each component's support [first, last] in bins.
  last = np.empty((k_n, c_n), np.int64)
  lo = np.full(c_n, MAX_HALF_BINS, np.int64)
  hi = np.full(c_n, -MAX_HALF_BINS, np.int64)
  for c in range(c_n):
    limit = min(np.ceil(Z_RANGE / steps_C[c]), float(MAX_HALF_BINS))
    for k in range(k_n):
      if weights_K[k] >= WINDOW_WEIGHT:
        reach = SUPPORT_SIGMAS * scale_KxC[k, c]
        a = min(max(np.rint((mean_KxC[k, c] - reach) / steps_C[c]), -limit), limit)
        b = min(max(np.rint((mean_KxC[k, c] + reach) / steps_C[c]), -limit), limit)
        first[k, c], last[k, c] = int(a), int(b)
        lo[c], hi[c] = min(lo[c], int(a)), max(hi[c], int(b))
  width = 1
  for c in range(c_n):
    width = max(width, hi[c] - lo[c] + 1)
  mass_CxW = np.zeros((c_n, width))
  for k in range(k_n):
    if weights_K[k] < WINDOW_WEIGHT:
      continue
    w = weights_K[k] / total
    for c in range(c_n):
      step, mean, inv_scale = steps_C[c], mean_KxC[k, c], 1.0 / scale_KxC[k, c]
      a = ((first[k, c] - 0.5) * step - mean) * inv_scale
      ta = tail_fast(a)
      for q in range(first[k, c], last[k, c] + 1):
        b = ((q + 0.5) * step - mean) * inv_scale
        tb = tail_fast(b)
        if b <= 0:
          m = tb - ta
        elif a >= 0:
          m = ta - tb
        else:
          m = (1.0 - ta) - tb
        mass_CxW[c, q - lo[c]] += w * max(m, 0.0)
        a, ta = b, tb
  free = TOTAL - (width + 1) - _SLACK
  freq = np.empty((c_n, width + 1), np.int64)
  for c in range(c_n):
    used = 0
    for i in range(width):
      f = int(np.floor(min(mass_CxW[c, i], 1.0) * free)) + 1
      freq[c, i] = f
      used += f
    freq[c, width] = TOTAL - used
  return lo, freq
