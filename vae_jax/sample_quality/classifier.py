"""A waveform label classifier, trained on the train split, whose heads and embedding score samples.

  classifier = load_or_train(config)                 # cached under <cache>/classifiers/<key>/
  out = classifier.predict(waves)                    # {"embedding": [N, 128], "probs/digit": [N, 10], ...}

The model reads raw waveforms through the project's JAX log-mel front end
(`vae_jax.audio.spectral.log_mel`, the corpus's FeatureConfig), normalises each mel
bin with the train-split mean and std, runs a small temporal conv net, pools
over the valid frames (masked mean and max) into a 128-d embedding and has one
softmax head per corpus label. It is trained from random crops of the train
split only, so scoring a model's samples never sees the test split; the test
split only measures the classifier's accuracy.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.audio import io as audio_io
from vae_jax.audio import spectral
from vae_jax.audio.features import FeatureConfig
from vae_jax.data.corpora import build_corpus, cache_root
from vae_jax.data.store import Dataset, cache_key, load_dataset
from vae_jax.errors import DataError

_log = logging.getLogger("vae_jax")

# Bumped whenever the model, the training recipe or the saved layout changes: old
# classifiers are then retrained, never misread.
FORMAT_VERSION = 1
# predict() pads clips to a multiple of this, so a few programs serve all lengths.
PAD_SECONDS = 0.25


@dataclasses.dataclass(frozen=True)
class Hyperparams:
  """Everything that shapes a trained classifier besides the corpus; part of its cache key."""

  seed: int = 0
  steps: int = 1000  # 0.997 digit / 1.000 speaker test accuracy on FSDD in about a minute.
  batch_size: int = 32
  crop_seconds: float = 1.5  # FSDD clips are 0.2-2.3 s; most fit whole.
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 1e-2
  gain_db: tuple[float, float] = (-12.0, 6.0)  # Loudness varies across models and speakers.
  channels: tuple[int, ...] = (64, 128, 128, 128)
  strides: tuple[int, ...] = (2, 2, 1, 2)
  kernel_size: int = 5
  embed_dim: int = 128


class AudioClassifier(nn.Module):
  """Waveform -> log-mel -> temporal conv net -> pooled embedding -> one softmax head per label."""

  feature_config: FeatureConfig
  num_classes: tuple[tuple[str, int], ...]  # (label, K) per head.
  channels: tuple[int, ...] = (64, 128, 128, 128)
  strides: tuple[int, ...] = (2, 2, 1, 2)
  kernel_size: int = 5
  embed_dim: int = 128

  @nn.compact
  def __call__(self, wave_BxN: jax.Array, num_samples_B: jax.Array, mean_F: jax.Array,
               std_F: jax.Array) -> dict[str, jax.Array]:
    """{'embedding': [B, embed_dim], 'logits/<label>': [B, K]} of the first num_samples_B samples."""
    fc = self.feature_config
    x_BxTxF = (spectral.log_mel(wave_BxN, fc) - mean_F) / std_F
    valid_B = 1 + (num_samples_B + 2 * (fc.n_fft // 2) - fc.n_fft) // fc.hop_length
    h = _masked(x_BxTxF, valid_B)
    # Fixed left/right padding (not 'SAME', whose split depends on T) keeps each valid
    # output independent of how much padding the batch has.
    pad = ((self.kernel_size - 1) // 2, self.kernel_size - 1 - (self.kernel_size - 1) // 2)
    for i, (c, s) in enumerate(zip(self.channels, self.strides)):
      h = nn.Conv(c, (self.kernel_size,), strides=(s,), padding=[pad], name=f"conv{i}")(h)
      h = nn.gelu(nn.LayerNorm(name=f"norm{i}")(h))
      valid_B = -(-valid_B // s)
      h = _masked(h, valid_B)
    mask_BxTx1 = (jnp.arange(h.shape[1])[None, :] < valid_B[:, None])[..., None]
    mean_BxC = jnp.sum(h, axis=1) / jnp.maximum(valid_B, 1)[:, None].astype(h.dtype)
    max_BxC = jnp.max(jnp.where(mask_BxTx1, h, jnp.finfo(h.dtype).min), axis=1)
    emb_BxE = nn.gelu(nn.Dense(self.embed_dim, name="embed")(jnp.concatenate([mean_BxC, max_BxC], -1)))
    out = {"embedding": emb_BxE}
    for label, k in self.num_classes:
      out[f"logits/{label}"] = nn.Dense(k, name=f"head_{label}")(emb_BxE)
    return out


def _masked(h_BxTxC: jax.Array, valid_B: jax.Array) -> jax.Array:
  """Zeroes frames at or past each row's valid count."""
  mask_BxT = jnp.arange(h_BxTxC.shape[1])[None, :] < valid_B[:, None]
  return jnp.where(mask_BxT[..., None], h_BxTxC, 0.0)


def build_module(fc: FeatureConfig, label_names: Mapping[str, Sequence[str]],
                 hp: Hyperparams) -> AudioClassifier:
  """The classifier module for a corpus's labels."""
  return AudioClassifier(fc, tuple((k, len(v)) for k, v in label_names.items()), hp.channels,
                         hp.strides, hp.kernel_size, hp.embed_dim)


@dataclasses.dataclass
class Classifier:
  """A trained classifier: module, parameters, train-split normaliser, test accuracy and parameter hash."""

  module: AudioClassifier
  params: Any
  mean_F: np.ndarray
  std_F: np.ndarray
  label_names: dict[str, tuple[str, ...]]
  test_accuracy: dict[str, float]
  hash: str
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def labels(self) -> tuple[str, ...]:
    return tuple(self.label_names)

  @property
  def sample_rate(self) -> int:
    return self.module.feature_config.sample_rate

  @functools.cached_property
  def _forward(self) -> Callable:
    mean_F, std_F = jnp.asarray(self.mean_F), jnp.asarray(self.std_F)

    @jax.jit
    def forward(params, wave_BxN, num_samples_B):
      out = self.module.apply(params, wave_BxN, num_samples_B, mean_F, std_F)
      probs = {f"probs/{k}": jax.nn.softmax(out[f"logits/{k}"]) for k in self.label_names}
      return {"embedding": out["embedding"], **probs}

    return forward

  def predict(self, waves: Sequence[np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """{'embedding': [N, E], 'probs/<label>': [N, K]} of mono clips at `sample_rate`, any lengths.

    Clips are batched by length and padded to a multiple of PAD_SECONDS (masked),
    so few programs compile. Non-finite samples are replaced by 0, and samples
    beyond +-audio_io.MAX_ABS_SAMPLE (garbage, not audio) are clipped there, so any
    array yields finite scores.
    """
    clean = [_clean(w) for w in waves]
    out = {"embedding": np.zeros((len(clean), self.module.embed_dim), np.float32)}
    out.update({f"probs/{k}": np.zeros((len(clean), len(v)), np.float32)
                for k, v in self.label_names.items()})
    block = max(1, round(PAD_SECONDS * self.sample_rate))
    order = np.argsort([len(w) for w in clean], kind="stable")
    for b in range(0, len(clean), batch_size):
      idx = order[b:b + batch_size]
      # Rows padded to a power of two (at most batch_size): few batch shapes to compile.
      rows = min(batch_size, 1 << (len(idx) - 1).bit_length())
      width = block * max(1, -(-max(len(clean[i]) for i in idx) // block))
      wave_BxN = np.zeros((rows, width), np.float32)
      num_B = np.zeros((rows,), np.int32)
      for j, i in enumerate(idx):
        wave_BxN[j, :len(clean[i])], num_B[j] = clean[i], len(clean[i])
      result = self._forward(self.params, wave_BxN, num_B)
      for name, value in result.items():
        out[name][idx] = np.asarray(value)[:len(idx)]
    return out


def _clean(wave: np.ndarray) -> np.ndarray:
  w = np.nan_to_num(np.asarray(wave, np.float32).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
  return np.clip(w, -audio_io.MAX_ABS_SAMPLE, audio_io.MAX_ABS_SAMPLE)


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class _TrainData:
  """The train split's waveforms back to back (plus one crop of zeros), offsets, lengths and labels."""

  waves_S: np.ndarray
  offsets_N: np.ndarray
  lengths_N: np.ndarray
  labels: dict[str, np.ndarray]


def _train_data(dataset: Dataset, crop: int) -> _TrainData:
  sr = dataset.feature_config.sample_rate
  waves = [audio_io.read_audio(p, sr) for p in dataset.train.paths]
  lengths = np.asarray([len(w) for w in waves], np.int32)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
  # The trailing zeros let every crop be a fixed-size slice, never clamped at the end.
  waves_S = np.concatenate(waves + [np.zeros(crop, np.float32)]).astype(np.float32)
  return _TrainData(waves_S, offsets, lengths, dict(dataset.train.labels))


def _make_step(module: AudioClassifier, tx: optax.GradientTransformation, hp: Hyperparams,
               crop: int) -> Callable:
  """The jitted train step (params, opt_state, data, mean, std, key) -> (params, opt_state, loss)."""
  labels = [k for k, _ in module.num_classes]

  def batch(data, key):
    k_idx, k_start, k_gain = jax.random.split(key, 3)
    idx_B = jax.random.randint(k_idx, (hp.batch_size,), 0, data["lengths"].shape[0])
    len_B = data["lengths"][idx_B]
    # A random window of clips longer than the crop; shorter clips start at 0, zero-padded.
    slack_B = jnp.maximum(len_B - crop, 0)
    start_B = jnp.floor(jax.random.uniform(k_start, (hp.batch_size,)) * (slack_B + 1)).astype(jnp.int32)
    cut = jax.vmap(lambda o: jax.lax.dynamic_slice(data["waves"], (o,), (crop,)))
    num_B = jnp.minimum(len_B, crop)
    wave_BxN = jnp.where(jnp.arange(crop)[None, :] < num_B[:, None],
                         cut(data["offsets"][idx_B] + start_B), 0.0)
    gain_db_B = jax.random.uniform(k_gain, (hp.batch_size,), minval=hp.gain_db[0], maxval=hp.gain_db[1])
    wave_BxN = wave_BxN * (10.0 ** (gain_db_B / 20.0))[:, None]
    return wave_BxN, num_B, {k: data["labels"][k][idx_B] for k in labels}

  def loss_fn(params, wave_BxN, num_B, y, mean_F, std_F):
    out = module.apply(params, wave_BxN, num_B, mean_F, std_F)
    # All heads at once: the sum of their mean cross-entropies.
    return sum(optax.softmax_cross_entropy_with_integer_labels(out[f"logits/{k}"], y[k]).mean()
               for k in labels)

  @jax.jit
  def step(params, opt_state, data, mean_F, std_F, key):
    wave_BxN, num_B, y = batch(data, key)
    loss, grads = jax.value_and_grad(loss_fn)(params, wave_BxN, num_B, y, mean_F, std_F)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train_classifier(config, *, seed: int = 0, steps: int = Hyperparams.steps,
                     batch_size: int = Hyperparams.batch_size, dataset: Dataset | None = None,
                     log: Callable[[str], None] = print) -> Classifier:
  """Trains the classifier on the train split of `config`'s corpus and scores it on the test split."""
  hp = Hyperparams(seed=seed, steps=steps, batch_size=batch_size)
  dataset = dataset if dataset is not None else load_dataset(config)
  if not dataset.label_names:
    raise DataError(f"the {dataset.corpus} corpus has no labels for a sample-quality classifier "
                    "(a folder corpus needs speaker subdirectories)")
  fc = dataset.feature_config
  module = build_module(fc, dataset.label_names, hp)
  crop = max(fc.win_length, round(hp.crop_seconds * fc.sample_rate))
  start = time.perf_counter()
  data = _train_data(dataset, crop)
  mean_F, std_F = jnp.asarray(dataset.normalizer.mean), jnp.asarray(dataset.normalizer.std)
  init_key, base = jax.random.split(jax.random.key(seed))
  params = module.init(init_key, jnp.zeros((1, crop)), jnp.full((1,), crop), mean_F, std_F)
  warmup = min(hp.warmup_steps, steps // 4)  # Short test runs still get a cosine decay.
  schedule = optax.warmup_cosine_decay_schedule(0.0, hp.learning_rate, warmup, max(steps, warmup + 1))
  tx = optax.adamw(schedule, weight_decay=hp.weight_decay)
  opt_state = tx.init(params)
  step_fn = _make_step(module, tx, hp, crop)
  device_data = {"waves": jnp.asarray(data.waves_S), "offsets": jnp.asarray(data.offsets_N),
                 "lengths": jnp.asarray(data.lengths_N),
                 "labels": {k: jnp.asarray(v) for k, v in data.labels.items()}}
  log(f"training the sample-quality classifier on {len(dataset.train)} {dataset.corpus} train "
      f"clips ({steps} steps of {batch_size} crops of {hp.crop_seconds:g} s)")
  every = max(1, steps // 5)
  for i in range(steps):
    params, opt_state, loss = step_fn(params, opt_state, device_data, mean_F, std_F,
                                      jax.random.fold_in(base, i))
    if (i + 1) % every == 0 or i + 1 == steps:
      log(f"  step {i + 1}/{steps}: loss {float(loss):.3f} ({time.perf_counter() - start:.0f} s)")
  params = jax.device_get(params)
  seconds = time.perf_counter() - start
  classifier = Classifier(module, params, np.asarray(mean_F), np.asarray(std_F),
                          {k: tuple(v) for k, v in dataset.label_names.items()}, {},
                          params_hash(params))
  classifier.test_accuracy = _test_accuracy(classifier, dataset)
  classifier.info = {"steps": steps, "batch_size": batch_size, "seed": seed,
                     "train_seconds": round(seconds, 1), "num_train": len(dataset.train),
                     "num_test": len(dataset.test), "hyperparams": dataclasses.asdict(hp)}
  shown = ", ".join(f"{k} {v:.3f}" for k, v in classifier.test_accuracy.items())
  log(f"sample-quality classifier {classifier.hash}: test accuracy {shown} (trained in {seconds:.0f} s)")
  return classifier


def _test_accuracy(classifier: Classifier, dataset: Dataset) -> dict[str, float]:
  """Accuracy per label on whole test utterances."""
  sr = classifier.sample_rate
  probs = classifier.predict([audio_io.read_audio(p, sr) for p in dataset.test.paths])
  return {k: float(np.mean(np.argmax(probs[f"probs/{k}"], 1) == dataset.test.labels[k]))
          for k in classifier.labels}


def params_hash(params: Any) -> str:
  """The first 12 hex digits of the sha256 of the serialised parameters."""
  return hashlib.sha256(flax.serialization.to_bytes(params)).hexdigest()[:12]


# ----------------------------------------------------------------------------- persistence


def classifier_key(config, hp: Hyperparams) -> str:
  """'<corpus>-<hash>' of the corpus identity (files, splits, features) and the hyper-parameters."""
  corpus = build_corpus(config)
  fc = FeatureConfig.from_config(config.features)
  splits = hashlib.sha256("\0".join(f"{e.split}:{e.name}" for e in corpus.entries).encode())
  ident = {"format": FORMAT_VERSION, "corpus": corpus.name,
           "path": os.path.abspath(config.data.path) if config.data.path else "",
           "features": fc.to_json(), "files": cache_key(corpus.entries, fc),
           "splits": splits.hexdigest(), "label_names": {k: list(v) for k, v in corpus.label_names.items()},
           "hyperparams": dataclasses.asdict(hp)}
  digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
  return f"{corpus.name}-{digest[:20]}"


def load_or_train(config, *, cache_dir: str | None = None, log: Callable[[str], None] = print,
                  seed: int = 0, steps: int = Hyperparams.steps,
                  batch_size: int = Hyperparams.batch_size) -> Classifier:
  """The classifier saved for this corpus and recipe, or a newly trained (and saved) one.

  It lives in `<cache_dir>/<key>/` (default `<cache root>/classifiers/`); a saved
  classifier that cannot be read or whose parameters do not match their hash is
  retrained, with a warning.
  """
  hp = Hyperparams(seed=seed, steps=steps, batch_size=batch_size)
  root = cache_dir or os.path.join(cache_root(config), "classifiers")
  where = os.path.join(root, classifier_key(config, hp))
  fc = FeatureConfig.from_config(config.features)
  if os.path.isdir(where):
    try:
      classifier = load_classifier(where, fc, hp)
      log(f"loaded the sample-quality classifier {classifier.hash} from {where}")
      return classifier
    except (OSError, ValueError, KeyError, TypeError) as e:
      _log.warning("the sample-quality classifier in %s is unusable (%s): training it again", where,
                   _first_line(e))
  classifier = train_classifier(config, seed=seed, steps=steps, batch_size=batch_size, log=log)
  save_classifier(classifier, where)
  log(f"saved the sample-quality classifier to {where}")
  return classifier


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def save_classifier(classifier: Classifier, where: str) -> None:
  """Writes params.msgpack and info.json to `where` atomically (a temporary directory, then a rename)."""
  parent = os.path.dirname(os.path.abspath(where))
  os.makedirs(parent, exist_ok=True)
  data = flax.serialization.to_bytes(classifier.params)
  info = {"format": FORMAT_VERSION, "hash": hashlib.sha256(data).hexdigest()[:12],
          "labels": list(classifier.labels),
          "label_names": {k: list(v) for k, v in classifier.label_names.items()},
          "test_accuracy": classifier.test_accuracy,
          "normalizer": {"mean": classifier.mean_F.tolist(), "std": classifier.std_F.tolist()},
          **classifier.info}
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(where)}.tmp-")
  try:
    with open(os.path.join(tmp, "params.msgpack"), "wb") as f:
      f.write(data)
    with open(os.path.join(tmp, "info.json"), "w") as f:
      json.dump(info, f, indent=1)
    if os.path.isdir(where):  # A corrupt earlier copy: out of the way first (rename, then delete).
      stale = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(where)}.stale-")
      os.replace(where, os.path.join(stale, "old"))
      shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, where)
  except OSError:
    if not os.path.isdir(where):  # Lost a race to another process that saved the same key.
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def load_classifier(where: str, fc: FeatureConfig, hp: Hyperparams = Hyperparams()) -> Classifier:
  """A classifier saved by save_classifier; ValueError (or OSError) when it is incomplete or corrupt."""
  with open(os.path.join(where, "info.json")) as f:
    info = json.load(f)
  with open(os.path.join(where, "params.msgpack"), "rb") as f:
    data = f.read()
  if info.get("format") != FORMAT_VERSION:
    raise ValueError(f"format {info.get('format')!r}, expected {FORMAT_VERSION}")
  digest = hashlib.sha256(data).hexdigest()[:12]
  if info["hash"] != digest:
    raise ValueError(f"the parameters hash to {digest}, info.json says {info['hash']}")
  label_names = {k: tuple(info["label_names"][k]) for k in info["labels"]}
  module = build_module(fc, label_names, hp)
  mean_F = np.asarray(info["normalizer"]["mean"], np.float32)
  std_F = np.asarray(info["normalizer"]["std"], np.float32)
  n = max(fc.win_length, 1)
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, n)), jnp.full((1,), n),
                            mean_F, std_F)
  params = flax.serialization.from_bytes(template, data)
  shapes = jax.tree.map(lambda a, t: np.shape(a) == t.shape, params, template)
  if not all(jax.tree.leaves(shapes)):
    raise ValueError("the saved parameters do not fit the model")
  params = jax.tree.map(np.asarray, params)
  extra = {k: v for k, v in info.items()
           if k not in ("format", "hash", "labels", "label_names", "test_accuracy", "normalizer")}
  return Classifier(module, params, mean_F, std_F, label_names,
                    {k: float(v) for k, v in info["test_accuracy"].items()}, digest, extra)
