"""The one path layer: local or remote (`gs://`) files through etils.epath, atomic local writes, JSON-safe values.

Paths stay strings everywhere in the package (joining with `os.path.join` keeps `gs://b/x`
intact); every read, write, listing and deletion of a workdir, report or output path goes
through `path()` here, so that a workdir on Cloud Storage works wherever a local one does.
"""

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any, BinaryIO, Callable

from etils import epath
import numpy as np

from vae_jax.errors import UserError

REMOTE_EXTRA = "gcs"  # pip install 'vae-jax[gcs]' brings the Cloud Storage client epath uses.


class RemotePathError(UserError):
  """A remote path that this installation or its storage cannot serve."""


def is_remote(p: str | os.PathLike) -> bool:
  """Whether `p` names a file system other than the local one (`gs://...`, `s3://...`)."""
  return "://" in os.fspath(p)


def absolute(p: str | os.PathLike) -> str:
  """An absolute local path, or the remote URL unchanged (`abspath` would mangle `gs://`)."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an epath.Path; RemotePathError in one line if its file system is not installed."""
  p = os.fspath(p)
  if p.startswith("gs://"):
    _cloud_storage_client(p)
  return epath.Path(p)


@functools.cache
def _ready() -> bool:
  """Configures gcsfs once: quiet retries, no listing cache; False if it is not installed."""
  try:
    import gcsfs  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  # gcsfs logs each retry with a traceback and its fallbacks as warnings; the error it ends
  # with reaches the caller, which reports it in one line.
  logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
  # Orbax writes arrays through TensorStore, a client of its own: a cached listing here would
  # miss them (the checkpoints' integrity records list what is there).
  import fsspec.config  # pylint: disable=g-import-not-at-top

  fsspec.config.conf.setdefault("gs", {})["use_listings_cache"] = False
  return True


def _cloud_storage_client(p: str) -> None:
  if not _ready():
    raise RemotePathError(f"{p} is on Cloud Storage, which needs the optional client: "
                          f"pip install 'vae-jax[{REMOTE_EXTRA}]'")


def makedirs(p: str) -> None:
  """Creates a directory and its parents (a no-op on object stores, which have none)."""
  path(p).mkdir(parents=True, exist_ok=True)


def exists(p: str) -> bool:
  return path(p).exists()


def isdir(p: str) -> bool:
  return path(p).is_dir()


def listdir(p: str) -> list[str]:
  """The sorted names in a directory; [] if it does not exist."""
  d = path(p)
  return sorted(c.name for c in d.iterdir()) if d.is_dir() else []


def move(src: str, dst: str) -> None:
  """Moves a file or directory tree (on object stores: copies, then deletes, object by object)."""
  if is_remote(src) or is_remote(dst):
    path(src)  # The client is installed, or RemotePathError.
    import fsspec  # pylint: disable=g-import-not-at-top  # epath's rename wants dst's folder to exist.

    fsspec.filesystem(src.split("://", 1)[0]).mv(src, dst, recursive=True)
  else:
    shutil.move(src, dst)


def read_bytes(p: str) -> bytes:
  return path(p).read_bytes()


def read_text(p: str) -> str:
  return path(p).read_text()


def atomic_write(p: str, write: Callable[[BinaryIO], Any], fsync: bool = False) -> None:
  """Writes through a temporary `*.tmp` file and a rename: `p` is either the old or the new file.

  A kill mid-write leaves only the temporary file, which the feature cache sweeps up
  (see data/store.py); `fsync` also survives a power cut (checkpoint records). On object
  stores an upload is atomic already (the object appears whole or not at all).
  """
  if is_remote(p):
    with path(p).open("wb") as f:
      write(f)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(p) or ".", suffix=".tmp")
  try:
    os.fchmod(fd, _mode_for(p))  # mkstemp makes 0600: the file would be private to its writer.
    with os.fdopen(fd, "wb") as f:
      write(f)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _mode_for(p: str) -> int:
  """The permission bits `p` gets: those of the file it replaces, else what open() would give."""
  try:
    return os.stat(p).st_mode & 0o7777
  except OSError:
    return 0o666 & ~_umask()


def _umask() -> int:
  """The process's umask; /proc reads it without setting it (os.umask sets, which races threads)."""
  with contextlib.suppress(OSError, ValueError):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  mask = os.umask(0o022)  # No /proc (macOS): read it by setting and restoring.
  os.umask(mask)
  return mask


def write_bytes(p: str, data: bytes) -> None:
  """Bytes to a file (creating its directory), written atomically."""
  makedirs(os.path.dirname(p) or ".")
  atomic_write(p, lambda f: f.write(data))


def write_text(p: str, text: str) -> None:
  """A text file, written atomically."""
  atomic_write(p, lambda f: f.write(text.encode()))


def write_json(p: str, obj: Any, fsync: bool = False, **dump_kwargs) -> None:
  """`obj` as JSON (see to_jsonable), written atomically."""
  text = json.dumps(to_jsonable(obj), **dump_kwargs)
  atomic_write(p, lambda f: f.write(text.encode()), fsync=fsync)


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
