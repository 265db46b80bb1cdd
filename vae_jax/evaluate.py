"""Held-out evaluation: negative ELBO in nats per frame and log-mel reconstruction error."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.data.loader import eval_batches
from vae_jax.data.store import Split
from vae_jax.features import Normalizer
from vae_jax.models.vae import VAE


def utterance_keys(key: jax.Array, index_B: jax.Array) -> jax.Array:
  """One key per utterance, so results do not depend on how utterances are batched."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.maximum(index_B, 0))


def make_eval_step(model: VAE) -> Callable:
  """Jitted (params, batch, key) -> per-example terms and the reconstruction from the posterior mean."""

  @jax.jit
  def eval_step(params, batch, key):
    mel, mask = batch["mel"], batch["mask"]
    terms = model.apply({"params": params}, mel, mask, utterance_keys(key, batch["index"]))
    mean, _, _ = model.apply({"params": params}, mel, mask, method=VAE.encode)
    recon = model.apply({"params": params}, mean, mask, method=VAE.decode)
    terms["recon"] = recon
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
  frames, n_mels = sums["frames"], split.frames.shape[1]
  return {
      f"{prefix}/loss": (sums["nll"] + sums["kl"]) / frames,
      f"{prefix}/nll": sums["nll"] / frames,
      f"{prefix}/kl": sums["kl"] / frames,
      f"{prefix}/logmel_mse": sums["sq_err"] / (frames * n_mels),
      f"{prefix}/kl_per_channel": np.asarray(kl_c) / max(sums["latent_frames"], 1.0),
  }


def reconstruct(model: VAE, params: Any, log_mel_TxF: np.ndarray, normalizer: Normalizer,
                length_multiple: int) -> np.ndarray:
  """Log-mel reconstruction (unnormalised) of one utterance from its posterior mean."""
  t = len(log_mel_TxF)
  t_pad = -(-t // length_multiple) * length_multiple
  mel = np.zeros((1, t_pad, log_mel_TxF.shape[1]), np.float32)
  mel[0, :t] = normalizer.normalize(log_mel_TxF)
  mask = np.zeros((1, t_pad), np.float32)
  mask[0, :t] = 1
  mean, _, _ = model.apply({"params": params}, mel, mask, method=VAE.encode)
  recon = model.apply({"params": params}, mean, mask, method=VAE.decode)
  return normalizer.denormalize(np.asarray(recon[0, :t]))
