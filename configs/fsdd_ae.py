"""Baseline: the deterministic autoencoder (beta = 0, z = posterior mean) on FSDD.

  python train.py --config=configs/fsdd_ae.py
  python eval.py --workdir=runs/fsdd --baseline_workdir=runs/fsdd_ae

Same architecture and latent size as configs/fsdd.py; only the KL term and the sampling go.
Runtime: 13 min 35 s on 2 CPU cores (AMD EPYC) while the test suite shared them for
10 minutes; alone, expect about configs/fsdd.py's 9 min 30 s (the same model and 8000 steps;
it ran at the same 16 steps/s once the cores were free).
Measured at step 8000 on the FSDD test split (eval.py --baseline_workdir): log-mel MSE 0.155
(the beta = 0.3 VAE: 0.172), LSD 3.37 dB, STOI 0.929, PESQ 3.43; linear probes digit 0.94,
speaker 1.00 (VAE: 0.86, 0.99).
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.model.deterministic = True
  c.loss.beta = 0.0
  c.loss.kl_warmup_steps = 0
  return c
