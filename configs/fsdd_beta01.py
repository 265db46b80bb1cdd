"""configs/fsdd.py at beta = 0.1: a higher-rate point of the VAE codec's rate-distortion curve.

  python train.py --config=configs/fsdd_beta01.py            # workdir runs/fsdd_beta01
  python eval.py --workdir=runs/fsdd_beta01 --compress a.wav --out=/tmp/vjx

Runtime: 14 min 24 s on 2 CPU cores (Intel Xeon, machine shared with two other trainings).
Measured (test split, step 8000): log-mel MSE 0.165, -ELBO 6.28 nats/frame; KL rate 2.57 kbit/s on
the first 100 test clips; coded at --quant_step=4: 3.02 kbit/s (format version 2 files), STOI
0.882, PESQ 3.18; at 16: 1.99 kbit/s, 0.866, 3.06.
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.loss.beta = 0.1  # More nats in the latents: a higher coded rate, sharper reconstructions.
  return c
