"""Entropy models of latent sequences: the standard Gaussian N(0, I) and a learned prior's mixtures.

N(0, I) gives every frame the same per-channel tables (vae_jax.codec.sequence). A
learned prior gives frame t a diagonal Gaussian mixture computed from the dequantised
frames < t by prior_net, a deterministic evaluation of the prior's parameters, and
the tables of its channels' marginals (entropy.mixture_tables); encoder and decoder
run the same coroutine, `LearnedPrior.tables`, frame by frame.
"""

import json

import numpy as np

from vae_jax.codec import entropy, prior_net
from vae_jax.prior.training import params_hash


def model_hash(trained) -> str:
  """Hash of what decoding depends on: the model and feature configs, parameters and normaliser.

  Other config fields (paths, training settings) are left out, so that a run copied
  elsewhere or evaluated with other data settings still decodes its files.
  """
  config = {k: trained.config[k].to_dict() for k in ("model", "features")}
  norm = {"mean": trained.normalizer.mean, "std": trained.normalizer.std}
  return params_hash({"params": trained.params, "normalizer": norm}, json.dumps(config, sort_keys=True))


class StandardPrior:
  """N(0, I) per latent element: one component, the same for every frame."""

  kind = 0
  hash = ""
  independent = True  # Frames and channels are independent: tables do not depend on the past.


class LearnedPrior:
  """The unconditional mixtures of a TrainedPrior (vae_jax.prior), frame by frame."""

  kind = 1
  independent = False

  def __init__(self, trained_prior):
    self.net = prior_net.pack(trained_prior.model, trained_prior.params)
    self.hash = params_hash(trained_prior.params)

  def tables(self, num_frames: int, steps_C: np.ndarray):
    """Coroutine: yields frame t's tables (lo_C, freq_CxS), then takes frame t's dequantised latent [C]."""
    keys, values = prior_net.empty_cache(self.net, num_frames)
    z_C = np.zeros(len(steps_C), np.float32)
    for t in range(num_frames):
      weights, mean, scale = prior_net.step(self.net, keys, values, z_C, t, num_frames)
      z_C = yield entropy.mixture_tables(weights, mean, scale, steps_C)
