"""Atomic file writes and JSON-safe values, shared by runs, caches, checkpoints and reports."""

import json
import math
import os
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np


def atomic_write(path: str, write: Callable[[BinaryIO], Any], fsync: bool = False) -> None:
  """Writes through a temporary `*.tmp` file and a rename: `path` is either the old or the new file.

  A kill mid-write leaves only the temporary file, which the feature cache sweeps up
  (see data/store.py); `fsync` also survives a power cut (checkpoint records).
  """
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """A text file, written atomically."""
  atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str, obj: Any, fsync: bool = False, **dump_kwargs) -> None:
  """`obj` as JSON (see to_jsonable), written atomically."""
  text = json.dumps(to_jsonable(obj), **dump_kwargs)
  atomic_write(path, lambda f: f.write(text.encode()), fsync=fsync)


def to_jsonable(v: Any) -> Any:
  """Nested dicts, lists and arrays as plain JSON values; NaN and infinities become None."""
  if isinstance(v, dict):
    return {k: to_jsonable(x) for k, x in v.items()}
  if isinstance(v, np.ndarray):
    return to_jsonable(v.tolist())
  if isinstance(v, (list, tuple)):
    return [to_jsonable(x) for x in v]
  if isinstance(v, (float, np.floating)):
    return float(v) if math.isfinite(v) else None  # JSON has no NaN.
  if isinstance(v, np.integer):
    return int(v)
  return v
