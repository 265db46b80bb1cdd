"""Device-count scaling of the pmapped train step at a fixed global batch.

On a machine with several accelerators this times the real devices. On a
CPU-only machine it runs itself in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4: the forced devices share
the same cores, so the figure is the cost of splitting the batch and of the
collectives, not a speed-up.

  python -m bench.scaling --devices 1,2,4 [--quick]   # prints one JSON object
"""

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from bench.common import REPO_ROOT, Context

FORCED_DEVICES = 4


def scaling_in_process(ctx: Context, counts: list[int]) -> dict[str, Any]:
  """Steps/s of the pmapped step on the first n local devices, for each n, timed in turns."""
  import jax  # pylint: disable=g-import-not-at-top

  from bench.train_bench import NUM_BATCHES, jax_step_runner, time_steps  # pylint: disable=g-import-not-at-top

  devices = jax.local_devices()
  counts = [n for n in counts if n <= len(devices) and ctx.config.train.batch_size % n == 0]
  fns = {}
  for n in counts:
    batches = ctx.train_batches(NUM_BATCHES, num_devices=n)
    fns[f"{n} devices"] = jax_step_runner(ctx.config, batches, devices=devices[:n])
  t = time_steps(ctx, fns)
  frames = ctx.config.train.batch_size * ctx.config.data.segment_frames
  base = t[f"{counts[0]} devices"]["median_s"]
  return {
      "platform": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "local_devices": len(devices),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "global_batch": ctx.config.train.batch_size,
      "results": {k: {"step_s": v["median_s"], "frames_per_s": frames / v["median_s"],
                      "speedup_vs_1": base / v["median_s"], "timing": v} for k, v in t.items()},
  }


def scaling(ctx: Context, counts: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
  """Real devices when there are several accelerators; otherwise forced host devices in a subprocess."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu" and jax.local_device_count() > 1:
    return {**scaling_in_process(ctx, list(counts)), "forced_host_devices": False}
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={FORCED_DEVICES}"])
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, "-m", "bench.scaling", "--devices", ",".join(map(str, counts)),
         "--reps", str(ctx.reps), "--warmup", str(ctx.warmup),
         "--workdir", os.path.join(ctx.workdir, "scaling"), "--data", ctx.source] + (["--quick"] if ctx.quick else [])
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"the scaling subprocess failed:\n{proc.stderr[-2000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  return {**result, "forced_host_devices": True,
          "note": f"{FORCED_DEVICES} forced host devices share the machine's {os.cpu_count()} cores"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--workdir", default=os.path.join(REPO_ROOT, "runs", "bench"))
  parser.add_argument("--data", default="")
  args = parser.parse_args()
  ctx = Context.create(args.quick, args.reps, args.warmup, args.workdir, args.data)
  result = scaling_in_process(ctx, [int(n) for n in args.devices.split(",")])
  print(json.dumps(result))


if __name__ == "__main__":
  main()
