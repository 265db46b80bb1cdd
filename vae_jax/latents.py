"""Pure functions on latent sequences z_TzxC (numpy): paths, prior samples, traversals, arithmetic.

Nothing here knows about models; decode the results with `vae_jax.inference.Trained.decode`.
"""

from typing import Sequence

import numpy as np


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
  """(1 - t) a + t b."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (1.0 - t) * a + t * b


def slerp(a: np.ndarray, b: np.ndarray, t: float, axis: int | None = None,
          eps: float = 1e-7) -> np.ndarray:
  """Spherical interpolation of a and b, over all elements (axis=None) or along `axis`.

  The usual sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b, w the angle between
  a and b: it follows the great circle between their directions, and when
  |a| = |b| every point on the path has that norm too (lerp cuts the corner and
  shrinks towards the origin). Parallel or anti-parallel vectors (sin w < eps)
  and zero vectors have no unique great circle: those fall back to lerp.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"slerp needs equal shapes, got {a.shape} and {b.shape}")
  if axis is None:
    return _slerp_flat(a.reshape(-1), b.reshape(-1), t, eps).reshape(a.shape)
  a_m, b_m = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
  flat = [_slerp_flat(x, y, t, eps) for x, y in zip(a_m.reshape(-1, a_m.shape[-1]),
                                                    b_m.reshape(-1, b_m.shape[-1]))]
  return np.moveaxis(np.stack(flat).reshape(a_m.shape), -1, axis)


def _slerp_flat(a_D: np.ndarray, b_D: np.ndarray, t: float, eps: float) -> np.ndarray:
  na, nb = np.linalg.norm(a_D), np.linalg.norm(b_D)
  if na == 0 or nb == 0:
    return lerp(a_D, b_D, t)
  cos = np.clip(np.dot(a_D, b_D) / (na * nb), -1.0, 1.0)
  omega = np.arccos(cos)
  sin = np.sin(omega)
  if sin < eps:
    return lerp(a_D, b_D, t)
  return (np.sin((1.0 - t) * omega) * a_D + np.sin(t * omega) * b_D) / sin


def interpolation_path(a: np.ndarray, b: np.ndarray, steps: int, method: str = "slerp",
                       axis: int | None = None) -> np.ndarray:
  """[steps, ...] points from a (first) to b (last) at evenly spaced t, by 'lerp' or 'slerp'."""
  if steps < 2:
    raise ValueError(f"an interpolation path needs at least 2 steps, got {steps}")
  if method == "lerp":
    return np.stack([lerp(a, b, t) for t in np.linspace(0.0, 1.0, steps)])
  if method == "slerp":
    return np.stack([slerp(a, b, t, axis=axis) for t in np.linspace(0.0, 1.0, steps)])
  raise ValueError(f"unknown interpolation method {method!r}: use 'lerp' or 'slerp'")


def time_resample(z_TxC: np.ndarray, num_frames: int) -> np.ndarray:
  """Linear resampling along time to num_frames, keeping the first and last frames."""
  z = np.asarray(z_TxC, np.float64)
  if num_frames < 1 or len(z) < 1:
    raise ValueError(f"cannot resample {len(z)} frames to {num_frames}")
  if len(z) == 1:
    return np.repeat(z, num_frames, axis=0)
  src = np.linspace(0.0, len(z) - 1.0, num_frames)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, len(z) - 1)
  w = (src - lo)[:, None]
  return (1.0 - w) * z[lo] + w * z[hi]


def align(a_TxC: np.ndarray, b_TxC: np.ndarray, mode: str = "resample") -> tuple[np.ndarray, np.ndarray]:
  """Both sequences at the shorter length: the longer is time-resampled ('resample') or cut ('crop')."""
  t = min(len(a_TxC), len(b_TxC))
  if mode == "crop":
    return np.asarray(a_TxC)[:t], np.asarray(b_TxC)[:t]
  if mode == "resample":
    fit = lambda z: np.asarray(z) if len(z) == t else time_resample(z, t)
    return fit(a_TxC), fit(b_TxC)
  raise ValueError(f"unknown alignment {mode!r}: use 'resample' or 'crop'")


def sample_prior(seed: int, latent_frames_N: Sequence[int], channels: int,
                 temperature: float = 1.0) -> list[np.ndarray]:
  """Draws [Tz_i, C] from the standard normal prior scaled by `temperature`, one length per draw.

  Draw i depends only on (seed, i): the same seed at another temperature gives the same
  draws scaled, and asking for more draws keeps the first ones.
  """
  return [temperature * np.random.default_rng([seed % 2**32, i]).standard_normal((int(t), channels))
          for i, t in enumerate(latent_frames_N)]


def traverse(z_TzxC: np.ndarray, channel: int, shifts: Sequence[float]) -> np.ndarray:
  """[len(shifts), Tz, C]: copies of z with one channel shifted by each value at every frame."""
  z = np.asarray(z_TzxC, np.float64)
  out = np.repeat(z[None], len(shifts), axis=0)
  out[:, :, channel] += np.asarray(shifts, np.float64)[:, None]
  return out


def top_channels(kl_per_channel_C: np.ndarray, n: int) -> np.ndarray:
  """Indices of the n channels with the most KL, most first."""
  kl = np.asarray(kl_per_channel_C)
  return np.argsort(-kl, kind="stable")[:n]


def pooled(z_TzxC: np.ndarray) -> np.ndarray:
  """Time average [C] of a latent sequence."""
  return np.asarray(z_TzxC, np.float64).mean(0)


def attribute_direction(with_attr: Sequence[np.ndarray], without_attr: Sequence[np.ndarray]) -> np.ndarray:
  """[C]: mean time-pooled latent of utterances with an attribute minus those without."""
  return (np.mean([pooled(z) for z in with_attr], axis=0)
          - np.mean([pooled(z) for z in without_attr], axis=0))


def add_direction(z_TzxC: np.ndarray, direction_C: np.ndarray, scale: float = 1.0) -> np.ndarray:
  """z + scale * direction at every latent frame."""
  return np.asarray(z_TzxC, np.float64) + scale * np.asarray(direction_C, np.float64)[None]
