"""Step time of the two data-parallel wrappers (jit + shard_map, the default, against pmap) on FSDD.

Both take the loader's flat batches through their own put_batch, as the training loop does,
and are timed in turns in one process (bench.timing.interleaved).

  python -m bench.parallel_bench [--devices 1] [--reps 7]    # XLA_FLAGS sets the host device count
"""

import argparse
import json
import os
import tempfile

import jax

from bench import timing
from bench.common import Context
from bench.train_bench import NUM_BATCHES, STEPS_PER_REP, jax_step_runner


def compare(ctx: Context, devices: int) -> dict:
  """Median seconds per step of each wrapper over `devices` local devices."""
  batches = ctx.train_batches(NUM_BATCHES, num_devices=devices)
  runners = {mode: jax_step_runner(ctx.config, batches, parallel=mode, devices=jax.local_devices()[:devices])
             for mode in ("shard_map", "pmap")}
  t = timing.interleaved({m: (lambda r=r: r(STEPS_PER_REP)) for m, r in runners.items()}, ctx.reps, ctx.warmup)
  out = {m: timing.per_unit(v, STEPS_PER_REP) for m, v in t.items()}
  return {"devices": devices, "batch": ctx.config.train.batch_size,
          "median_step_s": {m: out[m]["median_s"] for m in out},
          "shard_map_over_pmap": out["shard_map"]["median_s"] / out["pmap"]["median_s"], "timing": out}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--data", default="")
  args = parser.parse_args()
  ctx = Context.create(False, args.reps, args.warmup, tempfile.mkdtemp(prefix="parallel-bench-"), args.data)
  result = compare(ctx, args.devices)
  result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  print(json.dumps({k: v for k, v in result.items() if k != "timing"}, indent=1))


if __name__ == "__main__":
  main()
