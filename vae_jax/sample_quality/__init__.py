"""Sample-quality metrics for generated speech (SC09 protocol): a waveform classifier, IS, FD."""

from vae_jax.sample_quality.classifier import (  # noqa: F401
    AudioClassifier, Classifier, Hyperparams, load_classifier, load_or_train, save_classifier,
    train_classifier)
from vae_jax.sample_quality.evaluate import (  # noqa: F401
    REFERENCE_SETS, reference_indices, reference_rows, reference_sets, sample_quality_table,
    score_set, train_embedding)
from vae_jax.sample_quality.scores import (  # noqa: F401
    accuracy, class_entropy, frechet_distance, frechet_distance_gaussians, gaussian_stats,
    inception_score, mean_confidence)
