"""Evaluation during training: the test-split ELBO at eval steps and the reconstructions a run writes."""

import os
from typing import Any, Callable

import jax
import numpy as np

from vae_jax import fileio, plots
from vae_jax.audio import io as audio_io
from vae_jax.audio.features import Normalizer
from vae_jax.data.loader import eval_batches
from vae_jax.data.store import Split
from vae_jax.inference import Trained
from vae_jax.models.vae import VAE
from vae_jax.rng import utterance_keys
from vae_jax.run_log import RunLog


def make_eval_step(model: VAE) -> Callable:
  """Jitted (params, batch, key) -> per-example terms and the reconstruction from the posterior mean."""

  @jax.jit
  def eval_step(params, batch, key):
    mel, mask = batch["mel"], batch["mask"]
    terms = model.apply({"params": params}, mel, mask, utterance_keys(key, batch["index"]))
    mean, _, _ = model.apply({"params": params}, mel, mask, method=VAE.encode)
    terms["recon"] = model.apply({"params": params}, mean, mask, method=VAE.decode)
    return terms

  return eval_step


def evaluate_split(eval_step: Callable, params: Any, split: Split, normalizer: Normalizer,
                   key: jax.Array, *, batch_size: int, length_multiple: int,
                   max_utterances: int = 0, prefix: str = "eval") -> dict[str, Any]:
  """Negative ELBO (nats per frame), its parts, and unnormalised log-mel MSE over a split."""
  sums = {"nll": 0.0, "kl": 0.0, "frames": 0.0, "latent_frames": 0.0, "sq_err": 0.0}
  kl_c = 0.0
  std2 = normalizer.std.astype(np.float64) ** 2
  for batch in eval_batches(split, normalizer, batch_size, length_multiple, max_utterances):
    out = jax.device_get(eval_step(params, batch, key))
    valid = batch["index"] >= 0
    for k in ("nll", "kl", "frames", "latent_frames"):
      sums[k] += float(out[k][valid].sum())
    kl_c = kl_c + out["kl_per_channel"][valid].sum(0)
    err = (out["recon"] - batch["mel"]) ** 2 * batch["mask"][..., None]
    sums["sq_err"] += float((err[valid].sum((0, 1)) * std2).sum())
  frames, n_mels = sums["frames"], split.num_mels
  return {
      f"{prefix}/loss": (sums["nll"] + sums["kl"]) / frames,
      f"{prefix}/nll": sums["nll"] / frames,
      f"{prefix}/kl": sums["kl"] / frames,
      f"{prefix}/logmel_mse": sums["sq_err"] / (frames * n_mels),
      f"{prefix}/kl_per_channel": np.asarray(kl_c) / max(sums["latent_frames"], 1.0),
  }


def write_reconstructions(trained: Trained, test: Split, workdir: str, writer: RunLog | None = None) -> str:
  """Reconstructs the first test utterances at `trained.step`; returns the PNG path (WAVs beside it).

  Through `Trained`, as eval.py: the audio of a step is what eval.py writes for its checkpoint.
  """
  out_dir = os.path.join(workdir, "samples")
  fileio.makedirs(out_dir)
  fc, step = trained.feature_config, trained.step
  panels = []
  for i in range(min(trained.config.eval.num_audio_examples, len(test))):
    true = np.asarray(test.utterance(i))
    recon = trained.reconstruct(true)
    name = test.names[i].replace(os.sep, "_")
    panels += [(f"{name}: input", true), (f"{name}: reconstruction", recon)]
    wave = trained.to_audio(recon)
    audio_io.write_audio(os.path.join(out_dir, f"step{step:07d}_{name}.recon.wav"), wave, fc.sample_rate)
    if writer is not None:
      writer.audio(step, f"reconstruction/{i}", wave, fc.sample_rate)
  fig = plots.spectrogram_grid(panels, fc.frames_per_second)
  if writer is not None:
    writer.figure(step, "reconstruction/spectrograms", fig)
  return plots.save_figure(fig, os.path.join(out_dir, f"step{step:07d}.png"))
