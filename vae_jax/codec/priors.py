"""Entropy models of latent sequences: the standard Gaussian N(0, I) and a learned prior's mixtures.

Both give, per latent frame, a diagonal Gaussian mixture over its C channels:
weights [K] and means, scales [K, C] as float64 on a fixed grid. The learned
prior's parameters come from a JAX forward pass over the *dequantised* latents of
the frames before; encoder and decoder run the same jitted function on the same
buffer shape [1, T_pad, C], whose causal mask makes frame t's output depend only
on frames < t, and round its float32 output to a 2^-12 grid before any table is
built, so last-bit differences of the pass can only matter at a grid boundary.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.codec import entropy
from vae_jax.prior.training import params_hash

_GRID = 4096.0  # Mixture parameters are rounded to multiples of 1 / _GRID.
# Latent buffers are padded to a multiple of this many frames: one program per 8 frames of length.
_LENGTH_MULTIPLE = 8


def model_hash(trained) -> str:
  """Hash of what decoding depends on: the model and feature configs, parameters and normaliser.

  Other config fields (paths, training settings) are left out, so that a run copied
  elsewhere or evaluated with other data settings still decodes its files.
  """
  config = {k: trained.config[k].to_dict() for k in ("model", "features")}
  norm = {"mean": trained.normalizer.mean, "std": trained.normalizer.std}
  return params_hash({"params": trained.params, "normalizer": norm}, json.dumps(config, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class FrameMixture:
  """One frame's mixture: weights (list of K arrays, shape []), means and scales [K, C], float64."""

  weights: list[np.ndarray]
  mean_KxC: np.ndarray
  scale_KxC: np.ndarray


def _on_grid(x: np.ndarray) -> np.ndarray:
  return np.rint(np.asarray(x, np.float64) * _GRID) / _GRID


class StandardPrior:
  """N(0, I) per latent element: one component, the same for every frame."""

  kind = 0
  hash = ""
  independent = True  # Frames and channels are independent: tables do not depend on the past.

  def frame(self, channels: int) -> FrameMixture:
    return FrameMixture([np.float64(1.0)], np.zeros((1, channels)), np.ones((1, channels)))


class LearnedPrior:
  """The unconditional mixtures of a TrainedPrior (vae_jax.prior), given the frames before."""

  kind = 1
  independent = False

  def __init__(self, trained_prior):
    self.model, self.params = trained_prior.model, trained_prior.params
    self.hash = params_hash(self.params)
    self._unknown = jnp.asarray(self.model.num_classes, jnp.int32)[None]

  @functools.cached_property
  def _apply(self):
    model = self.model

    @jax.jit
    def apply(params, z_1xTxC, length_1, labels_1xL):
      return model.apply({"params": params}, z_1xTxC, length_1, labels_1xL)

    return apply

  @staticmethod
  def padded(num_frames: int) -> int:
    return -(-num_frames // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE

  def mixtures(self, zhat_TpadxC: np.ndarray, num_frames: int, frames: slice) -> list[FrameMixture]:
    """Mixtures of `frames` given the dequantised buffer [T_pad, C] (only frames before each matter)."""
    p = self._apply(self.params, jnp.asarray(zhat_TpadxC[None], jnp.float32),
                    jnp.asarray([num_frames], jnp.int32), self._unknown)
    p = {k: _on_grid(np.asarray(jax.device_get(v))[0, frames]) for k, v in p.items()}
    weights = entropy.softmax_det(p["logits"])
    return [FrameMixture([w[i] for w in weights], p["mean"][i], entropy.exp_det(p["log_scale"][i]))
            for i in range(len(p["logits"]))]
