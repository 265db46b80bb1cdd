"""XLA CPU flags and the train step: each setting in its own process, settings alternated in rounds.

XLA reads XLA_FLAGS once, when the backend starts, so settings cannot share a
process; alternating them round by round keeps a changing machine load from
favouring one. Each child compiles the step, times it, and prints one JSON line.

  python -m bench.flags [--quick] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.common import REPO_ROOT, Context

# Candidates, with why each might matter on a small CPU.
CANDIDATES = {
    "(none)": "",
    # Runs independent thunks side by side instead of one after another.
    "concurrency-optimized scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    # Dots through Eigen instead of YNNPACK.
    "no YNNPACK dots": "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    # Elementwise fusions through YNNPACK too.
    "YNNPACK elementwise": "--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_ELTWISE",
    # oneDNN for dots on x86.
    "oneDNN": "--xla_cpu_use_onednn=true",
    # Faster but looser math (approximate transcendentals, no NaN/inf guarantees): not safe.
    "fast math (unsafe)": "--xla_cpu_enable_fast_math=true",
}


def child(ctx: Context, steps_per_rep: int) -> dict[str, Any]:
  """Times the default train step in this process (whatever XLA_FLAGS it was started with)."""
  import time  # pylint: disable=g-import-not-at-top

  from bench import timing  # pylint: disable=g-import-not-at-top
  from bench.train_bench import NUM_BATCHES, jax_step_runner  # pylint: disable=g-import-not-at-top

  run = jax_step_runner(ctx.config, ctx.train_batches(NUM_BATCHES))
  t0 = time.perf_counter()
  loss = run()
  compile_s = time.perf_counter() - t0
  t = timing.interleaved({"step": lambda: run(steps_per_rep)}, ctx.reps, ctx.warmup)["step"]
  return {**timing.per_unit(t, steps_per_rep), "first_call_s": compile_s, "first_loss": loss}


def compare(ctx: Context, rounds: int = 0, names: list[str] | None = None) -> dict[str, Any]:
  """Median step time under each flag setting; rounds alternate the order of the settings."""
  names = names or list(CANDIDATES)
  rounds = rounds or (1 if ctx.quick else 3)
  runs: dict[str, list[dict]] = {n: [] for n in names}
  base_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f]
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      env = dict(os.environ, XLA_FLAGS=" ".join(base_flags + [CANDIDATES[name]]).strip())
      cmd = [sys.executable, "-m", "bench.flags", "--child", "--reps", str(ctx.reps),
             "--warmup", str(ctx.warmup), "--workdir", os.path.join(ctx.workdir, "flags"),
             "--data", ctx.source] + (["--quick"] if ctx.quick else [])
      proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
      if proc.returncode != 0:
        runs[name].append({"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"})
        continue
      runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  out = {}
  for name, rs in runs.items():
    ok = [x for x in rs if "error" not in x]
    if not ok:
      out[name] = {"flags": CANDIDATES[name], "error": rs[0]["error"]}
      continue
    out[name] = {"flags": CANDIDATES[name], "step_s": statistics.median(x["median_s"] for x in ok),
                 "per_round_step_s": [x["median_s"] for x in ok],
                 "first_call_s": statistics.median(x["first_call_s"] for x in ok),
                 "load1": statistics.median(x["load1"] for x in ok)}
  base = out.get("(none)", {}).get("step_s")
  if base:
    for v in out.values():
      if "step_s" in v:
        v["relative_to_none"] = v["step_s"] / base
  return {"rounds": rounds, "results": out}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child", action="store_true", help="time the step once with the current XLA_FLAGS")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--rounds", type=int, default=0)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--workdir", default=os.path.join(REPO_ROOT, "runs", "bench", "work"))
  parser.add_argument("--data", default="")
  args = parser.parse_args()
  ctx = Context.create(args.quick, args.reps, args.warmup, args.workdir, args.data)
  if args.child:
    print(json.dumps(child(ctx, 2 if args.quick else 3)))
  else:
    print(json.dumps(compare(ctx, args.rounds), indent=1))


if __name__ == "__main__":
  main()
