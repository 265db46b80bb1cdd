"""configs/fsdd.py at beta = 1: a lower-rate point of the VAE codec's rate-distortion curve.

  python train.py --config=configs/fsdd_beta1.py             # workdir runs/fsdd_beta1
  python eval.py --workdir=runs/fsdd_beta1 --compress a.wav --out=/tmp/vjx

Runtime: 9 min 12 s on 2 CPU cores (Intel Xeon, machine shared, features cached).
Measured (test split, step 8000): log-mel MSE 0.193, -ELBO 3.26 nats/frame; KL rate 0.85 kbit/s on
the first 100 test clips; coded at --quant_step=2: 1.66 kbit/s (format version 2 files), STOI
0.857, PESQ 2.89 (Codec2 2400: 2.45 kbit/s, 0.778, 2.42); at 6: 1.09 kbit/s, 0.841, 2.80; at 12:
0.84 kbit/s, 0.797, 2.50.
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.loss.beta = 1.0  # The true ELBO: fewer nats in the latents, a lower coded rate.
  return c
