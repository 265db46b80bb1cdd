"""Orbax checkpoints: the train state plus the loader position and the feature normalisation.

Orbax does not check what it reads back, so every step directory carries an
integrity record (`integrity.json`: the size and sha256 of each of its files).
The record is written into Orbax's temporary directory after the data is
finalised and before the directory is renamed into place, so a step becomes
visible together with its record: there is no moment at which a complete step
lacks one, and a step without a record next to steps that have one is
incomplete or tampered with. Directories written before records existed hold
no record at all; their steps are restored unverified, with a warning.

A save that fails in the background (a full disk, say) is noticed when it fails: a
watcher thread waits for each asynchronous save, records the failure as one line and
calls `on_failure`; the next `save` or `wait` raises it. Every wait is bounded.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from typing import Any, Callable, Iterator

import jax
import orbax.checkpoint as ocp

from vae_jax import fileio
from vae_jax import workdir as workdir_lib
from vae_jax.errors import CheckpointError

log = logging.getLogger("vae_jax")

BEST_METRIC = "eval/loss"
INTEGRITY_FILE = "integrity.json"
METRICS_FILE = "metrics/metrics"  # Orbax's copy of the metrics passed to save().
# Orbax rewrites these after the record is written (commit time stamp, commit marker);
# they describe the commit rather than hold checkpoint data.
UNHASHED_FILES = frozenset({INTEGRITY_FILE, "_CHECKPOINT_METADATA", "commit_success.txt"})
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_COMMIT_MARKER = "commit_success.txt"  # Orbax's mark of a finished step on object stores.
_CHUNK = 1 << 20
# Longer than Orbax's own barrier timeout (AsyncOptions.timeout_secs, 600 s), whose error
# then comes first; this bound is for a save stuck on storage that never answers.
SAVE_TIMEOUT_S = 900.0
# The errno inside Orbax and TensorStore messages: "[os_error_code='28']", "[Errno 28]".
_ERRNO_IN_TEXT = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")


class CheckpointSaveError(CheckpointError, OSError):
  """A checkpoint could not be written (full disk, storage errors) or its save did not finish.

  Also an OSError, which is what a failed save raised before it had a one-line message.
  `abandon_threads`: the save is stuck, and the process should exit without waiting for it.
  """

  abandon_threads = False


class Checkpointer:
  """Keeps the latest `keep` checkpoints and the best one by eval loss (lower is better)."""

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True, create: bool = True,
               read_only: bool = False, save_timeout_s: float = SAVE_TIMEOUT_S):
    """`read_only` (for evaluation while a run may still be writing): no tmp clean-up, no saves."""
    self.directory = fileio.absolute(directory)
    if (read_only or not create) and not fileio.isdir(self.directory):
      raise CheckpointError(f"no checkpoints in {self.directory}")
    self.async_save = async_save
    self.save_timeout_s = save_timeout_s
    # Called (on the watcher thread) when a save fails, e.g. to stop training at its next step.
    self.on_failure: Callable[[], None] | None = None
    self.failure: CheckpointSaveError | None = None  # The first failed save, once known.
    self._failure_reported = False
    self._watcher: threading.Thread | None = None  # Waits for the save in flight.
    self._in_flight: int | None = None  # Its step.
    self._sealing: int | None = None  # The step whose save is in flight.
    self._checked: dict[int, bool] = {}  # step -> True (verified) or False (no record, legacy).
    _silence_orbax_errors()
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        # reverse=True sorts by descending loss, so the kept tail holds the lowest loss.
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    # Saves always go through Orbax's async path: only it runs a hook between finalising the
    # data and renaming the directory, which is where the integrity record is written.
    # best_fn also makes Orbax store the metrics, without which BestN has nothing to rank.
    # Orbax's own clean-up of partial saves runs on a background thread that nothing waits
    # for; left running at exit it printed "cannot schedule new futures after interpreter
    # shutdown". _remove_partial_saves does the same work before Orbax opens the directory.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=lambda m: m[BEST_METRIC], best_mode="min",
        enable_async_checkpointing=True, create=create and not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1, cleanup_tmp_directories=False,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._seal))
    if not read_only:
      self._remove_partial_saves()
    self._check_metrics_files(read_only)
    try:
      with _quiet_absl():  # Orbax warns that a read-only manager is read-only.
        self.manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # e.g. unreadable step metadata: say which directory, in one line.
      raise CheckpointError(f"cannot open the checkpoints in {self.directory}: {_first_line(e)}") from None

  def _remove_partial_saves(self) -> None:
    """Deletes the temporary directories of saves a crash interrupted, before Orbax lists steps."""
    # Orbax would do this too, but in the background; done here it is over when __init__ returns.
    if jax.process_index() != 0:
      return
    partial = sorted(map(str, fileio.path(self.directory).glob(f"*{_TMP_SUFFIX}*")))
    if fileio.is_remote(self.directory):  # Object stores cannot rename: Orbax marks a finished step instead.
      partial += [self.step_dir(s) for s in _finalised_steps(self.directory)
                  if not fileio.exists(os.path.join(self.step_dir(s), _COMMIT_MARKER))]
    if not partial:
      return
    # A training run holds its workdir (vae_jax.workdir): a save in a workdir that another
    # live process holds may be in flight, not a crash's leftover.
    with workdir_lib.held_elsewhere(os.path.dirname(self.directory)) as owner:
      if owner is not None:
        log.warning("leaving %d partial saves in %s alone: the workdir is held by a live run (%s)",
                    len(partial), self.directory, owner)
        return
      for path in partial:
        log.info("removing %s: a checkpoint save that did not finish", path)
        with contextlib.suppress(OSError):
          fileio.path(path).rmtree()

  def _check_metrics_files(self, read_only: bool) -> None:
    """Orbax parses every step's metrics when it opens a directory and fails on a corrupt one."""
    for step in _finalised_steps(self.directory):
      step_dir, path = self.step_dir(step), os.path.join(self.step_dir(step), METRICS_FILE)
      if not fileio.exists(path):
        continue
      try:
        json.loads(fileio.read_text(path))
      except (OSError, ValueError):
        problem = f"checkpoint {step_dir} is corrupt: {METRICS_FILE} is unreadable"
        if read_only or jax.process_index() != 0:
          raise CheckpointError(problem) from None
        # Left in place it would make every checkpoint here unreadable.
        dest = self._set_aside(step)
        log.warning("%s (moved to %s)", problem, dest)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves a host-side (unreplicated) state and a JSON-able `meta` dict.

    CheckpointSaveError (one line) if this save or the previous one failed.
    """
    # One save in flight at a time, so the sealing hook knows which step it finalises.
    self.wait()
    self._sealing, self._in_flight = step, step
    self._checked.pop(step, None)
    try:
      with _quiet_absl():  # Orbax warns about every save without metrics (most are).
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)
    except Exception as e:  # The synchronous part failed (e.g. creating the directory).
      self._record_failure(step, e)
      self._failure_reported = True
      raise self.failure from None
    self._watcher = threading.Thread(target=self._await_save, args=(step,), daemon=True,
                                     name=f"checkpoint-{step}-watcher")
    self._watcher.start()
    if not self.async_save:
      self.wait()

  def _await_save(self, step: int) -> None:
    """Runs on the watcher thread: waits for Orbax's background save and records how it ended."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._record_failure(step, e)

  def _record_failure(self, step: int, e: BaseException) -> None:
    if self.failure is None:
      self.failure = self._save_error(step, save_failure_reason(e, self.directory))
    if self.on_failure is not None:
      self.on_failure()

  def _save_error(self, step: int, reason: str) -> CheckpointSaveError:
    good = [s for s in _finalised_steps(self.directory) if s != step]
    last = f"the last good checkpoint is step {good[-1]}" if good else "no earlier checkpoint exists"
    return CheckpointSaveError(f"saving checkpoint {step} to {self.step_dir(step)} failed: {reason}; {last}")

  def _seal(self) -> None:
    """Writes the integrity record of the step being finalised (runs on Orbax's save thread)."""
    step, self._sealing = self._sealing, None
    if step is None or jax.process_index() != 0:
      return
    write_integrity_record(self._unfinalised_dir(step))

  def _unfinalised_dir(self, step: int) -> str:
    # Orbax names the directory `<step>.orbax-checkpoint-tmp[-<suffix>]` until it renames it.
    # On object stores, which cannot rename, Orbax writes the step directory in place.
    tmp = sorted(fileio.path(self.directory).glob(f"{step}{_TMP_SUFFIX}*"), key=lambda p: p.stat().mtime)
    if tmp:
      return str(tmp[-1])
    if fileio.isdir(self.step_dir(step)):  # Orbax versions that rename before the hook.
      return self.step_dir(step)
    raise CheckpointError(f"the directory of checkpoint {step} in {self.directory} vanished while saving")

  def verify(self, step: int) -> bool:
    """True if the step matches its integrity record, False if it predates records; else CheckpointError."""
    if step in self._checked:
      return self._checked[step]
    path = self.step_dir(step)
    if not fileio.exists(os.path.join(path, INTEGRITY_FILE)):
      sealed = [s for s in self.all_steps() if fileio.exists(os.path.join(self.step_dir(s), INTEGRITY_FILE))]
      if sealed:
        raise CheckpointError(f"checkpoint {path} is corrupt: it has no {INTEGRITY_FILE} although "
                              f"checkpoint {sealed[-1]} has one (an interrupted save or deletion)")
      log.warning("checkpoint %s has no %s (saved by an older version): restoring it unverified",
                  path, INTEGRITY_FILE)
      self._checked[step] = False
      return False
    problem = integrity_problem(path)
    if problem:
      raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    self._checked[step] = True
    return True

  def latest_good_step(self, *, set_aside: bool = False) -> int | None:
    """The newest step that passes `verify`, with one warning naming the corrupt ones passed over.

    `set_aside` moves those corrupt steps to `<directory>-corrupt/` so that training can save
    steps with the same numbers again. None if there are no checkpoints; CheckpointError if
    there are some but none is intact.
    """
    steps = sorted(self.all_steps(), reverse=True)
    corrupt = []
    for step in steps:
      try:
        self.verify(step)
      except CheckpointError as e:
        corrupt.append((step, str(e)))
        continue
      if corrupt:
        self._fall_back(corrupt, step, set_aside)
      return step
    if corrupt:
      raise CheckpointError(f"no intact checkpoint in {self.directory} ({len(corrupt)} corrupt; newest: "
                            f"{corrupt[0][1]}): move the directory away to start again")
    return None

  def _fall_back(self, corrupt: list[tuple[int, str]], good: int, set_aside: bool) -> None:
    moved = ""
    if set_aside:
      if jax.process_index() == 0:  # One process moves; the others wait and then see the result.
        for step, _ in corrupt:
          self._set_aside(step)
      sync_processes("vae_jax_checkpoint_set_aside")
      self.manager.reload()
      moved = f" (moved to {self.directory}-corrupt)"
    reasons = "; ".join(reason for _, reason in corrupt)
    log.warning("%s%s; falling back to checkpoint %s", reasons, moved, self.step_dir(good))

  def _set_aside(self, step: int) -> str:
    parent = f"{self.directory}-corrupt"
    fileio.makedirs(parent)
    dest, n = os.path.join(parent, str(step)), 1
    while fileio.exists(dest):
      dest, n = os.path.join(parent, f"{step}-{n}"), n + 1
    fileio.move(self.step_dir(step), dest)
    self._checked.pop(step, None)
    return dest

  def restore_meta(self, step: int | None = None, *, verify: bool = True, fallback: bool = False) -> dict:
    """The `meta` dict of a step (default: the latest; with `fallback`, the latest intact one)."""
    step = self._choose(step, verify, fallback)
    return self._restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, target: Any, step: int | None = None, *, verify: bool = True,
              fallback: bool = False) -> tuple[Any, dict]:
    """Restores (state, meta) with the structure, shapes and shardings of `target`.

    The step (default: the latest) is checked against its integrity record first: a corrupt
    one raises CheckpointError, or with `fallback` (and no explicit step) the newest intact
    step is used instead, with a warning.
    """
    step = self._choose(step, verify, fallback)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._restore(step, ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def _choose(self, step: int | None, verify: bool, fallback: bool) -> int:
    if step is None and fallback:
      step = self.latest_good_step()
    step = self._step(step)
    if step not in self.all_steps():
      raise CheckpointError(f"no checkpoint {step} in {self.directory} (steps: {self.all_steps()})")
    if verify:
      self.verify(step)
    return step

  def _restore(self, step: int, args: ocp.args.Composite) -> dict:
    try:
      return self.manager.restore(step, args=args)
    except Exception as e:  # Orbax and TensorStore errors span many lines: keep the first.
      raise CheckpointError(
          f"checkpoint {self.step_dir(step)} cannot be restored: {_first_line(e)}") from None

  def _step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    return step

  def wait(self) -> None:
    """Waits (at most `save_timeout_s`) for the save in flight; CheckpointSaveError if a save failed."""
    failure = self.take_failure()
    if failure is not None:
      raise failure

  def settle(self) -> CheckpointSaveError | None:
    """Waits (bounded) for the save in flight and returns the failure of a save, if one failed."""
    watcher = self._watcher
    if watcher is not None:
      # Once a failure is known the watcher is ending (or stuck, when that failure is its timeout).
      watcher.join(self.save_timeout_s if self.failure is None else min(self.save_timeout_s, 5.0))
      if watcher.is_alive() and self.failure is None:
        self.failure = self._save_error(
            self._in_flight, f"it did not finish within {self.save_timeout_s:g} s (storage not answering?)")
        self.failure.abandon_threads = True  # Orbax's save thread would keep the process alive.
      if not watcher.is_alive():
        self._watcher = None
    return self.failure

  def take_failure(self) -> CheckpointSaveError | None:
    """`settle`, for a caller that reports the failure itself (close will not raise it again)."""
    failure = self.settle()
    self._failure_reported = self._failure_reported or failure is not None
    return failure

  def close(self) -> None:
    """Waits for the save in flight and closes; raises a save failure no caller has been told of."""
    failure = self.settle()
    if self._watcher is not None:  # Stuck: Orbax's close would wait for it forever.
      log.debug("not closing %s: a save is still in flight", self.directory)
    else:
      if failure is not None:
        # Orbax raises a failed save once per thread that waits for it: take it here, then close.
        with contextlib.suppress(Exception):
          self.manager.wait_until_finished()
      self.manager.close()
    if failure is not None and not self._failure_reported:
      self._failure_reported = True
      raise failure


def _finalised_steps(directory: str) -> list[int]:
  """Steps whose directories were renamed into place (complete saves), ascending."""
  try:
    return sorted(int(d) for d in fileio.listdir(directory) if d.isdigit())
  except OSError:
    return []


def save_failure_reason(e: BaseException, directory: str) -> str:
  """Why a save failed, in a few words: 'no space left on device (0.2 MiB free)', else Orbax's first line."""
  code = _errno(e)
  if code is None:
    return _first_line(e)
  return workdir_lib.describe_os_error(OSError(code, os.strerror(code)), directory)


def _errno(e: BaseException) -> int | None:
  """The OS error number behind an exception (its chain included), if it names one."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e.errno
    found = _ERRNO_IN_TEXT.search(str(e))
    if found:
      return int(found.group(1) or found.group(2))
    e = e.__cause__ or e.__context__
  return None


class _OrbaxErrorFilter(logging.Filter):
  """Drops Orbax's error logs: each failed save logged four tracebacks; Checkpointer reports it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    if f"{os.sep}orbax{os.sep}" in record.pathname:
      return False
    # asyncio logs the other writes of a failed save ('Task exception was never retrieved', or
    # 'Future ...' for TensorStore's writes) whenever they are collected, which can be after the
    # run has reported the failure. A task names Orbax's code, a future the checkpoint it wrote.
    msg = record.getMessage()
    return not (record.name == "asyncio" and "never retrieved" in msg
                and any(mark in msg for mark in _CHECKPOINT_WRITE_MARKS))


# What an unretrieved checkpoint write's log record mentions: Orbax's source, a step being
# written (local), or the OCDBT database TensorStore writes (any storage).
_CHECKPOINT_WRITE_MARKS = (f"{os.sep}orbax{os.sep}", _TMP_SUFFIX, "OCDBT database")
_ORBAX_ERROR_FILTER = _OrbaxErrorFilter()


def _silence_orbax_errors() -> None:
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if _ORBAX_ERROR_FILTER not in logger.filters:
      logger.addFilter(_ORBAX_ERROR_FILTER)


def _hashed_files(step_dir: str) -> dict[str, str]:
  """Relative path (with '/') -> path of every file the record covers."""
  out = {}

  def visit(directory, rel: str) -> None:
    for child in sorted(directory.iterdir(), key=lambda c: c.name):
      if child.is_dir():
        visit(child, f"{rel}{child.name}/")
      elif f"{rel}{child.name}" not in UNHASHED_FILES:
        out[f"{rel}{child.name}"] = os.path.join(step_dir, f"{rel}{child.name}")

  visit(fileio.path(step_dir), "")
  return out


def _size(path: str) -> int:
  return fileio.path(path).stat().length


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with fileio.path(path).open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def write_integrity_record(step_dir: str) -> None:
  """Writes `integrity.json` (size and sha256 of every file) into a finalised step directory."""
  files = {rel: {"size": _size(p), "sha256": _sha256(p)}
           for rel, p in _hashed_files(step_dir).items()}
  fileio.write_json(os.path.join(step_dir, INTEGRITY_FILE), {"version": 1, "files": files},
                    fsync=True, indent=1, sort_keys=True)


def integrity_problem(step_dir: str) -> str | None:
  """None if the step directory matches its integrity record, else what is wrong (one line)."""
  try:
    expected = json.loads(fileio.read_text(os.path.join(step_dir, INTEGRITY_FILE)))["files"]
    expected = {rel: (int(v["size"]), str(v["sha256"])) for rel, v in expected.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"its {INTEGRITY_FILE} is unreadable ({type(e).__name__})"
  found = _hashed_files(step_dir)
  missing = sorted(set(expected) - set(found))
  if missing:
    return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else "")
  extra = sorted(set(found) - set(expected))
  if extra:
    return f"{extra[0]} is not in its {INTEGRITY_FILE}"
  for rel, (size, _) in expected.items():  # Sizes first: truncation is found without reading.
    actual = _size(found[rel])
    if actual != size:
      return f"{rel} has {actual} bytes instead of {size} (truncated or overwritten)"
  for rel, (_, digest) in expected.items():
    if _sha256(found[rel]) != digest:
      return f"{rel} differs from its recorded sha256 (altered)"
  return None


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


def sync_processes(name: str) -> None:
  """A barrier across the processes of a multi-process run; nothing in a single process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)
