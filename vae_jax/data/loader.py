"""Deterministic training batches and whole-utterance evaluation batches.

The training batch at (epoch, index) is a pure function of the seed and that
position: the epoch's permutation comes from rng(seed, epoch) and the crops from
rng(seed, epoch, index). The loader's state is therefore just the position, and
the batch contents do not depend on how many devices or processes share it.
Each process reads only the frames of its own crops, so a streaming split is
never read whole by any one process.
"""

import dataclasses
import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from vae_jax.data.store import Split
from vae_jax.errors import ConfigError
from vae_jax.audio.features import Normalizer


@dataclasses.dataclass(frozen=True)
class LoaderState:
  """Position of the next training batch."""

  epoch: int = 0
  index: int = 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d) -> "LoaderState":
    return cls(int(d["epoch"]), int(d["index"]))


class TrainLoader:
  """Random fixed-length crops: this process's share of the global batch, [batch, frames, n_mels].

  The rows are this process's slice of the global batch in order; the parallel wrapper
  splits them over devices (vae_jax/parallel.py). `num_local_devices` only checks that
  the batch divides over every device.
  """

  def __init__(self, split: Split, normalizer: Normalizer, *, global_batch: int,
               num_local_devices: int, segment_frames: int, seed: int,
               process_index: int = 0, process_count: int = 1, prefetch: int = 0,
               labels: Sequence[str] = (), length_multiple: int = 0):
    if global_batch % (num_local_devices * process_count):
      raise ConfigError(
          f"train.batch_size={global_batch} is not divisible by the {num_local_devices * process_count} "
          "devices: use a multiple of the device count")
    if len(split) < global_batch:
      raise ConfigError(f"train.batch_size={global_batch} is larger than the {len(split)} training "
                        "utterances: lower train.batch_size")
    self.split, self.normalizer = split, normalizer
    self.global_batch, self.segment_frames, self.seed = global_batch, segment_frames, seed
    self.process_index, self.process_count = process_index, process_count
    self.steps_per_epoch = len(split) // global_batch
    self.labels = tuple(labels)  # Split labels added to each batch as 'labels/<name>' [B].
    # > 0: a batch is only as long as its longest crop, rounded up to this multiple (fewer
    # padded frames for whole-utterance batches, one program per multiple).
    self.length_multiple = length_multiple
    self.state = LoaderState()
    self.prefetch = prefetch
    self._queue = None
    self._perm = (-1, np.zeros(0, np.int64))  # (epoch, permutation), shared by both threads.

  def batch_at(self, state: LoaderState) -> dict[str, np.ndarray]:
    """The batch at a position: {'mel': [B, T, F] normalised, 'mask': [B, T]} (B: this process's rows)."""
    # SeedSequence takes non-negative entropy only; the modulus leaves such seeds unchanged.
    seed = self.seed % 2**64
    perm = self._permutation(state.epoch)
    chosen = perm[state.index * self.global_batch:(state.index + 1) * self.global_batch]
    lengths = self.split.lengths[chosen]
    # Crops drawn for the whole global batch, so each process's share is the same at any scale.
    u = np.random.default_rng([seed, state.epoch, state.index, 1]).random(self.global_batch)
    starts = np.floor(u * (np.maximum(lengths - self.segment_frames, 0) + 1)).astype(np.int64)
    per_process = self.global_batch // self.process_count
    mine = slice(self.process_index * per_process, (self.process_index + 1) * per_process)
    t = self.segment_frames
    if self.length_multiple:
      t = min(t, -(-int(np.minimum(lengths, t).max()) // self.length_multiple) * self.length_multiple)
    mel, mask = self._crops(chosen[mine], starts[mine], t)
    batch = {"mel": mel, "mask": mask}
    for name in self.labels:
      batch[f"labels/{name}"] = self.split.labels[name][chosen[mine]].astype(np.int32)
    return batch

  def _permutation(self, epoch: int) -> np.ndarray:
    # Drawn once per epoch: at hundreds of thousands of utterances it would dominate each batch.
    cached_epoch, perm = self._perm
    if cached_epoch != epoch:
      perm = np.random.default_rng([self.seed % 2**64, epoch]).permutation(len(self.split))
      self._perm = (epoch, perm)
    return perm

  def _crops(self, utts: np.ndarray, starts: np.ndarray, t: int):
    f = self.split.num_mels
    mel = np.zeros((len(utts), t, f), np.float32)
    mask = np.zeros((len(utts), t), np.float32)
    for j, (u, s) in enumerate(zip(utts, starts)):
      x = self.split.crop(int(u), int(s), t)
      mel[j, :len(x)] = self.normalizer.normalize(x)
      mask[j, :len(x)] = 1.0
    return mel, mask

  def advance(self, state: LoaderState) -> LoaderState:
    if state.index + 1 < self.steps_per_epoch:
      return LoaderState(state.epoch, state.index + 1)
    return LoaderState(state.epoch + 1, 0)

  def restore(self, state: LoaderState) -> None:
    """Continues from a saved position (e.g. `loader.state` stored with a checkpoint)."""
    self._stop_prefetch()
    if state.index >= self.steps_per_epoch:
      # Saved with a larger epoch (a smaller batch or more data): that epoch is over.
      state = LoaderState(state.epoch + 1, 0)
    self.state = state

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.prefetch <= 0:
      batch = self.batch_at(self.state)
    else:
      if self._queue is None:
        self._start_prefetch()
      batch = self._queue.get()
      if isinstance(batch, BaseException):
        self._stop_prefetch()
        raise batch
    self.state = self.advance(self.state)
    return batch

  def _start_prefetch(self) -> None:
    self._queue = queue.Queue(maxsize=self.prefetch)
    self._stop = threading.Event()
    start = self.state

    def work():
      s = start
      while not self._stop.is_set():
        try:
          batch = self.batch_at(s)
        except Exception as e:  # Handed to the consumer, which would otherwise wait forever.
          batch = e
        while not self._stop.is_set():
          try:
            self._queue.put(batch, timeout=0.1)
            break
          except queue.Full:
            pass
        if isinstance(batch, Exception):
          return
        s = self.advance(s)

    self._thread = threading.Thread(target=work, daemon=True, name="train-loader")
    self._thread.start()

  def _stop_prefetch(self) -> None:
    if self._queue is not None:
      self._stop.set()
      self._thread.join()
      self._queue = None

  def close(self) -> None:
    self._stop_prefetch()


def eval_batches(split: Split, normalizer: Normalizer, batch_size: int, length_multiple: int,
                 max_utterances: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Whole utterances sorted by length, padded to a multiple of `length_multiple` frames.

  Yields {'mel': [B, T, F], 'mask': [B, T], 'index': [B] (-1 for padding rows)}. The batch
  size is constant, so only one program per padded length is compiled, and the one partial
  batch holds the shortest utterances: padding rows cost as much as real ones, least there.
  """
  n = len(split) if max_utterances <= 0 else min(len(split), max_utterances)
  order = np.argsort(split.lengths[:n], kind="stable")
  first = n % batch_size or batch_size
  starts = [0] + list(range(first, n, batch_size))
  for start, stop in zip(starts, starts[1:] + [n]):
    yield padded_batch(split, order[start:stop], normalizer, batch_size, length_multiple)


def padded_batch(split: Split, idx: Sequence[int], normalizer: Normalizer, batch_size: int,
                 length_multiple: int) -> dict[str, np.ndarray]:
  """The utterances `idx`, normalised and zero-padded to [batch_size, T, F] with a frame mask."""
  mels = [normalizer.normalize(split.utterance(int(i))) for i in idx]
  mel, mask = pad_frames(mels, batch_size, length_multiple)
  index = np.full((batch_size,), -1, np.int64)
  index[:len(idx)] = idx
  return {"mel": mel, "mask": mask, "index": index}


def pad_frames(arrays: Sequence[np.ndarray], rows: int, length_multiple: int, fill: float = 0.0,
               min_padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Arrays [T_i, F] stacked into [rows, T, F] (T: a multiple of `length_multiple` with at least
  `min_padding` frames after the longest), padded with `fill`; and the frame mask [rows, T]."""
  longest = max(len(a) for a in arrays)
  t = -(-(longest + min_padding) // length_multiple) * length_multiple
  out = np.full((rows, t, arrays[0].shape[1]), fill, np.float32)
  mask = np.zeros((rows, t), np.float32)
  for j, a in enumerate(arrays):
    out[j, :len(a)] = a
    mask[j, :len(a)] = 1.0
  return out, mask
