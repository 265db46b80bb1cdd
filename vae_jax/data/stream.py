"""Utterance frames read on demand from the feature cache's shards, and streaming moments.

Frames are read with `os.preadv` into fresh arrays rather than sliced out of
memory maps: every page a memory map has touched counts in the process's
resident set until the kernel reclaims it, so an epoch over a memory-mapped
corpus reports an RSS as large as the corpus. Positional reads go through the
page cache, which is not part of the resident set, so the process holds only the
frames of the batch at hand. They are also safe from several threads at once.

Every read is checked to be finite: the shards were verified against their
integrity records when opened, so a NaN here means a file changed since (or a bug).
"""

import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np

from vae_jax.errors import DataError

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _damaged(path: str, what: str) -> DataError:
  return DataError(f"{path} {what}: the feature cache is damaged; delete its directory to extract again")


def _not_finite(path: str, first_row: int, rows: int) -> DataError:
  return DataError(
      f"{path} holds non-finite features in rows {first_row}..{first_row + rows - 1} although it "
      "matched its integrity record when opened: rerun, which verifies the feature cache again and "
      "rebuilds a damaged shard (if this repeats, delete its directory)")


@dataclasses.dataclass(frozen=True)
class ShardFile:
  """Where the [rows, cols] float32 array of one shard lies in its .npy file."""

  path: str
  data_offset: int  # Bytes of .npy header before the first row.
  rows: int
  cols: int

  @property
  def row_bytes(self) -> int:
    return self.cols * 4

  @classmethod
  def open(cls, path: str) -> "ShardFile":
    """Reads the .npy header only; the frames stay on disk."""
    with open(path, "rb") as f:
      try:
        version = np.lib.format.read_magic(f)
        shape, fortran_order, dtype = _HEADER_READERS[version](f)
      except (ValueError, KeyError):
        raise _damaged(path, "has no readable .npy header") from None
      data_offset = f.tell()
      size = os.fstat(f.fileno()).st_size
    if len(shape) != 2 or fortran_order or dtype != np.dtype("<f4"):
      raise _damaged(path, f"holds a {dtype} array of shape {shape}, not [frames, n_mels] float32")
    shard = cls(path, data_offset, int(shape[0]), int(shape[1]))
    if size < data_offset + shard.rows * shard.row_bytes:
      raise _damaged(path, "is shorter than its header says")
    return shard


def _pread_into(fd: int, out: np.ndarray, offset: int, path: str) -> None:
  view = memoryview(out).cast("B")
  done = 0
  while done < len(view):
    n = os.preadv(fd, [view[done:]], offset + done)
    if n == 0:
      raise _damaged(path, "ends early")
    done += n


class ShardRows:
  """Utterances stored as row ranges of shard files; frames are read only when asked for."""

  def __init__(self, files: Sequence[ShardFile], shard: np.ndarray, start: np.ndarray,
               length: np.ndarray, num_mels: int):
    self.files = list(files)
    self.shard = np.array(shard, np.int64)
    self.start = np.array(start, np.int64)
    self.lengths = np.array(length, np.int64)
    self.lengths.flags.writeable = False
    self.num_mels = num_mels
    if any(f.cols != num_mels for f in self.files):
      raise _damaged(os.path.dirname(self.files[0].path), f"has shards without {num_mels} mel bins")
    rows = np.asarray([f.rows for f in self.files], np.int64)
    if len(self.shard) and np.any(self.start + self.lengths > rows[self.shard]):
      raise _damaged(os.path.dirname(self.files[0].path), "indexes rows past the end of a shard")

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def nbytes(self) -> int:
    return int(self.lengths.sum()) * self.num_mels * 4

  def read(self, i: int, start: int, stop: int) -> np.ndarray:
    """Frames start..stop-1 of utterance i, as a new [stop - start, num_mels] array."""
    out = np.empty((stop - start, self.num_mels), np.float32)
    if len(out):
      f = self.files[self.shard[i]]
      fd = os.open(f.path, os.O_RDONLY)
      try:
        _pread_into(fd, out, f.data_offset + (int(self.start[i]) + start) * f.row_bytes, f.path)
      finally:
        os.close(fd)
      if not np.isfinite(out).all():
        raise _not_finite(f.path, int(self.start[i]) + start, len(out))
    return out

  def read_span(self, first: int, stop: int) -> np.ndarray:
    """Utterances first..stop-1 back to back, each shard opened once."""
    ends = np.cumsum(self.lengths[first:stop])
    out = np.empty((int(ends[-1]) if len(ends) else 0, self.num_mels), np.float32)
    fds: dict[int, int] = {}
    try:
      for i, end in zip(range(first, stop), ends):
        s, n = int(self.shard[i]), int(self.lengths[i])
        if s not in fds:
          fds[s] = os.open(self.files[s].path, os.O_RDONLY)
        f = self.files[s]
        _pread_into(fds[s], out[end - n:end], f.data_offset + int(self.start[i]) * f.row_bytes, f.path)
    finally:
      for fd in fds.values():
        os.close(fd)
    if not np.isfinite(out).all():
      self._raise_not_finite(first, stop, out)
    return out

  def _raise_not_finite(self, first: int, stop: int, out: np.ndarray) -> None:
    """Names the shard of the first utterance in `out` (utterances first..stop-1) that is not finite."""
    ends = np.cumsum(self.lengths[first:stop])
    for i, end in zip(range(first, stop), ends):
      n = int(self.lengths[i])
      if not np.isfinite(out[end - n:end]).all():
        raise _not_finite(self.files[self.shard[i]].path, int(self.start[i]), n)

  def take(self, indices: Sequence[int]) -> "ShardRows":
    """The chosen utterances, in the given order; nothing is read."""
    idx = np.asarray(indices, np.int64)
    return ShardRows(self.files, self.shard[idx], self.start[idx], self.lengths[idx], self.num_mels)


@dataclasses.dataclass(frozen=True)
class Moments:
  """Frame count, per-bin mean and per-bin summed squared deviation, in float64."""

  count: int
  mean: np.ndarray
  m2: np.ndarray

  @classmethod
  def of(cls, frames_NxF: np.ndarray) -> "Moments":
    x = np.asarray(frames_NxF, np.float64)
    mean = x.mean(0)
    return cls(len(x), mean, ((x - mean) ** 2).sum(0))

  def merge(self, other: "Moments") -> "Moments":
    """Moments of both sets of frames (Chan et al.'s pairwise update, stable for large counts)."""
    if not other.count:
      return self
    if not self.count:
      return other
    n = self.count + other.count
    delta = other.mean - self.mean
    return Moments(n, self.mean + delta * (other.count / n),
                   self.m2 + other.m2 + delta ** 2 * (self.count * other.count / n))


def chunk_bounds(lengths: np.ndarray, chunk_frames: int) -> list[tuple[int, int]]:
  """Runs of consecutive utterances, a new run at each multiple of `chunk_frames` frames.

  The runs depend on the lengths only, not on where the frames are stored, so the
  moments summed chunk by chunk are the same for in-memory and streamed splits.
  """
  lengths = np.asarray(lengths, np.int64)
  if not len(lengths):
    return []
  chunk_of = (np.cumsum(lengths) - lengths) // chunk_frames
  cuts = [0, *(np.flatnonzero(np.diff(chunk_of)) + 1).tolist(), len(lengths)]
  return list(zip(cuts[:-1], cuts[1:]))


def merged(moments: Iterator[Moments]) -> Moments:
  """Merges moments in the order given (the order fixes the float rounding)."""
  total = Moments(0, np.zeros(0), np.zeros(0))
  for m in moments:
    total = total.merge(m)
  return total
