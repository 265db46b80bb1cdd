"""Trains a speech VAE: `python train.py [--config=fsdd|configs/x.py] [--config.a.b=value] [--workdir=W]`.

The same command as the installed `vae-jax-train`; flags and main live in vae_jax/entry.py.
"""

from vae_jax.entry import train_main  # Light: train_main installs the stop-signal handlers first.

if __name__ == "__main__":
  train_main()
