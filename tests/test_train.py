"""The train step and loop: data parallelism, compilation, resumption and end-to-end runs."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax import train
from vae_jax.checkpoints import Checkpointer
from vae_jax.data.loader import LoaderState, TrainLoader
from vae_jax.data.store import load_dataset
from vae_jax.models import build_model
from vae_jax.parallel import DataParallel
from vae_jax.state import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(c, devices: int, per_device: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  t, f = c.data.segment_frames, c.features.n_mels
  mel = rng.normal(size=(devices, per_device, t, f)).astype(np.float32)
  mask = np.ones((devices, per_device, t), np.float32)
  mask[0, 0, t // 2:] = 0  # One short clip, so masking is part of what must agree.
  return {"mel": mel, "mask": mask}


def _setup(c):
  model = build_model(c)
  state = train.create_train_state(c, model, jax.random.key(0))
  step = functools.partial(train.train_step, model=model, config=c)
  return model, state, step


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_data_parallel_equals_single_device(tmp_path, mode):
  c = smoke_config(tmp_path / "cache")
  _, state0, step = _setup(c)
  key = jax.random.key(3)
  batches = [_batch(c, 4, 2, seed=i) for i in range(3)]
  single, m_single = state0, None
  single_step = jax.jit(step)
  flat = [jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), b) for b in batches]
  for b in flat:
    single, m_single = single_step(single, b, key)
  dp = DataParallel(step, jax.local_devices()[:4], mode, donate=False)
  state = dp.put_state(state0)
  for b in flat:  # The loader's layout: this process's rows, split over devices by the wrapper.
    state, m = dp(state, dp.put_batch(b), key)
  params = dp.get_state(state).params
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["train/loss"], m_single["train/loss"], rtol=1e-5)
  # Adam hides a gradient scaled by the device count from the parameters, not from the norm.
  np.testing.assert_allclose(m["train/grad_norm"], m_single["train/grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_step_compiles_once(tmp_path, mode):
  c = smoke_config(tmp_path / "cache")
  _, state, step = _setup(c)
  dp = DataParallel(step, jax.local_devices()[:2], mode)
  state = dp.put_state(state)
  key = jax.random.key(0)
  flat = lambda b: dp.put_batch(jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), b))
  state, _ = dp(state, flat(_batch(c, 2, 4, seed=0)), key)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compiles.append(name) if "backend_compile" in name else None)
  try:
    for i in range(1, 4):
      state, m = dp(state, flat(_batch(c, 2, 4, seed=i)), key)
    jax.block_until_ready(m)
  finally:
    jax.monitoring.clear_event_listeners()
  assert compiles == [], f"the train step was recompiled: {compiles}"


def test_nonfinite_batch_does_not_update(tmp_path):
  c = smoke_config(tmp_path / "cache")
  _, state, step = _setup(c)
  b = _batch(c, 1, 4)
  b["mel"][0, 1, 3, 5] = np.nan
  flat = jax.tree.map(lambda x: x[0], b)
  new, metrics = jax.jit(step)(state, flat, jax.random.key(0))
  assert not bool(metrics["train/finite"])
  for a, b_ in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b_)
  assert int(new.step) == 1


# The first step's loss on a fixed batch from a fixed init. A change means the model, its
# initialisation, the loss or the key derivation changed: if that was intended, update the
# value (and say so in the change); if not, it is a regression.
GOLDEN_FIRST_LOSS = 53.65156


def test_golden_first_step(tmp_path):
  c = smoke_config(tmp_path / "cache")
  _, state, step = _setup(c)
  flat = jax.tree.map(lambda x: x[0], _batch(c, 1, 8))
  _, m = jax.jit(step)(state, flat, jax.random.key(0))
  print("first-step loss", float(m["train/loss"]))
  np.testing.assert_allclose(float(m["train/loss"]), GOLDEN_FIRST_LOSS, rtol=1e-4, err_msg=(
      "first-step loss changed: update GOLDEN_FIRST_LOSS only if the model, init, loss or "
      "key derivation was changed on purpose"))


def _restore_params(c, workdir):
  model = build_model(c)
  template = train.create_train_state(c, model, jax.random.key(0))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  state, meta = ckpt.restore(template)
  ckpt.close()
  return state, meta


def test_resume_gives_the_same_parameters(tmp_path):
  c = smoke_config(tmp_path / "cache")
  once = str(tmp_path / "once")
  train.train_and_evaluate(c, once)
  twice = str(tmp_path / "twice")
  c.train.max_steps_per_run = c.train.num_steps // 2
  first = train.train_and_evaluate(c, twice)
  assert first["step"] == c.train.num_steps // 2
  second = train.train_and_evaluate(c, twice)
  assert second["step"] == c.train.num_steps
  a, meta_a = _restore_params(c, once)
  b, meta_b = _restore_params(c, twice)
  assert int(a.step) == int(b.step) == c.train.num_steps
  assert meta_a["loader"] == meta_b["loader"]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_resume_on_a_different_device_count(tmp_path):
  c = smoke_config(tmp_path / "cache", {"train.num_devices": 4})
  once = str(tmp_path / "once")
  train.train_and_evaluate(c, once)
  twice = str(tmp_path / "twice")
  c.train.max_steps_per_run = c.train.num_steps // 2
  train.train_and_evaluate(c, twice)
  c.train.num_devices, c.train.parallel = 2, "shard_map"
  train.train_and_evaluate(c, twice)
  a, _ = _restore_params(c, once)
  b, _ = _restore_params(c, twice)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
         f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.num_steps=20"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "checkpoint:" in out.stdout and "report:" in out.stdout
  for rel in ("checkpoints/20", "metrics.jsonl", "config.json", "normalizer.json", "report.md",
              "samples/step0000020.png"):
    assert (workdir / rel).exists(), rel
  assert list((workdir / "tb").iterdir()), "no TensorBoard events"
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  eval_rows = [r for r in rows if "eval/loss" in r]
  assert train_rows and eval_rows
  for key in ("train/nll", "train/kl", "train/grad_norm", "train/learning_rate",
              "train/frames_per_sec", "train/kl_per_channel/0"):
    assert key in train_rows[-1], key
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"], "the loss did not go down"
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "conv"


def test_bad_override_is_one_line(tmp_path):
  cmd = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={tmp_path}",
         "--config.train.batch_sise=3"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  assert out.stderr.strip() == ("error: unknown config field 'train.batch_sise' "
                                "(did you mean train.batch_size?)"), out.stderr


def test_logged_learning_rate_is_the_applied_one_after_skipped_updates(tmp_path):
  # A skipped update reverts the optimiser state (its count) while the step advances: the
  # rate logged for the next update must be the one the optimiser applies, schedule(count).
  c = smoke_config(tmp_path / "cache", {"optim.warmup_steps": 10})
  _, state, _ = _setup(c)
  grads = jax.tree.map(jax.numpy.ones_like, state.params)
  nan_grads = jax.tree.map(lambda g: g * np.nan, grads)
  _, schedule = make_optimizer(c)
  state, m0 = train.apply_update(state, nan_grads, jax.numpy.float32(np.nan), c)
  state, m1 = train.apply_update(state, grads, jax.numpy.float32(1.0), c)
  assert not bool(m0["train/finite"]) and bool(m1["train/finite"]) and int(state.step) == 2
  assert float(m1["train/learning_rate"]) == float(schedule(0)) != float(schedule(1)), (
      "the logged rate ran ahead of the optimiser's count")


def test_throughput_counts_valid_frames_not_padding(tmp_path):
  # Crops longer than most utterances are mostly padding: frames_per_sec must count the
  # frames of the batch's mask, not batch_size * segment_frames.
  steps = 3
  c = smoke_config(tmp_path / "cache", {
      "data.segment_frames": 512, "train.num_steps": steps, "train.log_every": 1,
      "train.eval_every": 1000, "train.checkpoint_every": 1000, "eval.num_audio_examples": 0})
  train.train_and_evaluate(c, str(tmp_path / "run"))
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  per_step = [r["train/frames_per_sec"] / r["train/steps_per_sec"] for r in rows if "train/steps_per_sec" in r]
  data = load_dataset(c)
  loader = TrainLoader(data.train, data.normalizer, global_batch=c.train.batch_size, num_local_devices=1,
                       segment_frames=c.data.segment_frames, seed=c.seed)
  state, valid = LoaderState(), []
  for _ in range(steps):
    valid.append(float(loader.batch_at(state)["mask"].sum()))
    state = loader.advance(state)
  np.testing.assert_allclose(per_step, valid, rtol=1e-6)
  assert max(valid) < 0.9 * c.train.batch_size * c.data.segment_frames, "the crops were not padded"
