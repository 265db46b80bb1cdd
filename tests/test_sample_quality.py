"""Sample-quality scores on hand cases, and the waveform classifier's train / save / load round trip."""

import json
import logging
import math
import time

import numpy as np
import pytest

from vae_jax.config import load_config
from vae_jax.data.store import load_dataset
from vae_jax.sample_quality import classifier as sq
from vae_jax.sample_quality import evaluate as sq_evaluate
from vae_jax.sample_quality import scores
from vae_jax.sample_quality.evaluate import sample_quality_table


def _one_hot_NxK(n: int, k: int) -> np.ndarray:
  return np.eye(k)[np.arange(n) % k]


@pytest.mark.parametrize("k", [2, 5, 10])
def test_inception_score_of_confident_balanced_predictions_is_k(k):
  assert scores.inception_score(_one_hot_NxK(10 * k, k)) == pytest.approx(k, rel=1e-9)


def test_inception_score_of_a_constant_prediction_is_one():
  probs = np.tile([0.7, 0.2, 0.1], (50, 1))
  assert scores.inception_score(probs) == pytest.approx(1.0, abs=1e-12)
  assert scores.inception_score(np.tile([0.0, 1.0], (8, 1))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_hand_case():
  # Two rows [1, 0] and [0.5, 0.5]: p(y) = [0.75, 0.25]; KLs ln(4/3) and 0.5 ln(2/3) + 0.5 ln 2.
  probs = np.array([[1.0, 0.0], [0.5, 0.5]])
  kl = [math.log(1 / 0.75), 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)]
  assert scores.inception_score(probs) == pytest.approx(math.exp(np.mean(kl)), rel=1e-12)


def test_frechet_distance_of_a_set_with_itself_is_zero():
  emb = np.random.default_rng(0).normal(size=(400, 8)) @ np.diag([1.0, 2.0, 0.5, 3.0, 1.0, 1.0, 0.1, 4.0])
  assert scores.frechet_distance(emb, emb) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_with_identity_covariances_is_the_squared_mean_shift():
  mu1, mu2, eye = np.array([0.0, 1.0, -2.0]), np.array([3.0, -1.0, 0.0]), np.eye(3)
  assert scores.frechet_distance_gaussians(mu1, eye, mu2, eye) == pytest.approx(9 + 4 + 4, rel=1e-12)


def test_frechet_distance_with_diagonal_covariances_matches_the_closed_form():
  a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
  mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, 0.0, 2.0])
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + 5.0
  got = scores.frechet_distance_gaussians(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_sampled_gaussian_sets_approaches_the_closed_form():
  rng = np.random.default_rng(1)
  a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
  mu2 = np.array([1.0, -1.0, 0.5])
  x = rng.normal(size=(100_000, 3)) * np.sqrt(a)
  y = mu2 + rng.normal(size=(100_000, 3)) * np.sqrt(b)
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + mu2 @ mu2
  assert scores.frechet_distance(x, y) == pytest.approx(expected, abs=0.05)


def test_frechet_distance_survives_singular_covariances():
  # Fewer samples than dimensions and a collapsed set: the eps I fallback keeps it finite.
  rng = np.random.default_rng(2)
  few = rng.normal(size=(4, 16))
  collapsed = np.ones((10, 16))
  assert math.isfinite(scores.frechet_distance(few, collapsed))
  # As in the standard FID code, the nudge biases the result by at most 2 D eps.
  assert abs(scores.frechet_distance(collapsed, collapsed)) <= 2 * 16 * scores.FD_EPS * 1.01


def test_class_entropy_of_a_balanced_histogram_is_log_k():
  for k in (2, 5, 10):
    assert scores.class_entropy(_one_hot_NxK(3 * k, k)) == pytest.approx(math.log(k), rel=1e-12)
  assert scores.class_entropy(np.tile([0.1, 0.9], (7, 1))) == 0.0


def test_mean_confidence_and_accuracy_hand_case():
  probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.4, 0.6, 0.0], [1 / 3, 1 / 3, 1 / 3 + 1e-9]])
  assert scores.mean_confidence(probs) == pytest.approx((0.9 + 0.5 + 0.6 + 1 / 3 + 1e-9) / 4)
  assert scores.accuracy(probs, np.array([0, 2, 0, 2])) == 0.75
  with pytest.raises(ValueError):
    scores.accuracy(probs, np.array([0, 1]))


def test_sample_quality_table_has_a_row_per_set_and_a_column_per_metric():
  table = sample_quality_table({"real": {"is/digit": 9.5, "fd": 1234.5}, "noise": {"is/digit": 1.0}})
  lines = table.splitlines()
  assert lines[0].startswith("Sample quality")
  assert lines[2] == "| set | is/digit | fd |"
  assert lines[4] == "| real | 9.500 | 1234 |"
  assert lines[5] == "| noise | 1.000 |  |"


@pytest.mark.slow
def test_classifier_trains_predicts_saves_loads_and_retrains_when_corrupt(tmp_path, caplog):
  config = load_config("configs/smoke.py", {"data.cache_dir": str(tmp_path)})
  messages = []
  kwargs = {"log": messages.append, "steps": 30, "batch_size": 8}
  first = sq.load_or_train(config, **kwargs)
  assert any(m.startswith("training") for m in messages)
  dataset = load_dataset(config)
  sr = dataset.feature_config.sample_rate
  rng = np.random.default_rng(0)
  # Lengths across several padding blocks, one empty-ish clip and non-finite samples.
  waves = [0.1 * rng.normal(size=n).astype(np.float32) for n in (300, 2000, 5000, 13000, 1)]
  waves[2][100:110] = np.nan
  waves[3][5] = np.inf
  out = first.predict(waves, batch_size=2)
  assert out["embedding"].shape == (5, 128)
  assert set(out) == {"embedding"} | {f"probs/{k}" for k in dataset.label_names}
  for label, names in dataset.label_names.items():
    probs = out[f"probs/{label}"]
    assert probs.shape == (5, len(names))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  assert np.all(np.isfinite(out["embedding"]))
  # A clip scores the same alone as among longer ones: the padding is masked out.
  alone = first.predict(waves[:1])
  np.testing.assert_allclose(alone["embedding"], out["embedding"][:1], rtol=1e-4, atol=1e-5)
  assert set(first.test_accuracy) == set(dataset.label_names)
  assert len(first.hash) == 12

  messages.clear()
  start = time.perf_counter()
  second = sq.load_or_train(config, **kwargs)
  assert time.perf_counter() - start < 10
  assert any(m.startswith("loaded") for m in messages) and not any(m.startswith("training") for m in messages)
  assert second.hash == first.hash and second.test_accuracy == first.test_accuracy
  again = second.predict(waves, batch_size=2)
  for name, value in out.items():
    np.testing.assert_array_equal(again[name], value)

  info_path = next(tmp_path.glob("classifiers/*/info.json"))
  info = json.loads(info_path.read_text())
  assert info["hash"] == first.hash and info["steps"] == 30
  info_path.write_text("{not json")
  messages.clear()
  with caplog.at_level(logging.WARNING, logger="vae_jax"):
    third = sq.load_or_train(config, **kwargs)
  warned = [r for r in caplog.records if "unusable" in r.getMessage()]
  assert len(warned) == 1 and "\n" not in warned[0].getMessage()
  assert any(m.startswith("training") for m in messages)
  assert third.hash == first.hash  # Same seed, same recipe: the same parameters.
  assert json.loads(info_path.read_text())["hash"] == first.hash
  params_path = info_path.parent / "params.msgpack"
  flipped = bytearray(params_path.read_bytes())
  flipped[-1] ^= 1
  params_path.write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match="hash"):  # What load_or_train turns into a retrain.
    sq.load_classifier(str(info_path.parent), dataset.feature_config)

  # The reference sets: n clips each, of the real clips' lengths; scored and tabulated.
  sets = sq_evaluate.reference_sets(dataset, sr, n=4, seed=0, griffin_lim_iters=2)
  assert set(sets) == set(sq_evaluate.REFERENCE_SETS)
  lengths = [len(w) for w in sets["real"]]
  for name, clips in sets.items():
    assert [len(w) for w in clips] == lengths, name
  np.testing.assert_array_equal(sets["time_reversed"][0], sets["real"][0][::-1])
  rows = sq_evaluate.reference_rows(third, dataset, n=4, griffin_lim_iters=2,
                                    reference_embedding=sq_evaluate.train_embedding(third, dataset, n=8))
  assert set(rows["real"]) >= {"fd", "is/speaker", "class_entropy/word", "accuracy/vowel"}
  assert all(math.isfinite(v) for row in rows.values() for v in row.values())
  table = sq_evaluate.sample_quality_table(rows, third)
  assert third.hash in table.splitlines()[0] and len(table.splitlines()) == 2 + 2 + len(rows)
