"""Baseline: the deterministic autoencoder (beta = 0, z = posterior mean) on FSDD.

  python train.py --config=configs/fsdd_ae.py
  python eval.py --workdir=runs/fsdd --baseline_workdir=runs/fsdd_ae

Same architecture and latent size as configs/fsdd.py; only the KL term and the sampling go.
Runtime: 26 min 8 s on 2 CPU cores (AMD EPYC) while two other training runs shared them;
alone, expect about configs/fsdd.py's 14 min (the same model and 8000 steps).
Measured at step 8000 on the FSDD test split (eval.py --baseline_workdir): log-mel MSE 0.205
(the beta = 0.3 VAE: 0.202), LSD 3.88 dB, STOI 0.897, PESQ 2.95; linear probes digit 0.90,
speaker 1.00 (VAE: 0.85, 0.99).
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.model.deterministic = True
  c.loss.beta = 0.0
  c.loss.kl_warmup_steps = 0
  return c
