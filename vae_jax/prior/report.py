"""Generation report of a prior run: the bound with the learned prior, and sample quality (SC09 protocol).

Sample quality follows the protocol WaveGAN, DiffWave and SaShiMi report on SC09: a
label classifier trained on the real train split (vae_jax.sample_quality) scores
sets of clips of the same size, here the whole test split's count: Inception Score
per label head, the Fréchet distance of the classifier's embeddings to those of
the real test split, class entropy, confidence, and, for conditional draws, the
accuracy of the requested class. Reference rows bracket the samples: real clips
(train-split clips for the FD, since the test split is the FD's reference), the
Griffin-Lim re-synthesis of the true test mel (the ceiling of this inverter),
white noise and time-reversed speech, and the VAE's reconstructions of the real
train clips (the FD a prior over this VAE can hope for: its draws decode the same way).
"""

import logging
import time
from typing import Any

import jax
import numpy as np

from vae_jax.audio import io as audio_io
from vae_jax.data.store import Dataset
from vae_jax.eval import bounds, generate
from vae_jax.prior.trained import Draw, TrainedPrior
from vae_jax.sample_quality import classifier as classifier_lib
from vae_jax.sample_quality import evaluate as sq

log = logging.getLogger("vae_jax")
RECONSTRUCTION_ROW = "VAE reconstruction of the real train clips"


def learned_bound(prior: TrainedPrior, data: Dataset, num_samples: int, seed: int = 0) -> dict[str, float]:
  """Test-split -ELBO (Monte Carlo) and -IWAE with the learned prior, nats per frame (as eval/neg_elbo)."""
  vae = prior.vae_run
  p = bounds.run_split(vae, data.test, jax.random.fold_in(jax.random.key(seed), 3), num_samples=num_samples,
                         decode=False, batch_size=vae.config.eval.batch_size,
                         length_multiple=vae.length_multiple, log_prior=prior.log_prior_fn())
  frames = p.frames_N.sum()
  neg_elbo = -p.log_weights_NxK.mean(1).sum() / frames
  nll = p.nll_N.sum() / frames
  return {"eval/prior/neg_elbo": neg_elbo, "eval/prior/nll": nll, "eval/prior/kl": neg_elbo - nll,
          "eval/prior/neg_iwae": -bounds.log_mean_exp(p.log_weights_NxK, axis=1).sum() / frames,
          "eval/prior/iwae_samples": float(num_samples)}


def sample_sets(prior: TrainedPrior, data: Dataset, n: int, seed: int, guidance: float,
                temperature: float) -> dict[str, tuple[list[Draw] | list[np.ndarray], dict]]:
  """{row: (log-mels or draws, requested labels)} for the prior's sample rows."""
  vae, names = prior.vae_run, prior.label_names
  rng = np.random.default_rng([seed % 2**32, 11])
  lengths = np.array([prior.draw_lengths(1, {}, rng)[0] for _ in range(n)])
  rows: dict[str, Any] = {
      # At temperature 1 whatever the prior's: the reference is the VAE's own prior.
      "N(0, I) prior": (generate.standard_prior_mels(vae, lengths, seed, 1.0), {}),
      "learned prior, unconditional": (prior.sample(n, seed=seed, temperature=temperature), {}),
  }
  if names:
    # Ancestral sampling of the joint: (labels, length) of a random train utterance, then z given
    # them (guidance 1), an unconditional sample of p(c) p(T | c) p(z | c, T).
    pick = rng.integers(0, len(prior.lengths["mel_frames"]), n)
    conds = [{k: int(prior.lengths["labels"][k][i]) for k in names} for i in pick]
    frames = np.asarray(prior.lengths["mel_frames"])[pick]
    rows["learned prior, labels drawn from the train split"] = (
        prior.sample(n, conditions=conds, mel_frames=frames, guidance=1.0, temperature=temperature,
                     seed=seed), {})
    if guidance != 1.0:  # The same labels, guided: what classifier-free guidance buys without a request.
      rows[f"learned prior, labels drawn from the train split (guidance {guidance:g})"] = (
          prior.sample(n, conditions=conds, mel_frames=frames, guidance=guidance, temperature=temperature,
                       seed=seed), {})
  asks = {label: np.arange(n) % len(names[label]) for label in names}
  for label, classes in asks.items():
    conds = [{label: int(c)} for c in classes]
    rows[f"learned prior, {label} given (guidance {guidance:g})"] = (
        prior.sample(n, conditions=conds, guidance=guidance, temperature=temperature, seed=seed),
        {label: classes})
  if len(asks) > 1:
    rng_c = np.random.default_rng([seed % 2**32, 12])
    both = {label: rng_c.integers(0, len(names[label]), n) for label in names}
    conds = [{label: int(both[label][i]) for label in names} for i in range(n)]
    rows[f"learned prior, {' and '.join(names)} given (guidance {guidance:g})"] = (
        prior.sample(n, conditions=conds, guidance=guidance, temperature=temperature, seed=seed), both)
  return rows


def sample_quality(prior: TrainedPrior, data: Dataset, *, n: int | None = None, seed: int = 0,
                   guidance: float | None = None, temperature: float | None = None,
                   classifier_steps: int = classifier_lib.Hyperparams.steps,
                   ) -> tuple[dict[str, dict[str, float]], classifier_lib.Classifier]:
  """Rows of sample-quality scores: reference sets, N(0, I) samples and learned-prior samples."""
  vae = prior.vae_run
  guidance = prior.config.prior.guidance if guidance is None else guidance
  temperature = prior.config.prior.temperature if temperature is None else temperature
  n = len(data.test) if not n else min(n, len(data.test))
  clf = classifier_lib.load_or_train(vae.config, log=lambda line: log.info("%s", line),
                                     steps=classifier_steps)
  t0 = time.perf_counter()
  refs = sq.reference_sets(data, clf.sample_rate, n, seed, vae.config.eval.griffin_lim_iters)
  idx = sq.reference_indices(data, n, seed)
  reference = clf.predict(refs["real"])["embedding"]
  true = {k: data.test.labels[k][idx] for k in clf.labels if k in data.test.labels}
  rows = {}
  for name, waves in refs.items():
    rows[name] = sq.score_set(clf, waves, true, reference_embedding=reference)
  train_idx = np.sort(np.random.default_rng(seed).choice(len(data.train), n, replace=False))
  train_waves = [audio_io.read_audio(data.train.paths[i], clf.sample_rate) for i in train_idx]
  train_true = {k: data.train.labels[k][train_idx] for k in true}
  rows["real"]["fd"] = sq.score_set(clf, train_waves, train_true, reference_embedding=reference)["fd"]
  # The same train clips through the VAE (posterior mean, decoder, Griffin-Lim): the lowest FD
  # a prior over this VAE's latents can be expected to reach, since its draws decode the same way.
  recon = [vae.reconstruct(data.train.utterance(i)) for i in train_idx]
  recon_waves = generate.synthesize(vae, recon, [len(w) for w in train_waves], seed=seed)
  rows[RECONSTRUCTION_ROW] = sq.score_set(clf, recon_waves, train_true, reference_embedding=reference)
  log.info("reference sets: %.0f s", time.perf_counter() - t0)
  for name, (items, requested) in sample_sets(prior, data, n, seed, guidance, temperature).items():
    t0 = time.perf_counter()
    mels = [d.log_mel if isinstance(d, Draw) else d for d in items]
    waves = generate.synthesize(vae, mels, seed=seed)
    rows[name] = sq.score_set(clf, waves, requested, reference_embedding=reference)
    log.info("%s: %.0f s", name, time.perf_counter() - t0)
  return rows, clf


def generation_report(prior: TrainedPrior, *, num_samples: int, n: int | None = None, seed: int = 0,
                      guidance: float | None = None, temperature: float | None = None,
                      data_path: str | None = None,
                      classifier_steps: int = classifier_lib.Hyperparams.steps) -> tuple[dict[str, Any], list[str]]:
  """(metrics, markdown lines) of the learned-prior bound and the sample-quality table."""
  data = prior.vae_run.dataset(data_path)
  m = learned_bound(prior, data, num_samples, seed) if num_samples else {}
  rows, clf = sample_quality(prior, data, n=n, seed=seed, guidance=guidance, temperature=temperature,
                             classifier_steps=classifier_steps)
  for row, scores in rows.items():
    m.update({f"sample_quality/{row}/{k}": v for k, v in scores.items()})
  m["sample_quality/classifier_hash"] = clf.hash
  lines = [f"## Generation (prior `{prior.workdir}`, step {prior.step})", ""]
  if m.get("eval/prior/neg_elbo") is not None:
    lines += [f"Test-split bound with the learned prior, nats per frame (K = {num_samples} posterior "
              f"samples): −ELBO {m['eval/prior/neg_elbo']:.3f} (reconstruction {m['eval/prior/nll']:.3f}, "
              f"KL {m['eval/prior/kl']:.3f}, Monte Carlo), −IWAE {m['eval/prior/neg_iwae']:.3f}. "
              "The N(0, I) bound of the same VAE is in the first section; both are densities of the "
              "features given the utterance's length.", ""]
  lines += [sq.sample_quality_table(rows, clf), ""]
  return m, lines
