"""Peak resident memory of a training run, measured on a `train.py` subprocess."""

import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

import ml_collections

from bench.common import REPO_ROOT, Context, fsdd_config


def config_overrides(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> list[str]:
  """`--config.a.b=value` flags that turn `base` into `config`."""
  flags = []
  for section, fields in config.items():
    if not isinstance(fields, ml_collections.ConfigDict):
      if fields != base[section]:
        flags.append(f"--config.{section}={fields}")
      continue
    for name, value in fields.items():
      if value != base[section][name]:
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        flags.append(f"--config.{section}.{name}={shown}")
  return flags


def peak_rss(ctx: Context, steps: int = 0) -> dict[str, Any]:
  """ru_maxrss of `python train.py --config=configs/fsdd.py` for a few dozen steps (evaluation,
  reconstructions and the checkpoint at the last step included)."""
  steps = steps or (3 if ctx.quick else 50)
  workdir = ctx.temp_dir("rss-")
  ctx.dataset()  # Features are extracted here, not by the measured run.
  c = fsdd_config()
  overrides = config_overrides(ctx.config, c)
  extra = [f"--config.train.num_steps={steps}", "--config.train.progress_bar=False"]
  if ctx.quick:
    extra += ["--config.eval.max_utterances=8", "--config.eval.num_audio_examples=1"]
  cmd = [sys.executable, "train.py", "--config=configs/fsdd.py", f"--workdir={workdir}"] + overrides + extra
  t0 = time.perf_counter()
  try:
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    tail = out.decode(errors="replace")[-2000:]
    raise RuntimeError(f"the training run failed with status {proc.returncode}:\n{tail}")
  shown = ["python", "train.py", "--config=configs/fsdd.py", "--workdir=<tmp>"] + overrides + extra
  return {
      "command": shlex.join(shown).replace(ctx.data_path, "<data>").replace(ctx.cache_dir or "\0", "<cache>"),
      "steps": steps,
      # Linux reports ru_maxrss in KiB.
      "peak_rss_mib": usage.ru_maxrss / 1024,
      "wall_s": wall,
  }
