"""Where a train step's time goes: XLA thunks from a jax.profiler trace, grouped; PyTorch ops likewise."""

import collections
import functools
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")
_OP = re.compile(r"= [^=]*?\b([a-z][\w\-]*)\(")


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """Instruction name -> {'op': opcode, 'op_name': source op path, 'inner': opcodes of a fusion}."""
  bodies: dict[str, set[str]] = {}
  current = None
  instrs = {}
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      bodies[current] = set()
      continue
    if current is None or " = " not in line:
      continue
    name = line.strip().removeprefix("ROOT ").split(" = ")[0].lstrip("%")
    op = _OP.search(line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    if op:
      bodies[current].add(op.group(1))
    instrs[name] = {"op": op.group(1) if op else "", "calls": calls.group(1) if calls else None,
                    "op_name": op_name.group(1) if op_name else ""}
  for info in instrs.values():
    info["inner"] = sorted(bodies.get(info.pop("calls") or "", set()))
  return instrs


def category(name: str, info: dict[str, Any] | None) -> str:
  """A coarse label for one XLA thunk of the train step."""
  if info is None:
    return "other (runtime)"
  ops = set(info["inner"]) | {info["op"]}
  path = info["op_name"]
  backward = "transpose(" in path
  if "dot" in ops or "convolution" in ops:
    return "conv matmuls, " + ("backward" if backward else "forward")
  if "reduce" in ops and "LayerNorm" in path:
    return "LayerNorm"
  if ops & {"concatenate", "pad", "slice", "copy"} and ("Conv1D" in path or "Upsample" in path):
    return "conv shift stacking (pad/slice/concat)"
  if "LayerNorm" in path:
    return "LayerNorm"
  if "reduce" in ops and "VAE" in path:
    return "reductions (bias gradients, loss sums)"
  if "tanh" in ops:
    return "GELU"
  if "VAE" not in path:
    return "optimizer, clipping, finite guard, metrics"
  if "_normal" in path or "threefry" in path:
    return "sampling (per-example keys)"
  return "other model elementwise (masks, bias, residual, loss)"


def jax_profile(config, batch: dict[str, np.ndarray], steps: int = 3) -> dict[str, Any]:
  """Per-category milliseconds per step of the jitted single-device train step, from its XLA thunks.

  Thunks of the two cores overlap, so their sum can exceed the step's wall time.
  """
  from vae_jax import train  # pylint: disable=g-import-not-at-top
  from vae_jax.models import build_model  # pylint: disable=g-import-not-at-top

  model = build_model(config)
  state = train.create_train_state(config, model, jax.random.key(0))
  jitted = jax.jit(functools.partial(train.train_step, model=model, config=config), donate_argnums=(0,))
  b, key = jax.tree.map(jax.device_put, batch), jax.random.key(1)
  compiled = jitted.lower(state, b, key).compile()
  instrs = parse_hlo(compiled.as_text())
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], b, key)
    jax.block_until_ready(metrics)

  run()
  d = tempfile.mkdtemp(prefix="jax-trace-")
  try:
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        run()
    wall_ms = (time.perf_counter() - t0) * 1000 / steps
    path = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  finally:
    shutil.rmtree(d, ignore_errors=True)
  per_cat: dict[str, float] = collections.Counter()
  per_thunk: dict[str, float] = collections.Counter()
  for e in events:
    name = e["name"]
    if name not in instrs:
      continue
    per_cat[category(name, instrs[name])] += e["dur"] / 1000 / steps
    per_thunk[name] += e["dur"] / 1000 / steps
  total = sum(per_cat.values())
  top = [{"thunk": n, "ms": round(ms, 2), "op_name": instrs[n]["op_name"][-90:]}
         for n, ms in per_thunk.most_common(12)]
  return {"ms_per_step": {k: round(v, 2) for k, v in per_cat.most_common()},
          "share": {k: round(v / total, 3) for k, v in per_cat.most_common()},
          "total_thunk_ms": round(total, 1), "wall_ms_per_step_traced": round(wall_ms, 1),
          "top_thunks": top, "load1": round(os.getloadavg()[0], 2)}


def torch_profile(run: Callable[[], Any], steps: int = 3) -> dict[str, Any]:
  """Self CPU milliseconds per step of PyTorch's top ops (profiler overhead included)."""
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=g-import-not-at-top

  run()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      run()
  rows = sorted(prof.key_averages(), key=lambda r: r.self_cpu_time_total, reverse=True)
  total = sum(r.self_cpu_time_total for r in rows) / 1000 / steps
  return {"self_cpu_ms_per_step": {r.key: round(r.self_cpu_time_total / 1000 / steps, 2) for r in rows[:12]},
          "total_self_cpu_ms": round(total, 1), "load1": round(os.getloadavg()[0], 2)}
