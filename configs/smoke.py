"""Tiny config for tests and quick checks: a small synthetic corpus and a small model.

  python train.py --config=configs/smoke.py --workdir=/tmp/smoke   # ~30 s on 2 CPU cores
"""

from configs import default


def get_config():
  c = default.get_config()
  c.synthetic.num_speakers = 3
  c.synthetic.utterances_per_speaker = 20
  c.features.sample_rate = 8000
  c.features.n_fft = 256
  c.features.win_length = 256
  c.features.hop_length = 64
  c.features.fmax = 4000.0
  c.features.n_mels = 32
  c.data.segment_frames = 32
  c.model.channels = 32
  c.model.latent_channels = 4
  c.loss.kl_warmup_steps = 20
  c.optim.warmup_steps = 10
  c.train.num_steps = 40
  c.train.batch_size = 8
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.checkpoint_every = 20
  c.eval.batch_size = 8
  c.eval.num_audio_examples = 2
  c.eval.iwae_samples = 8
  c.eval.griffin_lim_iters = 8
  return c
