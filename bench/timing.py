"""Interleaved timing: the things compared share whatever load the machine has."""

import os
import statistics
import time
from typing import Any, Callable, Mapping


def load1() -> float:
  """One-minute load average (0 where the platform has none)."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return 0.0


def summary(seconds: list[float], loads: list[float], cpu: list[float]) -> dict[str, Any]:
  """Median, spread, the load seen while timing, and the process CPU time (all threads)."""
  return {
      "median_s": statistics.median(seconds),
      "median_cpu_s": statistics.median(cpu),
      "min_s": min(seconds),
      "max_s": max(seconds),
      "reps": len(seconds),
      "times_s": [round(s, 6) for s in seconds],
      "load1": round(statistics.median(loads), 2),
  }


def interleaved(fns: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1,
                inner: int = 1) -> dict[str, dict[str, Any]]:
  """Times each callable `reps` times, round-robin, after `warmup` untimed calls each.

  Each round runs the callables in turn and reverses the order on the next
  round (a b, b a, a b, ...), so neither side always follows the other. A rep
  is `inner` calls; its time is their mean. The callables must wait for their
  own results (block_until_ready, a float() of a loss, ...). CPU time (of all
  the process's threads) is kept too: on a loaded machine it moves less than
  wall time, though threads that spin while waiting count in it.
  """
  names = list(fns)
  for name in names:
    for _ in range(warmup):
      fns[name]()
  seconds = {n: [] for n in names}
  cpu = {n: [] for n in names}
  loads = {n: [] for n in names}
  for r in range(reps):
    for name in (names if r % 2 == 0 else names[::-1]):
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(inner):
        fns[name]()
      seconds[name].append((time.perf_counter() - t0) / inner)
      cpu[name].append((time.process_time() - c0) / inner)
      loads[name].append(load1())
  return {n: summary(seconds[n], loads[n], cpu[n]) for n in names}


def time_once(fn: Callable[[], Any]) -> float:
  """Wall seconds of one call."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def per_unit(s: dict[str, Any], units: int) -> dict[str, Any]:
  """A summary of reps of `units` things each, as time per thing."""
  out = dict(s)
  for k in ("median_s", "median_cpu_s", "min_s", "max_s"):
    out[k] = s[k] / units
  out["times_s"] = [round(t / units, 6) for t in s["times_s"]]
  out["units_per_rep"] = units
  return out
