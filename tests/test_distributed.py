"""Multi-process training on JAX's distributed runtime, as two processes on this machine."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax import distributed, train
from vae_jax.checkpoints import Checkpointer
from vae_jax.errors import ConfigError
from vae_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _config(tmp_path, **train_overrides):
  c = smoke_config(tmp_path / "cache", {
      "train.num_steps": STEPS, "train.eval_every": STEPS, "train.checkpoint_every": STEPS,
      "eval.num_audio_examples": 0, **{f"train.{k}": v for k, v in train_overrides.items()}})
  return c


def _final_state(c, workdir):
  template = train.create_train_state(c, build_model(c), jax.random.key(0))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  assert ckpt.latest_step() == STEPS
  state, _ = ckpt.restore(template)
  ckpt.close()
  return state


def _run_workers(tmp_path, workdir, parallel: str) -> list[subprocess.CompletedProcess]:
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
  procs = []
  try:
    for pid in range(2):
      cmd = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
             f"--config.data.cache_dir={tmp_path / 'cache'}", f"--config.train.num_steps={STEPS}",
             f"--config.train.eval_every={STEPS}", f"--config.train.checkpoint_every={STEPS}",
             "--config.eval.num_audio_examples=0", f"--config.train.parallel={parallel}",
             "--config.train.progress_bar=false",
             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={pid}"]
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
      out, err = p.communicate(timeout=420)
      results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results
  finally:
    for p in procs:  # Never leave a worker waiting for a peer that died.
      if p.poll() is None:
        p.kill()
        p.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_two_processes_equal_one_process_with_all_devices(tmp_path, parallel):
  reference = str(tmp_path / "one")
  c = _config(tmp_path, num_devices=4, parallel=parallel)
  train.train_and_evaluate(c, reference)  # This process has 4 host devices (conftest).
  workdir = str(tmp_path / "two")
  results = _run_workers(tmp_path, workdir, parallel)
  for i, r in enumerate(results):
    assert r.returncode == 0, f"process {i} failed:\n{r.stderr[-3000:]}"
  assert "checkpoint:" in results[0].stdout, "process 0 prints where the run is"
  assert "checkpoint:" not in results[1].stdout, "only process 0 prints and writes logs"
  a, b = _final_state(c, reference), _final_state(c, workdir)
  assert int(a.step) == int(b.step) == STEPS
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line)["step"] for line in f if '"train/loss"' in line]
  assert logged == [STEPS], f"one writer logs each interval once, got steps {logged}"


STARTUP_S = 150  # Both reach step 3 in about 20 s on 2 cores; a stuck start gets one more try.


def _start_training_pair(tmp_path, attempt: int, every: int, steps: int):
  """(whether both got to training, processes, logs, workdir) of two train.py processes of one cluster."""
  workdir, port = tmp_path / f"run{attempt}", _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
  procs, logs = [], [tmp_path / f"attempt{attempt}-p{pid}.log" for pid in range(2)]
  for pid in range(2):
    cmd = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
           f"--config.data.cache_dir={tmp_path / 'cache'}", f"--config.train.num_steps={steps}",
           "--config.train.eval_every=100000", "--config.train.checkpoint_every=100000",
           "--config.train.log_every=1", f"--config.train.stop_check_every={every}",
           "--config.eval.num_audio_examples=0", "--config.train.progress_bar=false",
           f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={pid}"]
    with open(logs[pid], "w") as out:
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
  deadline = time.monotonic() + STARTUP_S
  while "step 3/" not in logs[0].read_text():  # Both are training: the steps are collectives.
    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
      return False, procs, logs, workdir
    time.sleep(0.2)
  return True, procs, logs, workdir


def _stop(procs) -> None:
  for p in procs:  # Never leave a worker waiting for a peer that died.
    if p.poll() is None:
      p.kill()
      p.wait()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_with_one_checkpoint(tmp_path):
  every, steps, failed_starts = 4, 5000, []
  for attempt in range(2):
    procs = []
    try:
      started, procs, logs, workdir = _start_training_pair(tmp_path, attempt, every, steps)
      if started:
        procs[1].send_signal(signal.SIGTERM)  # Only the second process is told.
        codes = [p.wait(timeout=300) for p in procs]
        break
    finally:
      _stop(procs)
    # What the start printed, for the failure message: the signal handling was not reached.
    failed_starts.append("\n".join(f"--- attempt {attempt} process {i}:\n{log.read_text()[-1500:]}"
                                   for i, log in enumerate(logs)))
  else:
    pytest.fail("the two-process cluster never reached step 3 (twice):\n" + "\n".join(failed_starts))
  text = [log.read_text() for log in logs]
  assert codes == [0, 0], text[0][-2000:] + text[1][-2000:]
  steps_saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(steps_saved) == 1, f"one checkpoint, saved by both together: {steps_saved}"
  (saved,) = steps_saved
  assert saved < steps and saved % every == 0, "the processes agree at stop-check steps"
  assert f"received SIGTERM: saved a checkpoint at step {saved}" in text[1]
  assert f"received a stop signal on another process: saved a checkpoint at step {saved}" in text[0]


def test_batch_must_divide_over_all_processes(monkeypatch, tmp_path):
  c = _config(tmp_path)
  c.train.batch_size = 12  # Divides over this process's 4 devices, not over 2 x 4.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ConfigError, match=r"multiple of the 8 devices \(2 processes x 4\)"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists(), "the check runs before anything is written"


def test_initialize_arguments_are_checked():
  with pytest.raises(ConfigError, match="go together"):
    distributed.initialize("auto", coordinator_address="localhost:1234")
  with pytest.raises(ConfigError, match=r"process_id=2 must be in \[0, --num_processes=2\)"):
    distributed.initialize("on", "localhost:1234", 2, 2)
  assert distributed.initialize("off") is False
  assert distributed.initialize("auto") is False  # No cluster here: single process, unchanged.


def test_cluster_detection(monkeypatch):
  for var in ("SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(var, raising=False)
  assert not distributed.cluster_detected()
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert not distributed.cluster_detected(), "a one-task SLURM job is a single process"
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.cluster_detected()
