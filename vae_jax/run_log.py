"""Scalars to JSON lines and TensorBoard, images and audio to TensorBoard, progress to the console."""

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np
import tqdm


def flatten_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Vector metrics become one scalar per index: `train/kl_per_channel/03`."""
  out = {}
  for k, v in metrics.items():
    a = np.asarray(v)
    if a.ndim == 0:
      out[k] = float(a)
    else:
      width = len(str(a.size - 1))
      out.update({f"{k}/{i:0{width}d}": float(x) for i, x in enumerate(a.ravel())})
  return out


def _ends_mid_line(path: str) -> bool:
  if os.path.getsize(path) == 0:
    return False
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


class RunLog:
  """Writes `metrics.jsonl` and TensorBoard events under a workdir; a no-op when disabled."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(path, "a")
      if _ends_mid_line(path):  # A killed run left half a row: start ours on a line of its own.
        self._jsonl.write("\n")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    flat = flatten_scalars(metrics)
    row = {"step": int(step), "time": time.time(), **{k: (v if math.isfinite(v) else str(v)) for k, v in flat.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for k, v in flat.items():
      self._tb.add_scalar(k, v, step)

  def figure(self, step: int, name: str, fig) -> None:
    if self.enabled:
      self._tb.add_figure(name, fig, step, close=False)

  def audio(self, step: int, name: str, wave: np.ndarray, sample_rate: int) -> None:
    if self.enabled:
      self._tb.add_audio(name, np.clip(wave, -1, 1), step, sample_rate=sample_rate)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """A tqdm bar on a terminal, plain periodic lines otherwise."""

  def __init__(self, total: int, initial: int, every: int, enabled: bool = True):
    self.interactive = enabled and sys.stderr.isatty()
    self.every = every
    self.total = total
    self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) \
        if self.interactive else None

  def update(self, step: int, loss: float, steps_per_sec: float) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    elif step % self.every == 0 or step == self.total:
      eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
      print(f"step {step}/{self.total}  loss {loss:.4f}  {steps_per_sec:.2f} steps/s  ETA {eta:.0f} s",
            flush=True)

  def write(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
