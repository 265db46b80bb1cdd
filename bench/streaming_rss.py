"""Peak RSS of training from a streaming split as the corpus grows, against the alternatives.

  python -m bench.streaming_rss           # 1x, 2x, 5x, 10x of a 40 MiB corpus (about 2 min)
  python -m bench.streaming_rss --tiny    # a few seconds; what the test suite runs

Run from the repository root. For each size the corpus is written straight in
the feature cache's format (empty placeholder audio files and random float32
shards, so nothing is extracted); then, in a fresh process per size and mode,
`load_dataset` (which fits the normaliser over the whole train split) and a run
of training batches with prefetch, reporting `ru_maxrss`. Modes: `streaming`
(data.max_memory_mb=1, shards read with positional reads), `in memory` (the
whole split loaded) and `memory-mapped` (the same reads served from
`np.load(mmap_mode="r")` slices, the alternative the shard reader avoids).
Everything written is removed afterwards.

Linux carries `ru_maxrss` over fork and exec, so a child reports at least its
parent's peak: this driver imports nothing heavy and writes the corpora from a
child process too, and each child also reports its own high-water mark (VmHWM).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("streaming", "in memory", "memory-mapped")
FULL = dict(base_mb=40.0, factors=(1, 2, 5, 10), batches=200, batch_size=32, frames=(200, 1800),
            files_per_shard=64)
TINY = dict(base_mb=2.5, factors=(1, 2), batches=5, batch_size=8, frames=(50, 150),
            files_per_shard=8)


def _config(audio_dir: str, cache_dir: str, mode: str):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data.corpus, c.data.path, c.data.cache_dir = "folder", audio_dir, cache_dir
  c.data.num_workers = 1
  c.data.max_memory_mb = 10**6 if mode == "in memory" else 1
  return c


def write_corpus(root: str, size_mb: float, frames: tuple[int, int], files_per_shard: int,
                 seed: int) -> dict:
  """Placeholder audio files and random feature shards that `load_dataset` takes as extracted."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from vae_jax.audio.features import FeatureConfig  # pylint: disable=g-import-not-at-top
  from vae_jax.data import store  # pylint: disable=g-import-not-at-top
  from vae_jax.data.corpora import build_corpus  # pylint: disable=g-import-not-at-top

  audio_dir, cache_dir = os.path.join(root, "audio"), os.path.join(root, "cache")
  os.makedirs(audio_dir)
  c = _config(audio_dir, cache_dir, "streaming")
  # The default features need no validation here (it loads scipy.signal, seconds per process).
  fc = FeatureConfig(**{f.name: c.features[f.name] for f in dataclasses.fields(FeatureConfig)})
  row_bytes = fc.n_mels * 4
  rng = np.random.default_rng(seed)
  lengths = []
  while sum(lengths) * row_bytes < size_mb * 2**20:
    lengths.append(int(rng.integers(*frames)))
  for i in range(len(lengths)):
    open(os.path.join(audio_dir, f"u{i:07d}.wav"), "wb").close()
  store.FILES_PER_SHARD = files_per_shard
  corpus = build_corpus(c)
  cache = os.path.join(cache_dir, "features", f"{corpus.name}-{store.cache_key(corpus.entries, fc)}")
  os.makedirs(cache)
  by_name = dict(zip((f"u{i:07d}" for i in range(len(lengths))), lengths))
  entries = list(corpus.entries)
  for s, first in enumerate(range(0, len(entries), files_per_shard)):
    chunk = entries[first:first + files_per_shard]
    n = [by_name[e.name] for e in chunk]
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    arr = (rng.standard_normal((sum(n), fc.n_mels), np.float32) * 2.0 - 5.0).astype(np.float32)
    meta = {"kept": [[e.name, int(a), k] for e, a, k in zip(chunk, starts, n)], "skipped": []}
    store._atomic_save(cache, s, arr, meta)  # pylint: disable=protected-access
  return {"audio": audio_dir, "cache": cache_dir, "utterances": len(lengths),
          "shards": -(-len(entries) // files_per_shard),
          "mib": sum(lengths) * row_bytes / 2**20}


def _memory_mapped(rows):
  """The same shard rows, served from memory maps instead of positional reads."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vae_jax.data import stream  # pylint: disable=g-import-not-at-top

  class MappedRows(stream.ShardRows):

    def __init__(self):
      super().__init__(rows.files, rows.shard, rows.start, rows.lengths, rows.num_mels)
      self.maps = [np.load(f.path, mmap_mode="r") for f in rows.files]

    def read(self, i, start, stop):
      base = int(self.start[i])
      return np.array(self.maps[self.shard[i]][base + start:base + stop])

    def read_span(self, first, stop):
      if first == stop:
        return np.zeros((0, self.num_mels), np.float32)
      return np.concatenate([self.read(i, 0, int(self.lengths[i])) for i in range(first, stop)])

  return MappedRows()


def _peak_rss_mib() -> dict:
  with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
  return {"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "vmhwm_mib": hwm / 1024}


def child(args) -> None:
  """One job of a fresh process: write a corpus or measure one mode; prints a JSON line."""
  if args.child == "write":
    out = write_corpus(args.data, args.size_mb, tuple(args.frames), args.files_per_shard, args.seed)
  elif args.child == "imports":
    out = _imports_only()
  else:
    out = _train_batches(args)
  print(json.dumps(out))


def _imports_only() -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vae_jax.audio.features import FeatureConfig  # pylint: disable=g-import-not-at-top

  # Validating the feature config loads scipy.signal, which every real run does too.
  FeatureConfig.from_config(_config("", "", "streaming").features)
  return {**_peak_rss_mib(), "numpy": np.__version__}


def _train_batches(args) -> dict:
  """load_dataset (and the normaliser fit), then `args.batches` training batches."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vae_jax.audio.features import Normalizer  # pylint: disable=g-import-not-at-top
  from vae_jax.data import store  # pylint: disable=g-import-not-at-top
  from vae_jax.data.loader import TrainLoader  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  store.FILES_PER_SHARD = args.files_per_shard
  config = _config(args.data, args.cache, args.child)
  if args.child == "memory-mapped":
    data = store.load_dataset(config, Normalizer(np.zeros(1), np.ones(1)))  # Fitted below.
    train = store.Split(data.train.names, data.train.paths, data.train.labels,
                        rows=_memory_mapped(data.train._rows))  # pylint: disable=protected-access
    normalizer = store.fit_normalizer(train)
  else:
    data = store.load_dataset(config)
    train, normalizer = data.train, data.normalizer
  if train.streaming != (args.child != "in memory"):
    raise SystemExit(f"the {args.child} run's train split has streaming={train.streaming}")
  t1 = time.perf_counter()
  loader = TrainLoader(train, normalizer, global_batch=args.batch_size, num_local_devices=1,
                       segment_frames=config.data.segment_frames, seed=0, prefetch=4)
  for _ in range(args.batches):
    next(loader)
  loader.close()
  return {**_peak_rss_mib(), "load_s": t1 - t0, "batches_s": time.perf_counter() - t1}


def _run_child(mode: str, p: dict, *extra: str) -> dict:
  cmd = [sys.executable, "-m", "bench.streaming_rss", "--child", mode,
         "--batches", str(p["batches"]), "--batch-size", str(p["batch_size"]),
         "--files-per-shard", str(p["files_per_shard"]), *extra]
  done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return platform.processor() or "unknown CPU"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny sizes and few batches (seconds)")
  parser.add_argument("--workdir", default="", help="where corpora are written (a temporary directory)")
  parser.add_argument("--child", choices=MODES + ("imports", "write"), help=argparse.SUPPRESS)
  parser.add_argument("--data", help=argparse.SUPPRESS)
  parser.add_argument("--cache", help=argparse.SUPPRESS)
  parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--files-per-shard", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--size-mb", type=float, help=argparse.SUPPRESS)
  parser.add_argument("--frames", type=int, nargs=2, help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  p = TINY if args.tiny else FULL
  work = tempfile.mkdtemp(prefix="streaming-rss-", dir=args.workdir or None)
  rows = []
  try:
    baseline = _run_child("imports", p)
    for factor in p["factors"]:
      root = os.path.join(work, f"x{factor}")
      corpus = _run_child("write", p, "--data", root, "--size-mb", str(p["base_mb"] * factor),
                          "--frames", *map(str, p["frames"]), "--seed", str(factor))
      data = ["--data", corpus["audio"], "--cache", corpus["cache"]]
      rows.append((factor, corpus, {m: _run_child(m, p, *data) for m in MODES}))
      shutil.rmtree(root)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  _print_table(args, p, baseline, rows)


def _print_table(args, p: dict, baseline: dict, rows: list) -> None:
  command = "python -m bench.streaming_rss" + (" --tiny" if args.tiny else "")
  print("### Peak RSS: streaming vs in-memory vs memory-mapped features\n")
  print(f"- Command: `{command}`")
  print(f"- Machine: {_cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"numpy {baseline['numpy']}, {platform.system()} {platform.release()}")
  print(f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
  print(f"- Per process: `load_dataset` (normaliser fitted over the train split), then "
        f"{p['batches']} training batches of {p['batch_size']} crops of 64 frames x 64 mels "
        f"with prefetch 4; peak RSS is `ru_maxrss` of a fresh process")
  print(f"- Baseline (the same imports, no data): {baseline['maxrss_mib']:.0f} MiB")
  worst = max(abs(r[m]["maxrss_mib"] - r[m]["vmhwm_mib"]) for _, _, r in rows for m in MODES)
  print(f"- ru_maxrss and VmHWM agree within {worst:.1f} MiB in every run\n")
  header = ["size", "utterances", "shards", "features (MiB)"] + [f"{m} peak RSS (MiB)" for m in MODES]
  header += ["streaming load + fit (s)", "streaming batches/s"]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for factor, corpus, r in rows:
    s = r["streaming"]
    cells = [f"{factor}x", str(corpus["utterances"]), str(corpus["shards"]), f"{corpus['mib']:.0f}"]
    cells += [f"{r[m]['maxrss_mib']:.0f}" for m in MODES]
    cells += [f"{s['load_s']:.1f}", f"{p['batches'] / max(s['batches_s'], 1e-9):.0f}"]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
