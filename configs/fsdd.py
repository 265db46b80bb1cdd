"""Conv VAE on the Free Spoken Digit Dataset (8 kHz, 64 mels, 16 latent channels at 1/4 frame rate).

  python train.py --config=configs/fsdd.py
  python train.py --config=configs/fsdd.py --config.data.path=/path/to/recordings

Measured figures: see README.md.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.corpus = "fsdd"
  c.data.path = default.fsdd_default_path()
  c.features.sample_rate = 8000
  c.features.n_fft = 256
  c.features.win_length = 256
  c.features.hop_length = 64
  c.features.fmax = 4000.0
  c.features.n_mels = 64
  return c
