"""Linear baselines on log-mel frames: PCA reconstruction and the probabilistic-PCA likelihood.

PCA is fitted on train-split frames of unnormalised natural-log mel (the domain
the reconstruction metrics are measured in), so it is the best rank-k linear
frame code for log-mel MSE. Probabilistic PCA (Tipping & Bishop, 1999) with the
same k gives an exact log-likelihood to set beside the VAE's bounds.
"""

import dataclasses
import math
from typing import Iterable

import numpy as np


def matched_components(latent_channels: int, stride: int) -> int:
  """PCA components per frame that match the VAE's latent numbers per second (at least 1)."""
  return max(1, round(latent_channels / stride))


@dataclasses.dataclass(frozen=True)
class PCA:
  """Frame PCA: mean [F], orthonormal components [k, F] and all eigenvalues [F], descending."""

  mean_F: np.ndarray
  components_KxF: np.ndarray
  eigenvalues_F: np.ndarray

  @classmethod
  def fit(cls, frames_NxF: np.ndarray, k: int) -> "PCA":
    """PCA of the rows of one array."""
    return cls.fit_chunks([frames_NxF], k)

  @classmethod
  def fit_chunks(cls, chunks: Iterable[np.ndarray], k: int) -> "PCA":
    """PCA of the rows of many [N_i, F] arrays (e.g. utterances), without concatenating them."""
    count, total_F, gram_FxF = 0, None, None
    for chunk in chunks:
      x = np.asarray(chunk, np.float64)
      if total_F is None:
        total_F, gram_FxF = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
      count += len(x)
      total_F += x.sum(0)
      gram_FxF += x.T @ x
    if not count:
      raise ValueError("PCA needs at least one frame")
    f = len(total_F)
    if not 1 <= k <= f:
      raise ValueError(f"PCA needs 1 <= k <= {f} components, got {k}")
    mean = total_F / count
    cov = gram_FxF / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return cls(mean, eigvec[:, order[:k]].T, np.maximum(eigval[order], 0.0))

  @property
  def k(self) -> int:
    return self.components_KxF.shape[0]

  def encode(self, x_TxF: np.ndarray) -> np.ndarray:
    """Component scores [T, k]."""
    return (np.asarray(x_TxF, np.float64) - self.mean_F) @ self.components_KxF.T

  def decode(self, scores_TxK: np.ndarray) -> np.ndarray:
    return self.mean_F + np.asarray(scores_TxK, np.float64) @ self.components_KxF

  def reconstruct(self, x_TxF: np.ndarray) -> np.ndarray:
    """The orthogonal projection of each frame onto the mean plus the top-k subspace."""
    return self.decode(self.encode(x_TxF))

  @property
  def noise_variance(self) -> float:
    """Probabilistic PCA's sigma^2: the mean of the discarded eigenvalues."""
    rest = self.eigenvalues_F[self.k:]
    return float(max(rest.mean(), 1e-12)) if rest.size else 1e-12

  def ppca_nll(self, x_NxF: np.ndarray) -> np.ndarray:
    """-log p(x) [N] per frame under probabilistic PCA (covariance V (L - s2) V^T + s2 I)."""
    x = np.asarray(x_NxF, np.float64) - self.mean_F
    f = x.shape[1]
    s2 = self.noise_variance
    lam_K = np.maximum(self.eigenvalues_F[:self.k], s2)
    log_det = np.sum(np.log(lam_K)) + ((f - self.k) * math.log(s2) if self.k < f else 0.0)
    proj_NxK = x @ self.components_KxF.T
    # Inside the subspace the variances are lam; across it, s2 (absent when k = F).
    resid_NxF = x - proj_NxK @ self.components_KxF
    maha = (proj_NxK ** 2 / lam_K).sum(1)
    if self.k < f:
      maha = maha + (resid_NxF ** 2).sum(1) / s2
    return 0.5 * (f * math.log(2 * math.pi) + log_det + maha)
