"""Tiny adversarial fine-tuning for tests: over a configs/smoke.py VAE run.

  python train.py --config=configs/smoke.py --workdir=/tmp/smoke
  python train.py --config=configs/smoke_adversarial.py --config.adversarial.vae_workdir=/tmp/smoke \
      --workdir=/tmp/smoke_adversarial
"""

from configs import smoke


def get_config():
  c = smoke.get_config()  # The VAE's model and features sections, as fine-tuning requires.
  c.kind = "adversarial"
  c.adversarial.vae_workdir = "runs/smoke"
  c.adversarial.disc_channels = (4, 8)
  c.adversarial.disc_scales = (1, 2)
  c.optim.warmup_steps = 2
  c.train.num_steps = 12
  c.train.log_every = 4
  c.train.eval_every = 6
  c.train.checkpoint_every = 6
  c.eval.num_audio_examples = 1
  return c
