"""Linear probes: multinomial logistic regression on time-pooled utterance features (scikit-learn).

Features are standardised with train-split statistics; the inverse L2 strength C is
chosen by stratified 5-fold cross-validation of the log loss on the train split
(LogisticRegressionCV),
then the probe is refitted on the whole train split and scored once on the test split.
"""

import dataclasses
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import scipy.fft
import sklearn.exceptions
import sklearn.linear_model
import sklearn.model_selection
import sklearn.pipeline
import sklearn.preprocessing

C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # Inverse L2 strengths tried.


def pool_mean_std(x_TxD: np.ndarray) -> np.ndarray:
  """[2 D]: the mean and standard deviation over time of a feature sequence."""
  x = np.asarray(x_TxD, np.float64)
  return np.concatenate([x.mean(0), x.std(0)])


def mfcc(log_mel_TxF: np.ndarray, n: int = 13) -> np.ndarray:
  """MFCCs c_0..c_{n-1} [T, n]: orthonormal DCT-II of the natural-log mel."""
  n = min(n, np.shape(log_mel_TxF)[-1])
  return scipy.fft.dct(np.asarray(log_mel_TxF, np.float64), type=2, norm="ortho", axis=-1)[..., :n]


@dataclasses.dataclass(frozen=True)
class Probe:
  """A fitted probe: standardisation and multinomial logistic regression, with its chosen C."""

  pipeline: sklearn.pipeline.Pipeline
  c: float  # Inverse L2 strength that cross-validation chose.

  def predict(self, x_NxD: np.ndarray) -> np.ndarray:
    return self.pipeline.predict(np.asarray(x_NxD, np.float64))

  def accuracy(self, x_NxD: np.ndarray, y_N: np.ndarray) -> float:
    return float(np.mean(self.predict(x_NxD) == np.asarray(y_N)))


def fit_probe(x_NxD: np.ndarray, y_N: np.ndarray, *, cs: Sequence[float] = C_GRID,
              folds: int = 5, max_iter: int = 1000, seed: int = 0) -> Probe:
  """Fits a probe, choosing C by stratified k-fold cross-validation on (x, y)."""
  x, y = np.asarray(x_NxD, np.float64), np.asarray(y_N, np.int64)
  # Every class needs an example per fold; with fewer, fall back to as many folds as allow it.
  folds = max(2, min(folds, int(np.bincount(y)[np.bincount(y) > 0].min())))
  cv = sklearn.model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
  clf = sklearn.linear_model.LogisticRegressionCV(Cs=list(cs), l1_ratios=(0.0,), cv=cv, max_iter=max_iter,
                                                  use_legacy_attributes=False,
                                                  scoring="neg_log_loss")
  pipeline = sklearn.pipeline.make_pipeline(sklearn.preprocessing.StandardScaler(), clf)
  with warnings.catch_warnings():  # A probe that needs more iterations is still a probe.
    warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
    pipeline.fit(x, y)
  return Probe(pipeline, float(np.ravel(clf.C_)[0]))


def chance_accuracy(train_y: np.ndarray, test_y: np.ndarray) -> float:
  """Test accuracy of always answering the most frequent train-split class."""
  majority = np.bincount(np.asarray(train_y)).argmax()
  return float(np.mean(np.asarray(test_y) == majority))


def probe_labels(train_x: np.ndarray, test_x: np.ndarray, train_labels: Mapping[str, np.ndarray],
                 test_labels: Mapping[str, np.ndarray], label_names: Mapping[str, Sequence[str]],
                 ) -> dict[str, dict[str, float]]:
  """{label: {'accuracy', 'chance', 'classes', 'l2'}} for every label of the corpus."""
  out = {}
  for label, train_y in train_labels.items():
    k = max(len(label_names.get(label, ())), int(np.max(train_y)) + 1, int(np.max(test_labels[label])) + 1)
    if len(np.unique(train_y)) < 2:  # One class: nothing to learn, the majority is always right.
      accuracy, c = chance_accuracy(train_y, test_labels[label]), math.nan
    else:
      probe = fit_probe(train_x, train_y)
      accuracy, c = probe.accuracy(test_x, test_labels[label]), probe.c
    out[label] = {"accuracy": accuracy, "chance": chance_accuracy(train_y, test_labels[label]),
                  "classes": float(k), "c": c}
  return out
