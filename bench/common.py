"""What every benchmark section shares: the config, the data and the repetition counts."""

import dataclasses
import functools
import os
import shutil
import tempfile
from typing import Any

import ml_collections
import numpy as np

from configs import default, fsdd
from vae_jax.data.corpora import FSDD_PATTERN
from vae_jax.data.loader import TrainLoader
from vae_jax.data.store import Dataset, load_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Quick runs: FSDD files (digits 0-9, a few indices each, test indices 0-4 included).
QUICK_FILES = 60


def fsdd_config() -> ml_collections.ConfigDict:
  """The FSDD config: the model and shapes every full-size figure is about."""
  return fsdd.get_config()


def quick_config() -> ml_collections.ConfigDict:
  """FSDD features with a tiny model and batch, for smoke runs and tests."""
  c = fsdd.get_config()
  c.model.channels = 32
  c.model.latent_channels = 4
  c.data.segment_frames = 32
  c.train.batch_size = 8
  c.eval.batch_size = 8
  return c


def fsdd_files(path: str) -> list[str]:
  """The FSDD recordings in `path`, sorted by name (empty when the folder is missing)."""
  if not os.path.isdir(path):
    return []
  return sorted(f for f in os.listdir(path) if FSDD_PATTERN.match(f))


def write_stand_in_corpus(dest: str, n: int, sample_rate: int = 8000, seed: int = 0) -> None:
  """FSDD-named noisy harmonic tones, for machines without FSDD (the figures then say so)."""
  import soundfile  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  for i in range(n):
    digit, index = i % 10, i // 10
    t = np.arange(int(sample_rate * rng.uniform(0.3, 0.8))) / sample_rate
    f0 = rng.uniform(90, 220)
    wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))
    wave = 0.1 * wave * np.hanning(len(t)) + 0.003 * rng.standard_normal(len(t))
    soundfile.write(os.path.join(dest, f"{digit}_standin_{index}.wav"), wave.astype(np.float32),
                    sample_rate)


@dataclasses.dataclass
class Context:
  """Settings of one harness run, and the data it loads once and shares between sections."""

  config: ml_collections.ConfigDict
  quick: bool
  reps: int
  warmup: int
  workdir: str
  source: str  # The audio folder asked for; data_path may be a subset of it.
  data_path: str
  data_is_fsdd: bool
  cache_dir: str
  _dataset: Dataset | None = None

  @classmethod
  def create(cls, quick: bool, reps: int, warmup: int, workdir: str,
             data_path: str = "") -> "Context":
    """A run on FSDD (all of it, or a few files when quick); stand-in audio where FSDD is missing."""
    config = quick_config() if quick else fsdd_config()
    asked = source = data_path or default.fsdd_default_path()
    files = fsdd_files(source)
    os.makedirs(workdir, exist_ok=True)
    is_fsdd = bool(files)
    if quick or not files:
      # A small corpus of its own: symlinks to a few FSDD files, or stand-in audio.
      subset = os.path.join(workdir, "audio")
      shutil.rmtree(subset, ignore_errors=True)
      os.makedirs(subset)
      if files:
        for f in _spread(files, QUICK_FILES):
          os.symlink(os.path.abspath(os.path.join(source, f)), os.path.join(subset, f))
      else:
        write_stand_in_corpus(subset, QUICK_FILES if quick else 600, config.features.sample_rate)
      source = subset
    config.data.path = source
    # Quick runs keep their features to themselves; full runs share the usual cache.
    cache_dir = os.path.join(workdir, "cache") if quick else config.data.cache_dir
    config.data.cache_dir = cache_dir
    return cls(config, quick, reps, warmup, workdir, asked, source, is_fsdd, cache_dir)

  def dataset(self) -> Dataset:
    """The corpus's features (extracted on first use, cached afterwards) and normaliser."""
    if self._dataset is None:
      self._dataset = load_dataset(self.config)
    return self._dataset

  def train_batches(self, n: int, num_devices: int = 1) -> list[dict[str, np.ndarray]]:
    """The first `n` training batches of the real loader (flat [B, ...]; checked to divide over `num_devices`)."""
    data, c = self.dataset(), self.config
    loader = TrainLoader(data.train, data.normalizer, global_batch=c.train.batch_size,
                         num_local_devices=num_devices, segment_frames=c.data.segment_frames,
                         seed=c.seed, prefetch=0)
    return [next(loader) for _ in range(n)]

  def temp_dir(self, prefix: str) -> str:
    """A fresh directory under the run's workdir."""
    return tempfile.mkdtemp(prefix=prefix, dir=self.workdir)

  @property
  def frames_per_second(self) -> float:
    return self.config.features.sample_rate / self.config.features.hop_length


def _spread(files: list[str], n: int) -> list[str]:
  """About n files of every digit and speaker, half of them test (index 0-4), half train."""
  groups: dict[tuple[str, str], list[str]] = {}
  for f in files:
    digit, speaker, index = FSDD_PATTERN.match(f).groups()
    if int(index) < 10:
      groups.setdefault((digit, speaker), []).append(f)
  # Successive (digit, speaker) groups give successive indices 0, 1, ..., 9, 0, ...
  picked = [g[j % len(g)] for j, g in enumerate(groups[k] for k in sorted(groups))]
  return sorted(picked[:n])


@functools.lru_cache(maxsize=None)
def torch_available() -> bool:
  """Whether the optional PyTorch extra is installed (it is never needed outside bench/)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def jsonable(x: Any) -> Any:
  """numpy scalars and arrays as plain JSON values."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x
