"""Feature extraction into a sharded on-disk cache, and the per-split feature arrays.

The cache lives in `<cache>/features/<key>/`, where the key hashes the feature
config and the file list (paths, sizes, modification times), so any change to
either extracts again. Files are processed in chunks; each chunk becomes one
shard (`shard-00000.npy` + `.json`) written atomically, so an interrupted
extraction resumes at the first missing shard.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from typing import Iterable, Mapping, Sequence

import numpy as np
import tqdm

from vae_jax import audio
from vae_jax.data.corpora import Corpus, Entry, build_corpus, cache_root
from vae_jax.errors import DataError
from vae_jax.features import FeatureConfig, Normalizer, log_mel

log = logging.getLogger("vae_jax")

FILES_PER_SHARD = 512
# Below this many files, worker start-up costs more than it saves.
MIN_FILES_FOR_WORKERS = 64


@dataclasses.dataclass
class Split:
  """The log-mel features ([frames, n_mels], unnormalised) and labels of one split."""

  names: list[str]
  paths: list[str]
  labels: dict[str, np.ndarray]  # label -> [num_utterances] int
  frames: np.ndarray  # [total_frames, n_mels], utterances back to back.
  offsets: np.ndarray  # [num_utterances + 1] int64 into `frames`.

  def __len__(self) -> int:
    return len(self.names)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def utterance(self, i: int) -> np.ndarray:
    return self.frames[self.offsets[i]:self.offsets[i + 1]]

  def subset(self, indices: Sequence[int]) -> "Split":
    """A split of the chosen utterances, in the given order."""
    parts = [self.utterance(i) for i in indices]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    n_mels = self.frames.shape[1]
    frames = np.concatenate(parts) if parts else np.zeros((0, n_mels), np.float32)
    return Split([self.names[i] for i in indices], [self.paths[i] for i in indices],
                 {k: v[list(indices)] for k, v in self.labels.items()}, frames, offsets)


@dataclasses.dataclass
class Dataset:
  """Both splits of a corpus, its label names and the train-split normalisation."""

  corpus: str
  feature_config: FeatureConfig
  train: Split
  test: Split
  label_names: Mapping[str, tuple[str, ...]]
  normalizer: Normalizer


def load_dataset(config, normalizer: Normalizer | None = None) -> Dataset:
  """Lists the corpus, extracts (or loads cached) features and fits the normaliser."""
  fc = FeatureConfig.from_config(config.features)
  corpus = build_corpus(config)
  store = extract_features(corpus, fc, cache_root(config), config.data.num_workers)
  train, test = (_split(corpus, store, s) for s in ("train", "test"))
  if len(train) == 0:
    raise DataError(f"the {corpus.name} corpus has no usable training utterance")
  if len(test) == 0:
    raise DataError(f"the {corpus.name} corpus has no usable test utterance: "
                    "add files or raise data.test_fraction")
  if normalizer is None:
    normalizer = Normalizer.fit(train.frames)
  return Dataset(corpus.name, fc, train, test, corpus.label_names, normalizer)


@dataclasses.dataclass
class _Store:
  index: dict[str, tuple[int, int, int]]  # entry name -> (shard, start, length)
  shards: list[np.ndarray]


def _split(corpus: Corpus, store: _Store, split: str) -> Split:
  kept = [e for e in corpus.entries if e.split == split and e.name in store.index]
  parts = []
  for e in kept:
    shard, start, length = store.index[e.name]
    parts.append(store.shards[shard][start:start + length])
  n_mels = store.shards[0].shape[1] if store.shards else 0
  frames = np.concatenate(parts) if parts else np.zeros((0, n_mels), np.float32)
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
  labels = {k: np.asarray([e.labels[k] for e in kept], np.int32) for k in corpus.label_names}
  return Split([e.name for e in kept], [e.path for e in kept], labels, frames, offsets)


def cache_key(entries: Iterable[Entry], fc: FeatureConfig) -> str:
  """Hash of the feature config, the shard layout and the files (path, size, mtime)."""
  h = hashlib.sha256(fc.to_json().encode())
  # Shards written with another chunk size hold other files: never mix the two layouts.
  h.update(f"\0files_per_shard={FILES_PER_SHARD}".encode())
  for e in entries:
    try:
      st = os.stat(e.path)
      stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
      stamp = "missing"
    h.update(f"\0{e.name}\0{os.path.abspath(e.path)}\0{stamp}".encode())
  return h.hexdigest()[:20]


def extract_features(corpus: Corpus, fc: FeatureConfig, root: str, num_workers: int = 0) -> _Store:
  """Features of every entry, from the cache where present; bad files are warned about and skipped."""
  entries = list(corpus.entries)
  cache_dir = os.path.join(root, "features", f"{corpus.name}-{cache_key(entries, fc)}")
  os.makedirs(cache_dir, exist_ok=True)
  chunks = [entries[i:i + FILES_PER_SHARD] for i in range(0, len(entries), FILES_PER_SHARD)]
  todo = [i for i in range(len(chunks)) if not _shard_complete(cache_dir, i)]
  if todo:
    _extract_chunks(chunks, todo, cache_dir, fc, num_workers)
  index, shards, skipped, extracted_now = {}, [], [], set(todo)
  for i in range(len(chunks)):
    with open(_shard_path(cache_dir, i, ".json")) as f:
      meta = json.load(f)
    shards.append(np.load(_shard_path(cache_dir, i, ".npy"), mmap_mode="r"))
    for name, start, length in meta["kept"]:
      index[name] = (i, start, length)
    if i not in extracted_now:  # Files skipped in an earlier run are still bad: say so again.
      for path, reason in meta["skipped"]:
        log.warning("skipped %s: %s", path, reason)
    skipped.extend(meta["skipped"])
  num_skipped, num_files = len(skipped) + len(corpus.skipped), len(entries) + len(corpus.skipped)
  if num_skipped:
    log.warning("skipped %d of %d files of the %s corpus (reasons above)",
                num_skipped, num_files, corpus.name)
  if not index:
    raise DataError(f"none of the {num_files} files of the {corpus.name} corpus is usable audio "
                    "(reasons above): check data.path")
  return _Store(index, shards)


def _shard_path(cache_dir: str, i: int, ext: str) -> str:
  return os.path.join(cache_dir, f"shard-{i:05d}{ext}")


def _shard_complete(cache_dir: str, i: int) -> bool:
  return all(os.path.exists(_shard_path(cache_dir, i, ext)) for ext in (".npy", ".json"))


def _extract_chunks(chunks, todo, cache_dir, fc, num_workers):
  total = sum(len(chunks[i]) for i in todo)
  workers = num_workers or os.cpu_count() or 1
  executor = None
  if workers > 1 and total >= MIN_FILES_FOR_WORKERS:
    # spawn: forking a process that has started JAX's threads is unsafe.
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
  bar = tqdm.tqdm(total=total, desc="log-mel features", unit="file", disable=None)
  try:
    for i in todo:
      paths = [e.path for e in chunks[i]]
      args = [(p, fc) for p in paths]
      results = executor.map(_extract_one, args, chunksize=8) if executor else map(_extract_one, args)
      kept, skipped, parts, start = [], [], [], 0
      for entry, (feats, reason) in zip(chunks[i], results):
        bar.update(1)
        if feats is None:
          log.warning("skipped %s: %s", entry.path, reason)
          skipped.append((entry.path, reason))
          continue
        kept.append((entry.name, start, len(feats)))
        parts.append(feats)
        start += len(feats)
      arr = np.concatenate(parts) if parts else np.zeros((0, fc.n_mels), np.float32)
      _atomic_save(cache_dir, i, arr, {"kept": kept, "skipped": skipped})
  finally:
    bar.close()
    if executor:
      executor.shutdown(cancel_futures=True)


def _extract_one(args: tuple[str, FeatureConfig]) -> tuple[np.ndarray | None, str | None]:
  path, fc = args
  try:
    wave = audio.read_audio(path, fc.sample_rate, min_samples=fc.win_length)
  except audio.BadAudio as e:
    return None, str(e)
  feats = log_mel(wave, fc)
  if not np.all(np.isfinite(feats)):
    return None, "features are not finite"
  return feats, None


def _atomic_save(cache_dir: str, i: int, arr: np.ndarray, meta: dict) -> None:
  # The .json is written last and marks the shard complete.
  for ext, write in ((".npy", lambda f: np.save(f, arr)),
                     (".json", lambda f: f.write(json.dumps(meta).encode()))):
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        write(f)
      os.replace(tmp, _shard_path(cache_dir, i, ext))
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
