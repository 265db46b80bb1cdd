"""`train.py` killed at random moments (SIGTERM, SIGKILL) and rerun ends where an uninterrupted run does."""

import dataclasses
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax import train
from vae_jax.checkpoints import Checkpointer
from vae_jax.data import store
from vae_jax.models import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12
# Small and quick: a slimmer model, checkpoints every 4 steps, a log line every step and one
# evaluation at the end.
OVERRIDES = {
    "model.blocks_per_stage": 0, "train.num_steps": NUM_STEPS, "train.checkpoint_every": 4,
    "train.log_every": 1, "train.eval_every": 1000, "train.progress_bar": False,
    "eval.num_audio_examples": 0, "eval.max_utterances": 8,
}
RUN_TIMEOUT_S = 300


@dataclasses.dataclass
class Shared:
  cache: pathlib.Path
  env: dict[str, str]
  params: list[np.ndarray]


def _config(cache: pathlib.Path):
  return smoke_config(cache, OVERRIDES)


def _final_params(workdir: pathlib.Path) -> tuple[int, list[np.ndarray]]:
  c = _config(pathlib.Path("unused"))
  template = train.create_train_state(c, build_model(c), jax.random.key(0))
  ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
  state, _ = ckpt.restore(template)
  ckpt.close()
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
  """An uninterrupted run (in this process), and the environment its subprocess reruns share."""
  root = tmp_path_factory.mktemp("preemption")
  cache = root / "cache"
  train.train_and_evaluate(_config(cache), str(root / "reference"))
  step, params = _final_params(root / "reference")
  assert step == NUM_STEPS
  env = dict(os.environ)
  # The reference run's compiled programs (same XLA flags), so reruns start quickly.
  env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or str(root / "xla")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONUNBUFFERED"] = "1"
  return Shared(cache, env, params)


class Run:
  """One `train.py` subprocess; its output goes to a file so that the test can watch it."""

  def __init__(self, shared: Shared, workdir: pathlib.Path, log: pathlib.Path):
    args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    cmd = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
           f"--config.data.cache_dir={shared.cache}", *args]
    self.log = log
    self._file = open(log, "w")
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=shared.env, stdout=self._file,
                                 stderr=subprocess.STDOUT)

  def output(self) -> str:
    return self.log.read_text()

  def wait_until(self, ready: Callable[[], bool], timeout: float = RUN_TIMEOUT_S) -> bool:
    """Polls `ready` every few milliseconds; False if the process ended (or time ran out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if ready():
        return True
      if self.proc.poll() is not None:
        return ready()
      time.sleep(0.005)
    return False

  def finish(self, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
      return self.proc.wait(timeout)
    finally:
      self.close()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self._file.close()


def _started(workdir: pathlib.Path) -> Callable[[], bool]:
  """True once this run has rewritten config.json: it is inside train_and_evaluate."""
  path = workdir / "config.json"
  before = path.stat().st_ino if path.exists() else None

  def ready() -> bool:
    try:
      return path.stat().st_ino != before  # Written anew (to a temporary file, then renamed).
    except FileNotFoundError:
      return False

  return ready


def _logged_step(run: Run, k: int) -> Callable[[], bool]:
  return lambda: re.search(rf"^step {k}/", run.output(), re.M) is not None


def _partial(workdir: pathlib.Path) -> list[pathlib.Path]:
  return list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def _writing_second_save(workdir: pathlib.Path) -> Callable[[], bool]:
  """True while a checkpoint is being written and an earlier one is complete."""
  return lambda: bool(_steps(workdir)) and bool(_partial(workdir))


def _steps(workdir: pathlib.Path) -> list[int]:
  d = workdir / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _assert_same_params(shared: Shared, workdir: pathlib.Path) -> None:
  step, params = _final_params(workdir)
  assert step == NUM_STEPS
  assert len(params) == len(shared.params)
  for a, b in zip(params, shared.params):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _finish_uninterrupted(shared: Shared, workdir: pathlib.Path, tmp_path: pathlib.Path) -> str:
  run = Run(shared, workdir, tmp_path / "final.log")
  rc = run.finish()
  out = run.output()
  assert rc == 0, out[-3000:]
  assert f"checkpoint: {workdir / 'checkpoints' / str(NUM_STEPS)}" in out, out[-3000:]
  return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_before_the_first_step_exits_cleanly_without_a_checkpoint(tmp_path, monkeypatch, signum):
  real = store.load_dataset

  def load_then_signal(*args, **kwargs):
    data = real(*args, **kwargs)
    os.kill(os.getpid(), signum)  # Arrives while start-up is still under way.
    return data

  monkeypatch.setattr(train, "load_dataset", load_then_signal)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(_config(tmp_path / "cache"), str(workdir))
  assert result["stopped_by_signal"] and result["step"] is None
  assert _steps(workdir) == []
  assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # Handlers restored.


@pytest.mark.slow
def test_stop_signals_at_random_moments_then_rerun_matches_an_uninterrupted_run(shared, tmp_path):
  rng = random.Random(20240611)
  workdir = tmp_path / "run"
  # What to wait for before the signal: start-up (data, init, compilation: the signal may also
  # land in the first step; the whole tiny run takes about 2 s after config.json), an early step
  # and a late one.
  plan = [(signal.SIGTERM, "start", rng.uniform(0.0, 0.3)),
          (signal.SIGINT, "step", rng.randint(2, 5)),
          (signal.SIGTERM, "step", rng.randint(NUM_STEPS - 3, NUM_STEPS - 1))]
  for i, (signum, when, arg) in enumerate(plan):
    before, started = _steps(workdir), _started(workdir)
    run = Run(shared, workdir, tmp_path / f"run{i}.log")
    try:
      ready = started if when == "start" else _logged_step(run, arg)
      assert run.wait_until(ready), f"run {i} ended before {when} {arg}:\n{run.output()[-3000:]}"
      if when == "start":
        time.sleep(arg)
      run.proc.send_signal(signum)
      rc = run.finish()
    finally:
      run.close()
    out = run.output()
    name = signal.Signals(signum).name
    assert rc == 0, f"run {i} ({name} at {when} {arg}) exited with {rc}:\n{out[-3000:]}"
    assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
    if f"received {name} before the first step" in out:
      assert when == "start", out[-3000:]
      assert _steps(workdir) == before, "a run stopped before its first step saved a checkpoint"
      continue
    said = re.search(rf"received {name}: saved a checkpoint at step (\d+)", out)
    if said is None:
      # The tiny model runs ~150 steps/s: a signal sent at a late step can land after the last
      # one, while the run writes its report. Then the run ended normally with every step saved.
      assert when == "step" and f"checkpoint: {workdir / 'checkpoints' / str(NUM_STEPS)}" in out, out[-3000:]
      assert _steps(workdir)[-1] == NUM_STEPS
      break
    saved = int(said.group(1))
    assert when == "start" or saved > arg, (saved, arg)
    assert _steps(workdir)[-1] == saved
    ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    assert ckpt.verify(saved)
    ckpt.close()
  _finish_uninterrupted(shared, workdir, tmp_path)
  _assert_same_params(shared, workdir)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_matches_an_uninterrupted_run(shared, tmp_path):
  rng = random.Random(7)
  workdir = tmp_path / "run"
  # During an asynchronous checkpoint write, at a random step, and during start-up (within 1 s
  # of it: a resumed run of the last few steps can finish in under 3 s on a fast machine).
  plan = [("writing", None), ("step", rng.randint(6, NUM_STEPS - 1)), ("start", rng.uniform(0.0, 1.0))]
  for i, (when, arg) in enumerate(plan):
    complete, started = _steps(workdir), _started(workdir)
    run = Run(shared, workdir, tmp_path / f"run{i}.log")
    try:
      if when == "writing":
        ready = _writing_second_save(workdir)
      elif when == "step":
        ready = _logged_step(run, arg)
      else:
        ready = started
      assert run.wait_until(ready), f"run {i} ended before {when} {arg}:\n{run.output()[-3000:]}"
      if when == "start":
        time.sleep(arg)
      run.proc.kill()
      assert run.finish() == -signal.SIGKILL
    finally:
      run.close()
    out = run.output()
    if complete and when != "start":  # It resumed from the newest complete checkpoint before it.
      assert f"resumed from {workdir / 'checkpoints' / str(complete[-1])}" in out, out[-3000:]
    for path in _partial(workdir):  # A half-written step is not a step.
      assert int(path.name.split(".")[0]) not in _steps(workdir)
  complete = _steps(workdir)
  out = _finish_uninterrupted(shared, workdir, tmp_path)
  assert not _partial(workdir), "partial saves left behind"
  assert f"resumed from {workdir / 'checkpoints' / str(complete[-1])}" in out, out[-3000:]
  _assert_same_params(shared, workdir)
