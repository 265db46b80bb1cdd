"""Splits streamed from the feature shards: the batches, states and normaliser of the in-memory path."""

import logging
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from vae_jax.audio.features import FeatureConfig, Normalizer
from vae_jax.config import load_config
from vae_jax.data import store, stream
from vae_jax.data.corpora import build_corpus, hash_split
from vae_jax.data.loader import LoaderState, TrainLoader, eval_batches
from vae_jax.data.store import extract_features, fit_normalizer, load_dataset
from vae_jax.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.py")
SR = 8000
T = 32  # configs/smoke.py's segment frames.
FILES_PER_SHARD = 5
# Smoke features are 32 mels x 4 bytes at 125 frames/s: about 2.3 MiB of train and 1.4 MiB
# of test features, so max_memory_mb=1 streams both splits and 2 streams the train split only.
TRAIN_SECONDS = [0.15, 5.0, 6.0, 7.0, 8.0, 9.0, 0.2] + [5.0 + 0.25 * (j % 17) for j in range(17)]
TEST_SECONDS = [3.5 + 0.1 * j for j in range(20)]


def names_in(split: str, k: int, fraction: float, prefix: str) -> list[str]:
  out, i = [], 0
  while len(out) < k:
    if hash_split(f"{prefix}{i}.wav", fraction) == split:
      out.append(f"{prefix}{i}.wav")
    i += 1
  return out


def write_folder(root: pathlib.Path, seconds: list[float], names: list[str]) -> None:
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(names))
  for j, (name, s) in enumerate(zip(names, seconds)):
    t = np.arange(int(s * SR)) / SR
    wave = np.sin(2 * np.pi * (150 + 40 * j + 300 * t) * t) + 0.2 * rng.standard_normal(len(t))
    sf.write(root / name, (0.3 * wave / np.abs(wave).max()).astype(np.float32), SR)


def config(data_dir, cache_dir, max_memory_mb: int = 2048):
  return load_config(SMOKE, {"data.corpus": "folder", "data.path": str(data_dir),
                             "data.cache_dir": str(cache_dir), "data.num_workers": 1,
                             "data.test_fraction": 0.5, "data.max_memory_mb": max_memory_mb})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """One corpus in several shards, loaded in memory, streaming, and train-only streaming."""
  tmp = tmp_path_factory.mktemp("streaming")
  data_dir, cache = tmp / "audio", tmp / "cache"
  write_folder(data_dir, TRAIN_SECONDS, names_in("train", len(TRAIN_SECONDS), 0.5, "tr"))
  write_folder(data_dir, TEST_SECONDS, names_in("test", len(TEST_SECONDS), 0.5, "te"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(store, "FILES_PER_SHARD", FILES_PER_SHARD)
    loaded = {mb: load_dataset(config(data_dir, cache, mb)) for mb in (2048, 1, 2)}
  (features,) = (cache / "features").iterdir()
  return {"memory": loaded[2048], "stream": loaded[1], "train_only": loaded[2], "dir": data_dir,
          "cache": cache, "shards": sorted(features.glob("shard-*.npy"))}


def take(it, k: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(k)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def loader(data, **kw) -> TrainLoader:
  args = dict(global_batch=8, num_local_devices=2, segment_frames=T, seed=5)
  args.update(kw)
  return TrainLoader(data.train, data.normalizer, **args)


def test_max_memory_mb_picks_streaming_per_split(corpus):
  mem, st, mixed = corpus["memory"], corpus["stream"], corpus["train_only"]
  assert len(corpus["shards"]) >= 8
  assert 2 * 2**20 < mem.train.nbytes < 4 * 2**20 and 2**20 < mem.test.nbytes < 2 * 2**20
  assert (mem.train.streaming, mem.test.streaming) == (False, False)
  assert (st.train.streaming, st.test.streaming) == (True, True)
  assert (mixed.train.streaming, mixed.test.streaming) == (True, False)
  with pytest.raises(TypeError, match="num_mels"):
    st.train.frames  # pylint: disable=pointless-statement


def test_streaming_split_serves_the_same_utterances(corpus):
  mem, st = corpus["memory"], corpus["stream"]
  for a, b in ((mem.train, st.train), (mem.test, st.test)):
    assert a.names == b.names and a.paths == b.paths and len(a) == len(b)
    assert a.labels.keys() == b.labels.keys()
    for k in a.labels:
      np.testing.assert_array_equal(a.labels[k], b.labels[k])
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.num_mels == b.num_mels == 32 and a.nbytes == b.nbytes
    for i in range(len(a)):
      np.testing.assert_array_equal(b.utterance(i), a.utterance(i))
      n = int(a.lengths[i])
      for start, length in ((0, T), (n // 3, T), (max(n - 5, 0), T), (n, T)):
        np.testing.assert_array_equal(b.crop(i, start, length), a.utterance(i)[start:start + length])
    np.testing.assert_array_equal(b.span(2, 7), np.concatenate([a.utterance(i) for i in range(2, 7)]))
  sub = st.train.subset([9, 2, 4])
  assert sub.streaming and sub.names == [mem.train.names[i] for i in (9, 2, 4)]
  for j, i in enumerate((9, 2, 4)):
    np.testing.assert_array_equal(sub.utterance(j), mem.train.utterance(i))


def test_normaliser_is_the_same_streaming_or_not(corpus):
  mem, st, mixed = corpus["memory"], corpus["stream"], corpus["train_only"]
  # The same chunks in the same order: identical to the last bit.
  for other in (st, mixed):
    np.testing.assert_array_equal(other.normalizer.mean, mem.normalizer.mean)
    np.testing.assert_array_equal(other.normalizer.std, mem.normalizer.std)
  train = mem.train.frames.astype(np.float64)
  reference = Normalizer.fit(mem.train.frames)
  np.testing.assert_allclose(st.normalizer.mean, reference.mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(st.normalizer.std, reference.std, rtol=1e-6)
  # Train frames only: with the test split the mean would differ.
  everything = Normalizer.fit(np.concatenate([train, mem.test.frames]))
  assert np.max(np.abs(everything.mean - st.normalizer.mean)) > 1e-3


def test_moments_merge_in_chunks_matches_one_pass():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 300, size=40)
  lengths[7] = 2000  # Longer than a chunk.
  x = rng.normal(7.0, 0.01, size=(lengths.sum(), 3))  # A large mean over a small spread.
  bounds = stream.chunk_bounds(lengths, 700)
  assert len(bounds) > 5 and bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
  assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  total = stream.merged(stream.Moments.of(x[offsets[a]:offsets[b]]) for a, b in bounds)
  assert total.count == len(x)
  np.testing.assert_allclose(total.mean, x.mean(0), rtol=1e-14)
  np.testing.assert_allclose(np.sqrt(total.m2 / total.count), x.std(0), rtol=1e-10)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_train_batches_equal_the_in_memory_ones(corpus, prefetch):
  ref = loader(corpus["memory"])
  it = loader(corpus["stream"], prefetch=prefetch)
  assert it.steps_per_epoch == ref.steps_per_epoch == 3
  batches = take(it, 11)  # Three epoch boundaries.
  assert it.state == LoaderState(3, 2)
  assert_same_batches(batches, take(ref, 11))
  it.close()


def test_loader_state_restores_the_same_way(corpus):
  ref = take(loader(corpus["memory"]), 10)
  first = loader(corpus["stream"], prefetch=2)
  take(first, 4)
  saved = first.state.to_dict()
  first.close()
  second = loader(corpus["stream"], prefetch=2)
  second.restore(LoaderState.from_dict(saved))
  assert_same_batches(take(second, 6), ref[4:])
  second.close()


@pytest.mark.parametrize("max_utterances", [0, 7])
def test_eval_batches_equal_the_in_memory_ones(corpus, max_utterances):
  mem, st = corpus["memory"], corpus["stream"]
  a = list(eval_batches(mem.test, mem.normalizer, 8, 32, max_utterances))
  b = list(eval_batches(st.test, st.normalizer, 8, 32, max_utterances))
  assert len(a) == (3 if max_utterances == 0 else 1)
  assert_same_batches(a, b)


def _record_reads(monkeypatch) -> list[tuple[int, int, int]]:
  """(utterance, start, stop) of every read from the shards."""
  reads, real = [], stream.ShardRows.read

  def spy(self, i, start, stop):
    reads.append((int(i), start, stop))
    return real(self, i, start, stop)

  monkeypatch.setattr(stream.ShardRows, "read", spy)
  return reads


def test_each_process_reads_only_its_own_crops(corpus, monkeypatch):
  st = corpus["stream"]
  reads = _record_reads(monkeypatch)
  whole = loader(st, num_local_devices=1)
  procs = [loader(st, num_local_devices=1, process_index=p, process_count=2) for p in range(2)]
  for state in (LoaderState(0, 0), LoaderState(0, 2), LoaderState(4, 1)):
    reads.clear()
    global_mel = whole.batch_at(state)["mel"]
    everyone = sorted(u for u, _, _ in reads)
    per_process = []
    for p, it in enumerate(procs):
      reads.clear()
      mel = it.batch_at(state)["mel"]
      np.testing.assert_array_equal(mel, global_mel[4 * p:4 * (p + 1)])
      assert len(reads) == 4 and all(stop - start <= T for _, start, stop in reads)
      per_process.append({u for u, _, _ in reads})
    assert not per_process[0] & per_process[1]
    assert sorted(per_process[0] | per_process[1]) == everyone


def test_normaliser_fit_is_shared_between_processes(corpus, tmp_path, monkeypatch):
  st, mem = corpus["stream"], corpus["memory"]
  monkeypatch.setattr(store, "NORMALIZER_CHUNK_FRAMES", 1500)
  assert len(stream.chunk_bounds(st.train.lengths, 1500)) >= 8
  single = fit_normalizer(mem.train)
  spans, real = [], stream.ShardRows.read_span

  def spy(self, first, stop):
    spans.append((first, stop))
    return real(self, first, stop)

  monkeypatch.setattr(stream.ShardRows, "read_span", spy)
  # Alone, process 0 computes its share, then gives up waiting for process 1's.
  with pytest.raises(DataError, match="moments"):
    fit_normalizer(st.train, process_index=0, process_count=2, exchange_dir=str(tmp_path),
                   timeout_s=0.2)
  results = [None, None]

  def run(p):
    results[p] = fit_normalizer(st.train, process_index=p, process_count=2,
                                exchange_dir=str(tmp_path), timeout_s=30)

  threads = [threading.Thread(target=run, args=(p,)) for p in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  for r in results:
    np.testing.assert_array_equal(r.mean, single.mean)
    np.testing.assert_array_equal(r.std, single.std)
  # Every utterance read once over both processes (process 0's share was kept from before).
  read = sorted(i for a, b in spans for i in range(a, b))
  assert read == list(range(len(st.train)))
  assert len(list(tmp_path.glob("moments-*.npz"))) == 2


# Extraction split across processes.


@pytest.fixture
def small_corpus(tmp_path, monkeypatch):
  monkeypatch.setattr(store, "FILES_PER_SHARD", 2)
  data_dir = tmp_path / "audio"
  write_folder(data_dir, [0.3 + 0.05 * j for j in range(7)],
               names_in("train", 5, 0.5, "a") + names_in("test", 2, 0.5, "b"))
  c = config(data_dir, tmp_path / "unused")
  return build_corpus(c), FeatureConfig.from_config(c.features)


def _assert_same_store(a, b) -> None:
  assert a.index == b.index and len(a.files) == len(b.files)
  for x, y in zip(a.files, b.files):
    np.testing.assert_array_equal(np.load(x.path), np.load(y.path))


def test_extraction_is_split_between_processes(small_corpus, tmp_path, extracted):
  corpus, fc = small_corpus
  files = [os.path.basename(e.path) for e in corpus.entries]  # Shards: 0-1, 2-3, 4-5, 6.
  single = extract_features(corpus, fc, str(tmp_path / "single"), 1)
  seen = extracted
  seen.clear()
  root = str(tmp_path / "shared")
  assert extract_features(corpus, fc, root, 1, process_index=0, process_count=2, wait=False) is None
  assert seen == files[0:2] + files[4:6]
  (cache,) = (tmp_path / "shared" / "features").iterdir()
  assert sorted(p.name for p in cache.glob("*.npy")) == ["shard-00000.npy", "shard-00002.npy"]
  seen.clear()
  second = extract_features(corpus, fc, root, 1, process_index=1, process_count=2)
  assert seen == files[2:4] + files[6:]
  _assert_same_store(second, single)
  seen.clear()
  first = extract_features(corpus, fc, root, 1, process_index=0, process_count=2)
  assert seen == []
  _assert_same_store(first, single)


def test_extraction_waits_for_the_other_process(small_corpus, tmp_path, monkeypatch):
  corpus, fc = small_corpus
  single = extract_features(corpus, fc, str(tmp_path / "single"), 1)
  root = str(tmp_path / "shared")
  real = store._extract_one

  def slow(args):  # Process 1 is still working when process 0 is done with its own shards.
    if threading.current_thread().name == "p1":
      time.sleep(0.1)
    return real(args)

  monkeypatch.setattr(store, "_extract_one", slow)
  stores = {}

  def run(p):
    stores[p] = extract_features(corpus, fc, root, 1, process_index=p, process_count=2, timeout_s=30)

  threads = [threading.Thread(target=run, args=(p,), name=f"p{p}") for p in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  assert sorted(stores) == [0, 1]
  _assert_same_store(stores[0], single)
  _assert_same_store(stores[1], single)


def test_missing_shards_of_another_process_time_out(small_corpus, tmp_path):
  corpus, fc = small_corpus
  start = time.monotonic()
  with pytest.raises(DataError) as e:
    extract_features(corpus, fc, str(tmp_path / "c"), 1, process_index=1, process_count=2,
                     timeout_s=0.3)
  assert time.monotonic() - start < 20
  message = str(e.value)
  assert "\n" not in message
  for fragment in ("shard-00000, shard-00002", "process_count=2", "data.cache_dir"):
    assert fragment in message, message
  with pytest.raises(ValueError, match="process_index"):
    extract_features(corpus, fc, str(tmp_path / "c"), 1, process_index=2, process_count=2)


def test_process_split_through_load_dataset(corpus, tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(store, "FILES_PER_SHARD", FILES_PER_SHARD)
  c = config(corpus["dir"], corpus["cache"], 1)  # Shards already there: nothing to extract.
  caplog.set_level(logging.INFO, logger="vae_jax")
  results = {}

  def run(p):
    results[p] = load_dataset(c, process_index=p, process_count=2)

  threads = [threading.Thread(target=run, args=(p,)) for p in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  for data in results.values():
    assert data.train.streaming
    np.testing.assert_array_equal(data.normalizer.mean, corpus["memory"].normalizer.mean)
    np.testing.assert_array_equal(data.normalizer.std, corpus["memory"].normalizer.std)
  assert any("streams from" in r.getMessage() for r in caplog.records)


# The benchmark.


def test_rss_benchmark_runs_tiny(tmp_path):
  done = subprocess.run([sys.executable, "-m", "bench.streaming_rss", "--tiny",
                         "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert any(l.startswith("- Command: `python -m bench.streaming_rss --tiny`") for l in lines)
  assert any(l.startswith("- Machine: ") for l in lines)
  rows = [l.split("|")[1:-1] for l in lines if l.startswith("| 1x") or l.startswith("| 2x")]
  assert len(rows) == 2
  for row in rows:
    rss = [float(c) for c in row[4:7]]
    assert all(100 < r < 4000 for r in rss), row
  assert list(tmp_path.iterdir()) == []  # Corpora removed.
