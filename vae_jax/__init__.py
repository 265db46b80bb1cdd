"""vae-jax: variational autoencoders for speech in JAX."""

__version__ = "0.1.0"
