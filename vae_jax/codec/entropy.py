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

import numpy as np

PRECISION = 24  # constriction's default coders quantise probabilities to 24 bits.
TOTAL = 1 << PRECISION
# Integer mass kept back for the escape symbol, so rounding can never overfill a table.
_SLACK = 16
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^11.
_LN2_LO = 1.90821492927058770002e-10
_EXP_TAYLOR = tuple(1.0 / np.prod(np.arange(1, n + 1, dtype=np.float64)) for n in range(14))
# Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7 everywhere).
_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def exp_det(x: np.ndarray) -> np.ndarray:
  """exp(x) in float64 from basic operations only (relative error < 1e-15)."""
  x = np.clip(np.asarray(x, np.float64), -700.0, 700.0)
  k = np.rint(x * (1.0 / _LN2_HI))
  r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2.
  p = np.full_like(r, _EXP_TAYLOR[-1])
  for c in _EXP_TAYLOR[-2::-1]:
    p = p * r + c
  return np.ldexp(p, k.astype(np.int64))


def gauss_tail(x: np.ndarray) -> np.ndarray:
  """P(N(0, 1) > |x|), from Numerical Recipes' erfc."""
  u = np.abs(np.asarray(x, np.float64)) * (1.0 / np.sqrt(2.0))
  t = 1.0 / (1.0 + 0.5 * u)
  poly = np.full_like(t, _ERFC_COEFFS[-1])
  for c in _ERFC_COEFFS[-2::-1]:
    poly = poly * t + c
  return 0.5 * t * exp_det(poly - u * u)


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


def mix(weights_K: list[np.ndarray], masses_K: list[np.ndarray]) -> np.ndarray:
  """sum_k weights[k] * masses[k], summed in component order (one rounding sequence on every machine)."""
  out = weights_K[0][..., None] * masses_K[0]
  for w, m in zip(weights_K[1:], masses_K[1:]):
    out = out + w[..., None] * m
  return out


def frequencies(masses_N: np.ndarray) -> np.ndarray:
  """Integer frequencies [N + 1] (the last one: escape) of bin masses [N]: >= 1 each, summing to TOTAL."""
  n = masses_N.shape[-1] + 1
  free = TOTAL - n - _SLACK
  body = np.floor(np.minimum(masses_N, 1.0) * free).astype(np.int64) + 1
  # Masses sum to <= 1 + 1e-6, so the floors overfill `free` by at most a few units: the slack absorbs it.
  escape = TOTAL - body.sum(-1, keepdims=True)
  return np.concatenate([body, escape], -1)


def softmax_det(logits_K: np.ndarray) -> list[np.ndarray]:
  """Mixture weights per component (list over the last axis) via exp_det and an ordered sum."""
  logits = np.asarray(logits_K, np.float64)
  e = exp_det(logits - logits.max(-1, keepdims=True))
  total = e[..., 0]
  for k in range(1, e.shape[-1]):
    total = total + e[..., k]
  return [e[..., k] / total for k in range(e.shape[-1])]
