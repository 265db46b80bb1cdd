"""Ancestral sampling from the latent prior, with classifier-free guidance and prompts.

Sample i is a function of its own key only (keys_N[i], folded with the frame
index), so it does not depend on how many samples are drawn together. Frames
are drawn one at a time; each draw runs the causal transformer over the whole
buffer, whose frames at and after the current one cannot influence it.
"""

import functools

import jax
import jax.numpy as jnp

from vae_jax.prior.model import LatentPrior, guide, sample_mixture
from vae_jax.rng import stream_keys


@functools.partial(jax.jit, static_argnames=("model", "num_frames", "guided"))
def sample_latents(model: LatentPrior, params, keys_N: jax.Array, lengths_N: jax.Array,
                   labels_NxL: jax.Array, prompt_NxTxC: jax.Array, prompt_frames_N: jax.Array, *,
                   num_frames: int, guidance: jax.Array | float = 1.0, temperature: jax.Array | float = 1.0,
                   guided: bool = False) -> jax.Array:
  """Latent sequences [N, num_frames, C], zero past each length; frames < prompt_frames are the prompt's.

  `guided` runs the unconditional pass too and mixes the two with `guidance`
  (vae_jax.prior.model.guide); without it the conditional model is sampled.
  """
  unknown = jnp.broadcast_to(jnp.asarray(model.num_classes, jnp.int32), labels_NxL.shape)
  frame_ids = jnp.arange(num_frames)
  z0 = prompt_NxTxC * (frame_ids[None, :] < prompt_frames_N[:, None])[..., None]

  def params_at(z, t, labels):
    p = model.apply({"params": params}, z, lengths_N, labels)
    return jax.tree.map(lambda x: x[:, t], p)

  def body(t, z):
    p = params_at(z, t, labels_NxL)
    if guided:
      p = guide(p, params_at(z, t, unknown), guidance)
    keys = stream_keys(keys_N, t)
    z_t = jax.vmap(sample_mixture, (0, 0, None))(keys, p, temperature)
    keep = (t < prompt_frames_N)[:, None]
    valid = (t < lengths_N)[:, None]
    z_t = jnp.where(keep, z[:, t], jnp.where(valid, z_t, 0.0))
    return z.at[:, t].set(z_t)

  return jax.lax.fori_loop(0, num_frames, body, z0)
