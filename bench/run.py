"""Benchmarks of vae-jax on the FSDD config, side by side with a PyTorch twin where torch is installed.

  python -m bench.run                  # everything, full size (about 15 min on 2 CPU cores)
  python -m bench.run --quick          # a tiny model and a few files: a smoke run (about a minute)
  python -m bench.run --sections train,inference --reps 9

Writes <out>/results.json and <out>/results.md (a section for BENCHMARKS.md);
every figure records the command, the machine and the date. Run from the
repository root. PyTorch is optional (`pip install -e .[bench]`): without it
the PyTorch comparisons are skipped with a message.
"""

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

# Runnable as `python bench/run.py` as well as `python -m bench.run`.
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import machine, report  # noqa: E402
from bench.common import REPO_ROOT, Context, jsonable, torch_available  # noqa: E402

ALL_SECTIONS = ("train", "torch_compile", "variants", "conv", "xla_flags", "loop", "data",
                "front_end", "loader", "inference", "memory", "scaling", "profile")
# The quick run leaves out what takes minutes even at tiny sizes.
QUICK_SECTIONS = ("train", "loop", "data", "front_end", "loader", "inference", "memory", "profile")


def _train(ctx: Context, results: dict) -> dict:
  from bench import train_bench  # pylint: disable=g-import-not-at-top

  return train_bench.jax_vs_torch(ctx)


def _torch_threads(results: dict) -> int:
  """The PyTorch thread count that was fastest in the train section (0: PyTorch's default)."""
  fastest = results["sections"].get("train", {}).get("fastest_torch", "")
  return 1 if fastest.endswith("_1_thread") else 0


def _torch_compile(ctx: Context, results: dict) -> dict:
  from bench import train_bench  # pylint: disable=g-import-not-at-top

  return train_bench.torch_compiled(ctx, threads=_torch_threads(results))


def _variants(ctx: Context, results: dict) -> dict:
  from bench import train_bench  # pylint: disable=g-import-not-at-top

  return train_bench.variants(ctx)


def _conv(ctx: Context, results: dict) -> dict:
  from bench import conv_bench  # pylint: disable=g-import-not-at-top

  return conv_bench.per_shape(ctx)


def _xla_flags(ctx: Context, results: dict) -> dict:
  from bench import flags  # pylint: disable=g-import-not-at-top

  return flags.compare(ctx)


def _loop(ctx: Context, results: dict) -> dict:
  from bench import train_bench  # pylint: disable=g-import-not-at-top

  return train_bench.loop_vs_step(ctx)


def _data(ctx: Context, results: dict) -> dict:
  from bench import data_bench  # pylint: disable=g-import-not-at-top

  return data_bench.feature_pipeline(ctx)


def _front_end(ctx: Context, results: dict) -> dict:
  from bench import data_bench  # pylint: disable=g-import-not-at-top

  return data_bench.jax_front_end(ctx)


def _loader(ctx: Context, results: dict) -> dict:
  from bench import data_bench, train_bench  # pylint: disable=g-import-not-at-top

  train = results["sections"].get("train", {})
  if "results" in train:
    step_s = train["results"]["jax"]["step_s"]
  else:
    run = train_bench.jax_step_runner(ctx.config, ctx.train_batches(train_bench.NUM_BATCHES))
    step_s = train_bench.time_steps(ctx, {"jax": run})["jax"]["median_s"]
  return data_bench.loader_vs_step(ctx, step_s)


def _inference(ctx: Context, results: dict) -> dict:
  from bench import inference_bench  # pylint: disable=g-import-not-at-top

  return inference_bench.real_time_factors(ctx)


def _memory(ctx: Context, results: dict) -> dict:
  from bench import memory_bench  # pylint: disable=g-import-not-at-top

  return memory_bench.peak_rss(ctx)


def _scaling(ctx: Context, results: dict) -> dict:
  from bench import scaling  # pylint: disable=g-import-not-at-top

  return scaling.scaling(ctx)


def _profile(ctx: Context, results: dict) -> dict:
  from bench import profile, train_bench  # pylint: disable=g-import-not-at-top

  batches = ctx.train_batches(1)
  # Eigen's convolutions (conv_impl=lax) run asynchronously to the thunks that start them, so
  # their time cannot be attributed; the stacked-matmul step's YNNPACK dots are synchronous.
  config = train_bench.with_overrides(ctx.config, model__conv_impl="matmul")
  out = {"jax": {**profile.jax_profile(config, batches[0]), "conv_impl": "matmul"}}
  if torch_available():
    threads = _torch_threads(results)
    out["torch"] = profile.torch_profile(train_bench.torch_step_runner(ctx.config, batches, threads=threads))
    out["torch"]["threads"] = threads or "default"
  return out


RUNNERS: dict[str, Callable[[Context, dict], dict]] = {
    "train": _train, "torch_compile": _torch_compile, "variants": _variants,
    "conv": _conv, "xla_flags": _xla_flags, "loop": _loop,
    "data": _data, "front_end": _front_end, "loader": _loader, "inference": _inference,
    "memory": _memory, "scaling": _scaling, "profile": _profile,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny model, a few files, few repetitions")
  parser.add_argument("--sections", default="",
                      help=f"comma-separated subset of {','.join(ALL_SECTIONS)} (default: all; "
                      f"--quick: {','.join(QUICK_SECTIONS)})")
  parser.add_argument("--reps", type=int, default=0, help="timed repetitions (default 7, quick 3)")
  parser.add_argument("--warmup", type=int, default=0, help="untimed calls first (default 2, quick 1)")
  parser.add_argument("--out", default="", help="output directory (default runs/bench or runs/bench-quick)")
  parser.add_argument("--data", default="", help="FSDD recordings folder (default: configs/default.py's)")
  args = parser.parse_args(argv)
  sections = [s for s in args.sections.split(",") if s] or list(QUICK_SECTIONS if args.quick else ALL_SECTIONS)
  unknown = sorted(set(sections) - set(ALL_SECTIONS))
  if unknown:
    parser.error(f"unknown sections {unknown}: choose from {', '.join(ALL_SECTIONS)}")
  args.sections = sections
  args.reps = args.reps or (3 if args.quick else 7)
  args.warmup = args.warmup or (1 if args.quick else 2)
  args.out = args.out or os.path.join(REPO_ROOT, "runs", "bench-quick" if args.quick else "bench")
  return args


def run(argv: list[str]) -> dict[str, Any]:
  """Runs the chosen sections and writes results.json and results.md after each one."""
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  ctx = Context.create(args.quick, args.reps, args.warmup, os.path.join(args.out, "work"), args.data)
  results: dict[str, Any] = {"machine": machine.describe(machine.command_line(argv)),
                             "quick": args.quick, "reps": args.reps, "warmup": args.warmup,
                             "data": "FSDD" if ctx.data_is_fsdd else "stand-in audio (FSDD not found)",
                             "sections": {}}
  for name in args.sections:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
      section = RUNNERS[name](ctx, results)
    except Exception as e:  # One failing section should not lose the others' figures.
      traceback.print_exc()
      section = {"error": f"{type(e).__name__}: {e}"}
    section["section_s"] = round(time.perf_counter() - t0, 1)
    results["sections"][name] = section
    _write(args.out, results)
    print(f"[bench] {name} done in {section['section_s']:.0f} s", file=sys.stderr, flush=True)
  return results


def _write(out: str, results: dict[str, Any]) -> None:
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(jsonable(results), f, indent=1)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(report.markdown(results))


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  results = run(argv)
  args = parse_args(argv)
  print(report.markdown(results))
  print(f"[bench] wrote {os.path.join(args.out, 'results.json')} and results.md", file=sys.stderr)
  failed = [k for k, v in results["sections"].items() if "error" in v]
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
