"""A training run's hold on its workdir: one trainer at a time, one-line errors for unusable ones.

The hold is an exclusive `fcntl.flock` on `<workdir>/.lock`, kept open for the run's
lifetime. The kernel drops it when the process ends, however it ends, so a `kill -9` never
leaves a stale lock; the file's content (pid, host, start time) only says who holds it. The
file is never deleted: a run that deleted it could let the next two runs lock two different
files. Evaluation reads a workdir without the lock, so it can run beside training.

In a multi-process run process 0 holds the lock for the whole run, which is what the lock
stands for: one run, whatever its number of processes, and the process that cleans up
partial saves (see `Checkpointer._remove_partial_saves`). Per-process lock files would let
a 2-process run start beside a 1-process one (process 1 would find its file free). Every
process checks that it can write to the workdir, and all agree before any goes on.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from typing import Iterator

import jax
import numpy as np

from vae_jax import fileio
from vae_jax.errors import UserError

log = logging.getLogger("vae_jax")

LOCK_FILE = ".lock"
# Storage that cannot lock (some network and FUSE file systems): the run goes on unguarded.
_NO_LOCKING = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# A run that just took the lock writes its description a moment later.
_HOLDER_READS, _HOLDER_READ_PAUSE_S = 20, 0.025


class WorkdirError(UserError):
  """The workdir cannot be created, written to or locked."""


class WorkdirInUseError(WorkdirError):
  """Another live run holds the workdir."""


@dataclasses.dataclass
class WorkdirLock:
  """This process's lock on a workdir; `fd` is None where the storage cannot lock."""

  path: str
  fd: int | None

  def release(self) -> None:
    """Unlocks; the file stays, emptied, so that it names no finished run."""
    _HELD.pop(os.path.realpath(self.path), None)
    if self.fd is None:
      return
    fd, self.fd = self.fd, None
    with contextlib.suppress(OSError):
      os.ftruncate(fd, 0)
    os.close(fd)  # Closing the only descriptor of the open file drops the flock.


_HELD: dict[str, WorkdirLock] = {}  # realpath of a workdir -> this process's lock on it.


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[WorkdirLock | None]:
  """Creates the workdir if needed and holds it for a training run; WorkdirError in one line if it cannot.

  Yields process 0's lock (None on the other processes) and releases it on exit.
  """
  lock, problem = None, None
  try:
    path = prepare(workdir)
    if jax.process_index() == 0:
      lock = _lock(workdir, path)
  except WorkdirError as e:
    problem = e
  try:
    _agree(workdir, problem)
    yield lock
  finally:
    if lock is not None:
      lock.release()


def prepare(workdir: str) -> str:
  """Creates the workdir and checks that this process can write to it; returns its absolute path."""
  if fileio.is_remote(workdir):
    return _prepare_remote(workdir)
  path = os.path.abspath(workdir)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise WorkdirError(f"cannot use workdir {workdir}: it is a file, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
    _check_writable(path)
  except OSError as e:
    raise WorkdirError(f"cannot use workdir {workdir}: {describe_os_error(e, path)}") from None
  return path


def _prepare_remote(workdir: str) -> str:
  """Checks that a remote workdir (`gs://...`) can be reached and written: a probe object, then deleted."""
  probe = os.path.join(workdir, f".write-test-{socket.gethostname()}-{os.getpid()}")
  try:
    fileio.makedirs(workdir)
    fileio.path(probe).write_bytes(b"")
    fileio.path(probe).unlink()
  except fileio.RemotePathError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Storage clients raise many kinds.
    raise WorkdirError(f"cannot use workdir {workdir}: {remote_error(e)}") from None
  return workdir


def remote_error(e: BaseException) -> str:
  """A storage client's error in a few words (its first line)."""
  text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
  return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def _check_writable(path: str) -> None:
  """Creates a file in `path` and removes it; OSError (naming `path`) if that is not allowed."""
  try:  # An unnamed file where the file system has them: nothing is left behind, even by a kill.
    os.close(os.open(path, os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC, 0o600))
    return
  except OSError as e:
    if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
      raise
  probe = os.path.join(path, f".write-test-{socket.gethostname()}-{os.getpid()}")
  try:
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    os.unlink(probe)
  except OSError as e:
    raise OSError(e.errno, e.strerror, path) from None


def _lock(workdir: str, path: str) -> WorkdirLock:
  lock_path = os.path.join(path, LOCK_FILE)
  if fileio.is_remote(path):
    log.warning("cannot lock %s (object storage has no file locks): a second run in this workdir "
                "would not be refused", workdir)
    return WorkdirLock(path, None)
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  except OSError as e:
    raise WorkdirError(f"cannot use workdir {workdir}: {describe_os_error(e, path)}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
      raise WorkdirInUseError(in_use_message(workdir, holder(path))) from None
    if e.errno in _NO_LOCKING:
      log.warning("cannot lock %s (%s): a second run in this workdir would not be refused",
                  lock_path, os.strerror(e.errno))
      return WorkdirLock(path, None)
    raise WorkdirError(f"cannot use workdir {workdir}: {describe_os_error(e, path)}") from None
  lock = WorkdirLock(path, fd)
  try:
    _describe_holder(fd)
  except OSError as e:  # A full disk, typically: better said now than after feature extraction.
    lock.release()
    raise WorkdirError(f"cannot use workdir {workdir}: {describe_os_error(e, path)}") from None
  _HELD[os.path.realpath(path)] = lock
  return lock


def _describe_holder(fd: int) -> None:
  text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "processes": jax.process_count()})
  os.ftruncate(fd, 0)
  os.pwrite(fd, (text + "\n").encode(), 0)


def holder(path: str) -> str:
  """Who holds the workdir at `path`, as the lock file says: 'pid 12 on host h, started ...'."""
  for _ in range(_HOLDER_READS):
    try:
      with open(os.path.join(path, LOCK_FILE)) as f:
        info = json.loads(f.read() or "null")
    except (OSError, ValueError):
      info = None
    if isinstance(info, dict) and "pid" in info:
      return f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"
    time.sleep(_HOLDER_READ_PAUSE_S)
  return "a process that has not said which"


def in_use_message(workdir: str, who: str) -> str:
  return (f"workdir {workdir} is in use by another run ({who}): wait for it to finish, "
          "stop it, or use another --workdir")


@contextlib.contextmanager
def held_elsewhere(path: str) -> Iterator[str | None]:
  """Yields who holds the workdir at `path` if another live process does, else None.

  While it yields None it holds a shared lock, so that no run can start meanwhile.
  """
  if os.path.realpath(path) in _HELD or fileio.is_remote(path):  # Its own run, or no locks to ask.
    yield None
    return
  try:
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
  except OSError:  # No lock file: no run has held this workdir.
    yield None
    return
  try:
    yield None if _try_shared_lock(fd) else holder(path)
  finally:
    os.close(fd)


def _try_shared_lock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError as e:
    return e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)  # Storage without locks: unknown, go on.
  return True


def _agree(workdir: str, problem: WorkdirError | None) -> None:
  """Raises on every process if any process cannot use the workdir (its own error where it is its own)."""
  if jax.process_count() == 1:
    if problem is not None:
      raise problem
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  code = 0 if problem is None else 2 if isinstance(problem, WorkdirInUseError) else 1
  codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).ravel()
  if problem is not None:
    raise problem
  failed = [i for i, c in enumerate(codes) if c]
  if not failed:
    return
  if codes[failed[0]] == 2:
    raise WorkdirInUseError(in_use_message(workdir, holder(os.path.abspath(workdir))))
  raise WorkdirError(f"cannot use workdir {workdir}: process {failed[0]} cannot write to it (see its error)")


def describe_os_error(e: OSError, path: str) -> str:
  """What went wrong, in a few words: 'read-only file system', '/a/b is a file, not a directory'."""
  if e.errno == errno.ENOTDIR:
    blocker = _file_in_the_way(path)
    if blocker:
      return f"{blocker} is a file, not a directory"
  reason = os.strerror(e.errno) if e.errno else str(e)
  reason = reason[:1].lower() + reason[1:]
  if e.errno in _DISK_FULL:
    reason += f" ({free_mib(path):.1f} MiB free)"
  name = e.filename if isinstance(e.filename, str) else None
  if name and os.path.abspath(name) != os.path.abspath(path):
    reason += f" ({name})"
  return reason


def _file_in_the_way(path: str) -> str | None:
  """The nearest ancestor of `path` that exists but is not a directory."""
  parent = os.path.dirname(path)
  while parent and parent != path:
    if os.path.lexists(parent):
      return None if os.path.isdir(parent) else parent
    path, parent = parent, os.path.dirname(parent)
  return None


def free_mib(path: str) -> float:
  """Free space for unprivileged writers on the file system holding `path` (or its nearest ancestor)."""
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path or ".").free / 2**20
  except OSError:
    return float("nan")


def disk_full_error(e: BaseException, workdir: str) -> WorkdirError | None:
  """A one-line error for a write that failed on a full disk; None for any other error."""
  if not isinstance(e, OSError) or e.errno not in _DISK_FULL:
    return None
  name = e.filename if isinstance(e.filename, str) else None
  where = f"writing {name}" if name else f"writing to {workdir}"
  return WorkdirError(f"{where} failed: {describe_os_error(e, name or workdir)}")
