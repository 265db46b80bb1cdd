"""The synthetic corpus, larger and trained longer than the default: for latent-space studies.

  python train.py --config=configs/synthetic.py

Twice the speakers of configs/default.py (16 voices, 250 utterances each) and 1.5x
the steps, so that speaker, vowel and f0 have room to separate in the latent space.
Runtime: 23 min 15 s on 2 CPU cores (AMD EPYC) while two other training runs shared them;
alone, expect about 11 min (the step rate of configs/default.py, 10 steps/s, over 6000 steps).
Measured at step 6000 on the synthetic test split: log-mel MSE 0.122 (default: 0.137),
-ELBO -24.19 nats/frame, KL 2.91 nats/frame.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.synthetic.num_speakers = 16
  c.synthetic.utterances_per_speaker = 250
  c.train.num_steps = 6000
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
