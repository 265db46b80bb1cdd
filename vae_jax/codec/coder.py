"""Entropy coding of integer symbols with constriction's ANS coder, from exact integer tables.

constriction builds its fixed-point model from float probabilities p_i as
left_cumulative_i = floor(sum_{j<i} p_j * (TOTAL - n) / sum_j p_j) + i. Given
p_i = f_i - 1 for integer frequencies f_i >= 1 summing to TOTAL, the scale is
exactly 1 and every partial sum is an exact integer, so its table is ours to the
unit (tests/test_codec.py checks the coded size against -log2 f_i / TOTAL). The same
holds row by row when each symbol has its own table (`categorical_rows`: constriction's
categorical model family, one call for a whole latent frame).
"""

import dataclasses
from typing import Callable

import constriction
import numba
import numpy as np

from vae_jax.codec.entropy import TOTAL

_WORD_BYTES = 4


class Exhausted(Exception):
  """The stream ended before every symbol was read, or has data left over after it."""


# One categorical distribution per symbol, each given as a row of probabilities (same rules).
_ROWS = constriction.stream.model.Categorical(perfect=False)


@numba.njit(cache=True, nogil=True)
def _checked(freq_NxS: np.ndarray) -> np.ndarray:
  """freq - 1 as float64 [N, S], or an empty array if a row has an entry < 1 or does not sum to TOTAL."""
  out = np.empty(freq_NxS.shape)
  for n in range(freq_NxS.shape[0]):
    total = 0
    for s in range(freq_NxS.shape[1]):
      f = freq_NxS[n, s]
      if f < 1:
        return np.empty((0, 0))
      total += f
      out[n, s] = f - 1
    if total != TOTAL:
      return np.empty((0, 0))
  return out


def _probabilities(freq_S: np.ndarray) -> np.ndarray:
  """constriction's float probabilities of integer tables [S] or [N, S] (checked: >= 1, summing to TOTAL)."""
  out = _checked(np.atleast_2d(np.asarray(freq_S, np.int64)))
  if out.size == 0:
    raise ValueError("a frequency table must have entries >= 1 summing to TOTAL")
  return out.reshape(np.shape(freq_S))


def _model(freq_S: np.ndarray):
  return constriction.stream.model.Categorical(_probabilities(freq_S), perfect=False)


@dataclasses.dataclass
class Writer:
  """Collects symbols in the order the reader will read them; `finish` encodes them (ANS is LIFO)."""

  ops: list[Callable] = dataclasses.field(default_factory=list)

  def categorical(self, symbols_N: np.ndarray, freq_S: np.ndarray) -> None:
    """Symbols in [0, S) i.i.d. under one frequency table."""
    symbols, model = np.asarray(symbols_N, np.int32), _model(freq_S)
    self.ops.append(lambda ans: ans.encode_reverse(symbols, model))

  def categorical_rows(self, symbols_N: np.ndarray, freq_NxS: np.ndarray) -> None:
    """Symbol i in [0, S) under its own table, row i of freq_NxS."""
    symbols, probabilities = np.asarray(symbols_N, np.int32), _probabilities(freq_NxS)
    self.ops.append(lambda ans: ans.encode_reverse(symbols, _ROWS, probabilities))

  def uniform(self, values_N: np.ndarray, size: int) -> None:
    values, model = np.asarray(values_N, np.int32), constriction.stream.model.Uniform(size)
    self.ops.append(lambda ans: ans.encode_reverse(values, model))

  def finish(self) -> bytes:
    """The stream's bytes: little-endian 32-bit words without the top word's zero high bytes."""
    ans = constriction.stream.stack.AnsCoder()
    for op in reversed(self.ops):
      op(ans)
    return ans.get_compressed().astype("<u4").tobytes().rstrip(b"\0")


class Reader:
  """Reads back what a Writer wrote, in the same order."""

  def __init__(self, data: bytes):
    padded = data + b"\0" * (-len(data) % _WORD_BYTES)
    self._ans = constriction.stream.stack.AnsCoder(np.frombuffer(padded, "<u4").astype(np.uint32))

  def categorical(self, num: int, freq_S: np.ndarray) -> np.ndarray:
    return np.asarray(self._ans.decode(_model(freq_S), num), np.int64)

  def categorical_rows(self, freq_NxS: np.ndarray) -> np.ndarray:
    return np.asarray(self._ans.decode(_ROWS, _probabilities(freq_NxS)), np.int64)

  def uniform(self, num: int, size: int) -> np.ndarray:
    return np.asarray(self._ans.decode(constriction.stream.model.Uniform(size), num), np.int64)

  def check_end(self) -> None:
    """Exhausted unless the coder is back to its empty state (what a well-formed stream leaves)."""
    if not self._ans.is_empty():
      raise Exhausted("data left over after the last symbol")
