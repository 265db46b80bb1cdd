"""Train-step throughput: the JAX step against its PyTorch twin, and what the JAX step costs where.

Every step is fed real batches from the training loader, collected beforehand,
so the figures are the step alone; `loader_vs_step` and `loop_vs_step` (in
data_bench and here) say what the data and the training loop add.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from bench import timing
from bench.common import Context, torch_available
from vae_jax import train
from vae_jax.models import build_model
from vae_jax.models.layers import resolve_conv_impl
from vae_jax.parallel import DataParallel

# Training batches cycled through by the timed steps.
NUM_BATCHES = 8
# Steps per timed repetition: JAX dispatches each step while the previous one runs.
STEPS_PER_REP = 3


def time_steps(ctx: Context, runners: dict[str, Callable[[int], float]]) -> dict[str, dict[str, Any]]:
  """Per-step timing summaries of step runners, timed in turns, STEPS_PER_REP steps a repetition."""
  k = 2 if ctx.quick else STEPS_PER_REP
  t = timing.interleaved({n: functools.partial(r, k) for n, r in runners.items()}, ctx.reps, ctx.warmup)
  return {n: timing.per_unit(v, k) for n, v in t.items()}


def with_overrides(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with `section__field=value` overrides."""
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


def num_params(config: ml_collections.ConfigDict) -> int:
  """Trainable scalars of the JAX model."""
  model = build_model(config)
  t, f = config.data.segment_frames, config.features.n_mels
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, t, f), np.float32),
                          jax.ShapeDtypeStruct((1, t), np.float32), jax.random.key(1))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def jax_step_runner(config: ml_collections.ConfigDict, batches: list[dict[str, np.ndarray]], *,
                    parallel: str = "pmap", donate: bool = True,
                    devices: list[jax.Device] | None = None) -> Callable[[], float]:
  """`run(n)` takes n training steps as `train_and_evaluate` does and returns the last loss.

  Only the last step is waited for, so the host dispatches step i + 1 while
  step i runs, as in the training loop.

  `parallel` is "pmap" or "shard_map" (the DataParallel wrappers the loop uses) or
  "jit" (the bare per-device step on the loader's flat batch).
  """
  model = build_model(config)
  state = train.create_train_state(config, model, jax.random.key(config.seed))
  step_fn = functools.partial(train.train_step, model=model, config=config)
  key = jax.random.key(1)
  if parallel == "jit":
    jitted = jax.jit(step_fn, donate_argnums=(0,) if donate else ())
    step, put = jitted, lambda b: b
  else:
    dp = DataParallel(step_fn, devices or jax.local_devices()[:1], parallel, donate=donate)
    state, step, put = dp.put_state(state), dp, dp.put_batch
  holder = {"state": state, "i": 0}

  def run(n: int = 1) -> float:
    for _ in range(n):
      batch = put(batches[holder["i"] % len(batches)])
      holder["i"] += 1
      holder["state"], metrics = step(holder["state"], batch, key)
    return float(metrics["train/loss"])

  return run


def torch_step_runner(config: ml_collections.ConfigDict, batches: list[dict[str, np.ndarray]], *,
                      compiled: bool = False, threads: int = 0) -> Callable[[int], float]:
  """`run(n)`: n steps of the PyTorch twin (eager, or its model under torch.compile); the last loss.

  `threads` > 0 runs the steps with that many intra-op threads (PyTorch's
  default is one per core), restoring the previous setting afterwards.
  """
  import torch  # pylint: disable=g-import-not-at-top

  from bench.torch_twin import TwinTrainer  # pylint: disable=g-import-not-at-top

  trainer = TwinTrainer(config, seed=config.seed)
  if compiled:
    trainer.model = torch.compile(trainer.model)
  tensors = [(torch.from_numpy(np.ascontiguousarray(b["mel"])),
              torch.from_numpy(np.ascontiguousarray(b["mask"]))) for b in batches]
  holder = {"i": 0}

  def run(n: int = 1) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
      for _ in range(n):
        mel, mask = tensors[holder["i"] % len(tensors)]
        holder["i"] += 1
        loss = trainer.step(mel, mask)["loss"]
    finally:
      torch.set_num_threads(previous)
    return loss

  return run


def torch_num_params(config: ml_collections.ConfigDict) -> int:
  from bench.torch_twin import build_twin  # pylint: disable=g-import-not-at-top
  from bench.torch_twin import num_params as twin_params

  return twin_params(build_twin(config))


def _rates(ctx: Context, t: dict[str, Any], batch_frames: int, valid_frames: float) -> dict[str, Any]:
  step_s = t["median_s"]
  return {
      "step_s": step_s,
      "steps_per_s": 1 / step_s,
      "frames_per_s": batch_frames / step_s,
      "valid_frames_per_s": valid_frames / step_s,
      "audio_s_per_s": batch_frames / step_s / ctx.frames_per_second,
      "timing": t,
  }


def _frames(batches: list[dict[str, np.ndarray]]) -> tuple[int, float]:
  """Mel frames per step (padded, as the training loop counts them) and valid frames per step."""
  mask = batches[0]["mask"]
  return int(mask.size), float(np.mean([b["mask"].sum() for b in batches]))


def jax_vs_torch(ctx: Context) -> dict[str, Any]:
  """Median step time of the JAX step and its PyTorch twin, timed in turns in this process."""
  c = ctx.config
  batches = ctx.train_batches(NUM_BATCHES)
  batch_frames, valid = _frames(batches)
  out: dict[str, Any] = {
      "shapes": {"batch": c.train.batch_size, "segment_frames": c.data.segment_frames,
                 "n_mels": c.features.n_mels, "channels": c.model.channels,
                 "conv_impl": resolve_conv_impl(c.model.conv_impl), "dtype": c.model.dtype},
      "params_jax": num_params(c),
  }
  fns = {"jax": jax_step_runner(c, batches)}
  if torch_available():
    import torch  # pylint: disable=g-import-not-at-top

    out["params_torch"] = torch_num_params(c)
    if out["params_torch"] != out["params_jax"]:
      raise AssertionError(f"the twin has {out['params_torch']} parameters, "
                           f"the JAX model {out['params_jax']}")
    default_threads = torch.get_num_threads()
    out["torch_threads"] = default_threads
    # PyTorch's default (one OpenMP thread per core, spinning at barriers) suffers most when
    # other processes load the cores; one thread is the fallback a user would try.
    if not ctx.quick:
      fns[f"torch_eager_{default_threads}_threads"] = torch_step_runner(c, batches)
    if default_threads != 1 or ctx.quick:
      fns["torch_eager_1_thread"] = torch_step_runner(c, batches, threads=1)
  else:
    out["torch_skipped"] = "PyTorch is not installed (pip install -e .[bench]); JAX alone was timed"
  t = time_steps(ctx, fns)
  out["results"] = {name: _rates(ctx, t[name], batch_frames, valid) for name in fns}
  torch_names = [n for n in fns if n.startswith("torch")]
  if torch_names:
    best = min(torch_names, key=lambda n: t[n]["median_s"])
    out["fastest_torch"] = best
    out["ratio_jax_over_torch"] = t[best]["median_s"] / t["jax"]["median_s"]
    out["ratio_jax_over_each_torch"] = {n: t[n]["median_s"] / t["jax"]["median_s"] for n in torch_names}
  return out


def torch_compiled(ctx: Context, threads: int = 0) -> dict[str, Any]:
  """torch.compile of the twin's model against eager, if inductor works here (it needs a C++ compiler)."""
  if not torch_available():
    return {"skipped": "PyTorch is not installed"}
  c = ctx.config
  batches = ctx.train_batches(NUM_BATCHES)
  batch_frames, valid = _frames(batches)
  try:
    compiled = torch_step_runner(c, batches, compiled=True, threads=threads)
    t0 = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - t0
  except Exception as e:  # Inductor failing offline is a finding, not a harness error.
    return {"skipped": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
  fns = {"jax": jax_step_runner(c, batches),
         "torch_eager": torch_step_runner(c, batches, threads=threads), "torch_compile": compiled}
  t = time_steps(ctx, fns)
  return {"first_call_s": compile_s, "threads": threads or "default",
          "results": {name: _rates(ctx, t[name], batch_frames, valid) for name in fns},
          "ratio_jax_over_torch_compile": t["torch_compile"]["median_s"] / t["jax"]["median_s"]}


@contextlib.contextmanager
def _patched(module, name: str, value) -> Iterator[None]:
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def _identity_norm(*args, **kwargs):
  del args, kwargs
  return lambda x: x


def variants(ctx: Context) -> dict[str, Any]:
  """Step time of JAX variants against the default step, in turns.

  Besides real options (conv formulation, bf16 compute, no buffer donation, no
  pmap), two ablations price parts of the model that cannot be switched off in
  a config: exact instead of tanh GELU, and the LayerNorms removed. Ablated
  steps compute another function; they only say what those ops cost.
  """
  c = ctx.config
  batches = ctx.train_batches(NUM_BATCHES)
  batch_frames, valid = _frames(batches)
  base = jax_step_runner(c, batches)
  fns: dict[str, Callable] = {"default": base}
  for impl in ("lax", "matmul"):
    if impl != resolve_conv_impl(c.model.conv_impl):
      fns[f"conv_impl={impl}"] = jax_step_runner(with_overrides(c, model__conv_impl=impl), batches)
  fns["dtype=bfloat16"] = jax_step_runner(with_overrides(c, model__dtype="bfloat16"), batches)
  fns["no donation"] = jax_step_runner(c, batches, donate=False)
  fns["jit, no pmap"] = jax_step_runner(c, batches, parallel="jit")
  fns["shard_map"] = jax_step_runner(c, batches, parallel="shard_map")
  # The runners trace lazily, so the patches must be in place for their first (warm-up) call.
  exact = jax_step_runner(c, batches)
  no_norm = jax_step_runner(c, batches)
  with _patched(nn, "gelu", functools.partial(jax.nn.gelu, approximate=False)):
    exact()
  with _patched(nn, "LayerNorm", _identity_norm):
    no_norm()
  fns["ablation: exact GELU"] = exact
  fns["ablation: no LayerNorm"] = no_norm
  t = time_steps(ctx, fns)
  base_s = t["default"]["median_s"]
  return {name: {**_rates(ctx, t[name], batch_frames, valid),
                 "relative_to_default": t[name]["median_s"] / base_s} for name in fns}


def loop_vs_step(ctx: Context, steps: int = 0) -> dict[str, Any]:
  """Steps/s of the whole `train_and_evaluate` loop against the bare step it calls.

  The loop logs its own steps/s every `log_every` steps; the first window
  (compilation) is dropped. The bare step is timed before and after the loop.
  Evaluation and checkpoints happen only at the last step, outside the windows.
  """
  c = ctx.config
  log_every = 5 if ctx.quick else 10
  steps = steps or (4 * log_every if ctx.quick else 7 * log_every)
  batches = ctx.train_batches(NUM_BATCHES)
  bare = jax_step_runner(c, batches)
  half = dataclasses.replace(ctx, reps=max(ctx.reps // 2, 1))
  before = time_steps(half, {"bare": bare})["bare"]
  lc = with_overrides(c, train__num_steps=steps, train__log_every=log_every,
                      train__eval_every=steps, train__checkpoint_every=steps,
                      train__progress_bar=False, eval__max_utterances=c.eval.batch_size,
                      eval__num_audio_examples=0)
  workdir = ctx.temp_dir("loop-")
  try:
    t0 = time.perf_counter()
    train.train_and_evaluate(lc, workdir)
    total_s = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  windows = [r["train/steps_per_sec"] for r in rows if "train/steps_per_sec" in r][1:]
  after = time_steps(dataclasses.replace(half, warmup=0), {"bare": bare})["bare"]
  bare_s = float(np.median(before["times_s"] + after["times_s"]))
  loop_rate = float(np.median(windows)) if windows else float("nan")
  return {
      "loop_steps_per_s": loop_rate,
      "loop_windows_steps_per_s": windows,
      "bare_step_steps_per_s": 1 / bare_s,
      "loop_over_bare": loop_rate * bare_s,
      "host_overhead_ms_per_step": (1 / loop_rate - bare_s) * 1000 if windows else float("nan"),
      "steps": steps,
      "log_every": log_every,
      "run_s_including_compile_eval_checkpoint": total_s,
      "bare_before": before,
      "bare_after": after,
      "load1": timing.load1(),
  }
