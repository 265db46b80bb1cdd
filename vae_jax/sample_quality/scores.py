"""Sample-quality scores on classifier outputs (numpy/scipy): Inception Score, Fréchet distance and friends.

These follow the SC09 protocol of WaveGAN, DiffWave and SaShiMi: a label
classifier trained on real speech rates generated clips by how confidently and
how evenly its heads spread them over the classes (IS, class entropy,
confidence), and by how far its penultimate embedding of them lies from that
of real clips (Fréchet distance). Probabilities are [N, K] rows that sum to 1;
entropies and KL divergences are in nats.
"""

import warnings

import numpy as np
import scipy.linalg

# Added to both covariances when their product is singular (too few samples, or a
# collapsed set), as the reference FID implementation does.
FD_EPS = 1e-6
# Probabilities are clipped here before logs: 0 log 0 counts as 0.
_TINY = 1e-12


def _probs(probs_NxK: np.ndarray) -> np.ndarray:
  p = np.asarray(probs_NxK, np.float64)
  if p.ndim != 2 or p.shape[0] == 0:
    raise ValueError(f"expected probabilities [N > 0, K], got shape {p.shape}")
  return p


def inception_score(probs_NxK: np.ndarray) -> float:
  """exp(mean_i KL(p(y|x_i) || p(y))), with p(y) the mean of the rows."""
  p = _probs(probs_NxK)
  marginal_K = p.mean(0)
  kl_N = np.sum(p * (np.log(np.maximum(p, _TINY)) - np.log(np.maximum(marginal_K, _TINY))), axis=1)
  return float(np.exp(np.mean(kl_N)))


def frechet_distance_gaussians(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                               cov2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched Gaussians: means {mu1.shape}, {mu2.shape}, "
                     f"covariances {cov1.shape}, {cov2.shape}")
  diff = mu1 - mu2
  covmean = _sqrtm(cov1 @ cov2)
  if covmean is None:
    # A singular product has no reliable square root: like the standard FID code,
    # nudge both covariances by eps I (only in this case, so regular inputs are exact).
    offset = np.eye(cov1.shape[0]) * FD_EPS
    covmean = _sqrtm((cov1 + offset) @ (cov2 + offset), allow_singular=True)
  if covmean is None:  # Non-finite covariances (from non-finite embeddings).
    return float("nan")
  # Round-off gives the square root of a PSD product a tiny imaginary part; drop it.
  covmean = np.real(covmean)
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def _sqrtm(a_DxD: np.ndarray, allow_singular: bool = False) -> np.ndarray | None:
  """scipy's matrix square root, or None when scipy finds the matrix singular or the root not finite."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
    root = scipy.linalg.sqrtm(a_DxD)
  singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
  if not np.all(np.isfinite(root)) or (singular and not allow_singular):
    return None
  return root


def gaussian_stats(emb_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and (unbiased) covariance [D, D] of a set of embeddings."""
  x = np.asarray(emb_NxD, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"expected embeddings [N >= 2, D], got shape {x.shape}")
  return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(emb_a_NxD: np.ndarray, emb_b_MxD: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two sets of embeddings."""
  return frechet_distance_gaussians(*gaussian_stats(emb_a_NxD), *gaussian_stats(emb_b_MxD))


def class_entropy(probs_NxK: np.ndarray) -> float:
  """Entropy in nats of the histogram of argmax classes (log K when perfectly balanced)."""
  p = _probs(probs_NxK)
  counts_K = np.bincount(np.argmax(p, axis=1), minlength=p.shape[1])
  freq = counts_K[counts_K > 0] / p.shape[0]
  return float(-np.sum(freq * np.log(freq)))


def mean_confidence(probs_NxK: np.ndarray) -> float:
  """Mean over the rows of the largest class probability."""
  return float(np.mean(np.max(_probs(probs_NxK), axis=1)))


def accuracy(probs_NxK: np.ndarray, labels_N: np.ndarray) -> float:
  """Fraction of rows whose argmax is the given label."""
  p = _probs(probs_NxK)
  labels = np.asarray(labels_N)
  if labels.shape != (p.shape[0],):
    raise ValueError(f"expected {p.shape[0]} labels, got shape {labels.shape}")
  return float(np.mean(np.argmax(p, axis=1) == labels))
