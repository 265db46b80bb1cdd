"""Feature pipeline throughput (cold and cached) and whether the train step ever waits on data."""

import functools
import shutil
import time
from typing import Any

import jax
import numpy as np

from bench import timing
from bench.common import Context
from bench.train_bench import with_overrides
from vae_jax import train
from vae_jax.audio import io as audio_io
from vae_jax.audio import spectral
from vae_jax.audio.features import FeatureConfig
from vae_jax.data.corpora import build_corpus
from vae_jax.data.loader import TrainLoader
from vae_jax.data.store import load_dataset
from vae_jax.models import build_model
from vae_jax.parallel import DataParallel


def feature_pipeline(ctx: Context) -> dict[str, Any]:
  """`load_dataset` into an empty cache (decode, resample, librosa log-mel, shards) and from the cache."""
  cache = ctx.temp_dir("cold-cache-")
  c = with_overrides(ctx.config, data__cache_dir=cache)
  n_files = len(build_corpus(c).entries)
  try:
    t0 = time.perf_counter()
    data = load_dataset(c)
    cold_s = time.perf_counter() - t0
    cached = []
    for _ in range(max(ctx.reps // 2, 2)):
      t0 = time.perf_counter()
      load_dataset(c)
      cached.append(time.perf_counter() - t0)
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  frames = int(data.train.lengths.sum() + data.test.lengths.sum())
  cached_s = float(np.median(cached))
  workers = c.data.num_workers or "one per core"
  return {
      "files": n_files,
      "frames": frames,
      "audio_s": frames / ctx.frames_per_second,
      "workers": workers,
      "cold": {"s": cold_s, "files_per_s": n_files / cold_s, "frames_per_s": frames / cold_s,
               "x_real_time": frames / ctx.frames_per_second / cold_s},
      "cached": {"s": cached_s, "files_per_s": n_files / cached_s, "frames_per_s": frames / cached_s,
                 "times_s": cached},
      "load1": timing.load1(),
  }


def jax_front_end(ctx: Context, batch: int = 32, seconds: float = 1.0) -> dict[str, Any]:
  """The jitted JAX log-mel front end on a batch of real clips (the cache's librosa path, batched on device)."""
  fc = FeatureConfig.from_config(ctx.config.features)
  data_paths = ctx.dataset().train.paths[:batch]
  n = int(seconds * fc.sample_rate)
  waves = np.zeros((len(data_paths), n), np.float32)
  for i, p in enumerate(data_paths):
    w = audio_io.read_audio(p, fc.sample_rate)[:n]
    waves[i, :len(w)] = w
  waves = jax.device_put(waves)
  fn = lambda: spectral.log_mel(waves, fc).block_until_ready()
  t = timing.interleaved({"log_mel": fn}, ctx.reps, ctx.warmup)["log_mel"]
  frames = len(data_paths) * spectral.num_frames(n, fc)
  return {"batch": len(data_paths), "clip_s": seconds, "frames_per_s": frames / t["median_s"],
          "x_real_time": len(data_paths) * seconds / t["median_s"], "timing": t}


def loader_vs_step(ctx: Context, step_s: float, batches: int = 0) -> dict[str, Any]:
  """The loader's batch rate (no prefetch thread, warm cache) against the step's, and the wait in a real loop.

  The wait is what `next(loader)` blocks for in a loop shaped like the
  training loop's (prefetch thread on, one step in flight while the next batch
  is fetched), so it includes any contention between the two.
  """
  data, c = ctx.dataset(), ctx.config
  batches = batches or (10 if ctx.quick else 50)
  make = functools.partial(TrainLoader, data.train, data.normalizer, global_batch=c.train.batch_size,
                           num_local_devices=1, segment_frames=c.data.segment_frames, seed=c.seed)
  loader = make(prefetch=0)
  next(loader)  # The epoch's permutation.
  t0 = time.perf_counter()
  for _ in range(batches):
    next(loader)
  batch_s = (time.perf_counter() - t0) / batches
  loader_rate, step_rate = 1 / batch_s, 1 / step_s
  return {
      "loader_batches_per_s": loader_rate,
      "step_batches_per_s": step_rate,
      "loader_over_step": loader_rate / step_rate,
      "target_met": loader_rate / step_rate >= 10,
      "batch_ms": batch_s * 1000,
      "in_loop": _wait_in_loop(ctx, make(prefetch=c.data.prefetch), steps=max(batches // 2, 6)),
      "load1": timing.load1(),
  }


def _wait_in_loop(ctx: Context, loader: TrainLoader, steps: int) -> dict[str, Any]:
  c = ctx.config
  model = build_model(c)
  state = train.create_train_state(c, model, jax.random.key(c.seed))
  dp = DataParallel(functools.partial(train.train_step, model=model, config=c), jax.local_devices()[:1])
  state, key = dp.put_state(state), jax.random.key(1)
  try:
    state, m = dp(state, dp.put_batch(next(loader)), key)  # Compile outside the timed steps.
    float(m["train/loss"])
    waits, pending = [], None
    t_start = time.perf_counter()
    for _ in range(steps):
      t0 = time.perf_counter()
      batch = next(loader)
      waits.append(time.perf_counter() - t0)
      state, m = dp(state, dp.put_batch(batch), key)
      if pending is not None:
        float(pending["train/loss"])
      pending = m
    float(pending["train/loss"])
    total = time.perf_counter() - t_start
  finally:
    loader.close()
  return {"steps": steps, "prefetch": c.data.prefetch, "mean_wait_ms": 1000 * float(np.mean(waits)),
          "max_wait_ms": 1000 * float(np.max(waits)), "wait_fraction": float(np.sum(waits)) / total,
          "steps_per_s": steps / total}
