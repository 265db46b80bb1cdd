"""vae-jax: variational autoencoders for speech in JAX.

  import vae_jax
  m = vae_jax.load("runs/fsdd", step="best")   # or "latest" (the default), or a step number
  z, _ = m.encode("a.wav")

Importing the package is cheap: JAX and the rest load on the first call.
"""

__version__ = "0.1.0"
__all__ = ["load"]


def load(workdir, step="latest"):
  """A trained workdir's model (vae_jax.api.Model): encode, decode, reconstruct, sample, to_audio."""
  from vae_jax import api  # pylint: disable=g-import-not-at-top

  return api.load(workdir, step)
