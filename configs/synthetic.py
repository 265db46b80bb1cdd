"""The synthetic corpus, larger and trained longer than the default: for latent-space studies.

  python train.py --config=configs/synthetic.py

Twice the speakers of configs/default.py (16 voices, 250 utterances each) and twice
the steps, so that speaker, vowel and f0 have room to separate in the latent space.
{{SYNTHETIC_FIGURES}}
"""

from configs import default


def get_config():
  c = default.get_config()
  c.synthetic.num_speakers = 16
  c.synthetic.utterances_per_speaker = 250
  c.train.num_steps = 8000
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
