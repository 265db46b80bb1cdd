"""Baseline: the deterministic autoencoder (beta = 0, z = posterior mean) on FSDD.

  python train.py --config=configs/fsdd_ae.py
  python eval.py --workdir=runs/fsdd --baseline_workdir=runs/fsdd_ae

Same architecture and latent size as configs/fsdd.py; only the KL term and the sampling go.
Measured figures: see README.md.
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.model.deterministic = True
  c.loss.beta = 0.0
  c.loss.kl_warmup_steps = 0
  return c
