"""Baseline: the classic frame-level MLP VAE (64 mels -> 128 -> 64 -> z per frame) on FSDD.

  python train.py --config=configs/mlp.py

Four latent numbers per frame, the same rate as the conv VAE's 16 channels at a quarter
of the frame rate, so the two are compared at equal latent bandwidth.
Measured figures: see README.md.
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.model.name = "mlp"
  c.model.latent_channels = 4
  c.model.mlp_hidden = (128, 64)
  return c
