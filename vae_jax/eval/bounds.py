"""Bounds on the test-split log-likelihood (ELBO, IWAE) and latent statistics, for eval.py's report."""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import losses
from vae_jax.audio.features import Normalizer
from vae_jax.data.loader import eval_batches
from vae_jax.data.store import Split
from vae_jax.models.layers import downsample_mask
from vae_jax.models.vae import VAE
from vae_jax.rng import stream_keys, utterance_keys


@dataclasses.dataclass
class SplitPass:
  """Per-utterance outputs of one model over a split, in split order.

  Bound terms are in nats over the normalised features of the whole utterance.
  """

  mean: list[np.ndarray]  # Posterior means [Tz, C], valid latent frames only.
  logvar: list[np.ndarray]
  recon: list[np.ndarray] | None  # Unnormalised log-mel [T, F] decoded from the posterior mean.
  log_weights_NxK: np.ndarray | None  # log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x).
  nll_N: np.ndarray | None  # -log p(x | z_k), averaged over the K samples.
  kl_NxC: np.ndarray  # Analytic KL(q(z | x) || p(z)) per channel, summed over latent frames.
  frames_N: np.ndarray
  latent_frames_N: np.ndarray


def make_bound_step(model: VAE, stride: int, num_samples: int,
                    log_prior: Callable | None = None) -> Callable:
  """Jitted (params, mel, mask, mean, logvar, key_B) -> (log_weights [K, B], nll [K, B]).

  Samples are drawn one at a time (lax.map), so memory does not grow with K.
  Latents of padded frames are zero, so they neither enter the bound nor the decoder.
  `log_prior(z_BxTzxC, mask_z_BxTz) -> [B]` replaces the standard normal prior, e.g.
  a learned prior (vae_jax.prior), whose KL then has no closed form.
  """

  @jax.jit
  def step(params, mel_BxTxF, mask_BxT, mean_BxTzxC, logvar_BxTzxC, key_B):
    mask_z = downsample_mask(mask_BxT, stride)[..., None]
    apply = lambda method, *args: model.apply({"params": params}, *args, method=method)

    def one_sample(k):
      z = apply(VAE.sample_posterior, stream_keys(key_B, k), mean_BxTzxC, logvar_BxTzxC) * mask_z
      nll_B = apply(VAE.nll, mel_BxTxF, apply(VAE.decode, z, mask_BxT), mask_BxT)
      if log_prior is None:
        log_pz_B = (losses.log_normal(z, 0.0, 0.0) * mask_z).sum((1, 2))
      else:
        log_pz_B = log_prior(z, mask_z[..., 0])
      log_qz_B = (losses.log_normal(z, mean_BxTzxC, logvar_BxTzxC) * mask_z).sum((1, 2))
      return log_pz_B - log_qz_B - nll_B, nll_B

    return jax.lax.map(one_sample, jnp.arange(num_samples))

  return step


def run_split(trained, split: Split, key: jax.Array, *, num_samples: int = 0, decode: bool = True,
              batch_size: int = 32, length_multiple: int = 32,
              on_batch: Callable[[int], None] | None = None,
              log_prior: Callable | None = None) -> SplitPass:
  """Encodes every utterance; decodes posterior means and draws `num_samples` bound samples if asked.

  With `log_prior` (see make_bound_step) the bound samples use that prior; kl_NxC stays
  the analytic KL against N(0, I).
  """
  n, c = len(split), trained.latent_channels
  mean, logvar = [None] * n, [None] * n
  recon = [None] * n if decode else None
  log_w = np.zeros((n, num_samples)) if num_samples else None
  nll = np.zeros((n,)) if num_samples else None
  kl = np.zeros((n, c))
  frames, latent_frames = split.lengths.astype(np.float64), np.zeros((n,))
  bound = make_bound_step(trained.model, trained.stride, num_samples, log_prior) if num_samples else None
  for batch in eval_batches(split, trained.normalizer, batch_size, length_multiple):
    params, mel, mask = trained.params, batch["mel"], batch["mask"]
    m, lv, mask_z = trained.encode_batch(params, mel, mask)
    if decode:
      r = jax.device_get(trained.decode_batch(params, m, mask))
    if bound is not None:
      w_KxB, nll_KxB = jax.device_get(bound(params, mel, mask, m, lv, utterance_keys(key, batch["index"])))
    m, lv, mask_z = jax.device_get((m, lv, mask_z))
    kl_BxC = (np.asarray(losses.kl_diag_gaussian(m, lv)) * mask_z[..., None]).sum(1)
    for j, i in enumerate(batch["index"]):
      if i < 0:
        continue
      tz, t = int(mask_z[j].sum()), int(split.lengths[i])
      mean[i], logvar[i] = np.asarray(m[j, :tz]), np.asarray(lv[j, :tz])
      kl[i], latent_frames[i] = kl_BxC[j], tz
      if decode:
        with np.errstate(over="ignore", invalid="ignore"):  # A diverged decoder: counted later.
          recon[i] = trained.normalizer.denormalize(np.asarray(r[j, :t]))
      if bound is not None:
        log_w[i], nll[i] = w_KxB[:, j], nll_KxB[:, j].mean()
    if on_batch is not None:
      on_batch(int((batch["index"] >= 0).sum()))
  return SplitPass(mean, logvar, recon, log_w, nll, kl, frames, latent_frames)


def log_mean_exp(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """log(mean(exp(x))) along an axis, computed stably."""
  x = np.asarray(x, np.float64)
  top = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.mean(np.exp(x - top), axis=axis))


def iwae_curve(log_weights_NxK: np.ndarray) -> dict[int, float]:
  """{k: mean over utterances of the IWAE bound with k samples}, for k = 1, 2, 4, ... <= K.

  Each k uses all K samples as K // k disjoint groups and averages their bounds,
  which estimates E[IWAE_k] with less noise than one group.
  """
  n, big_k = log_weights_NxK.shape
  out, k = {}, 1
  while k <= big_k:
    groups = log_weights_NxK[:, :(big_k // k) * k].reshape(n, big_k // k, k)
    out[k] = float(log_mean_exp(groups, axis=-1).mean(1).sum() / n)
    k *= 2
  return out


def bound_metrics(p: SplitPass, normalizer: Normalizer, prefix: str = "eval") -> dict[str, Any]:
  """Negative ELBO and IWAE bound (nats per frame and per mel bin) and their parts."""
  frames, n_mels = p.frames_N.sum(), len(normalizer.std)
  log_std = float(np.sum(np.log(normalizer.std.astype(np.float64))))
  nll, kl = p.nll_N.sum() / frames, p.kl_NxC.sum() / frames
  neg_iwae = -log_mean_exp(p.log_weights_NxK, axis=1).sum() / frames
  out = {
      f"{prefix}/neg_elbo": nll + kl,
      f"{prefix}/nll": nll,
      f"{prefix}/kl": kl,
      f"{prefix}/neg_elbo_per_bin": (nll + kl) / n_mels,
      f"{prefix}/neg_elbo_mc": -p.log_weights_NxK.mean(1).sum() / frames,
      f"{prefix}/neg_iwae": neg_iwae,
      f"{prefix}/neg_iwae_per_bin": neg_iwae / n_mels,
      f"{prefix}/iwae_samples": float(p.log_weights_NxK.shape[1]),
      f"{prefix}/log_std_per_frame": log_std,
      f"{prefix}/neg_elbo_logmel": nll + kl + log_std,
      f"{prefix}/neg_iwae_logmel": neg_iwae + log_std,
  }
  # Per utterance the curve is in nats; per frame it is scaled like the bounds above.
  scale = len(p.frames_N) / frames
  for k, v in iwae_curve(p.log_weights_NxK).items():
    out[f"{prefix}/neg_iwae_k/{k}"] = -v * scale
  return out


def latent_metrics(p: SplitPass, threshold: float = 0.01, min_kl: float = 0.1,
                   prefix: str = "eval") -> dict[str, Any]:
  """KL per channel (nats per latent frame) and active units (Burda et al., 2016).

  A channel is active when the variance over the data of its posterior mean,
  Cov_x(E_q[z_c | x]), exceeds `threshold`; with a latent sequence every valid
  latent frame of every utterance is one draw of x. Channels whose mean moves
  a little while their variance stays near the prior's pass that test with
  almost no KL, so the channels above `min_kl` nats per latent frame are counted too.
  """
  means_VxC = np.concatenate(p.mean).astype(np.float64)
  kl_C = p.kl_NxC.sum(0) / max(p.latent_frames_N.sum(), 1.0)
  return {
      f"{prefix}/kl_per_channel": kl_C,
      f"{prefix}/posterior_mean_variance": means_VxC.var(0),
      f"{prefix}/active_units": float(active_units(means_VxC, threshold)),
      f"{prefix}/channels_above_min_kl": float(np.sum(kl_C > min_kl)),
  }


def active_units(means_VxC: np.ndarray, threshold: float = 0.01) -> int:
  """Channels whose posterior mean varies over the data by more than `threshold` (variance)."""
  return int(np.sum(np.asarray(means_VxC, np.float64).var(0) > threshold))


