"""Reconstructions written during training: spectrogram images and Griffin-Lim audio."""

import os

import numpy as np

from vae_jax import audio, plots
from vae_jax.evaluate import reconstruct
from vae_jax.features import mel_to_audio


def write_reconstructions(model, params, data, config, workdir: str, step: int, writer=None) -> str:
  """Reconstructs the first test utterances; returns the PNG path (audio goes beside it)."""
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  fc, n = data.feature_config, min(config.eval.num_audio_examples, len(data.test))
  panels = []
  for i in range(n):
    true = np.asarray(data.test.utterance(i))
    recon = reconstruct(model, params, true, data.normalizer, config.eval.length_multiple)
    name = data.test.names[i].replace(os.sep, "_")
    panels += [(f"{name}: input", true), (f"{name}: reconstruction", recon)]
    wave = mel_to_audio(recon, fc, n_iter=config.eval.griffin_lim_iters)
    audio.write_audio(os.path.join(out_dir, f"step{step:07d}_{name}.recon.wav"), wave, fc.sample_rate)
    if writer is not None:
      writer.audio(step, f"reconstruction/{i}", wave, fc.sample_rate)
  fig = plots.spectrogram_grid(panels, fc.frames_per_second)
  if writer is not None:
    writer.figure(step, "reconstruction/spectrograms", fig)
  return plots.save_figure(fig, os.path.join(out_dir, f"step{step:07d}.png"))
