"""A workdir on Cloud Storage (a local emulator): train there, kill, resume there, evaluate from there.

The emulator (gcp-storage-emulator, started by tests/gcs_emulator.py) serves the JSON API on a
loopback port. The clients find
it through their own settings: STORAGE_EMULATOR_HOST (gcsfs, which etils.epath uses, and
google-cloud-storage, which tensorboardX uses) and TENSORSTORE_GCS_HTTP_URL with a dummy
token (TensorStore, which Orbax uses for arrays).
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax import fileio, train
from vae_jax.checkpoints import Checkpointer
from vae_jax.config import validate
from vae_jax.errors import ConfigError
from vae_jax.models import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "vae-jax-test"
NUM_STEPS = 40  # Long enough that a kill after step 6 lands mid-run.
OVERRIDES = {
    "model.blocks_per_stage": 0, "train.num_steps": NUM_STEPS, "train.checkpoint_every": 4,
    "train.log_every": 1, "train.eval_every": 1000, "train.progress_bar": False,
    "eval.num_audio_examples": 1, "eval.max_utterances": 8,
}
TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"the storage emulator exited with {proc.returncode}")
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.1)
  raise RuntimeError(f"the storage emulator did not listen on port {port} within {timeout_s:g} s")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A Cloud Storage emulator with one bucket; the environment that points every client at it."""
  port = _free_port()
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", f"--port={port}", f"--bucket={BUCKET}"],
                          cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  saved = {k: os.environ.get(k) for k in env}
  try:
    _wait_for_port(port, proc)
    os.environ.update(env)
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(30)
    log.close()


def _env(gcs_env: dict[str, str], tmp: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ, **gcs_env, PYTHONUNBUFFERED="1")
  env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or str(tmp / "xla")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _train_cmd(workdir: str, cache: pathlib.Path) -> list[str]:
  return [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
          f"--config.data.cache_dir={cache}", *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]


def _params(workdir: str) -> tuple[int, list[np.ndarray]]:
  c = smoke_config(None, OVERRIDES)
  template = train.create_train_state(c, build_model(c), jax.random.key(0))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    state, _ = ckpt.restore(template)
  finally:
    ckpt.close()
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves(state)]


def _objects(gcs_env: dict[str, str], prefix: str) -> set[str]:
  """The object names under `prefix`, asked of the emulator directly (no client-side listing cache)."""
  url = f"{gcs_env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o?prefix={urllib.parse.quote(prefix)}"
  with urllib.request.urlopen(url, timeout=30) as r:
    return {item["name"] for item in json.load(r).get("items", [])}


def _one_error_line(out: str) -> str:
  assert "Traceback" not in out, out[-3000:]
  errors = [line for line in out.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out[-3000:]
  return errors[0]


@pytest.mark.slow
def test_a_run_on_cloud_storage_is_killed_resumed_and_evaluated_there(gcs, tmp_path):
  cache = tmp_path / "cache"
  reference = tmp_path / "reference"
  train.train_and_evaluate(smoke_config(cache, OVERRIDES), str(reference))
  workdir = f"gs://{BUCKET}/runs/smoke"
  env = _env(gcs, tmp_path)

  # Killed once its first checkpoint is committed (later saves may be half written).
  log = tmp_path / "first.log"
  with open(log, "w") as f:
    proc = subprocess.Popen(_train_cmd(workdir, cache), cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT_S
    while "runs/smoke/checkpoints/4/commit_success.txt" not in _objects(gcs, "runs/smoke/checkpoints/"):
      assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(TIMEOUT_S) == -signal.SIGKILL, "the run finished before it was killed"
  killed_at = [int(s) for s in fileio.listdir(f"{workdir}/checkpoints") if s.isdigit()]
  assert killed_at and max(killed_at) < NUM_STEPS, killed_at

  rerun = subprocess.run(_train_cmd(workdir, cache), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
  out = rerun.stdout + rerun.stderr
  assert rerun.returncode == 0, out[-3000:]
  assert re.search(rf"resumed from {workdir}/checkpoints/\d+", out), out[-3000:]
  assert f"checkpoint: {workdir}/checkpoints/{NUM_STEPS}" in out, out[-3000:]

  # Resumed on remote storage, it ends where the uninterrupted local run does.
  step, params = _params(workdir)
  ref_step, ref_params = _params(str(reference))
  assert step == ref_step == NUM_STEPS
  for a, b in zip(params, ref_params):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

  # Everything the run writes is in the bucket.
  names = set(fileio.listdir(workdir))
  assert {"config.json", "normalizer.json", "metrics.jsonl", "tb", "samples", "report.md"} <= names, names
  rows = [json.loads(line) for line in fileio.read_text(f"{workdir}/metrics.jsonl").splitlines() if line]
  assert max(r["step"] for r in rows) == NUM_STEPS and any(r["step"] <= 6 for r in rows)
  assert any(n.startswith("events.out.tfevents") for n in fileio.listdir(f"{workdir}/tb"))
  samples = fileio.listdir(f"{workdir}/samples")
  assert any(n.endswith(".png") for n in samples) and any(n.endswith(".wav") for n in samples), samples
  assert json.loads(fileio.read_text(f"{workdir}/normalizer.json")) == json.loads(
      (reference / "normalizer.json").read_text())
  for s in fileio.listdir(f"{workdir}/checkpoints"):
    assert fileio.exists(f"{workdir}/checkpoints/{s}/integrity.json"), s

  # Evaluated from there: the report and prior samples are written there too.
  ev = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}", "--max_utterances=8",
                       "--audio_metrics=false", "--report", "--sample=2", f"--out={workdir}/drawn"],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert ev.returncode == 0, (ev.stdout + ev.stderr)[-3000:]
  report = json.loads(fileio.read_text(f"{workdir}/eval/metrics.json"))
  assert report["step"] == NUM_STEPS and report["workdir"] == workdir
  assert np.isfinite(report["eval/vae/logmel_mse"])
  assert fileio.exists(f"{workdir}/eval/report.md")
  drawn = fileio.listdir(f"{workdir}/drawn")
  assert sum(n.endswith(".wav") for n in drawn) == 2, drawn


def test_a_bucket_that_does_not_exist_is_one_line_and_writes_nothing(gcs, tmp_path):
  run = subprocess.run(_train_cmd("gs://no-such-bucket/run", tmp_path / "cache"), cwd=REPO,
                       env=_env(gcs, tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert run.returncode != 0
  line = _one_error_line(run.stdout + run.stderr)
  assert "cannot use workdir gs://no-such-bucket/run" in line, line
  assert not (tmp_path / "cache").exists()  # Refused before any feature extraction.


def test_evaluating_a_remote_workdir_without_checkpoints_is_one_line(gcs, tmp_path):
  run = subprocess.run([sys.executable, "eval.py", f"--workdir=gs://{BUCKET}/empty"], cwd=REPO,
                       env=_env(gcs, tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert run.returncode != 0
  assert f"no checkpoints in gs://{BUCKET}/empty" in _one_error_line(run.stdout + run.stderr)


def test_a_remote_workdir_without_the_cloud_storage_client_says_which_extra(tmp_path):
  code = ("import runpy, sys; sys.modules['gcsfs'] = None; "  # As if the gcs extra were not installed.
          f"sys.argv = ['train.py'] + {_train_cmd('gs://bucket/run', tmp_path / 'cache')[2:]!r}; "
          "runpy.run_path('train.py', run_name='__main__')")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
  assert run.returncode != 0
  line = _one_error_line(run.stdout + run.stderr)
  assert "gs://bucket/run" in line and "pip install 'vae-jax[gcs]'" in line, line


@pytest.mark.parametrize("field", ["data.cache_dir", "data.path"])
def test_a_remote_feature_cache_or_corpus_is_refused_in_one_line(field):
  c = smoke_config(None, {field: "gs://bucket/features"})
  with pytest.raises(ConfigError, match=rf"{re.escape(field)}='gs://bucket/features'.*local"):
    validate(c)
