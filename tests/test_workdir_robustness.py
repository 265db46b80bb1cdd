"""One run per workdir, unusable workdirs, a disk that fills while saving, and quiet error exits."""

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax import checkpoints, inference, train, workdir
from vae_jax.checkpoints import Checkpointer, CheckpointSaveError
from vae_jax.data import store

REPO = pathlib.Path(__file__).resolve().parents[1]
# A slim model, a log line every step, no evaluation before the end: these runs are about
# the workdir and the checkpoints, not the model.
OVERRIDES = {
    "model.blocks_per_stage": 0, "train.log_every": 1, "train.eval_every": 1000,
    "train.progress_bar": False, "eval.num_audio_examples": 0, "eval.max_utterances": 8,
}
RUN_TIMEOUT_S = 240


def _config(cache: pathlib.Path):
  return smoke_config(cache, OVERRIDES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
  """The smoke corpus's features, extracted once for every run of this module."""
  path = tmp_path_factory.mktemp("workdir_robustness") / "cache"
  store.load_dataset(_config(path))
  return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
  """Subprocess environment: this session's compiled programs, unbuffered output."""
  e = dict(os.environ)
  e["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or str(tmp_path_factory.mktemp("xla"))
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["PYTHONUNBUFFERED"] = "1"
  return e


def _train_cmd(workdir_path: pathlib.Path, cache_path: pathlib.Path, *args: str,
               config: str = "configs/smoke.py") -> list[str]:
  overrides = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir_path}",
          f"--config.data.cache_dir={cache_path}", *overrides, *args]


def _run(cmd: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_only_an_error_line(r: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit status 2 and stderr exactly one `error:` line holding every fragment."""
  assert r.returncode == 2, f"exit status {r.returncode}\n{r.stderr[-3000:]}"
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  for f in fragments:
    assert f in lines[0], lines[0]
  return lines[0]


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
  """A tmpfs of `size` mounted at `path` for the block (skips the test where mounting is not allowed)."""
  path.mkdir(parents=True, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {(r.stderr or r.stdout).strip() or r.returncode}")
  try:
    yield path
  finally:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
      subprocess.run(["umount", "-l", str(path)], capture_output=True)  # Busy: detach it anyway.


def _remount_read_only(path: pathlib.Path) -> None:
  subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def _partial_saves(ckpt_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(ckpt_dir.glob("*.orbax-checkpoint-tmp*"))


def _steps(ckpt_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


def _state(seed: int) -> dict[str, np.ndarray]:
  return {"w": np.random.default_rng(seed).normal(size=(64, 32)).astype(np.float32)}


# 1. One run per workdir.


def test_a_held_workdir_is_refused_before_anything_in_it_is_touched(tmp_path):
  run = tmp_path / "run"
  partial = run / "checkpoints" / "3.orbax-checkpoint-tmp-1"  # Another run's save in flight.
  partial.mkdir(parents=True)
  config = _config(tmp_path / "cache")
  with workdir.hold(str(run)):
    assert json.loads((run / workdir.LOCK_FILE).read_text())["pid"] == os.getpid()
    with pytest.raises(workdir.WorkdirInUseError) as e:
      train.train_and_evaluate(config, str(run))
  message = str(e.value)
  assert "\n" not in message
  assert f"workdir {run} is in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in message
  assert partial.is_dir(), "the in-flight save of the other run was removed"
  assert not (run / "config.json").exists() and not (tmp_path / "cache").exists()
  assert (run / workdir.LOCK_FILE).read_text() == "", "a released lock names no run"


_HOLDER = textwrap.dedent("""
    import sys, time
    from vae_jax import workdir
    with workdir.hold(sys.argv[1]):
      print("held", flush=True)
      time.sleep(120)
""")


def test_the_lock_dies_with_its_process_and_guards_partial_saves_meanwhile(tmp_path, env, caplog):
  caplog.set_level(logging.WARNING, logger="vae_jax")
  run = tmp_path / "run"
  partial = run / "checkpoints" / "3.orbax-checkpoint-tmp"
  partial.mkdir(parents=True)
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir.WorkdirInUseError, match=f"pid {holder.pid} on host "):
      with workdir.hold(str(run)):
        pass
    # Opening the checkpoints outside a run must not take the holder's save for a crash's leftover.
    Checkpointer(str(run / "checkpoints")).close()
    assert partial.is_dir()
    assert any("leaving 1 partial saves" in r.getMessage() and str(holder.pid) in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(30) == -signal.SIGKILL
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
    holder.stdout.close()
  with workdir.hold(str(run)) as lock:  # No stale lock after kill -9.
    assert lock is not None and lock.fd is not None
    Checkpointer(str(run / "checkpoints")).close()
  assert not partial.exists(), "with no live holder the partial save is a crash's leftover"


@pytest.mark.slow
def test_a_second_train_py_is_refused_while_the_first_trains(tmp_path, cache, env):
  run = tmp_path / "run"
  ckpt_dir = run / "checkpoints"
  # Every checkpoint kept: evaluation below must not race the deletion of the step it opened.
  cmd = _train_cmd(run, cache, "--config.train.num_steps=100000", "--config.train.checkpoint_every=2",
                   "--config.train.keep_checkpoints=100000")
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log_file:
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + RUN_TIMEOUT_S
      while not _steps(ckpt_dir) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
      assert _steps(ckpt_dir), f"the first run saved nothing:\n{log_path.read_text()[-3000:]}"
      started = time.monotonic()
      second = _run(cmd, env)
      _assert_only_an_error_line(second, f"workdir {run} is in use by another run",
                                 f"pid {first.pid} on host {socket.gethostname()}")
      assert second.stdout == ""
      assert time.monotonic() - started < 60, "refused at start-up, not after work"
      # Evaluation reads a workdir without its lock: it works while the run trains.
      assert inference.load_trained(str(run)).step >= 2
      assert first.poll() is None, f"the first run was disturbed:\n{log_path.read_text()[-3000:]}"
      first.send_signal(signal.SIGKILL)
      assert first.wait(30) == -signal.SIGKILL
    finally:
      if first.poll() is None:
        first.kill()
        first.wait()
  out = log_path.read_text()
  assert "Traceback" not in out and "FileNotFoundError" not in out, out[-3000:]
  last = _steps(ckpt_dir)[-1]
  third = _run([*cmd, "--config.train.max_steps_per_run=1"], env)  # No stale lock after kill -9.
  assert third.returncode == 0, third.stderr[-3000:]
  assert f"resumed from {ckpt_dir / str(last)}" in third.stderr, third.stderr[-3000:]
  assert not _partial_saves(ckpt_dir)


# 2. Unusable workdirs.


def _unusable(tmp_path: pathlib.Path, case: str, stack: contextlib.ExitStack) -> tuple[pathlib.Path, str]:
  """A workdir that cannot be used, and the reason its error must give."""
  if case == "a file":
    path = tmp_path / "run"
    path.write_text("not a directory")
    return path, "it is a file, not a directory"
  if case == "under a file":
    (tmp_path / "file").write_text("not a directory")
    return tmp_path / "file" / "runs" / "run", f"{tmp_path / 'file'} is a file, not a directory"
  if case == "no permission":
    if os.geteuid() == 0:
      pytest.skip("root ignores mode bits: the read-only mount cases cover root")
    (tmp_path / "locked").mkdir(mode=0o555)
    return tmp_path / "locked" / "run", "permission denied"
  mount = stack.enter_context(_tmpfs(tmp_path / "ro", "1m"))
  (mount / "existing").mkdir()
  _remount_read_only(mount)
  return mount / ("existing" if case == "read-only, existing" else "new"), "read-only file system"


@pytest.mark.parametrize("case", ["a file", "under a file", "no permission", "read-only, existing",
                                  "read-only, new"])
def test_an_unusable_workdir_is_one_line_before_features_are_extracted(tmp_path, case):
  with contextlib.ExitStack() as stack:
    path, reason = _unusable(tmp_path, case, stack)
    config = _config(tmp_path / "cache")
    with pytest.raises(workdir.WorkdirError) as e:
      train.train_and_evaluate(config, str(path))
  assert str(e.value) == f"cannot use workdir {path}: {reason}"
  assert not (tmp_path / "cache").exists(), "features were extracted before the workdir was checked"


# 3. A disk that fills while a checkpoint is written.


def _failing_save(monkeypatch, step: int, error: OSError | None = None, gate: threading.Event | None = None):
  """Makes the save of `step` fail (or wait for `gate`) on Orbax's save thread, where real writes fail."""
  real = checkpoints.write_integrity_record

  def write(path: str) -> None:
    if os.path.basename(path).startswith(f"{step}."):
      if gate is not None:
        gate.wait(60)
      if error is not None:
        raise error
    real(path)

  monkeypatch.setattr(checkpoints, "write_integrity_record", write)


def test_a_failed_background_save_is_noticed_at_once_and_reported_in_one_line(tmp_path, monkeypatch):
  directory = tmp_path / "ck"
  _failing_save(monkeypatch, 2, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "2")))
  ckpt = Checkpointer(str(directory))
  failed = threading.Event()
  ckpt.on_failure = failed.set
  ckpt.save(1, _state(1), {"step": 1})
  ckpt.save(2, _state(2), {"step": 2})
  assert failed.wait(30), "nobody was told that the save failed"
  pattern = (rf"saving checkpoint 2 to {re.escape(str(directory / '2'))} failed: no space left on device "
             r"\(\d+\.\d MiB free\); the last good checkpoint is step 1$")
  for attempt in (ckpt.wait, lambda: ckpt.save(3, _state(3), {"step": 3})):
    with pytest.raises(CheckpointSaveError, match=pattern):
      attempt()
  ckpt.close()  # Already reported: closing is quiet.
  assert _partial_saves(directory) and _steps(directory) == [1]
  monkeypatch.undo()
  reopened = Checkpointer(str(directory))  # The next run removes the partial save.
  assert not _partial_saves(directory) and reopened.latest_good_step() == 1
  reopened.close()


def test_a_save_that_never_finishes_is_an_error_after_a_bounded_wait(tmp_path, monkeypatch):
  gate = threading.Event()
  _failing_save(monkeypatch, 1, gate=gate)
  ckpt = Checkpointer(str(tmp_path / "ck"), save_timeout_s=0.5)
  ckpt.save(1, _state(1), {"step": 1})
  started = time.monotonic()
  with pytest.raises(CheckpointSaveError, match="checkpoint 1 .* did not finish within 0.5 s") as e:
    ckpt.wait()
  assert time.monotonic() - started < 10
  assert e.value.abandon_threads, "the CLI must not wait for the stuck thread at exit"
  gate.set()  # Let it end, so that the test leaves no thread behind.
  ckpt.close()


def test_a_write_on_a_full_disk_is_one_line():
  e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/metrics.jsonl")
  message = str(workdir.disk_full_error(e, "/w"))
  assert re.fullmatch(r"writing /w/metrics\.jsonl failed: no space left on device \(.* MiB free\)", message)
  assert workdir.disk_full_error(OSError(errno.EIO, "I/O error"), "/w") is None


# Runs train.py with the disk filled up, leaving room for half a checkpoint, just before the
# save of step FILL_AT; the steps after it are slowed down so that a run that did not stop at
# once would visibly reach its next checkpoint step.
_FILL_THEN_TRAIN = textwrap.dedent("""
    import os, runpy, shutil, sys, time
    from vae_jax import checkpoints
    from vae_jax.data import loader
    fill_at, filler = int(sys.argv[1]), sys.argv[2]
    real_save, real_next = checkpoints.Checkpointer.save, loader.TrainLoader.__next__

    def save(self, step, *args, **kwargs):
      if step == fill_at:
        self.wait()
        previous = self.step_dir(max(self.all_steps()))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(previous) for f in fs)
        with open(filler, "wb") as f:
          f.write(bytes(max(0, shutil.disk_usage(self.directory).free - size // 2)))
        loader.TrainLoader.__next__ = lambda self: (time.sleep(0.1), real_next(self))[1]
      return real_save(self, step, *args, **kwargs)

    checkpoints.Checkpointer.save = save
    sys.argv = ["train.py", *sys.argv[3:]]
    runpy.run_path("train.py", run_name="__main__")
""")


def test_the_unretrieved_writes_of_a_failed_save_are_not_logged_when_collected(tmp_path, caplog):
  # A failed save leaves Orbax write tasks whose errors nobody awaits; asyncio logs each one when
  # the task is collected, which may be after the run has printed its one error line.
  namespace = {}
  orbax_file = str(tmp_path / "site-packages" / "orbax" / "checkpoint" / "type_handlers.py")
  exec(compile("async def _open_and_write():\n  raise ValueError('No space left on device')\n",
               orbax_file, "exec"), namespace)
  async def other_write():
    raise ValueError("not a checkpoint write")

  Checkpointer(str(tmp_path / "ckpt"))  # Installs the filter.
  loop = asyncio.new_event_loop()
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    for write in (namespace["_open_and_write"], other_write):
      task = loop.create_task(write())
      loop.run_until_complete(asyncio.sleep(0))
      del task
      gc.collect()
    # TensorStore's writes surface as plain futures, named by the checkpoint they wrote.
    for text in ('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file '
                 f'"{tmp_path}/checkpoints/20.orbax-checkpoint-tmp/state/": No space left on device',
                 "a future that is not a checkpoint write"):
      future = loop.create_future()
      future.set_exception(ValueError(text))
      del future
      gc.collect()
  loop.close()
  unretrieved = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
  assert len(unretrieved) == 2, unretrieved
  assert "other_write" in unretrieved[0] and "not a checkpoint write" in unretrieved[1], unretrieved


@pytest.mark.slow
def test_a_disk_that_fills_while_saving_stops_the_run_in_one_line_and_a_rerun_resumes(tmp_path, cache, env):
  with _tmpfs(tmp_path / "disk", "16m") as disk:
    run, filler = disk / "run", disk / "filler"
    ckpt_dir = run / "checkpoints"
    cmd = _train_cmd(run, cache, "--config.train.num_steps=30", "--config.train.checkpoint_every=10")
    failed = _run([sys.executable, "-c", _FILL_THEN_TRAIN, "20", str(filler), *cmd[2:]], env)
    _assert_only_an_error_line(
        failed, f"saving checkpoint 20 to {ckpt_dir / '20'} failed: no space left on device (",
        " MiB free); the last good checkpoint is step 10")
    assert "Traceback" not in failed.stdout + failed.stderr
    logged = [int(s) for s in re.findall(r"^step (\d+)/", failed.stdout, re.M)]
    assert 20 <= logged[-1] < 30, f"the run went on after the failed save: steps {logged}"
    assert _steps(ckpt_dir) == [10] and _partial_saves(ckpt_dir)
    reader = Checkpointer(str(ckpt_dir), read_only=True)
    assert reader.verify(10), "the previous checkpoint was damaged"
    reader.close()
    filler.unlink()
    rerun = _run([*cmd, "--config.train.max_steps_per_run=1"], env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {ckpt_dir / '10'}" in rerun.stderr, rerun.stderr[-3000:]
    assert _steps(ckpt_dir) == [10, 11] and not _partial_saves(ckpt_dir)


# 4. Error exits say one line, and nothing from a background thread follows it.


def _corrupt_checkpoints(run: pathlib.Path) -> None:
  ckpt = Checkpointer(str(run / "checkpoints"))
  ckpt.save(1, _state(1), {"step": 1})
  ckpt.close()
  for p in (run / "checkpoints" / "1").rglob("*"):
    if p.is_file() and p.name not in checkpoints.UNHASHED_FILES:
      p.write_bytes(b"")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing data path", "workdir is a file", "read-only workdir",
                                  "no intact checkpoint"])
def test_an_error_exit_prints_exactly_one_line(tmp_path, cache, env, case):
  run, args, config = tmp_path / "run", [], "configs/smoke.py"
  with contextlib.ExitStack() as stack:
    if case == "missing data path":
      config, args, expected = "configs/fsdd.py", ["--config.data.path=/nonexistent"], "/nonexistent"
    elif case == "workdir is a file":
      run.write_text("")
      expected = f"cannot use workdir {run}: it is a file"
    elif case == "read-only workdir":
      stack.enter_context(_tmpfs(tmp_path / "ro", "1m"))
      _remount_read_only(tmp_path / "ro")
      run, expected = tmp_path / "ro" / "run", "read-only file system"
    else:
      _corrupt_checkpoints(run)
      expected = "no intact checkpoint"
    r = _run(_train_cmd(run, cache, *args, config=config), env)
  _assert_only_an_error_line(r, expected)
  assert r.stdout == ""


def test_atomic_writes_get_the_umask_mode_or_keep_the_replaced_files(tmp_path):
  from vae_jax import fileio  # pylint: disable=g-import-not-at-top
  old = os.umask(0o027)
  try:
    fileio.write_text(str(tmp_path / "new.json"), "{}")
    os.umask(0o022)
    fileio.write_bytes(str(tmp_path / "new.vjx"), b"VJ")
  finally:
    os.umask(old)
  assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640, "a new file follows the umask, as open() does"
  assert (tmp_path / "new.vjx").stat().st_mode & 0o777 == 0o644, "not 0600 from the temporary file"
  (tmp_path / "new.vjx").chmod(0o604)
  fileio.write_bytes(str(tmp_path / "new.vjx"), b"VJ2")
  assert (tmp_path / "new.vjx").stat().st_mode & 0o777 == 0o604, "a replaced file keeps its mode"
  assert (tmp_path / "new.vjx").read_bytes() == b"VJ2"
