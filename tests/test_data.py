"""Corpora, the feature cache and bad input files, end to end through `load_dataset`."""

import concurrent.futures
import logging
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from vae_jax.audio import io as audio_io
from vae_jax.config import load_config
from vae_jax.data import corpora, store
from vae_jax.data.corpora import build_corpus, hash_split
from vae_jax.data.store import load_dataset
from vae_jax.errors import ConfigError, DataError, UserError
from vae_jax.audio.features import FeatureConfig, Normalizer, log_mel

SMOKE = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "smoke.py")
SR = 8000
TEST_FRACTION = 0.1  # configs/smoke.py keeps the default.
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


# Corpus writing helpers.


def clip(i: int, seconds: float = 0.3, amp: float = 0.3, rate: int = SR) -> np.ndarray:
  """A different waveform for each i: chirps, tones and noise bursts."""
  t = np.arange(int(seconds * rate)) / rate
  rng = np.random.default_rng(i)
  kind = i % 3
  if kind == 0:
    x = np.sin(2 * np.pi * (200 + 100 * i + 2000 * t) * t)
  elif kind == 1:
    x = np.sin(2 * np.pi * (300 + 37 * i) * t) + 0.3 * np.sin(2 * np.pi * 1700 * t)
  else:
    x = rng.standard_normal(len(t)) * np.hanning(len(t))
  return (amp * x / np.max(np.abs(x))).astype(np.float32)


def names_in(split: str, k: int, prefix: str = "clip", under: str = "") -> list[str]:
  """The first k names `{prefix}{i}.wav` that the folder corpus hashes into `split` in `under`/."""
  out, i = [], 0
  while len(out) < k:
    name = f"{prefix}{i}.wav"
    if hash_split(os.path.join(under, name), TEST_FRACTION) == split:
      out.append(name)
    i += 1
  return out


def write_clips(root: pathlib.Path, names: list[str], amp: float = 0.3, seed: int = 0) -> None:
  root.mkdir(parents=True, exist_ok=True)
  for j, name in enumerate(names):
    sf.write(root / name, clip(seed + j, seconds=0.2 + 0.05 * (j % 4), amp=amp), SR)


def write_bytes(path: pathlib.Path, data: bytes) -> None:
  with open(path, "wb") as f:
    f.write(data)


def small_folder(root: pathlib.Path, n_train: int = 4, n_test: int = 2) -> list[str]:
  names = names_in("train", n_train) + names_in("test", n_test)
  write_clips(root, names)
  return names


def folder_config(tmp_path: pathlib.Path, data_dir: pathlib.Path, cache: str = "cache",
                  **overrides):
  o = {"data.corpus": "folder", "data.path": str(data_dir), "data.cache_dir": str(tmp_path / cache),
       "data.num_workers": 1}
  o.update(overrides)
  return load_config(SMOKE, o)


def feature_dir(config) -> pathlib.Path:
  (d,) = (pathlib.Path(config.data.cache_dir) / "features").iterdir()
  return d


def assert_same_dataset(a: store.Dataset, b: store.Dataset) -> None:
  for x, y in ((a.train, b.train), (a.test, b.test)):
    assert x.names == y.names and x.paths == y.paths
    np.testing.assert_array_equal(x.offsets, y.offsets)
    np.testing.assert_array_equal(x.frames, y.frames)
    assert x.labels.keys() == y.labels.keys()
    for k in x.labels:
      np.testing.assert_array_equal(x.labels[k], y.labels[k])
  np.testing.assert_array_equal(a.normalizer.mean, b.normalizer.mean)
  np.testing.assert_array_equal(a.normalizer.std, b.normalizer.std)


def forbid_extraction(monkeypatch) -> None:
  def fail(args):
    raise AssertionError(f"re-extracted {args[0]}")

  monkeypatch.setattr(store, "_extract_one", fail)


def utterance(data: store.Dataset, name: str) -> np.ndarray:
  """The features of the named utterance, whichever split it is in."""
  split = data.train if name in data.train.names else data.test
  return split.utterance(split.names.index(name))


def warnings_about(caplog, fragment: str) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.name == "vae_jax" and r.levelno == logging.WARNING and fragment in r.getMessage()]


# Corpora.


def test_fsdd_listing_splits_and_labels(fsdd_dir, tmp_path):
  config = load_config(SMOKE, {"data.corpus": "fsdd", "data.path": str(fsdd_dir),
                               "data.cache_dir": str(tmp_path / "cache")})
  corpus = build_corpus(config)
  assert len(corpus.entries) == 3000 and not corpus.skipped
  assert len({e.name for e in corpus.entries}) == 3000
  by_split = {s: [e for e in corpus.entries if e.split == s] for s in ("train", "test")}
  assert (len(by_split["train"]), len(by_split["test"])) == (2700, 300)
  assert corpus.label_names == {"digit": tuple("0123456789"), "speaker": FSDD_SPEAKERS}
  entries = {e.name: e for e in corpus.entries}
  for name, split, digit, speaker in [("0_george_0", "test", 0, "george"),
                                      ("2_nicolas_4", "test", 2, "nicolas"),
                                      ("4_jackson_5", "train", 4, "jackson"),
                                      ("7_theo_3", "test", 7, "theo"),
                                      ("9_yweweler_49", "train", 9, "yweweler"),
                                      ("5_lucas_10", "train", 5, "lucas")]:
    e = entries[name]
    assert (e.split, e.labels["digit"], corpus.label_names["speaker"][e.labels["speaker"]]) == (
        split, digit, speaker), name
    assert e.path == os.path.join(str(fsdd_dir), name + ".wav")
  # Each (digit, speaker) pair has exactly 5 test recordings.
  for d in range(10):
    for s in range(6):
      n = sum(1 for e in by_split["test"] if e.labels["digit"] == d and e.labels["speaker"] == s)
      assert n == 5


def test_fsdd_subset_loads_with_labels(fsdd_dir, tmp_path, caplog):
  data_dir = tmp_path / "fsdd"
  data_dir.mkdir()
  test_names = ["0_george_0", "3_theo_2", "9_yweweler_4"]
  train_names = ["0_george_7", "3_theo_30", "9_yweweler_49"]
  for name in test_names + train_names:
    shutil.copy(fsdd_dir / f"{name}.wav", data_dir)
  write_bytes(data_dir / "README.md", b"# not a recording\n")
  config = load_config(SMOKE, {"data.corpus": "fsdd", "data.path": str(data_dir),
                               "data.cache_dir": str(tmp_path / "cache")})
  caplog.set_level(logging.WARNING, logger="vae_jax")
  data = load_dataset(config)
  assert len(warnings_about(caplog, "README.md")) == 1
  assert warnings_about(caplog, "skipped 1 of 7 files")
  assert data.train.names == train_names and data.test.names == test_names
  assert data.label_names["speaker"] == ("george", "theo", "yweweler")
  np.testing.assert_array_equal(data.train.labels["digit"], [0, 3, 9])
  np.testing.assert_array_equal(data.test.labels["speaker"], [0, 1, 2])
  fc = FeatureConfig.from_config(config.features)
  for i, name in enumerate(data.test.names):
    wave, _ = sf.read(data_dir / f"{name}.wav", dtype="float32")
    np.testing.assert_array_equal(data.test.utterance(i), log_mel(wave, fc))


def test_synthetic_corpus_loads_and_is_cached(tmp_path, monkeypatch):
  synthetic = pytest.importorskip("vae_jax.data.synthetic")
  config = load_config(SMOKE, {"data.cache_dir": str(tmp_path / "cache"),
                               "synthetic.utterances_per_speaker": 10})
  data = load_dataset(config)
  assert data.corpus == "synthetic"
  assert set(data.label_names) == {"speaker", "word", "vowel"}
  assert len(data.train) + len(data.test) == 30 and len(data.test) > 0
  assert not set(data.train.names) & set(data.test.names)
  (out_dir,) = (tmp_path / "cache" / "synthetic").iterdir()
  # Already generated, so this only reads the corpus's own record of its utterances.
  utterances = {u.name: u for u in synthetic.generate_corpus(
      str(out_dir), sample_rate=SR, num_speakers=3, utterances_per_speaker=10, seed=0,
      factor_hop=64)}
  for split_name, split in (("train", data.train), ("test", data.test)):
    assert all(utterances[n].split == split_name for n in split.names)
    for label in ("speaker", "word", "vowel"):
      assert split.labels[label].tolist() == [getattr(utterances[n], label) for n in split.names]
  forbid_extraction(monkeypatch)
  assert_same_dataset(load_dataset(config), data)


def test_synthetic_ground_truth_is_on_the_feature_frames(tmp_path):
  config = load_config(SMOKE, {"data.cache_dir": str(tmp_path / "cache"),
                               "synthetic.utterances_per_speaker": 10})
  data = load_dataset(config)
  truth = corpora.synthetic_ground_truth(config)
  assert set(truth) == set(data.train.names) | set(data.test.names)
  for split in (data.train, data.test):
    for i, name in enumerate(split.names):
      utt = truth[name]
      # Factor frame t describes mel frame t.
      assert utt.f0_hz.shape == (split.lengths[i],) and utt.formants_hz.shape == (split.lengths[i], 3)
      assert [utt.speaker, utt.word, utt.vowel] == [split.labels[k][i] for k in ("speaker", "word", "vowel")]
  other = load_config(SMOKE, {"data.corpus": "folder", "data.path": str(tmp_path)})
  with pytest.raises(ConfigError, match="only the 'synthetic' corpus"):
    corpora.synthetic_ground_truth(other)


def test_folder_corpus_speakers_and_colliding_stems(tmp_path):
  data_dir = tmp_path / "audio"
  for spk, seed in (("bob", 0), ("alice", 10)):
    write_clips(data_dir / spk, names_in("train", 2, under=spk) + names_in("test", 1, under=spk),
                seed=seed)
  # Same stem, two formats: two utterances, not one.
  sf.write(data_dir / "alice" / "same.wav", clip(1), SR)
  sf.write(data_dir / "alice" / "same.flac", clip(2), SR)
  config = folder_config(tmp_path, data_dir)
  corpus = build_corpus(config)
  assert corpus.label_names == {"speaker": ("alice", "bob")}
  names = [e.name for e in corpus.entries]
  assert len(set(names)) == len(names) == 8
  for e in corpus.entries:
    assert corpus.label_names["speaker"][e.labels["speaker"]] == e.name.split(os.sep)[0]
    assert e.split == hash_split(os.path.relpath(e.path, data_dir), TEST_FRACTION)
  data = load_dataset(config)
  assert not np.array_equal(utterance(data, os.path.join("alice", "same.wav")),
                            utterance(data, os.path.join("alice", "same.flac")))


def test_hash_split_is_stable_and_near_the_fraction():
  names = [f"d{i % 7}/f{i}.wav" for i in range(20000)]
  test = sum(hash_split(n, 0.1) == "test" for n in names)
  assert 1800 < test < 2200
  # Recorded assignments: a change would move utterances between the splits of every
  # existing run (and its cached features); if it is intended, say so and re-record.
  recorded = [2, 3, 17, 18, 22, 28, 49, 50, 51, 52, 54, 60, 70, 79, 101, 114, 119, 122, 145, 164,
              167, 169, 175, 199]
  assert [i for i, n in enumerate(names[:200]) if hash_split(n, 0.1) == "test"] == recorded, (
      "hash_split assignments changed")
  assert all(hash_split(n, 0.2) == "test" for n in names[:200] if hash_split(n, 0.1) == "test")


# Normalisation.


def test_normaliser_uses_the_train_split_only(tmp_path):
  data_dir = tmp_path / "audio"
  write_clips(data_dir, names_in("train", 4), amp=0.01)
  write_clips(data_dir, names_in("test", 2), amp=0.9, seed=20)
  data = load_dataset(folder_config(tmp_path, data_dir))
  assert len(data.train) == 4 and len(data.test) == 2
  train = data.train.frames.astype(np.float64)
  everything = np.concatenate([train, data.test.frames])
  np.testing.assert_allclose(data.normalizer.mean, train.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(data.normalizer.std, np.maximum(train.std(0), 1e-3), rtol=1e-4)
  assert np.max(np.abs(data.normalizer.mean - everything.mean(0))) > 1.0
  # A given normaliser (a resumed run's) is kept as it is.
  given = Normalizer(np.zeros(32, np.float32), np.ones(32, np.float32))
  kept = load_dataset(folder_config(tmp_path, data_dir), normalizer=given)
  np.testing.assert_array_equal(kept.normalizer.mean, np.zeros(32))


# The feature cache.


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
  data_dir = tmp_path / "audio"
  small_folder(data_dir)
  config = folder_config(tmp_path, data_dir)
  first = load_dataset(config)
  shards = sorted(feature_dir(config).glob("shard-*"))
  stamps = [p.stat().st_mtime_ns for p in shards]
  forbid_extraction(monkeypatch)
  second = load_dataset(config)
  assert_same_dataset(first, second)
  assert [p.stat().st_mtime_ns for p in sorted(feature_dir(config).glob("shard-*"))] == stamps


@pytest.mark.parametrize("change", ["feature", "touch", "rewrite", "add"])
def test_cache_is_invalidated(tmp_path, extracted, change):
  data_dir = tmp_path / "audio"
  names = small_folder(data_dir)
  config = folder_config(tmp_path, data_dir)
  before = load_dataset(config)
  assert sorted(extracted) == sorted(names)
  extracted.clear()
  target = data_dir / names[0]
  if change == "feature":
    config = folder_config(tmp_path, data_dir, **{"features.log_floor": 1e-2})
  elif change == "touch":
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
  elif change == "rewrite":
    sf.write(target, clip(99, seconds=0.25), SR)
  else:
    new = names_in("train", 1, prefix="extra")[0]
    write_clips(data_dir, [new], seed=50)
    names = names + [new]
  after = load_dataset(config)
  assert sorted(extracted) == sorted(names)  # Everything again, from a new cache directory.
  assert len(list((tmp_path / "cache" / "features").iterdir())) == 2
  stem = names[0][:-4]
  i = before.train.names.index(stem)  # names_in("train") put it there.
  changed = not np.array_equal(before.train.utterance(i), utterance(after, stem))
  assert changed == (change in ("feature", "rewrite"))
  if change == "add":
    assert stem in after.train.names and len(after.train) == len(before.train) + 1


def test_interrupted_extraction_resumes(tmp_path, monkeypatch, caplog, extracted):
  monkeypatch.setattr(store, "FILES_PER_SHARD", 2)
  data_dir = tmp_path / "audio"
  names = small_folder(data_dir, n_train=3, n_test=2)
  write_bytes(data_dir / "aaa_corrupt.wav", np.random.default_rng(0).bytes(2000))
  config = folder_config(tmp_path, data_dir)
  order = [os.path.basename(e.path) for e in build_corpus(config).entries]
  assert order[0] == "aaa_corrupt.wav" and len(order) == 6  # Shards: 0-1, 2-3, 4-5.

  real_save = store._atomic_save

  def save_then_die(cache_dir, i, arr, meta):
    if i == 1:
      raise KeyboardInterrupt
    real_save(cache_dir, i, arr, meta)

  monkeypatch.setattr(store, "_atomic_save", save_then_die)
  with pytest.raises(KeyboardInterrupt):
    load_dataset(config)
  cache = feature_dir(config)
  assert sorted(p.name for p in cache.iterdir()) == ["shard-00000.json", "shard-00000.npy"]
  stamp = (cache / "shard-00000.npy").stat().st_mtime_ns

  monkeypatch.setattr(store, "_atomic_save", real_save)
  caplog.set_level(logging.WARNING, logger="vae_jax")
  caplog.clear()
  extracted.clear()
  resumed = load_dataset(config)
  assert extracted == order[2:]
  assert (cache / "shard-00000.npy").stat().st_mtime_ns == stamp
  # The bad file of the finished shard is still reported, once.
  assert len(warnings_about(caplog, "aaa_corrupt.wav")) == 1
  assert warnings_about(caplog, "skipped 1 of 6 files")
  assert_same_dataset(resumed, load_dataset(folder_config(tmp_path, data_dir, cache="fresh")))
  assert sorted(resumed.train.names + resumed.test.names) == sorted(n[:-4] for n in names)


def test_shard_without_its_npy_is_extracted_again(tmp_path, extracted):
  data_dir = tmp_path / "audio"
  names = small_folder(data_dir)
  config = folder_config(tmp_path, data_dir)
  first = load_dataset(config)
  (feature_dir(config) / "shard-00000.npy").unlink()
  extracted.clear()
  assert_same_dataset(first, load_dataset(config))
  assert sorted(extracted) == sorted(names)


def test_cache_of_another_shard_size_is_not_mixed_in(tmp_path, monkeypatch):
  data_dir = tmp_path / "audio"
  names = small_folder(data_dir)
  config = folder_config(tmp_path, data_dir)
  monkeypatch.setattr(store, "FILES_PER_SHARD", 2)
  small_shards = load_dataset(config)
  monkeypatch.setattr(store, "FILES_PER_SHARD", 512)
  one_shard = load_dataset(config)
  assert sorted(one_shard.train.names + one_shard.test.names) == sorted(n[:-4] for n in names)
  assert_same_dataset(small_shards, one_shard)


class _SpyExecutor(concurrent.futures.ProcessPoolExecutor):
  created: list[int] = []

  def __init__(self, max_workers=None, *args, **kwargs):
    type(self).created.append(max_workers)
    super().__init__(max_workers, *args, **kwargs)


def test_parallel_extraction_matches_serial(tmp_path, monkeypatch, caplog):
  # Both constants are read in this process, which decides whether to start workers.
  monkeypatch.setattr(store, "MIN_FILES_FOR_WORKERS", 4)
  monkeypatch.setattr(store, "FILES_PER_SHARD", 5)
  monkeypatch.setattr(store.concurrent.futures, "ProcessPoolExecutor", _SpyExecutor)
  _SpyExecutor.created.clear()
  data_dir = tmp_path / "audio"
  small_folder(data_dir, n_train=7, n_test=3)
  write_bytes(data_dir / "corrupt.wav", np.random.default_rng(0).bytes(2000))
  caplog.set_level(logging.WARNING, logger="vae_jax")
  serial = load_dataset(
      folder_config(tmp_path, data_dir, cache="serial", **{"data.num_workers": 1}))
  assert _SpyExecutor.created == []
  assert len(warnings_about(caplog, "corrupt.wav")) == 1
  caplog.clear()
  parallel = load_dataset(
      folder_config(tmp_path, data_dir, cache="parallel", **{"data.num_workers": 2}))
  assert _SpyExecutor.created == [2]
  assert_same_dataset(serial, parallel)
  assert len(warnings_about(caplog, "corrupt.wav")) == 1
  assert warnings_about(caplog, "skipped 1 of 11 files")


# Bad input.


def _write_bad_folder(data_dir: pathlib.Path) -> tuple[list[str], dict[str, str]]:
  """Good files (names without extension) and bad files (name -> a fragment of the reason)."""
  good = names_in("train", 3) + names_in("test", 2)
  write_clips(data_dir, good)
  rate = 44100
  t = np.arange(int(0.4 * rate)) / rate
  stereo = np.stack([0.5 * np.sin(2 * np.pi * 500 * t), 0.2 * np.sin(2 * np.pi * 900 * t)], 1)
  sf.write(data_dir / "stereo44k.flac", stereo.astype(np.float32), rate)
  sf.write(data_dir / "voice.ogg", clip(5, seconds=0.5, rate=22050), 22050)
  good += ["stereo44k.flac", "voice.ogg"]

  write_bytes(data_dir / "corrupt.wav", np.random.default_rng(0).bytes(3000))
  write_bytes(data_dir / "trunc.wav", (data_dir / good[0]).read_bytes()[:20])
  write_bytes(data_dir / "empty.wav", b"")
  sf.write(data_dir / "silent.wav", np.zeros(SR // 2, np.float32), SR)
  nan, inf = clip(1), clip(2).astype(np.float64)
  nan[50], inf[60] = np.nan, np.inf
  sf.write(data_dir / "nan.wav", nan, SR, subtype="FLOAT")
  sf.write(data_dir / "inf.wav", inf, SR, subtype="DOUBLE")
  sf.write(data_dir / "short.wav", clip(3, seconds=100 / SR), SR)  # Below one 256-sample window.
  write_bytes(data_dir / "notes.txt", b"recorded on a Tuesday\n")
  write_bytes(data_dir / ".hidden.wav", b"editor junk")  # Hidden files are not part of the corpus.
  bad = {"corrupt.wav": "unreadable audio", "trunc.wav": "unreadable audio",
         "empty.wav": "empty file", "silent.wav": "all silent", "nan.wav": "NaN or infinite",
         "inf.wav": "NaN or infinite", "short.wav": "too short"}
  return [os.path.splitext(g)[0] for g in good], bad


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, caplog):
  data_dir = tmp_path / "audio"
  good, bad = _write_bad_folder(data_dir)
  config = folder_config(tmp_path, data_dir)
  caplog.set_level(logging.WARNING, logger="vae_jax")
  for run in ("extract", "cached"):
    caplog.clear()
    data = load_dataset(config)
    assert sorted(data.train.names + data.test.names) == sorted(good), run
    for name, reason in bad.items():
      said = warnings_about(caplog, name)
      assert len(said) == 1, (run, name, said)
      assert reason in said[0] and "skipped" in said[0], (run, name, said)
    assert not warnings_about(caplog, ".hidden")
    assert not warnings_about(caplog, "notes.txt"), "side files are not warned about"
    messages = [r.getMessage() for r in caplog.records if r.name == "vae_jax"]
    assert re.fullmatch(r"skipped 7 of 14 files of the folder corpus.*", messages[-1]), run
  # Downmixed and resampled files have the frames of their 8 kHz mono version.
  fc = FeatureConfig.from_config(config.features)
  for name in ("stereo44k.flac", "voice.ogg"):
    wave = audio_io.read_audio(str(data_dir / name), SR, min_samples=fc.win_length)
    np.testing.assert_array_equal(utterance(data, os.path.splitext(name)[0]), log_mel(wave, fc))


def _assert_user_error(e: pytest.ExceptionInfo, *fragments: str) -> None:
  assert isinstance(e.value, UserError)
  message = str(e.value)
  assert "\n" not in message
  for f in fragments:
    assert f in message, message


def test_corpus_without_usable_audio_is_a_data_error(tmp_path):
  data_dir = tmp_path / "audio"
  data_dir.mkdir()
  sf.write(data_dir / "silent.wav", np.zeros(SR, np.float32), SR)
  write_bytes(data_dir / "empty.wav", b"")
  with pytest.raises(DataError) as e:
    load_dataset(folder_config(tmp_path, data_dir))
  _assert_user_error(e, "none of the 2 files", "data.path")


def test_folder_without_audio_files_is_a_data_error(tmp_path):
  data_dir = tmp_path / "audio"
  data_dir.mkdir()
  write_bytes(data_dir / "notes.txt", b"nothing here")
  with pytest.raises(DataError) as e:
    load_dataset(folder_config(tmp_path, data_dir))
  _assert_user_error(e, ".wav", "data.path")


def test_missing_directory_and_empty_path(tmp_path):
  with pytest.raises(DataError) as e:
    load_dataset(folder_config(tmp_path, tmp_path / "nowhere"))
  _assert_user_error(e, "nowhere", "data.path")
  with pytest.raises(ConfigError) as e:
    load_dataset(load_config(SMOKE, {"data.corpus": "fsdd", "data.cache_dir": str(tmp_path / "c")}))
  _assert_user_error(e, "data.path")


def test_corpus_without_test_files_is_a_data_error(tmp_path):
  data_dir = tmp_path / "audio"
  write_clips(data_dir, names_in("train", 3))
  with pytest.raises(DataError) as e:
    load_dataset(folder_config(tmp_path, data_dir))
  _assert_user_error(e, "test", "data.test_fraction")


@pytest.mark.parametrize("field,value", [("fmax", 6000.0), ("hop_length", 300), ("win_length", 512),
                                         ("log_floor", -1e-5), ("n_mels", 200)])
def test_impossible_features_are_refused_before_any_work(tmp_path, field, value):
  data_dir = tmp_path / "audio"
  small_folder(data_dir)
  config = folder_config(tmp_path, data_dir)
  config.features[field] = value  # Set after load_config, which would refuse it already.
  with pytest.raises(ConfigError) as e:
    load_dataset(config)
  _assert_user_error(e, f"features.{field}=")
  assert not (tmp_path / "cache").exists()


# Audio formats and nested layouts.


def test_mp3_files_are_audio_in_the_folder_corpus(tmp_path):
  data_dir = tmp_path / "audio"
  small_folder(data_dir)
  wave = clip(4, seconds=0.5)
  sf.write(data_dir / "spoken.mp3", wave, SR, format="MP3")
  assert audio_io.is_audio_path("A.MP3")
  data = load_dataset(folder_config(tmp_path, data_dir))
  decoded = audio_io.read_audio(str(data_dir / "spoken.mp3"), SR)
  # Lossy, with encoder padding: about the same length and the same tone.
  assert abs(len(decoded) - len(wave)) < 0.25 * len(wave)
  n = min(len(decoded), len(wave))
  spectrum = lambda x: np.abs(np.fft.rfft(x[:n]))
  assert np.corrcoef(spectrum(decoded), spectrum(wave))[0, 1] > 0.9
  np.testing.assert_array_equal(utterance(data, "spoken"), log_mel(decoded, FeatureConfig.from_config(
      folder_config(tmp_path, data_dir).features)))


def _librispeech(root: pathlib.Path) -> dict[str, str]:
  """speaker/chapter/speaker-chapter-index.flac with a transcript per chapter; file -> speaker."""
  truth = {}
  for j, (spk, chapter) in enumerate([("103", "1240"), ("103", "1241"), ("19", "198"), ("19", "227")]):
    d = root / spk / chapter
    d.mkdir(parents=True)
    lines = []
    for i in range(2):
      name = f"{spk}-{chapter}-{i:04d}"
      sf.write(d / f"{name}.flac", clip(10 * j + i), SR)
      truth[f"{spk}/{chapter}/{name}.flac"] = spk
      lines.append(f"{name.upper()} SOME WORDS")
    (d / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
  return truth


def test_speaker_level_labels_nested_layouts_by_the_right_directory(tmp_path):
  truth = _librispeech(tmp_path / "LibriSpeech")
  corpus = corpora.folder_corpus(str(tmp_path / "LibriSpeech"), TEST_FRACTION, speaker_level=2)
  assert corpus.label_names["speaker"] == ("103", "19")
  speakers = corpus.label_names["speaker"]
  got = {os.path.relpath(e.path, tmp_path / "LibriSpeech"): speakers[e.labels["speaker"]] for e in corpus.entries}
  assert got == truth
  by_chapter = corpora.folder_corpus(str(tmp_path / "LibriSpeech"), TEST_FRACTION)
  assert by_chapter.label_names["speaker"] == ("103/1240", "103/1241", "19/198", "19/227"), (
      "level 1 keeps the old behaviour: the parent directory")
  with pytest.raises(ConfigError, match="data.speaker_level=0"):
    corpora.folder_corpus(str(tmp_path / "LibriSpeech"), TEST_FRACTION, speaker_level=0)


def test_side_files_are_ignored_quietly_and_counted_once(tmp_path, caplog):
  _librispeech(tmp_path / "ls")
  (tmp_path / "ls" / "README.md").write_text("corpus notes")
  caplog.set_level(logging.INFO, logger="vae_jax")
  data = load_dataset(folder_config(tmp_path, tmp_path / "ls", **{"data.speaker_level": 2, "data.test_fraction": 0.5}))
  assert len(data.train) + len(data.test) == 8
  records = [r for r in caplog.records if r.name == "vae_jax"]
  assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
  said = [r.getMessage() for r in records if "not audio" in r.getMessage()]
  assert said == [f"ignored the files that are not audio under {tmp_path / 'ls'}: 4 .txt, 1 .md"]
  assert list(data.train.labels) == ["speaker"]
