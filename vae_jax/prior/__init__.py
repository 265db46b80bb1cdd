"""Learned priors over a trained VAE's latent sequences (kind = 'prior' configs)."""

from vae_jax.prior.trained import Draw, TrainedPrior, is_prior_workdir, load_prior  # noqa: F401
