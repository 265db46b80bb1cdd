"""Tiny prior for tests: over a configs/smoke.py VAE run, conditioned on speaker and word.

  python train.py --config=configs/smoke.py --workdir=/tmp/smoke
  python train.py --config=configs/smoke_prior.py --config.prior.vae_workdir=/tmp/smoke --workdir=/tmp/smoke_prior
"""

from configs import default


def get_config():
  c = default.get_config()
  c.kind = "prior"
  c.prior.vae_workdir = "runs/smoke"
  c.prior.conditions = ("speaker", "word")
  c.prior.width = 32
  c.prior.depth = 2
  c.prior.heads = 2
  c.prior.num_mixtures = 2
  c.prior.dropout = 0.1  # So that the resume test covers the dropout keys.
  c.prior.eval_samples = 1
  c.optim.warmup_steps = 5
  c.train.num_steps = 30
  c.train.batch_size = 8
  c.train.log_every = 10
  c.train.eval_every = 15
  c.train.checkpoint_every = 15
  c.eval.iwae_samples = 4
  return c
