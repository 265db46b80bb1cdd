"""Leave-one-out splits, augmented copies in the feature cache, and eval.py --generalisation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, smoke_config
from vae_jax.audio.features import FeatureConfig
from vae_jax.data import augment
from vae_jax.data.corpora import build_corpus
from vae_jax.data.store import cache_key, load_dataset
from vae_jax.errors import ConfigError

SPEECH_AUG = {"augment.copies": 1, "augment.speed": 0.1, "augment.pitch_semitones": 1.0,
              "augment.gain_db": 6.0, "augment.noise_snr_db": 10.0}


def _by_split(corpus, label: str) -> dict[str, set[str]]:
  names = corpus.label_names[label]
  out: dict[str, set[str]] = {"train": set(), "test": set(), "unseen": set()}
  for e in corpus.entries:
    out[e.split].add(names[e.labels[label]])
  return out


@pytest.mark.parametrize("holdout", ["speaker=jackson", "digit=7"])
def test_fsdd_leave_one_out_keeps_the_class_out_of_train_and_test(fsdd_dir, tmp_path, holdout):
  label, value = holdout.split("=")
  base = {"data.corpus": "fsdd", "data.path": str(fsdd_dir)}
  own = build_corpus(smoke_config(tmp_path, base))
  held = build_corpus(smoke_config(tmp_path, {**base, "data.holdout": holdout}))
  classes = _by_split(held, label)
  assert classes["unseen"] == {value}
  assert value not in classes["train"] | classes["test"]
  index = held.label_names[label].index(value)
  for a, b in zip(own.entries, held.entries):  # The other classes keep the corpus's own split.
    assert a.name == b.name
    assert b.split == ("unseen" if a.labels[label] == index else a.split)
  assert sum(e.split == "unseen" for e in held.entries) == sum(e.labels[label] == index for e in own.entries)


def test_synthetic_holdout_loads_an_unseen_split(tmp_path):
  data = load_dataset(smoke_config(tmp_path / "cache", {"data.holdout": "speaker=spk1"}))
  spk1 = list(data.label_names["speaker"]).index("spk1")
  assert len(data.unseen) > 0 and set(data.unseen.labels["speaker"]) == {spk1}
  assert spk1 not in set(data.train.labels["speaker"]) | set(data.test.labels["speaker"])
  assert load_dataset(smoke_config(tmp_path / "cache")).unseen is None


@pytest.mark.parametrize("holdout,fragment", [
    ("speaker", "is not a holdout"),
    ("accent=x", "has no label 'accent' (its labels: speaker, vowel, word)"),
    ("speaker=bob", "has no speaker 'bob' (its speaker classes: spk0, spk1, spk2)"),
])
def test_bad_holdout_is_one_line(tmp_path, holdout, fragment):
  with pytest.raises(ConfigError, match=r"^data\.holdout=") as info:
    build_corpus(smoke_config(tmp_path, {"data.holdout": holdout}))
  assert fragment in str(info.value) and "\n" not in str(info.value)


def test_augmentation_is_deterministic_per_seed_and_keys_the_cache(tmp_path):
  config = smoke_config(tmp_path, SPEECH_AUG)
  other = smoke_config(tmp_path, {**SPEECH_AUG, "augment.seed": 1})
  corpus = build_corpus(config)
  a, b = augment.augmented_corpus(corpus, config), augment.augmented_corpus(corpus, config)
  c = augment.augmented_corpus(corpus, other)
  extra = [e for e in a.entries if e.augment]
  assert len(extra) == sum(e.split == "train" for e in corpus.entries)
  assert all(e.split == "train" for e in extra)
  assert a == b and [e.augment for e in a.entries] != [e.augment for e in c.entries]
  wave = np.sin(np.linspace(0, 2000, 8000)).astype(np.float32)
  first, again = (augment.apply(wave, extra[0].augment, 8000) for _ in range(2))
  np.testing.assert_array_equal(first, again)
  c_extra = [e for e in c.entries if e.augment]
  assert not np.array_equal(first[:7000], augment.apply(wave, c_extra[0].augment, 8000)[:7000])
  fc = FeatureConfig.from_config(config.features)
  keys = {cache_key(x.entries, fc) for x in (corpus, a, c)}
  assert len(keys) == 3
  off = augment.augmented_corpus(corpus, smoke_config(tmp_path))  # All off by default: no copies.
  assert off == corpus and cache_key(off.entries, fc) == cache_key(corpus.entries, fc)


def test_colouring_applies_its_gain_curve_and_leaves_other_draws_and_keys_alone(tmp_path):
  corpus = build_corpus(smoke_config(tmp_path))
  plain = augment.augmented_corpus(corpus, smoke_config(tmp_path, SPEECH_AUG))
  coloured = augment.augmented_corpus(corpus, smoke_config(tmp_path, {**SPEECH_AUG, "augment.eq_db": 12.0}))
  a, b = (augment.Params.from_spec(x.entries[-1].augment) for x in (plain, coloured))
  assert b.eq_db and max(map(abs, b.eq_db)) <= 4.0 and augment.Params.from_spec(b.spec()) == b
  assert (a.speed, a.semitones, a.gain_db, a.snr_db) == (b.speed, b.semitones, b.gain_db, b.snr_db)
  assert "eq_db" not in plain.entries[-1].augment  # Copies without colouring keep their cache keys.
  # White noise through the filter: the mean power ratio per band follows the curve in dB.
  noise = np.random.default_rng(0).standard_normal(2**16).astype(np.float32)
  eq = (4.0, -3.0, 2.0)
  ratio = np.abs(np.fft.rfft(augment.colour(noise, eq)))**2 / np.abs(np.fft.rfft(noise))**2
  f = np.linspace(0, 1, len(ratio))
  for lo in np.arange(0.05, 0.9, 0.1):
    band = (f >= lo) & (f < lo + 0.1)
    want = np.mean(10 ** (sum(g * np.cos(np.pi * (j + 1) * f[band]) for j, g in enumerate(eq)) / 10))
    assert abs(10 * np.log10(ratio[band].mean() / want)) < 0.3, lo


def test_augmented_copies_join_the_train_split_only(tmp_path):
  plain = load_dataset(smoke_config(tmp_path / "cache"))
  data = load_dataset(smoke_config(tmp_path / "cache", SPEECH_AUG))
  assert len(data.train) == 2 * len(plain.train) and data.test.names == plain.test.names
  name = plain.train.names[0]
  copy = data.train.utterance(data.train.names.index(f"{name}~aug0"))
  assert not np.array_equal(copy[:10], plain.train.utterance(0)[:10])


def test_bad_augment_field_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"^config field augment.speed=0.9 is out of range"):
    load_dataset(smoke_config(tmp_path, {"augment.copies": 1, "augment.speed": 0.9}))


@pytest.fixture(scope="module")
def holdout_workdir(tmp_path_factory):
  """A tiny smoke run trained without speaker spk0."""
  from vae_jax import train  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("holdout_run")
  config = smoke_config(root / "cache", {"data.holdout": "speaker=spk0", "train.num_steps": 20,
                                         "train.eval_every": 20})
  train.train_and_evaluate(config, str(root / "workdir"))
  return root / "workdir"


def test_a_holdout_run_logs_the_unseen_split_beside_the_test_split(holdout_workdir, smoke_workdir):
  rows = [json.loads(line) for line in (holdout_workdir / "metrics.jsonl").read_text().splitlines() if line]
  last = [r for r in rows if "eval/loss" in r][-1]
  assert np.isfinite(last["eval/unseen/logmel_mse"]) and np.isfinite(last["eval/unseen/loss"])
  assert last["eval/unseen/logmel_mse"] != last["eval/logmel_mse"]
  plain = [json.loads(line) for line in (smoke_workdir / "metrics.jsonl").read_text().splitlines() if line]
  assert not any(k.startswith("eval/unseen/") for r in plain for k in r)


def test_generalisation_report_has_in_split_and_unseen_rows(holdout_workdir, tmp_path):
  out = subprocess.run(
      [sys.executable, "eval.py", f"--workdir={holdout_workdir}", "--generalisation",
       "--cross_corpus=synthetic", "--max_utterances=6", f"--report_dir={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  table = (tmp_path / "generalisation.md").read_text()
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert [r.split(" | ")[0] for r in rows[1:]] == [
      "| in-split test", "| unseen (speaker=spk0)", "| cross-corpus (synthetic)", "| gap (unseen - in-split)"]
  assert "log-mel MSE" in rows[0] and "STOI" in rows[0] and "PESQ" in rows[0]
  record = json.loads((tmp_path / "generalisation.json").read_text())
  assert record["holdout"] == "speaker=spk0" and len(record["rows"]) == 3
  unseen = record["rows"][1]["metrics"]
  assert unseen["utterances"] == 6 and np.isfinite(unseen["logmel_mse"])
  assert record["gap"]["logmel_mse"] == pytest.approx(unseen["logmel_mse"] - record["rows"][0]["metrics"]["logmel_mse"])


def test_bad_cross_corpus_is_one_line(holdout_workdir):
  out = subprocess.run([sys.executable, "eval.py", f"--workdir={holdout_workdir}", "--generalisation",
                        "--cross_corpus=librispeech"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert out.stderr.strip().startswith("error: --cross_corpus='librispeech': use 'synthetic'")
