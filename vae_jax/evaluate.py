"""Held-out evaluation: bounds on the log-likelihood, latent statistics and reconstruction quality.

The training loop uses make_eval_step / evaluate_split (negative ELBO and log-mel
MSE at eval steps); eval.py uses run_split and the metric functions below it.
"""

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import losses, metrics
from vae_jax.data.loader import eval_batches, padded_batch
from vae_jax.data.store import Split
from vae_jax.features import Normalizer
from vae_jax.models.layers import downsample_mask
from vae_jax.models.vae import VAE

_log = logging.getLogger(__name__)


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
  frames, n_mels = sums["frames"], split.num_mels
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


# Full evaluation (eval.py): bounds, latent statistics, reconstruction and audio metrics.


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

    def one_sample(k):
      keys = jax.vmap(jax.random.fold_in, (0, None))(key_B, k)
      eps = jax.vmap(lambda key: jax.random.normal(key, mean_BxTzxC.shape[1:]))(keys)
      z = (mean_BxTzxC + jnp.exp(0.5 * logvar_BxTzxC) * eps) * mask_z
      recon = model.apply({"params": params}, z, mask_BxT, method=VAE.decode)
      nll_B = (losses.gaussian_nll(mel_BxTxF, recon, params["log_scale"])
               * mask_BxT[..., None]).sum((1, 2))
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
  for batch in length_batches(split, trained.normalizer, batch_size, length_multiple):
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


def length_batches(split: Split, normalizer: Normalizer, batch_size: int,
                   length_multiple: int) -> Iterator[dict[str, np.ndarray]]:
  """Whole utterances sorted by length, as loader.eval_batches, but the one partial batch holds the shortest.

  Padding rows cost as much as real ones; where the utterances are shortest they cost least.
  """
  order = np.argsort(split.lengths, kind="stable")
  first = len(order) % batch_size or batch_size
  bounds = [0] + list(range(first, len(order) + 1, batch_size))
  for start, stop in zip(bounds, bounds[1:]):
    yield padded_batch(split, order[start:stop], normalizer, batch_size, length_multiple)


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


def reconstruction_metrics(refs: Sequence[np.ndarray], recons: Sequence[np.ndarray],
                           prefix: str) -> dict[str, float]:
  """Log-mel MSE and L1, LSD and MCD (dB) over all frames of all utterances together.

  Utterances whose reconstruction is not finite (a diverged model) are left out and
  counted in `<prefix>/nonfinite_utterances`; with none left the metrics are NaN.
  """
  ok = [bool(np.all(np.isfinite(r))) for r in recons]
  out = {f"{prefix}/nonfinite_utterances": float(len(ok) - sum(ok))}
  keys = ("logmel_mse", "logmel_l1", "lsd_db", "mcd_db")
  if not any(ok):
    return {**out, **{f"{prefix}/{k}": math.nan for k in keys}}
  ref_VxF = np.concatenate([np.asarray(r, np.float64) for r, good in zip(refs, ok) if good])
  est_VxF = np.concatenate([np.asarray(r, np.float64) for r, good in zip(recons, ok) if good])
  n_coeffs = min(24, ref_VxF.shape[1] - 1)
  return {
      **out,
      f"{prefix}/logmel_mse": metrics.logmel_mse(ref_VxF, est_VxF),
      f"{prefix}/logmel_l1": metrics.logmel_l1(ref_VxF, est_VxF),
      f"{prefix}/lsd_db": metrics.log_spectral_distance_db(ref_VxF, est_VxF),
      f"{prefix}/mcd_db": metrics.mel_cepstral_distortion_db(ref_VxF, est_VxF, n_coeffs=n_coeffs),
  }


@dataclasses.dataclass
class AudioScores:
  """Per-clip STOI and PESQ (nan where missing, with the reason) and STOI over concatenations of clips."""

  stoi_N: np.ndarray
  pesq_N: np.ndarray | None  # None at rates PESQ does not support.
  stoi_concat: float
  stoi_per_group: dict[str, float]
  stoi_missing: list[str | None] = dataclasses.field(default_factory=list)  # Reason per clip, None if scored.
  pesq_missing: list[str | None] | None = None
  nonfinite_N: np.ndarray | None = None  # Clips whose estimate has NaN or infinite samples.


def score_audio(refs: Sequence[np.ndarray], ests: Sequence[np.ndarray], sample_rate: int,
                groups: Sequence[str] | None = None) -> AudioScores:
  """STOI and PESQ of each estimate against its reference, plus STOI of concatenations.

  pystoi cannot score clips with fewer than ~30 non-silent 25.6 ms frames (nan
  here), so STOI is also computed over all clips back to back, and over each
  group's (e.g. speaker's) clips. Each clip pair is scaled by 1 / peak(reference)
  first, so that quiet clips are not dropped as silence next to loud ones.
  Estimates with non-finite samples (a diverged model) score nan with the reason
  and are left out of the concatenations.
  """
  nonfinite = np.array([not np.all(np.isfinite(e)) for e in ests], bool)
  stoi = [metrics.stoi_scored(r, e, sample_rate) for r, e in zip(refs, ests)]
  pesq = None
  if metrics.pesq_mode(sample_rate) is not None:
    pesq = [metrics.pesq_scored(r, e, sample_rate) for r, e in zip(refs, ests)]
  concat = lambda idx: _concat_stoi(refs, ests, [i for i in idx if not nonfinite[i]], sample_rate)
  per_group = {}
  if groups is not None:
    for g in sorted(set(groups)):
      per_group[g] = concat([i for i, x in enumerate(groups) if x == g])
  return AudioScores(
      np.array([s.or_nan() for s in stoi], np.float64),
      None if pesq is None else np.array([s.or_nan() for s in pesq], np.float64),
      concat(range(len(refs))), per_group, [s.missing for s in stoi],
      None if pesq is None else [s.missing for s in pesq], nonfinite)


def _concat_stoi(refs, ests, idx: Sequence[int], sample_rate: int) -> float:
  """STOI of the clips idx back to back; nan when there are none."""
  if not idx:
    return math.nan
  return metrics.stoi(*_concatenate([refs[i] for i in idx], [ests[i] for i in idx]), sample_rate)


def _concatenate(refs, ests) -> tuple[np.ndarray, np.ndarray]:
  ref_parts, est_parts = [], []
  for r, e in zip(refs, ests):
    n = min(len(r), len(e))
    gain = 1.0 / max(float(np.max(np.abs(r[:n]))), 1e-8)
    ref_parts.append(gain * np.asarray(r[:n], np.float64))
    est_parts.append(gain * np.asarray(e[:n], np.float64))
  return np.concatenate(ref_parts), np.concatenate(est_parts)


def audio_metrics(scores: AudioScores, prefix: str) -> dict[str, float]:
  """Summary scalars; means over clips skip missing clips and the counts say how many were scored."""
  nonfinite = 0 if scores.nonfinite_N is None else int(np.sum(scores.nonfinite_N))
  out = {
      f"{prefix}/stoi_concat": scores.stoi_concat,
      f"{prefix}/stoi_clip_mean": _nanmean(scores.stoi_N),
      f"{prefix}/stoi_clips_scored": float(np.sum(np.isfinite(scores.stoi_N))),
      f"{prefix}/clips": float(len(scores.stoi_N)),
      f"{prefix}/nonfinite_clips": float(nonfinite),
  }
  if scores.stoi_per_group:
    out[f"{prefix}/stoi_group_mean"] = _nanmean(np.array(list(scores.stoi_per_group.values())))
  if scores.pesq_N is not None:
    out[f"{prefix}/pesq_clip_mean"] = _nanmean(scores.pesq_N)
    out[f"{prefix}/pesq_clips_scored"] = float(np.sum(np.isfinite(scores.pesq_N)))
  if nonfinite:
    _log.warning("%s: %d of %d clips have non-finite samples (a diverged model?): their STOI and "
                 "PESQ are missing and they are left out of the concatenated STOI",
                 prefix, nonfinite, len(scores.stoi_N))
  for name, reasons in (("STOI", scores.stoi_missing), ("PESQ", scores.pesq_missing)):
    if reasons and any(reasons):
      _log.info("%s: %s missing for %s", prefix, name, _reason_counts(reasons))
  return out


def _reason_counts(reasons: Sequence[str | None]) -> str:
  """'3 clips (clip shorter than 0.4 s), 1 clip (...)', most frequent first."""
  counts: dict[str, int] = {}
  for r in reasons:
    if r is not None:
      counts[r] = counts.get(r, 0) + 1
  ordered = sorted(counts.items(), key=lambda kv: -kv[1])
  return ", ".join(f"{n} clip{'s' if n > 1 else ''} ({r})" for r, n in ordered)


def _nanmean(x: np.ndarray) -> float:
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x)
  return float(x[ok].mean()) if ok.any() else math.nan
