"""Sample-quality scores of sets of clips, reference sets that bracket them, and their markdown table.

  classifier = load_or_train(config)
  reference = train_embedding(classifier, dataset)           # the FD reference: real train clips
  rows = reference_rows(classifier, dataset, n=256, reference_embedding=reference)
  rows["vae prior"] = score_set(classifier, samples, requested, reference_embedding=reference)
  print(sample_quality_table(rows, classifier))

The reference sets are a ceiling (real test clips), a vocoder ceiling (Griffin-Lim
from the true log-mel) and two floors (white noise at the real clips' loudness,
and real clips played backwards, which keep the spectrum but not the words).
"""

import math
from typing import Mapping, Sequence

import librosa
import numpy as np

from vae_jax.audio import io as audio_io
from vae_jax.data.store import Dataset
from vae_jax.inference import griffin_lim_batch
from vae_jax.sample_quality import scores
from vae_jax.sample_quality.classifier import Classifier

REFERENCE_SETS = ("real", "griffin_lim", "white_noise", "time_reversed")
# What each column family means, for the table's caption.
_DIRECTIONS = ("IS: higher is better (at most K); FD (Fréchet distance of the embeddings to the "
               "reference set): lower is better; class entropy: log K when classes are balanced; "
               "confidence: mean top-class probability; accuracy: the requested class was recognised")


def score_set(classifier: Classifier, waves: Sequence[np.ndarray],
              requested: Mapping[str, np.ndarray] | None = None, *,
              reference_embedding: np.ndarray | None = None) -> dict[str, float]:
  """IS, class entropy, confidence per head; FD to `reference_embedding`; accuracy per requested label."""
  requested = dict(requested or {})
  unknown = sorted(set(requested) - set(classifier.labels))
  if unknown:
    raise ValueError(f"requested labels {unknown} are not among the classifier's {list(classifier.labels)}")
  out = classifier.predict(waves)
  probs = {k: out[f"probs/{k}"] for k in classifier.labels}
  result = {f"is/{k}": scores.inception_score(p) for k, p in probs.items()}
  if reference_embedding is not None:
    result["fd"] = scores.frechet_distance(out["embedding"], reference_embedding)
  result.update({f"class_entropy/{k}": scores.class_entropy(p) for k, p in probs.items()})
  result.update({f"confidence/{k}": scores.mean_confidence(p) for k, p in probs.items()})
  result.update({f"accuracy/{k}": scores.accuracy(probs[k], y) for k, y in requested.items()})
  return result


def reference_indices(dataset: Dataset, n: int, seed: int = 0) -> np.ndarray:
  """The n test utterances (sorted indices, drawn without replacement) the reference sets are made of."""
  total = len(dataset.test)
  if not 1 <= n <= total:
    raise ValueError(f"n={n} reference clips: the test split has {total} utterances")
  return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def reference_sets(dataset: Dataset, classifier_sample_rate: int, n: int, seed: int = 0,
                   griffin_lim_iters: int = 32) -> dict[str, list[np.ndarray]]:
  """n clips each of 'real', 'griffin_lim', 'white_noise' and 'time_reversed', at the classifier's rate.

  Clip i of every set derives from test utterance reference_indices(...)[i] and has its length.
  """
  fc = dataset.feature_config
  idx = reference_indices(dataset, n, seed)
  real = [audio_io.read_audio(dataset.test.paths[i], fc.sample_rate) for i in idx]
  resynth = griffin_lim_batch([dataset.test.utterance(i) for i in idx], fc, griffin_lim_iters,
                              lengths=[len(w) for w in real], seed=seed)
  rng = np.random.default_rng([seed, 1])
  noise = [(rng.standard_normal(len(w)) * _rms(w)).astype(np.float32) for w in real]
  sets = {"real": real, "griffin_lim": [np.asarray(w, np.float32) for w in resynth],
          "white_noise": noise, "time_reversed": [w[::-1].copy() for w in real]}
  if classifier_sample_rate != fc.sample_rate:
    sets = {k: [_resample(w, fc.sample_rate, classifier_sample_rate) for w in v] for k, v in sets.items()}
  return sets


def _rms(wave: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
  return librosa.resample(wave, orig_sr=rate, target_sr=target, res_type="soxr_hq").astype(np.float32)


def train_embedding(classifier: Classifier, dataset: Dataset, n: int | None = None,
                    seed: int = 0) -> np.ndarray:
  """Embeddings [n, E] of (a random n of, default all) the train-split clips: the FD reference."""
  paths = dataset.train.paths
  if n is not None and n < len(paths):
    paths = [paths[i] for i in np.sort(np.random.default_rng(seed).choice(len(paths), n, replace=False))]
  waves = [audio_io.read_audio(p, classifier.sample_rate) for p in paths]
  return classifier.predict(waves)["embedding"]


def reference_rows(classifier: Classifier, dataset: Dataset, n: int, seed: int = 0,
                   griffin_lim_iters: int = 32, *,
                   reference_embedding: np.ndarray | None = None) -> dict[str, dict[str, float]]:
  """score_set of each reference set, with accuracy against the true labels of its test utterances."""
  sets = reference_sets(dataset, classifier.sample_rate, n, seed, griffin_lim_iters)
  idx = reference_indices(dataset, n, seed)
  requested = {k: dataset.test.labels[k][idx] for k in classifier.labels if k in dataset.test.labels}
  return {name: score_set(classifier, waves, requested, reference_embedding=reference_embedding)
          for name, waves in sets.items()}


def sample_quality_table(rows: Mapping[str, Mapping[str, float]],
                         classifier: Classifier | None = None) -> str:
  """Markdown table: one row per set of clips, one column per metric, a caption naming the classifier."""
  columns: list[str] = []
  for metrics in rows.values():
    columns.extend(m for m in metrics if m not in columns)
  lines = ["| set | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
  for name, metrics in rows.items():
    cells = [_fmt(metrics[c]) if c in metrics else "" for c in columns]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join([_caption(classifier), "", *lines])


def _caption(classifier: Classifier | None) -> str:
  if classifier is None:
    return f"Sample quality. {_DIRECTIONS}."
  acc = ", ".join(f"{k} {v:.3f}" for k, v in classifier.test_accuracy.items())
  return (f"Sample quality by classifier `{classifier.hash}` (test accuracy on real clips: {acc}). "
          f"{_DIRECTIONS}.")


def _fmt(value: float) -> str:
  """Three decimals for small values, fewer as they grow (FD can reach the thousands)."""
  v = float(value)
  if not math.isfinite(v):
    return "n/a"
  if abs(v) >= 100:
    return f"{v:.0f}"
  if abs(v) >= 10:
    return f"{v:.1f}"
  return f"{v:.3f}"
