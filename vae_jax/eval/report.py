"""The test-split report of a trained workdir: every number eval.py computes, in one pass.

Systems compared on the same test utterances and the same metrics:
  vae     the trained model (reconstructions decode the posterior mean);
  pca     frame PCA with the VAE's latent numbers per second (vae_jax.eval.baselines);
  ae      a deterministic autoencoder workdir, when one is given;
  oracle  the true log-mel, for the audio metrics (the ceiling of the mel inverter).
"""

import dataclasses
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from vae_jax.data.store import Dataset, Split
from vae_jax.errors import ConfigError
from vae_jax.eval import bounds, probes, scoring
from vae_jax.eval.baselines import PCA, matched_components
from vae_jax.inference import Trained, load_trained

log = logging.getLogger("vae_jax")


@dataclasses.dataclass
class System:
  """One compared system's outputs on the test split."""

  name: str
  recon: list[np.ndarray] | None = None  # Unnormalised log-mel per test utterance.
  test_codes: list[np.ndarray] | None = None  # Per-utterance code sequences for the probes.
  waves: list[np.ndarray] | None = None
  scores: scoring.AudioScores | None = None


@dataclasses.dataclass
class Report:
  """Everything the report shows: scalars, per-utterance rows and what the figures need."""

  metrics: dict[str, Any]
  utterances: list[dict[str, Any]]
  systems: dict[str, System]
  test: Split
  refs: list[np.ndarray]
  trained: Trained
  dataset: Dataset
  sections: list[str] = dataclasses.field(default_factory=list)  # Extra markdown (e.g. generation).


def evaluate_workdir(workdir: str, *, step: int | None = None, baseline_workdir: str | None = None,
                     num_samples: int | None = None, audio_metrics: bool | None = None,
                     max_utterances: int = 0, data_path: str | None = None,
                     seed: int = 0, trained: Trained | None = None) -> Report:
  """Computes the full test-split evaluation of a workdir (see the module docstring)."""
  clock = _Clock()
  trained = trained or load_trained(workdir, step)
  e = trained.config.eval
  num_samples = e.iwae_samples if num_samples is None else num_samples
  audio_metrics = e.audio_metrics if audio_metrics is None else audio_metrics
  data = trained.dataset(data_path)
  test = data.test
  if max_utterances:
    test = test.subset(range(min(max_utterances, len(test))))
  refs = [np.asarray(test.utterance(i)) for i in range(len(test))]
  log.info("evaluating %s (step %d) on %d test utterances", workdir, trained.step, len(test))
  key = jax.random.fold_in(jax.random.key(seed), 3)
  batching = dict(batch_size=e.batch_size, length_multiple=e.length_multiple)

  m: dict[str, Any] = {"eval/step": float(trained.step), "eval/utterances": float(len(test)),
                       "eval/frames": float(test.lengths.sum()),
                       "eval/audio_seconds": float(test.lengths.sum() / data.feature_config.frames_per_second)}
  deterministic = bool(trained.config.model.deterministic)
  vae_pass = bounds.run_split(trained, test, key, num_samples=0 if deterministic else num_samples,
                                **batching)
  if not deterministic and num_samples:
    m.update(bounds.bound_metrics(vae_pass, trained.normalizer))
  m.update(bounds.latent_metrics(vae_pass))
  systems = {"vae": System("vae", vae_pass.recon, vae_pass.mean)}
  clock.lap("bounds and reconstructions")

  pca = _fit_pca(data.train, trained)
  systems["pca"] = System("pca", [pca.reconstruct(r) for r in refs], [pca.encode(r) for r in refs])
  ppca_raw = float(sum(pca.ppca_nll(r).sum() for r in refs) / test.lengths.sum())
  log_std = float(np.sum(np.log(trained.normalizer.std.astype(np.float64))))
  m.update({"eval/pca/components": float(pca.k), "eval/pca/ppca_nll": ppca_raw - log_std,
            "eval/pca/ppca_nll_logmel": ppca_raw})

  ae = None
  if baseline_workdir:
    ae = _load_baseline(baseline_workdir, trained)
    ae_pass = bounds.run_split(ae, test, key, **batching)
    systems["ae"] = System("ae", ae_pass.recon, ae_pass.mean)
    m["eval/ae/step"] = float(ae.step)
  for name, s in systems.items():
    m.update(scoring.reconstruction_metrics(refs, s.recon, f"eval/{name}"))

  if audio_metrics:
    _audio(trained, test, refs, systems, m, seed)
    clock.lap("re-synthesis and audio metrics")

  _probes(trained, data, test, refs, systems, m, key, batching, ae, pca)
  clock.lap("linear probes")
  m["eval/seconds"] = clock.total()
  utterances = _per_utterance(test, vae_pass, systems)
  return Report(m, utterances, systems, test, refs, trained, data)


class _Clock:
  """Wall and CPU time per stage, logged: on a shared machine the two differ a lot."""

  def __init__(self):
    self.t0 = self.t = time.perf_counter()
    self.c = time.process_time()

  def lap(self, what: str) -> None:
    t, c = time.perf_counter(), time.process_time()
    log.info("%s: %.0f s (%.0f s CPU)", what, t - self.t, c - self.c)
    self.t, self.c = t, c

  def total(self) -> float:
    return time.perf_counter() - self.t0


def _fit_pca(train: Split, trained: Trained) -> PCA:
  k = matched_components(trained.latent_channels, trained.stride)
  k = min(k, train.num_mels)
  return PCA.fit_chunks((train.utterance(i) for i in range(len(train))), k)


def _load_baseline(workdir: str, trained: Trained) -> Trained:
  ae = load_trained(workdir)
  if ae.feature_config != trained.feature_config:
    raise ConfigError(f"--baseline_workdir {workdir} uses other features than {trained.workdir}: "
                      "compare models trained on the same features")
  return ae


def _audio(trained: Trained, test: Split, refs: Sequence[np.ndarray], systems: dict[str, System],
           m: dict[str, Any], seed: int) -> None:
  """Griffin-Lim re-synthesis of every system and of the true mel (oracle); STOI, PESQ and MCD."""
  all_systems = {"oracle": System("oracle", list(refs)), **systems}
  scored = scoring.resynthesis_scores(trained, test, {k: s.recon for k, s in all_systems.items()}, seed)
  for name, s in all_systems.items():
    s.waves, s.scores = scored[name]
    m.update(scoring.audio_metrics(s.scores, f"eval/{name}"))
  systems["oracle"] = all_systems["oracle"]
  oracle = all_systems["oracle"].scores
  for name, s in systems.items():
    if name == "oracle":
      continue
    m[f"eval/{name}/stoi_gap_to_oracle"] = s.scores.stoi_concat - oracle.stoi_concat
    if s.scores.pesq_N is not None:
      both = np.isfinite(s.scores.pesq_N) & np.isfinite(oracle.pesq_N)
      m[f"eval/{name}/pesq_gap_to_oracle"] = (
          float(np.mean(s.scores.pesq_N[both] - oracle.pesq_N[both])) if both.any() else math.nan)


_PROBE_TRAIN_MAX = 5000  # Train utterances the probes fit on at most.


def _probes(trained, data: Dataset, test: Split, refs, systems: dict[str, System], m, key,
            batching, ae: Trained | None, pca: PCA) -> None:
  """Linear probes on time-pooled codes of each system, MFCCs and chance, for every label."""
  if not test.labels:
    return
  train = data.train
  if len(train) > _PROBE_TRAIN_MAX:
    # A seeded subset bounds memory for corpora streamed from disk; probes saturate well before.
    pick = np.sort(np.random.default_rng(0).choice(len(train), _PROBE_TRAIN_MAX, replace=False))
    train = train.subset(pick)
  train_refs = [train.utterance(i) for i in range(len(train))]
  codes = {
      "vae": (bounds.run_split(trained, train, key, decode=False, **batching).mean,
              systems["vae"].test_codes),
      "mfcc": ([probes.mfcc(r) for r in train_refs], [probes.mfcc(r) for r in refs]),
      "pca": ([pca.encode(r) for r in train_refs], systems["pca"].test_codes),
  }
  if ae is not None:
    codes["ae"] = (bounds.run_split(ae, train, key, decode=False, **batching).mean,
                   systems["ae"].test_codes)
  for name, (train_codes, test_codes) in codes.items():
    train_x = np.stack([probes.pool_mean_std(c) for c in train_codes])
    test_x = np.stack([probes.pool_mean_std(c) for c in test_codes])
    result = probes.probe_labels(train_x, test_x, train.labels, test.labels, data.label_names)
    for label, r in result.items():
      m[f"probe/{label}/{name}"] = r["accuracy"]
      m[f"probe/{label}/chance"] = r["chance"]
      m[f"probe/{label}/classes"] = r["classes"]


def _per_utterance(test: Split, vae_pass: bounds.SplitPass, systems: dict[str, System]) -> list[dict]:
  rows = []
  for i, name in enumerate(test.names):
    row: dict[str, Any] = {"name": name, "frames": int(test.lengths[i])}
    row.update({k: int(v[i]) for k, v in test.labels.items()})
    if vae_pass.nll_N is not None:
      frames = float(test.lengths[i])
      row["neg_elbo"] = float(vae_pass.nll_N[i] + vae_pass.kl_NxC[i].sum()) / frames
      row["neg_iwae"] = float(-bounds.log_mean_exp(vae_pass.log_weights_NxK[i])) / frames
    for sys_name, s in systems.items():
      if s.scores is not None:
        row[f"{sys_name}_stoi"] = float(s.scores.stoi_N[i])
        if s.scores.pesq_N is not None:
          row[f"{sys_name}_pesq"] = float(s.scores.pesq_N[i])
    rows.append(row)
  return rows


def default_dir(workdir: str) -> str:
  """Where eval.py writes the report of a workdir."""
  return os.path.join(workdir, "eval")
