"""How a trained VAE does away from its training distribution: in-split test, unseen class, other corpora.

  python eval.py --workdir=runs/fsdd_unseen_speaker --generalisation
  python eval.py --workdir=runs/fsdd --generalisation --cross_corpus=synthetic

Rows: the in-split test split; the "unseen" split when the run's data.holdout left a
class out of training (every utterance of it); and each `--cross_corpus` corpus
(its test split, features normalised with the run's train statistics). Every row
gets the same metrics as eval.py's report (vae_jax.eval.scoring): log-mel MSE,
LSD, -ELBO (one posterior sample), STOI and PESQ of the Griffin-Lim re-synthesis,
and the same audio scores of the true mel (the oracle: how hard a row is for the
mel inverter alone). The gap rows are unseen minus in-split.
"""

import dataclasses
import logging
import math
import os
from typing import Any, Sequence

import jax
import numpy as np

from vae_jax import fileio
from vae_jax.data.store import Split, load_dataset
from vae_jax.errors import ConfigError
from vae_jax.eval import bounds, scoring
from vae_jax.inference import Trained

log = logging.getLogger("vae_jax")

CORPORA = ("synthetic", "fsdd", "folder")
# Columns of the table: (metric key after the row prefix, header, digits).
COLUMNS = (("utterances", "utterances", 0), ("logmel_mse", "log-mel MSE", 3),
           ("mel_lsd_db", "LSD dB", 2), ("neg_elbo", "-ELBO nats/frame", 2),
           ("stoi_concat", "STOI", 3), ("pesq_clip_mean", "PESQ", 2),
           ("oracle/stoi_concat", "oracle STOI", 3), ("oracle/pesq_clip_mean", "oracle PESQ", 2))


@dataclasses.dataclass
class Row:
  """One evaluated split: its name in the table, what it holds and its metrics."""

  name: str
  what: str
  metrics: dict[str, float]


def parse_cross_corpus(value: str) -> tuple[str, str]:
  """'synthetic', 'fsdd:PATH' or 'folder:PATH' as (corpus, path); ConfigError in one line otherwise."""
  corpus, _, path = value.partition(":")
  if corpus not in CORPORA or (corpus != "synthetic" and not path):
    raise ConfigError(f"--cross_corpus={value!r}: use 'synthetic', 'fsdd:PATH' or 'folder:PATH' "
                      "(PATH: the audio directory)")
  return corpus, path


def spread(n: int, limit: int) -> list[int]:
  """`limit` indices spread evenly over range(n) (all of them when limit is 0 or >= n)."""
  if not limit or limit >= n:
    return list(range(n))
  return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def evaluate_split(trained: Trained, split: Split, prefix: str, *, audio_metrics: bool = True,
                   seed: int = 0) -> dict[str, float]:
  """Log-mel distances, -ELBO and (with audio_metrics) STOI/PESQ of the model and of the oracle on a split."""
  e = trained.config.eval
  key = jax.random.fold_in(jax.random.key(seed), 3)
  deterministic = bool(trained.config.model.deterministic)
  p = bounds.run_split(trained, split, key, num_samples=0 if deterministic else 1,
                       batch_size=e.batch_size, length_multiple=e.length_multiple)
  refs = [np.asarray(split.utterance(i)) for i in range(len(split))]
  m = {f"{prefix}/utterances": float(len(split))}
  m.update(scoring.reconstruction_metrics(refs, p.recon, prefix))
  if not deterministic:
    m[f"{prefix}/neg_elbo"] = float(bounds.bound_metrics(p, trained.normalizer, prefix)[f"{prefix}/neg_elbo"])
  if audio_metrics:
    m.update(_audio_scores(trained, split, refs, p.recon, prefix, seed))
  return m


def _audio_scores(trained: Trained, split: Split, refs: Sequence[np.ndarray],
                  recons: Sequence[np.ndarray], prefix: str, seed: int) -> dict[str, float]:
  """STOI/PESQ of the re-synthesised reconstructions (prefix/...) and true mels (prefix/oracle/...)."""
  scored = scoring.resynthesis_scores(trained, split, {"": recons, "/oracle": refs}, seed)
  out = {}
  for name, (_, scores) in scored.items():
    out.update(scoring.audio_metrics(scores, prefix + name))
  return out


def cross_corpus_config(trained: Trained, corpus: str, path: str):
  """The run's config reading another corpus: same features, no holdout and no augmentation."""
  config = trained.config.copy_and_resolve_references()
  config.data.corpus = corpus
  config.data.path = path
  if "holdout" in config.data:
    config.data.holdout = ""
  if "augment" in config:
    config.augment.copies = 0
  return config


def evaluate(trained: Trained, *, data_path: str | None = None, cross_corpora: Sequence[str] = (),
             audio_metrics: bool | None = None, max_utterances: int = 0, seed: int = 0) -> list[Row]:
  """The rows of the generalisation table (see the module docstring)."""
  audio_metrics = trained.config.eval.audio_metrics if audio_metrics is None else audio_metrics
  parsed = [parse_cross_corpus(c) for c in cross_corpora]  # Bad values fail before any work.
  config = trained.config_for_corpus(data_path).copy_and_resolve_references()
  if "augment" in config:  # Only the test and unseen splits are read: no augmented copies needed.
    config.augment.copies = 0
  data = load_dataset(config, trained.normalizer)
  holdout = config.data.get("holdout", "")
  splits = [("in-split test", f"{data.corpus} test split" + (f" without {holdout}" if holdout else ""),
             data.test)]
  if data.unseen is not None:
    splits.append((f"unseen ({holdout})", f"every {data.corpus} utterance with {holdout}", data.unseen))
  for corpus, path in parsed:
    other = load_dataset(cross_corpus_config(trained, corpus, path), trained.normalizer)
    where = f" in {os.path.basename(os.path.normpath(path))}" if path else ""
    splits.append((f"cross-corpus ({corpus})", f"{corpus} test split{where}", other.test))
  rows = []
  for i, (name, what, split) in enumerate(splits):
    split = split.subset(spread(len(split), max_utterances))
    log.info("generalisation: %s, %d utterances", name, len(split))
    prefix = f"generalisation/{_slug(name)}"
    m = evaluate_split(trained, split, prefix, audio_metrics=audio_metrics, seed=seed)
    rows.append(Row(name, what, {k[len(prefix) + 1:]: v for k, v in m.items()}))
  return rows


def _slug(name: str) -> str:
  return name.split(" (")[0].replace(" ", "_").replace("-", "_")


def gaps(rows: Sequence[Row]) -> dict[str, float]:
  """Unseen minus in-split for each metric both rows have (empty without an unseen row)."""
  by = {r.name.split(" (")[0]: r.metrics for r in rows}
  if "unseen" not in by:
    return {}
  a, b = by["in-split test"], by["unseen"]
  return {k: b[k] - a[k] for k, *_ in COLUMNS if k != "utterances" and k in a and k in b}


def table(rows: Sequence[Row], trained: Trained) -> str:
  """The markdown table: one row per split, then the unseen - in-split gap."""
  cols = [c for c in COLUMNS if any(c[0] in r.metrics for r in rows)]
  fmt = lambda v, d: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"
  lines = [f"# Generalisation: {trained.workdir} (step {trained.step})", "",
           "| split | " + " | ".join(h for _, h, _ in cols) + " |",
           "|---|" + "---:|" * len(cols)]
  for r in rows:
    lines.append(f"| {r.name} | " + " | ".join(fmt(r.metrics.get(k), d) for k, _, d in cols) + " |")
  g = gaps(rows)
  if g:
    lines.append("| gap (unseen - in-split) | " + " | ".join(
        "" if k == "utterances" else (f"{g[k]:+.{d}f}" if k in g else "n/a") for k, _, d in cols) + " |")
  lines += [""] + [f"- {r.name}: {r.what}" for r in rows]
  lines.append("- STOI: over all clips back to back; PESQ: mean over clips; oracle: Griffin-Lim of the "
               "true mel; -ELBO: beta = 1 bound with one posterior sample")
  return "\n".join(lines) + "\n"


def write(rows: Sequence[Row], trained: Trained, out_dir: str) -> dict[str, str]:
  """generalisation.md and generalisation.json in out_dir; their paths."""
  fileio.makedirs(out_dir)
  paths = {"md": os.path.join(out_dir, "generalisation.md"),
           "json": os.path.join(out_dir, "generalisation.json")}
  fileio.write_text(paths["md"], table(rows, trained))
  record: dict[str, Any] = {"workdir": trained.workdir, "step": trained.step,
                            "holdout": trained.config.data.get("holdout", ""),
                            "rows": [dataclasses.asdict(r) for r in rows], "gap": gaps(rows)}
  fileio.write_json(paths["json"], record, indent=1)
  return paths
