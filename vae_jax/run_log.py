"""Scalars to JSON lines and TensorBoard, images and audio to TensorBoard, progress to the console."""

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np
import tqdm

from vae_jax import fileio

# Remote metrics.jsonl: seconds between uploads of the whole file (objects cannot be appended to).
REMOTE_FLUSH_S = 30.0


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


class _RemoteLines:
  """An append-only text object on remote storage, which cannot append: rewritten whole, at most every `every_s`.

  A run killed between uploads loses at most `every_s` of rows; a resumed run logs the steps
  after its checkpoint again anyway.
  """

  def __init__(self, path: str, every_s: float = REMOTE_FLUSH_S):
    self.path, self.every_s = path, every_s
    old = fileio.read_text(path) if fileio.exists(path) else ""
    self._chunks = [old + ("\n" if old and not old.endswith("\n") else "")]
    self._dirty, self._uploaded = False, -math.inf

  def write(self, text: str) -> None:
    self._chunks.append(text)
    self._dirty = True

  def flush(self, force: bool = False) -> None:
    if self._dirty and (force or time.monotonic() - self._uploaded >= self.every_s):
      self._chunks = ["".join(self._chunks)]
      fileio.write_text(self.path, self._chunks[0])
      self._dirty, self._uploaded = False, time.monotonic()

  def close(self) -> None:
    self.flush(force=True)


class RunLog:
  """Writes `metrics.jsonl` and TensorBoard events under a workdir; a no-op when disabled."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      fileio.makedirs(workdir)
      path = os.path.join(workdir, "metrics.jsonl")
      if fileio.is_remote(path):
        self._jsonl = _RemoteLines(path)
      else:
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
