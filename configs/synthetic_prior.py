"""Learned prior over the default synthetic-corpus VAE's latents, conditioned on speaker and word.

  python train.py                                            # the VAE first: workdir runs/default
  python train.py --config=configs/synthetic_prior.py        # this prior: workdir runs/synthetic_prior
  python eval.py --workdir=runs/synthetic_prior --sample=8 --condition=speaker=spk3,word=ma
  python eval.py --workdir=runs/synthetic_prior --sample_quality

Same recipe as configs/fsdd_prior.py (see its docstring for the choices).
"""

from configs import fsdd_prior


def get_config():
  c = fsdd_prior.get_config()
  c.prior.vae_workdir = "runs/default"
  c.prior.conditions = ("speaker", "word")
  return c
