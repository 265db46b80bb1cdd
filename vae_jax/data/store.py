"""Feature extraction into a sharded on-disk cache, and the per-split feature arrays.

The cache lives in `<cache>/features/<key>/`, where the key hashes the feature
config and the file list (paths, sizes, modification times), so any change to
either extracts again. Files are processed in chunks; each chunk becomes one
shard (`shard-00000.npy` + `.json`) written atomically, so an interrupted
extraction resumes at the first missing shard. Several processes can share the
work: process p of P extracts the chunks i with i % P == p, then waits for the
others' shards to appear.

The `.json` (written last: it marks the shard complete) holds the shard's index
and an integrity record: the byte size and sha256 of the `.npy`, and a sha256 of
the rest of the `.json`. Every open checks both files against it; a damaged
shard is rebuilt from its audio by the process that extracts it, with one
warning, or refused with one line when its audio has changed or gone since the
corpus was listed. Temporary files of killed writers are removed at a later open.

A split whose features fit in `data.max_memory_mb` is read into one array; a
larger one streams: only its index (shard, first row, length per utterance) is
held, and frames are read from the shards when a batch needs them.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tqdm

from vae_jax.audio import io as audio_io
from vae_jax.audio.features import FeatureConfig, Normalizer, log_mel
from vae_jax.data import augment, stream
from vae_jax.data.corpora import Corpus, Entry, build_corpus, cache_root
from vae_jax.errors import DataError
from vae_jax.fileio import atomic_write

log = logging.getLogger("vae_jax")

FILES_PER_SHARD = 512
# Bumped whenever the on-disk layout of shards changes, so old caches are ignored, not misread.
# 3: the .json holds an integrity record (older shards have none, so they are extracted again).
CACHE_FORMAT = 3
# Below this many files, worker start-up costs more than it saves.
MIN_FILES_FOR_WORKERS = 64
# Frames per chunk of the normaliser's moments: 8 MiB of float64 at 64 mel bins.
NORMALIZER_CHUNK_FRAMES = 16384
# Seconds without a new shard (or moments file) from the other processes before giving up.
WAIT_TIMEOUT_S = 1800.0
# A `*.tmp` file in the cache untouched for this long belongs to a killed writer: a live one
# writes its file from start to end in one go (seconds) and then renames it.
STALE_TMP_S = 600.0
_INDEX_KEYS = ("format", "kept", "skipped", "npy_bytes", "npy_sha256", "index_sha256")
_MIN_STD = 1e-3  # As Normalizer.fit.


class Split:
  """The log-mel features ([frames, n_mels], unnormalised) and labels of one split.

  The frames are one in-memory array with the utterances back to back (`frames`,
  `offsets`) or, for a split that `streaming`, rows of the feature shards read
  on demand; `utterance`, `crop`, `lengths` and `num_mels` serve both.
  """

  def __init__(self, names: list[str], paths: list[str], labels: dict[str, np.ndarray],
               frames: np.ndarray | None = None, offsets: np.ndarray | None = None, *,
               rows: stream.ShardRows | None = None):
    if (frames is None) == (rows is None) or (frames is None) != (offsets is None):
      raise ValueError("a Split takes either frames and offsets, or shard rows")
    self.names, self.paths, self.labels = names, paths, labels
    self._frames, self._rows = frames, rows
    if rows is None:
      self.offsets = np.asarray(offsets, np.int64)
      self._lengths = np.diff(self.offsets)
      self._lengths.flags.writeable = False
    else:
      self._lengths = rows.lengths
      self.offsets = np.concatenate([[0], np.cumsum(self._lengths)]).astype(np.int64)

  def __len__(self) -> int:
    return len(self.names)

  @property
  def streaming(self) -> bool:
    return self._rows is not None

  @property
  def frames(self) -> np.ndarray:
    """All frames back to back; only an in-memory split has them."""
    if self._rows is not None:
      raise TypeError(f"this split streams {self.nbytes / 2**20:.0f} MiB of features from the "
                      "feature cache and has no in-memory frames: use num_mels, lengths, "
                      "utterance(i) or crop(i, start, length)")
    return self._frames

  @property
  def lengths(self) -> np.ndarray:
    return self._lengths

  @property
  def num_mels(self) -> int:
    return self._rows.num_mels if self._rows is not None else int(self._frames.shape[1])

  @property
  def nbytes(self) -> int:
    """Bytes of all the split's frames, in memory or not."""
    return self._rows.nbytes if self._rows is not None else int(self._frames.nbytes)

  def utterance(self, i: int) -> np.ndarray:
    """The [frames, n_mels] features of utterance i."""
    return self.crop(i, 0, int(self._lengths[i]))

  def crop(self, i: int, start: int, length: int) -> np.ndarray:
    """Frames start..start+length-1 of utterance i (fewer at its end); only those are read."""
    stop = min(start + length, int(self._lengths[i]))
    start = min(start, stop)
    if self._rows is not None:
      return self._rows.read(i, start, stop)
    return self._frames[self.offsets[i] + start:self.offsets[i] + stop]

  def span(self, first: int, stop: int) -> np.ndarray:
    """Utterances first..stop-1 back to back (a view for an in-memory split)."""
    if self._rows is not None:
      return self._rows.read_span(first, stop)
    return self._frames[self.offsets[first]:self.offsets[stop]]

  def subset(self, indices: Sequence[int]) -> "Split":
    """A split of the chosen utterances, in the given order; a streaming one stays on disk."""
    idx = list(indices)
    names, paths = [self.names[i] for i in idx], [self.paths[i] for i in idx]
    labels = {k: v[idx] for k, v in self.labels.items()}
    if self._rows is not None:
      return Split(names, paths, labels, rows=self._rows.take(idx))
    parts = [self.utterance(i) for i in idx]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    frames = np.concatenate(parts) if parts else np.zeros((0, self.num_mels), np.float32)
    return Split(names, paths, labels, frames, offsets)


@dataclasses.dataclass
class Dataset:
  """Both splits of a corpus, its label names and the train-split normalisation."""

  corpus: str
  feature_config: FeatureConfig
  train: Split
  test: Split
  label_names: Mapping[str, tuple[str, ...]]
  normalizer: Normalizer
  unseen: Split | None = None  # The class data.holdout leaves out of train and test; None without one.


def load_dataset(config, normalizer: Normalizer | None = None, *, process_index: int = 0,
                 process_count: int = 1) -> Dataset:
  """Lists the corpus, extracts (or loads cached) features and fits the normaliser.

  Each split is held in memory when its features fit in `data.max_memory_mb` MiB,
  and streams from the feature shards otherwise. With several processes, each
  extracts its share of the shards and reads its share of a streaming train split
  to fit the normaliser.
  """
  fc = FeatureConfig.from_config(config.features)
  corpus = augment.augmented_corpus(build_corpus(config), config)
  store = extract_features(corpus, fc, cache_root(config), config.data.num_workers,
                           process_index=process_index, process_count=process_count)
  max_bytes = config.data.max_memory_mb * 2**20
  train, test = (_split(corpus, store, s, max_bytes) for s in ("train", "test"))
  if len(train) == 0:
    raise DataError(f"the {corpus.name} corpus has no usable training utterance")
  if len(test) == 0:
    raise DataError(f"the {corpus.name} corpus has no usable test utterance: "
                    "add files or raise data.test_fraction")
  for name, split in (("train", train), ("test", test)):
    if split.streaming:
      log.info("the %s split (%.0f MiB of features, over data.max_memory_mb=%d) streams from %s",
               name, split.nbytes / 2**20, config.data.max_memory_mb, store.cache_dir)
  unseen = None
  if any(e.split == "unseen" for e in corpus.entries):
    unseen = _split(corpus, store, "unseen", max_bytes)
  if normalizer is None:
    normalizer = fit_normalizer(train, process_index=process_index, process_count=process_count,
                                exchange_dir=store.cache_dir)
  return Dataset(corpus.name, fc, train, test, corpus.label_names, normalizer, unseen)


@dataclasses.dataclass
class _Store:
  cache_dir: str
  index: dict[str, tuple[int, int, int]]  # entry name -> (shard, start, length)
  files: list[stream.ShardFile]
  num_mels: int


def _split(corpus: Corpus, store: _Store, split: str, max_bytes: int) -> Split:
  kept = [e for e in corpus.entries if e.split == split and e.name in store.index]
  where = np.asarray([store.index[e.name] for e in kept], np.int64).reshape(-1, 3)
  rows = stream.ShardRows(store.files, where[:, 0], where[:, 1], where[:, 2], store.num_mels)
  names, paths = [e.name for e in kept], [e.path for e in kept]
  labels = {k: np.asarray([e.labels[k] for e in kept], np.int32) for k in corpus.label_names}
  if rows.nbytes > max_bytes:
    return Split(names, paths, labels, rows=rows)
  offsets = np.concatenate([[0], np.cumsum(rows.lengths)]).astype(np.int64)
  return Split(names, paths, labels, rows.read_span(0, len(rows)), offsets)


def fit_normalizer(split: Split, *, process_index: int = 0, process_count: int = 1,
                   exchange_dir: str | None = None, timeout_s: float = WAIT_TIMEOUT_S) -> Normalizer:
  """Per-bin mean and std of a split, accumulated in float64 chunk by chunk (bounded memory).

  For a streaming split shared by several processes, each reads every
  `process_count`-th chunk and the chunks' moments are exchanged through files
  in `exchange_dir`; the result is the same as one process reading them all.
  """
  bounds = stream.chunk_bounds(split.lengths, NORMALIZER_CHUNK_FRAMES)
  if split.streaming and process_count > 1 and exchange_dir:
    moments = _exchanged_moments(split, bounds, process_index, process_count, exchange_dir, timeout_s)
  else:
    moments = (stream.Moments.of(split.span(a, b)) for a, b in bounds)
  total = stream.merged(moments)
  std = np.sqrt(total.m2 / total.count)
  return Normalizer(total.mean.astype(np.float32), np.maximum(std, _MIN_STD).astype(np.float32))


def _exchanged_moments(split: Split, bounds: list[tuple[int, int]], p: int, count: int,
                       exchange_dir: str, timeout_s: float) -> Iterator[stream.Moments]:
  _check_process(p, count)
  h = hashlib.sha256(f"{NORMALIZER_CHUNK_FRAMES}\0{split.num_mels}".encode())
  h.update("\0".join(split.names).encode())
  h.update(np.ascontiguousarray(split.lengths, np.int64).tobytes())
  paths = [os.path.join(exchange_dir, f"moments-{h.hexdigest()[:20]}-{q}of{count}.npz")
           for q in range(count)]
  if not os.path.exists(paths[p]):  # A restarted process finds its share already there.
    mine = [stream.Moments.of(split.span(*bounds[c])) for c in range(p, len(bounds), count)]
    arrays = {"count": np.asarray([m.count for m in mine], np.int64),
              "mean": np.asarray([m.mean for m in mine]).reshape(len(mine), -1),
              "m2": np.asarray([m.m2 for m in mine]).reshape(len(mine), -1)}
    atomic_write(paths[p], lambda f: np.savez(f, **arrays))
  _wait_for([q for q in range(count) if q != p], lambda q: os.path.exists(paths[q]),
            lambda q: os.path.basename(paths[q]), "normaliser moments", count, exchange_dir,
            timeout_s)
  shares = []
  for path in paths:
    with np.load(path) as z:
      shares.append((z["count"], z["mean"], z["m2"]))
  for c in range(len(bounds)):
    n, mean, m2 = shares[c % count]
    yield stream.Moments(int(n[c // count]), mean[c // count], m2[c // count])


def cache_key(entries: Iterable[Entry], fc: FeatureConfig,
              stamps: Sequence[str] | None = None) -> str:
  """Hash of the feature config, the shard layout and the files (path, size, mtime, augmentation)."""
  entries = list(entries)
  stamps = [_stamp(e.path) for e in entries] if stamps is None else stamps
  h = hashlib.sha256(fc.to_json().encode())
  # Shards written with another chunk size or format are never mixed with these.
  h.update(f"\0format={CACHE_FORMAT}\0files_per_shard={FILES_PER_SHARD}".encode())
  for e, stamp in zip(entries, stamps, strict=True):
    h.update(f"\0{e.name}\0{os.path.abspath(e.path)}\0{stamp}".encode())
    if e.augment:  # Only augmented copies add to the hash: caches without any keep their keys.
      h.update(f"\0augment={e.augment}".encode())
  return h.hexdigest()[:20]


def _stamp(path: str) -> str:
  """'size:mtime' of a file, or 'missing'."""
  try:
    st = os.stat(path)
  except OSError:
    return "missing"
  return f"{st.st_size}:{st.st_mtime_ns}"


def extract_features(corpus: Corpus, fc: FeatureConfig, root: str, num_workers: int = 0, *,
                     process_index: int = 0, process_count: int = 1, wait: bool = True,
                     timeout_s: float = WAIT_TIMEOUT_S) -> _Store | None:
  """Features of every entry, from the cache where present; bad files are warned about and skipped.

  Process `process_index` of `process_count` extracts the shards i with
  i % process_count == process_index, then waits (up to `timeout_s` seconds
  without progress) for the other processes' shards. With `wait=False` it
  returns None instead of waiting when shards are still missing. Every shard is
  checked against its integrity record first: a damaged one is rebuilt by the
  process that extracts it (one warning), and waited for by the others.
  """
  _check_process(process_index, process_count)
  entries = list(corpus.entries)
  stamps = [_stamp(e.path) for e in entries]
  cache_dir = os.path.join(root, "features", f"{corpus.name}-{cache_key(entries, fc, stamps)}")
  os.makedirs(cache_dir, exist_ok=True)
  _remove_stale_temporaries(cache_dir)
  chunks, chunk_stamps = _chunked(entries), _chunked(stamps)
  problems = _verify_shards(cache_dir, len(chunks))
  verified = {i: meta for i, (meta, _) in enumerate(problems) if meta is not None}
  # Only the process that extracts a shard rebuilds it, so no two processes write one file.
  todo = [i for i in range(process_index, len(chunks), process_count) if i not in verified]
  for i, (_, problem) in enumerate(problems):
    if problem is not None and i in todo:
      _rebuild_or_refuse(chunks[i], chunk_stamps[i], cache_dir, problem)
    elif problem is not None:
      log.warning("damaged feature cache: %s; waiting for process %d, which extracts it, to "
                  "rebuild it", problem, i % process_count)
  if todo:
    _extract_chunks(chunks, todo, cache_dir, fc, num_workers)
    _read_back(cache_dir, todo, verified)
  pending = [i for i in range(len(chunks)) if i not in verified]
  if pending and not wait:
    return None
  _wait_for(pending, lambda i: _take_if_intact(cache_dir, i, verified),
            lambda i: os.path.basename(_shard_path(cache_dir, i, "")), "feature shards",
            process_count, cache_dir, timeout_s)
  return _open_store(corpus, fc, cache_dir, [verified[i] for i in range(len(chunks))], set(todo))


def _verify_shards(cache_dir: str, num_shards: int) -> list[tuple[dict | None, str | None]]:
  """_verify_shard of every shard; hashlib releases the GIL, so threads hash them side by side."""
  workers = min(num_shards, os.cpu_count() or 1)
  if workers <= 1:
    return [_verify_shard(cache_dir, i) for i in range(num_shards)]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(functools.partial(_verify_shard, cache_dir), range(num_shards)))


def _take_if_intact(cache_dir: str, i: int, verified: dict[int, dict]) -> bool:
  """True (and verified[i] set to its index) if shard i is intact."""
  meta, _ = _verify_shard(cache_dir, i)
  if meta is not None:
    verified[i] = meta
  return meta is not None


def _chunked(items: Sequence) -> list:
  return [items[i:i + FILES_PER_SHARD] for i in range(0, len(items), FILES_PER_SHARD)]


def _rebuild_or_refuse(chunk: Sequence[Entry], stamps: Sequence[str], cache_dir: str,
                       problem: str) -> None:
  """Warns that a damaged shard is rebuilt, or refuses if its audio is not what was listed."""
  changed = next((e.path for e, s in zip(chunk, stamps) if _stamp(e.path) != s), None)
  if changed is not None:
    # Features of other audio must not be stored under this cache key.
    raise DataError(f"damaged feature cache: {problem}, and it cannot be rebuilt because "
                    f"{changed} has changed or gone since the corpus was listed: rerun to list the "
                    f"corpus again (it extracts into a new cache directory), or delete {cache_dir}")
  log.warning("damaged feature cache: %s; rebuilding it from the audio", problem)


def _read_back(cache_dir: str, todo: Sequence[int], verified: dict[int, dict]) -> None:
  """Verifies the shards just written: their records must describe the files on disk."""
  for i in todo:
    meta, problem = _verify_shard(cache_dir, i)
    if meta is None:
      raise DataError(f"damaged feature cache: {problem or _shard_path(cache_dir, i, '.json')} "
                      "just after it was written: check the disk that holds data.cache_dir")
    verified[i] = meta


def _verify_shard(cache_dir: str, i: int) -> tuple[dict | None, str | None]:
  """(index, None) if shard i is intact, (None, None) if not written yet, else (None, the problem)."""
  path = _shard_path(cache_dir, i, ".json")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    return None, None  # The .json comes last: an interrupted extraction, or one not yet done.
  except OSError as e:
    return None, f"{path} cannot be read ({type(e).__name__})"
  try:
    meta = _parse_index(raw)
  except ValueError as e:
    return None, f"{path} {e}"
  problem = _npy_problem(_shard_path(cache_dir, i, ".npy"), meta)
  return (None, problem) if problem else (meta, None)


def _parse_index(raw: bytes) -> dict:
  """The shard index of a .json's bytes; ValueError says what is wrong with them."""
  try:
    meta = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    raise ValueError("is not UTF-8 text") from None
  except json.JSONDecodeError:
    raise ValueError("is not valid JSON") from None
  if not isinstance(meta, dict) or sorted(meta) != sorted(_INDEX_KEYS):
    raise ValueError("has no integrity record (not a shard index of this version)")
  if meta["format"] != CACHE_FORMAT:
    raise ValueError(f"is of cache format {meta['format']!r}, not {CACHE_FORMAT}")
  if meta["index_sha256"] != _index_digest(meta):
    raise ValueError("differs from its recorded sha256 (altered)")
  return meta


def _index_digest(meta: dict) -> str:
  body = {k: v for k, v in meta.items() if k != "index_sha256"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _npy_problem(path: str, meta: dict) -> str | None:
  """None if the .npy has the recorded size and sha256 (sizes first: no read), else what is wrong."""
  try:
    size = os.path.getsize(path)
    if size != meta["npy_bytes"]:
      return f"{path} has {size} bytes instead of {meta['npy_bytes']} (truncated or overwritten)"
    with open(path, "rb") as f:
      digest = hashlib.file_digest(f, "sha256").hexdigest()
  except FileNotFoundError:
    return f"{path} is missing"
  except OSError as e:
    return f"{path} cannot be read ({type(e).__name__})"
  if digest != meta["npy_sha256"]:
    return f"{path} differs from its recorded sha256 (altered)"
  return None


def _remove_stale_temporaries(cache_dir: str, max_age_s: float = STALE_TMP_S) -> None:
  """Deletes `*.tmp` files of killed writers: those untouched for `max_age_s` seconds.

  Age, not the writer's pid, tells them apart: processes on other hosts sharing
  the cache have pids this host cannot check, and a live writer keeps writing.
  """
  now, removed = time.time(), 0
  for entry in os.scandir(cache_dir):
    if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
      continue
    try:
      if now - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
        os.remove(entry.path)
        removed += 1
    except FileNotFoundError:
      pass  # Renamed by its writer, or removed by another process, meanwhile.
  if removed:
    log.info("removed %d temporary files of interrupted writes from %s", removed, cache_dir)


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")


def _wait_for(pending: Sequence[int], done: Callable[[int], bool], name: Callable[[int], str],
              what: str, process_count: int, where: str, timeout_s: float) -> None:
  """Polls until done(i) for every pending i; gives up after `timeout_s` s with none newly done."""
  pending = [i for i in pending if not done(i)]
  if pending:
    log.info("waiting for %d %s from the other processes in %s", len(pending), what, where)
  deadline, pause = time.monotonic() + timeout_s, 0.01
  while pending:
    if time.monotonic() >= deadline:
      shown = ", ".join(name(i) for i in pending[:3]) + (", ..." if len(pending) > 3 else "")
      raise DataError(
          f"gave up after {timeout_s:g} s without progress waiting for {len(pending)} {what} "
          f"({shown}) from the other processes (process_count={process_count}) in {where}: check that "
          "every process runs with the same corpus, config and data.cache_dir on a shared "
          "filesystem, and that none of them failed")
    time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
    pause = min(2 * pause, 1.0)
    still = [i for i in pending if not done(i)]
    if len(still) < len(pending):
      deadline = time.monotonic() + timeout_s
    pending = still


def _open_store(corpus: Corpus, fc: FeatureConfig, cache_dir: str, metas: Sequence[dict],
                extracted_now: set[int]) -> _Store:
  """The store over verified shards, whose indices are `metas`."""
  index, files, skipped = {}, [], []
  for i, meta in enumerate(metas):
    files.append(stream.ShardFile.open(_shard_path(cache_dir, i, ".npy")))
    for name, start, length in meta["kept"]:
      index[name] = (i, start, length)
    if i not in extracted_now:  # Skipped in an earlier run or by another process: say so here too.
      for path, reason in meta["skipped"]:
        log.warning("skipped %s: %s", path, reason)
    skipped.extend(meta["skipped"])
  num_skipped = len(skipped) + len(corpus.skipped)
  num_files = len(corpus.entries) + len(corpus.skipped)
  if num_skipped:
    log.warning("skipped %d of %d files of the %s corpus (reasons above)",
                num_skipped, num_files, corpus.name)
  if not index:
    raise DataError(f"none of the {num_files} files of the {corpus.name} corpus is usable audio "
                    "(reasons above): check data.path")
  return _Store(cache_dir, index, files, fc.n_mels)


def _shard_path(cache_dir: str, i: int, ext: str) -> str:
  return os.path.join(cache_dir, f"shard-{i:05d}{ext}")


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
      args = [(e.path, fc, e.augment) for e in chunks[i]]
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
      # C order and float32: the streaming reader addresses rows by byte offset.
      arr = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, fc.n_mels)),
                                 np.float32)
      _atomic_save(cache_dir, i, arr, {"kept": kept, "skipped": skipped})
  finally:
    bar.close()
    if executor:
      executor.shutdown(cancel_futures=True)


def _extract_one(args: tuple[str, FeatureConfig, str]) -> tuple[np.ndarray | None, str | None]:
  path, fc, spec = args
  try:
    wave = audio_io.read_audio(path, fc.sample_rate, min_samples=fc.win_length)
  except audio_io.BadAudio as e:
    return None, str(e)
  if spec:
    wave = augment.apply(wave, spec, fc.sample_rate)
  feats = log_mel(wave, fc)
  if not np.all(np.isfinite(feats)):
    return None, "features are not finite"
  return feats, None


def _atomic_save(cache_dir: str, i: int, arr: np.ndarray, meta: dict) -> None:
  """Writes shard i: its .npy, then its .json (index and integrity record), which marks it complete."""
  hashed = []
  atomic_write(_shard_path(cache_dir, i, ".npy"), lambda f: hashed.append(_save_hashed(f, arr)))
  size, digest = hashed[0]
  # Through JSON and back: the digest is of the index as a reader parses it.
  record = json.loads(json.dumps({"format": CACHE_FORMAT, "kept": meta["kept"],
                                  "skipped": meta["skipped"], "npy_bytes": size,
                                  "npy_sha256": digest}))
  record["index_sha256"] = _index_digest(record)
  atomic_write(_shard_path(cache_dir, i, ".json"), lambda f: f.write(json.dumps(record).encode()))


class _HashingWriter:
  """A write-only file that counts and hashes what passes through it."""

  def __init__(self, f: BinaryIO):
    self.f, self.size, self.sha256 = f, 0, hashlib.sha256()

  def write(self, data) -> int:
    self.size += memoryview(data).nbytes
    self.sha256.update(data)
    return self.f.write(data)


def _save_hashed(f: BinaryIO, arr: np.ndarray) -> tuple[int, str]:
  """np.save into f; the byte count and sha256 of what was written (no second read)."""
  w = _HashingWriter(f)
  np.save(w, arr)
  return w.size, w.sha256.hexdigest()
