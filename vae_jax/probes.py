"""Linear probes: L2-regularised softmax regression on time-pooled utterance features (numpy).

Features are standardised with train-split statistics; the L2 weight is chosen
from a small grid on a held-out fifth of the train split, then the probe is
refitted on the whole train split and scored once on the test split.
"""

import contextlib
import dataclasses
from typing import Mapping, Sequence

import numpy as np
import scipy.fft
import scipy.optimize

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


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
  """A fitted softmax-regression probe."""

  mean_D: np.ndarray
  std_D: np.ndarray
  w_DxK: np.ndarray
  b_K: np.ndarray
  l2: float

  def predict(self, x_NxD: np.ndarray) -> np.ndarray:
    z = (np.asarray(x_NxD, np.float64) - self.mean_D) / self.std_D
    return np.argmax(z @ self.w_DxK + self.b_K, axis=-1)

  def accuracy(self, x_NxD: np.ndarray, y_N: np.ndarray) -> float:
    return float(np.mean(self.predict(x_NxD) == np.asarray(y_N)))


def _single_threaded_blas():
  """These matrices are small: BLAS threads only contend with the rest of the machine."""
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(1, user_api="blas")


def _fit(z_NxD: np.ndarray, y_N: np.ndarray, num_classes: int, l2: float,
         max_iter: int) -> tuple[np.ndarray, np.ndarray]:
  """Weights [D, K] and biases [K] minimising mean cross-entropy + l2 / 2 |W|^2 (L-BFGS)."""
  n, d = z_NxD.shape
  onehot_NxK = np.eye(num_classes)[y_N]

  def loss_and_grad(theta):
    w, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
    logits = z_NxD @ w + b
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss = -np.sum(onehot_NxK * log_p) / n + 0.5 * l2 * np.sum(w ** 2)
    dlogits = (np.exp(log_p) - onehot_NxK) / n
    grad_w = z_NxD.T @ dlogits + l2 * w
    return loss, np.concatenate([grad_w.ravel(), dlogits.sum(0)])

  theta0 = np.zeros(d * num_classes + num_classes)
  with _single_threaded_blas():
    res = scipy.optimize.minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_iter})
  return res.x[:d * num_classes].reshape(d, num_classes), res.x[d * num_classes:]


def fit_probe(x_NxD: np.ndarray, y_N: np.ndarray, num_classes: int, *,
              l2_grid: Sequence[float] = L2_GRID, max_iter: int = 500, seed: int = 0) -> Probe:
  """Fits a probe, choosing the L2 weight on a held-out fifth of (x, y)."""
  x = np.asarray(x_NxD, np.float64)
  y = np.asarray(y_N, np.int64)
  mean, std = x.mean(0), np.maximum(x.std(0), 1e-8)
  z = (x - mean) / std
  l2 = float(l2_grid[0])
  if len(l2_grid) > 1 and len(y) >= 10:
    perm = np.random.default_rng(seed).permutation(len(y))
    held, fit = perm[:len(y) // 5], perm[len(y) // 5:]
    acc = []
    for c in l2_grid:
      w, b = _fit(z[fit], y[fit], num_classes, float(c), max_iter)
      acc.append(float(np.mean(np.argmax(z[held] @ w + b, -1) == y[held])))
    # Ties go to the strongest regularisation.
    l2 = float(max(zip(acc, l2_grid))[1])
  w, b = _fit(z, y, num_classes, l2, max_iter)
  return Probe(mean, std, w, b, l2)


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
    probe = fit_probe(train_x, train_y, k)
    out[label] = {"accuracy": probe.accuracy(test_x, test_labels[label]),
                  "chance": chance_accuracy(train_y, test_labels[label]),
                  "classes": float(k), "l2": probe.l2}
  return out
