"""Training the latent prior on a frozen VAE: its posterior over whole utterances, one pure step.

The VAE's encoder runs once over both splits; each utterance becomes a sequence of
posterior means and log-variances (`latent_split`). Every step draws fresh latents
z ~ q(z | x) from them, so the prior learns the aggregate posterior, which is the
prior that minimises the ELBO's KL term for this encoder.
"""

import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import fileio, losses
from vae_jax.audio.features import Normalizer
from vae_jax.data.loader import TrainLoader, padded_batch
from vae_jax.data.store import Split, load_dataset
from vae_jax.errors import ConfigError
from vae_jax.eval import bounds
from vae_jax.inference import Trained, load_trained
from vae_jax.prior.model import LatentPrior, mixture_log_prob
from vae_jax.rng import example_keys, stream_keys, utterance_keys
from vae_jax.state import TrainState, make_optimizer
from vae_jax.train import Task, apply_update

# Latent sequences are padded to a multiple of this many frames: few programs to compile.
LENGTH_MULTIPLE = 8


def params_hash(params: Any, extra: str = "") -> str:
  """16 hex digits of sha256 over `extra` and a tree's leaf paths, shapes, dtypes and values."""
  h = hashlib.sha256(extra.encode())
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda x: str(x[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def load_vae(config: ml_collections.ConfigDict) -> Trained:
  """The VAE run named by config.prior (a one-line CheckpointError if it is not there)."""
  return load_trained(config.prior.vae_workdir, config.prior.vae_step or None)


def latent_split(vae: Trained, split: Split, key: jax.Array) -> Split:
  """The split's posterior, one row per latent frame: [mean (C), log-variance (C)]."""
  p = bounds.run_split(vae, split, key, decode=False, batch_size=vae.config.eval.batch_size,
                         length_multiple=vae.length_multiple)
  rows = [np.concatenate([m, lv], -1).astype(np.float32) for m, lv in zip(p.mean, p.logvar)]
  offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  return Split(split.names, split.paths, split.labels, np.concatenate(rows), offsets)


def label_classes(config: ml_collections.ConfigDict, label_names: dict) -> tuple[int, ...]:
  """Classes of each conditioning label; ConfigError naming the labels the corpus has."""
  for name in config.prior.conditions:
    if name not in label_names:
      have = ", ".join(label_names) or "none"
      raise ConfigError(f"config field prior.conditions names {name!r}, which this corpus does not "
                        f"label (its labels: {have})")
  return tuple(len(label_names[n]) for n in config.prior.conditions)


def build_prior(config: ml_collections.ConfigDict, latent_channels: int,
                num_classes: tuple[int, ...]) -> LatentPrior:
  p = config.prior
  # Dropout only acts in training; runs saved before the field existed had none.
  return LatentPrior(latent_channels=latent_channels, num_classes=num_classes,
                     max_frames=p.max_latent_frames, width=p.width, depth=p.depth, heads=p.heads,
                     mlp_ratio=p.mlp_ratio, num_mixtures=p.num_mixtures, dropout=p.get("dropout", 0.0))


def create_prior_state(config: ml_collections.ConfigDict, model: LatentPrior, key: jax.Array):
  """Initial prior parameters (from `key`) and optimiser state."""
  z = jnp.zeros((1, LENGTH_MULTIPLE, model.latent_channels))
  labels = jnp.zeros((1, len(model.num_classes)), jnp.int32)
  params = jax.jit(model.init)(key, z, jnp.ones((1,), jnp.int32), labels)["params"]
  tx, _ = make_optimizer(config)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  return state.replace(step=jnp.zeros((), jnp.int32))


def split_stats(stats_BxTx2C: jax.Array) -> tuple[jax.Array, jax.Array]:
  c = stats_BxTx2C.shape[-1] // 2
  return stats_BxTx2C[..., :c], stats_BxTx2C[..., c:]


def batch_labels(batch: dict[str, jax.Array], conditions, batch_size: int) -> jax.Array:
  """[B, L] class indices of the conditioning labels of a batch."""
  if not conditions:
    return jnp.zeros((batch_size, 0), jnp.int32)
  return jnp.stack([batch[f"labels/{n}"] for n in conditions], -1).astype(jnp.int32)


def prior_train_step(state, batch: dict[str, jax.Array], key: jax.Array, axis_name: str | None = None,
                     *, model: LatentPrior, config: ml_collections.ConfigDict):
  """One maximum-likelihood update of the prior on fresh posterior draws, averaged over `axis_name`."""
  psum = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  mean, logvar = split_stats(batch["mel"])
  mask = batch["mask"]
  b = mean.shape[0]
  device = jax.lax.axis_index(axis_name) if axis_name else 0
  step_key = jax.random.fold_in(key, state.step)
  keys = example_keys(step_key, device * b + jnp.arange(b))
  # Named streams per example: 0 draws the posterior sample, 1 drops labels, 2 the dropout masks.
  k_post, k_drop, k_dropout = stream_keys(keys, 0), stream_keys(keys, 1), stream_keys(keys, 2)
  z = losses.reparameterize(k_post, mean, logvar) * mask[..., None]
  labels = batch_labels(batch, config.prior.conditions, b)
  null = jnp.asarray(model.num_classes, jnp.int32)
  drop = jax.vmap(lambda k: jax.random.bernoulli(k, config.prior.label_dropout, null.shape))(k_drop)
  labels = jnp.where(drop, null, labels)
  lengths = mask.sum(-1).astype(jnp.int32)
  frames = psum(mask.sum())

  def loss_fn(params):
    p = model.apply({"params": params}, z, lengths, labels, k_dropout)
    return -(mixture_log_prob(z, p) * mask).sum() / frames

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  grads, loss = psum(grads), psum(loss)
  new_state, update_metrics = apply_update(state, grads, loss, config)
  return new_state, {"train/loss": loss, "train/nll_per_latent_frame": loss, "train/frames": frames,
                     **update_metrics}


def make_log_prior(model: LatentPrior):
  """Jitted (params, z_BxTxC, mask_BxT, labels_BxL) -> log p(z | labels, T) per example [B]."""

  @jax.jit
  def log_prior(params, z_BxTxC, mask_BxT, labels_BxL):
    lengths = mask_BxT.sum(-1).astype(jnp.int32)
    p = model.apply({"params": params}, z_BxTxC * mask_BxT[..., None], lengths, labels_BxL)
    return (mixture_log_prob(z_BxTxC, p) * mask_BxT).sum(-1)

  return log_prior


def identity_normalizer(width: int) -> Normalizer:
  return Normalizer(np.zeros(width, np.float32), np.ones(width, np.float32))


def evaluate_prior(log_prior, params, latents: Split, mel_frames: float, conditions, num_classes,
                   key: jax.Array, *, num_samples: int, batch_size: int = 64) -> dict[str, float]:
  """Test-split cross-entropy and Monte-Carlo KL(q || p_psi) against the analytic KL(q || N(0, I)).

  Per mel frame, like the VAE's eval/kl, so the two rates compare directly. The bound
  uses the unconditional prior (every label unknown); `kl_conditional` gives it the labels.
  """
  sums = {"log_p": 0.0, "log_p_cond": 0.0, "entropy": 0.0, "kl_standard": 0.0, "latent_frames": 0.0}
  norm = identity_normalizer(latents.num_mels)
  order = np.argsort(latents.lengths, kind="stable")
  null = np.asarray(num_classes, np.int32)
  for start in range(0, len(order), batch_size):
    batch = padded_batch(latents, order[start:start + batch_size], norm, batch_size, LENGTH_MULTIPLE)
    valid = batch["index"] >= 0
    mean, logvar = split_stats(batch["mel"])
    m = batch["mask"]
    idx = np.maximum(batch["index"], 0)
    given = np.stack([latents.labels[n][idx] for n in conditions], -1).astype(np.int32) if conditions \
        else np.zeros((batch_size, 0), np.int32)
    unknown = np.broadcast_to(null, given.shape)
    for s in range(num_samples):
      keys = utterance_keys(jax.random.fold_in(key, s), jnp.asarray(batch["index"]))
      eps = np.asarray(jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(keys))
      z = ((mean + np.exp(0.5 * logvar) * eps) * m[..., None]).astype(np.float32)
      sums["log_p"] += float(np.asarray(log_prior(params, z, m, unknown))[valid].sum()) / num_samples
      if conditions:
        sums["log_p_cond"] += float(np.asarray(log_prior(params, z, m, given))[valid].sum()) / num_samples
    ent = 0.5 * (np.log(2 * np.pi * np.e) + logvar) * m[..., None]
    sums["entropy"] += float(ent[valid].sum())
    sums["kl_standard"] += float((np.asarray(losses.kl_diag_gaussian(mean, logvar)) * m[..., None])[valid].sum())
    sums["latent_frames"] += float(m[valid].sum())
  out = {
      "eval/loss": -sums["log_p"] / sums["latent_frames"],  # Cross-entropy, nats per latent frame.
      "eval/kl": (-sums["log_p"] - sums["entropy"]) / mel_frames,
      "eval/kl_standard": sums["kl_standard"] / mel_frames,
  }
  if conditions:
    out["eval/kl_conditional"] = (-sums["log_p_cond"] - sums["entropy"]) / mel_frames
  return out


def length_table(latents: Split, mel_lengths: np.ndarray, conditions) -> dict[str, Any]:
  """Train-split lengths (mel and latent frames) with their labels, for drawing sample lengths."""
  return {"mel_frames": [int(x) for x in mel_lengths], "latent_frames": [int(x) for x in latents.lengths],
          "labels": {n: [int(x) for x in latents.labels[n]] for n in conditions}}


def make_task(config: ml_collections.ConfigDict, workdir: str, meta: dict | None, devices,
              base_key: jax.Array, signals):
  """The prior objective for the shared training loop (vae_jax.train)."""
  vae = load_vae(config)
  vae_hash = params_hash(vae.params)
  if meta and meta.get("vae", {}).get("params_hash") not in (None, vae_hash):
    raise ConfigError(f"{workdir} holds a prior trained on other VAE parameters than "
                      f"{vae.workdir} step {vae.step} now has: use a new --workdir")
  data = load_dataset(vae.config, vae.normalizer, process_index=jax.process_index(),
                      process_count=jax.process_count())
  num_classes = label_classes(config, data.label_names)
  signals.check()
  encode_key = jax.random.fold_in(base_key, 3)
  train, test = (latent_split(vae, s, jax.random.fold_in(encode_key, i))
                 for i, s in enumerate((data.train, data.test)))
  longest = int(max(train.lengths.max(), test.lengths.max()))
  if longest > config.prior.max_latent_frames:
    raise ConfigError(f"config field prior.max_latent_frames={config.prior.max_latent_frames} is out of "
                      f"range: the corpus has utterances of {longest} latent frames; raise it")
  signals.check()
  model = build_prior(config, vae.latent_channels, num_classes)
  state = create_prior_state(config, model, jax.random.fold_in(base_key, 0))
  padded = -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
  # Whole utterances: a crop as long as the longest one never cuts; each batch is padded only
  # to its own longest utterance (a multiple of LENGTH_MULTIPLE), 2-3x fewer frames on FSDD.
  loader = TrainLoader(train, identity_normalizer(train.num_mels), global_batch=config.train.batch_size,
                       num_local_devices=len(devices), segment_frames=padded, seed=config.seed,
                       prefetch=config.data.prefetch, process_index=jax.process_index(),
                       process_count=jax.process_count(), labels=config.prior.conditions,
                       length_multiple=LENGTH_MULTIPLE)
  log_prior = make_log_prior(model)
  mel_frames = float(data.test.lengths.sum())

  def evaluate_fn(step: int, params, writer) -> dict[str, float]:
    del step, writer
    return evaluate_prior(log_prior, params, test, mel_frames, config.prior.conditions, num_classes,
                          jax.random.fold_in(base_key, 2), num_samples=config.prior.eval_samples)

  def summary(m: dict[str, float]) -> str:
    return (f"prior cross-entropy {m['eval/loss']:.3f} nats/latent frame; KL {m['eval/kl']:.3f} "
            f"nats/frame (N(0, I): {m['eval/kl_standard']:.3f})")

  task_meta = {
      "vae": {"workdir": fileio.absolute(vae.workdir), "step": vae.step, "params_hash": vae_hash},
      "label_names": {n: list(data.label_names[n]) for n in config.prior.conditions},
      "lengths": length_table(train, data.train.lengths, config.prior.conditions),
  }
  step_fn = functools.partial(prior_train_step, model=model, config=config)
  # The prior's frames are latent frames.
  return Task(state, step_fn, loader, evaluate_fn, summary, task_meta,
              data.feature_config.frames_per_second / vae.stride)
