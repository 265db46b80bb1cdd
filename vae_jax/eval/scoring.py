"""Reconstruction and audio scores over a split: log-mel distances, STOI and PESQ, and their summaries."""

import dataclasses
import logging
import math
from typing import Mapping, Sequence

import numpy as np

from vae_jax.audio import io as audio_io
from vae_jax.eval import metrics
from vae_jax.inference import griffin_lim_batch

_log = logging.getLogger(__name__)


def reconstruction_metrics(refs: Sequence[np.ndarray], recons: Sequence[np.ndarray],
                           prefix: str) -> dict[str, float]:
  """Log-mel MSE and L1, LSD and MCD (dB) over all frames of all utterances together.

  Utterances whose reconstruction is not finite (a diverged model) are left out and
  counted in `<prefix>/nonfinite_utterances`; with none left the metrics are NaN.
  """
  ok = [bool(np.all(np.isfinite(r))) for r in recons]
  out = {f"{prefix}/nonfinite_utterances": float(len(ok) - sum(ok))}
  keys = ("logmel_mse", "logmel_l1", "mel_lsd_db", "logmel_cd_db")
  if not any(ok):
    return {**out, **{f"{prefix}/{k}": math.nan for k in keys}}
  ref_VxF = np.concatenate([np.asarray(r, np.float64) for r, good in zip(refs, ok) if good])
  est_VxF = np.concatenate([np.asarray(r, np.float64) for r, good in zip(recons, ok) if good])
  n_coeffs = min(24, ref_VxF.shape[1] - 1)
  return {
      **out,
      f"{prefix}/logmel_mse": metrics.logmel_mse(ref_VxF, est_VxF),
      f"{prefix}/logmel_l1": metrics.logmel_l1(ref_VxF, est_VxF),
      f"{prefix}/mel_lsd_db": metrics.mel_log_spectral_distance_db(ref_VxF, est_VxF),
      f"{prefix}/logmel_cd_db": metrics.logmel_cepstral_distance_db(ref_VxF, est_VxF, n_coeffs=n_coeffs),
  }


@dataclasses.dataclass
class AudioScores:
  """Per-clip STOI and PESQ (nan where missing, with the reason) and STOI over concatenations of clips."""

  stoi_N: np.ndarray
  pesq_N: np.ndarray | None  # None at rates PESQ does not support.
  stoi_concat: float
  stoi_per_group: dict[str, float]
  mcd_N: np.ndarray  # Standard mel-cepstral distortion (dB) per clip, nan where missing.
  stoi_missing: list[str | None] = dataclasses.field(default_factory=list)  # Reason per clip, None if scored.
  pesq_missing: list[str | None] | None = None
  nonfinite_N: np.ndarray | None = None  # Clips whose estimate has NaN or infinite samples.


def score_audio(refs: Sequence[np.ndarray], ests: Sequence[np.ndarray], sample_rate: int,
                groups: Sequence[str] | None = None,
                ref_cepstra: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> AudioScores:
  """STOI, PESQ and MCD of each estimate against its reference, plus STOI of concatenations.

  pystoi cannot score clips with fewer than ~30 non-silent 25.6 ms frames (nan
  here), so STOI is also computed over all clips back to back, and over each
  group's (e.g. speaker's) clips. Each clip pair is scaled by 1 / peak(reference)
  first, so that quiet clips are not dropped as silence next to loud ones.
  Estimates with non-finite samples (a diverged model) score nan with the reason
  and are left out of the concatenations. `ref_cepstra` (metrics.mel_cepstrum of
  each reference) is computed here when not given.
  """
  nonfinite = np.array([not np.all(np.isfinite(e)) for e in ests], bool)
  stoi = [metrics.stoi_scored(r, e, sample_rate) for r, e in zip(refs, ests)]
  ref_cepstra = ref_cepstra or [None] * len(refs)
  mcd = np.array([metrics.mcd_scored(r, e, sample_rate, c).or_nan() for r, e, c in zip(refs, ests, ref_cepstra)],
                 np.float64)
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
      concat(range(len(refs))), per_group, mcd, [s.missing for s in stoi],
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
      f"{prefix}/mcd_db_clip_mean": _nanmean(scores.mcd_N),
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


def resynthesis_scores(trained, split, mels: Mapping[str, Sequence[np.ndarray]], seed: int = 0
                       ) -> dict[str, tuple[list[np.ndarray], "AudioScores"]]:
  """{name: (Griffin-Lim waveforms, scores against the split's audio)} for each named set of log-mels.

  The split's audio, lengths and mel cepstra are read and computed once for every set.
  """
  fc = trained.feature_config
  n_iter = trained.config.eval.griffin_lim_iters
  originals = [audio_io.read_audio(p, fc.sample_rate, min_samples=fc.win_length) for p in split.paths]
  lengths = [len(w) for w in originals]
  groups = [str(s) for s in split.labels["speaker"]] if "speaker" in split.labels else None
  cepstra = [metrics.mel_cepstrum(w, fc.sample_rate) for w in originals]
  out = {}
  for name, sets in mels.items():
    waves = griffin_lim_batch(list(sets), fc, n_iter, lengths=lengths, seed=seed)
    out[name] = (waves, score_audio(originals, waves, fc.sample_rate, groups, cepstra))
  return out
