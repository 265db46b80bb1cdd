"""Encoder/decoder modules and the VAE."""

from vae_jax.models.vae import VAE, build_model, time_stride  # noqa: F401
