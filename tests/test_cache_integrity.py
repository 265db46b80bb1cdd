"""The feature cache is verified when opened: damaged shards are rebuilt or refused, never trained on."""

import json
import logging
import os
import pathlib
import shutil
import threading
import time

import numpy as np
import pytest

from vae_jax import fileio
from vae_jax.audio.features import FeatureConfig
from vae_jax.config import load_config
from vae_jax.data import store, stream
from vae_jax.data.corpora import build_corpus
from vae_jax.data.store import extract_features, load_dataset
from vae_jax.errors import DataError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO_ROOT / "configs" / "smoke.py")
UTTERANCES_PER_SPEAKER = 60  # 180 utterances: about 1.6 MiB of train features, 0.2 MiB of test.
FILES_PER_SHARD = 40  # Shards 0-3 of 40 files, shard 4 of 20.
DAMAGED = 1  # The shard the tests damage; process 1 of 2 extracts it.
# max_memory_mb=1 streams the train split (the test split stays in memory).
MODES = {"in memory": 2048, "streaming": 1}


def smoke_config(cache: pathlib.Path, max_memory_mb: int = 2048):
  return load_config(SMOKE, {"data.cache_dir": str(cache), "data.num_workers": 1,
                             "synthetic.utterances_per_speaker": UTTERANCES_PER_SPEAKER,
                             "data.max_memory_mb": max_memory_mb})


@pytest.fixture(scope="module")
def synthetic_audio(tmp_path_factory) -> pathlib.Path:
  """The smoke synthetic corpus's audio, generated once for the module."""
  root = tmp_path_factory.mktemp("corpus")
  build_corpus(smoke_config(root))
  return root / "synthetic"


@pytest.fixture
def cache(synthetic_audio, tmp_path, monkeypatch) -> pathlib.Path:
  """A cache directory of its own for each test, holding a copy of the audio and no features."""
  monkeypatch.setattr(store, "FILES_PER_SHARD", FILES_PER_SHARD)
  shutil.copytree(synthetic_audio, tmp_path / "cache" / "synthetic")
  return tmp_path / "cache"


@pytest.fixture
def extracted(monkeypatch) -> list[tuple[str, str]]:
  """(thread name, file name) of every file the (serial) extractor reads."""
  seen, real = [], store._extract_one

  def spy(args):
    seen.append((threading.current_thread().name, os.path.basename(args[0])))
    return real(args)

  monkeypatch.setattr(store, "_extract_one", spy)
  return seen


def feature_dir(cache: pathlib.Path) -> pathlib.Path:
  (d,) = (cache / "features").iterdir()
  return d


def shard_files(config, shard: int) -> list[str]:
  entries = build_corpus(config).entries[shard * FILES_PER_SHARD:(shard + 1) * FILES_PER_SHARD]
  return sorted(os.path.basename(e.path) for e in entries)


def warnings_about(caplog, fragment: str) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.name == "vae_jax" and r.levelno == logging.WARNING and fragment in r.getMessage()]


def assert_same_features(a: store.Dataset, b: store.Dataset) -> None:
  """Bit for bit: every utterance of both splits, and the normaliser."""
  for x, y in ((a.train, b.train), (a.test, b.test)):
    assert x.names == y.names and x.streaming == y.streaming
    np.testing.assert_array_equal(x.lengths, y.lengths)
    for i in range(len(x)):
      np.testing.assert_array_equal(x.utterance(i), y.utterance(i))
  np.testing.assert_array_equal(a.normalizer.mean, b.normalizer.mean)
  np.testing.assert_array_equal(a.normalizer.std, b.normalizer.std)


# Ways of damaging shard DAMAGED: each writes into the files and returns what the warning says.


def _over_rows(path: pathlib.Path, values: np.ndarray) -> None:
  """Writes float32 values over the shard's data from row 10 on (the file keeps its size)."""
  shard = stream.ShardFile.open(str(path))
  with open(path, "r+b") as f:
    f.seek(shard.data_offset + 10 * shard.row_bytes)
    f.write(np.ascontiguousarray(values, "<f4").tobytes())


def finite_garbage(d: pathlib.Path) -> str:
  _over_rows(d / f"shard-{DAMAGED:05d}.npy", np.random.default_rng(0).uniform(-12, 2, (3, 32)))
  return f"shard-{DAMAGED:05d}.npy differs from its recorded sha256"


def non_finite_bytes(d: pathlib.Path) -> str:
  # Random bits with an all-ones exponent: every value is NaN or infinite.
  bits = np.random.default_rng(1).integers(0, 2**32, 3 * 32, dtype=np.uint32) | 0x7F800000
  _over_rows(d / f"shard-{DAMAGED:05d}.npy", bits.view(np.float32))
  return f"shard-{DAMAGED:05d}.npy differs from its recorded sha256"


def truncated(d: pathlib.Path) -> str:
  path = d / f"shard-{DAMAGED:05d}.npy"
  os.truncate(path, path.stat().st_size // 2)
  return f"shard-{DAMAGED:05d}.npy has {path.stat().st_size} bytes instead of"


def random_index_bytes(d: pathlib.Path) -> str:
  with open(d / f"shard-{DAMAGED:05d}.json", "r+b") as f:
    f.seek(100)
    f.write(np.random.default_rng(2).bytes(64))
  return f"shard-{DAMAGED:05d}.json is not UTF-8 text"


def edited_index(d: pathlib.Path) -> str:
  path = d / f"shard-{DAMAGED:05d}.json"
  meta = json.loads(path.read_text())
  meta["kept"][3][1] += 1  # Valid JSON that points one frame off.
  path.write_text(json.dumps(meta))
  return f"shard-{DAMAGED:05d}.json differs from its recorded sha256"


def index_without_record(d: pathlib.Path) -> str:
  path = d / f"shard-{DAMAGED:05d}.json"
  meta = json.loads(path.read_text())
  path.write_text(json.dumps({"kept": meta["kept"], "skipped": meta["skipped"]}))  # Format 2.
  return f"shard-{DAMAGED:05d}.json has no integrity record"


DAMAGE = [finite_garbage, non_finite_bytes, truncated, random_index_bytes, edited_index,
          index_without_record]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_shard_is_rebuilt_bit_for_bit(cache, extracted, caplog, damage, mode):
  config = smoke_config(cache, MODES[mode])
  clean = load_dataset(config)
  d = feature_dir(cache)
  before = {p.name: p.read_bytes() for p in d.iterdir()}
  fragment = damage(d)
  assert {p.name: p.read_bytes() for p in d.iterdir()} != before
  extracted.clear()
  caplog.set_level(logging.WARNING, logger="vae_jax")
  rebuilt = load_dataset(config)
  warned = warnings_about(caplog, "damaged feature cache")
  assert len(warned) == 1 and fragment in warned[0] and "rebuilding it" in warned[0], warned
  assert sorted(f for _, f in extracted) == shard_files(config, DAMAGED)  # That shard only.
  assert {p.name: p.read_bytes() for p in d.iterdir()} == before
  assert rebuilt.train.streaming == (mode == "streaming")
  assert_same_features(rebuilt, clean)
  assert np.isfinite(rebuilt.normalizer.mean).all() and np.isfinite(rebuilt.normalizer.std).all()
  caplog.clear()
  extracted.clear()
  assert_same_features(load_dataset(config), clean)  # Intact now: nothing to say or redo.
  assert extracted == [] and warnings_about(caplog, "damaged") == []


def test_damaged_shard_whose_audio_vanished_is_refused(cache, monkeypatch):
  config = smoke_config(cache)
  load_dataset(config)
  d = feature_dir(cache)
  finite_garbage(d)
  damaged = (d / f"shard-{DAMAGED:05d}.npy").read_bytes()
  gone = build_corpus(config).entries[DAMAGED * FILES_PER_SHARD + 3].path
  real_key = store.cache_key

  def key_then_vanish(*args, **kwargs):  # The audio goes after the corpus was listed and keyed.
    key = real_key(*args, **kwargs)
    if os.path.exists(gone):
      os.remove(gone)
    return key

  monkeypatch.setattr(store, "cache_key", key_then_vanish)
  with pytest.raises(DataError) as e:
    load_dataset(config)
  message = str(e.value)
  assert "\n" not in message
  for fragment in (f"shard-{DAMAGED:05d}.npy differs from its recorded sha256", "cannot be rebuilt",
                   os.path.basename(gone)):
    assert fragment in message, message
  assert (d / f"shard-{DAMAGED:05d}.npy").read_bytes() == damaged  # Left as found.


def test_stale_temporaries_are_removed_and_a_live_writers_kept(cache):
  config = smoke_config(cache)
  clean = load_dataset(config)
  d = feature_dir(cache)
  stale = d / "tmpkilled.tmp"  # What fileio.atomic_write leaves behind when killed.
  stale.write_bytes(b"half a shard")
  old = time.time() - 2 * store.STALE_TMP_S
  os.utime(stale, (old, old))
  started, release = threading.Event(), threading.Event()

  def slow_write(f):
    f.write(b"first half, ")
    f.flush()
    started.set()
    assert release.wait(30)
    f.write(b"second half")

  writer = threading.Thread(target=fileio.atomic_write, args=(str(d / "moments-live.npz"), slow_write))
  writer.start()
  try:
    assert started.wait(30)
    (live,) = [p for p in d.glob("*.tmp") if p != stale]
    assert_same_features(load_dataset(config), clean)
    assert not stale.exists() and live.exists()
  finally:
    release.set()
    writer.join(30)
  assert (d / "moments-live.npz").read_bytes() == b"first half, second half"
  assert list(d.glob("*.tmp")) == []


def test_only_the_owner_rebuilds_a_shard_of_a_multi_process_run(cache, extracted, caplog):
  config = smoke_config(cache)
  clean = load_dataset(config)
  d = feature_dir(cache)
  finite_garbage(d)
  damaged_bytes = (d / f"shard-{DAMAGED:05d}.npy").read_bytes()
  extracted.clear()
  caplog.set_level(logging.WARNING, logger="vae_jax")
  corpus, fc = build_corpus(config), FeatureConfig.from_config(config.features)
  # Process 0 finds process 1's shard damaged: it says so and leaves it to process 1.
  assert extract_features(corpus, fc, str(cache), 1, process_index=0, process_count=2,
                          wait=False) is None
  (waiting,) = warnings_about(caplog, "damaged feature cache")
  assert f"shard-{DAMAGED:05d}.npy" in waiting and "waiting for process 1" in waiting
  assert extracted == [] and (d / f"shard-{DAMAGED:05d}.npy").read_bytes() == damaged_bytes
  results = {}

  def run(p):
    results[p] = load_dataset(config, process_index=p, process_count=2)

  threads = [threading.Thread(target=run, args=(p,), name=f"p{p}") for p in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert sorted(results) == [0, 1]
  assert sorted(f for _, f in extracted) == shard_files(config, DAMAGED)
  assert {name for name, _ in extracted} == {"p1"}
  for data in results.values():
    assert_same_features(data, clean)
  assert len(warnings_about(caplog, "rebuilding it from the audio")) == 1


def _nan_behind_a_valid_record(d: pathlib.Path, train_names: list[str]) -> str:
  """What only a bug could write: a NaN in a train utterance, under a record that matches it."""
  meta = json.loads((d / f"shard-{DAMAGED:05d}.json").read_text())
  name, start, _ = next(k for k in meta["kept"] if k[0] in train_names)
  arr = np.load(d / f"shard-{DAMAGED:05d}.npy")
  arr[start + 2, 5] = np.nan
  store._atomic_save(str(d), DAMAGED, arr, {"kept": meta["kept"], "skipped": meta["skipped"]})
  return name


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_features_behind_a_valid_record_are_refused(cache, extracted, mode):
  config = smoke_config(cache, MODES[mode])
  clean = load_dataset(config)
  name = _nan_behind_a_valid_record(feature_dir(cache), clean.train.names)
  extracted.clear()
  with pytest.raises(DataError) as e:
    load_dataset(config)  # In memory: reading the split; streaming: the normaliser's pass.
  message = str(e.value)
  assert "\n" not in message, message
  assert f"shard-{DAMAGED:05d}.npy holds non-finite features" in message, message
  assert extracted == []  # It matches its record: nothing to rebuild.
  if mode == "streaming":  # The crops of training batches are checked too.
    train = load_dataset(config, clean.normalizer).train
    assert train.streaming
    train.crop(train.names.index(name), 3, 8)  # Past the NaN.
    with pytest.raises(DataError, match=f"shard-{DAMAGED:05d}.npy holds non-finite"):
      train.crop(train.names.index(name), 0, 8)
