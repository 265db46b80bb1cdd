"""A trained prior workdir as one object: the prior, the VAE it belongs to, and sampling.

  prior = load_prior("runs/fsdd_prior")
  draws = prior.sample(8, condition={"digit": "7"}, guidance=2.0, seed=0)
  waves = prior.vae_run.to_audio(draws[0].log_mel)
"""

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import fileio
from vae_jax.errors import CheckpointError, UserError
from vae_jax.inference import Trained, config_from_json, load_trained, open_checkpoints
from vae_jax.prior import sampling, training
from vae_jax.prior.model import LatentPrior
from vae_jax.rng import example_keys


@dataclasses.dataclass
class Draw:
  """One sample: its latents, the log-mel they decode to, and what it was asked to be."""

  z: np.ndarray  # [Tz, C]
  log_mel: np.ndarray  # Unnormalised natural-log mel [T, F].
  condition: dict[str, int]  # Requested class index per label (absent: unconditional).


@dataclasses.dataclass
class TrainedPrior:
  """A restored prior and the VAE run whose latents it models."""

  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: LatentPrior
  params: Any
  vae_run: Trained
  label_names: dict[str, tuple[str, ...]]  # Conditioning labels and their class names.
  lengths: dict[str, Any]  # Train-split mel/latent lengths and labels (training.length_table).

  @property
  def conditions(self) -> tuple[str, ...]:
    return tuple(self.label_names)

  def parse_condition(self, condition: Mapping[str, Any] | str | None) -> dict[str, int]:
    """{label: class index} from {label: name or index} or 'digit=7,speaker=jackson'."""
    if not condition:
      return {}
    if isinstance(condition, str):
      pairs = [p.split("=", 1) for p in condition.split(",") if p.strip()]
      if any(len(p) != 2 for p in pairs):
        raise UserError(f"--condition={condition!r}: write label=value pairs, e.g. digit=7,speaker=jackson")
      condition = {k.strip(): v.strip() for k, v in pairs}
    out = {}
    for label, value in condition.items():
      if label not in self.label_names:
        have = ", ".join(self.label_names) or "none (an unconditional prior)"
        raise UserError(f"the prior of {self.workdir} is not conditioned on {label!r} (its labels: {have})")
      names = self.label_names[label]
      if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(names):
        out[label] = int(value)
      elif str(value) in names:
        out[label] = names.index(str(value))
      else:
        raise UserError(f"{label}={value!r} is not a class of this corpus: use one of {', '.join(names)}")
    return out

  def draw_lengths(self, n: int, condition: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """Mel-frame lengths of n train utterances drawn at random among those matching the condition."""
    mel = np.asarray(self.lengths["mel_frames"])
    ok = np.ones(len(mel), bool)
    for label, value in condition.items():
      ok &= np.asarray(self.lengths["labels"][label]) == value
    if not ok.any():  # A combination the train split lacks: lengths of the whole split.
      ok[:] = True
    return rng.choice(mel[ok], size=n)

  def sample(self, n: int, *, condition: Mapping[str, Any] | str | None = None,
             conditions: list[dict[str, int]] | None = None, guidance: float | None = None,
             temperature: float | None = None, seconds: float | None = None,
             mel_frames: np.ndarray | None = None, seed: int = 0,
             prompt: list[np.ndarray] | None = None, batch_size: int = 256) -> list[Draw]:
    """n draws, decoded to log-mel; `conditions` gives one condition per draw instead of `condition`.

    Lengths: `mel_frames` per draw, else `seconds` for all, else drawn from the train
    split's lengths for each draw's condition. `prompt` holds latent prefixes [P_i, C]
    to continue (they must be shorter than the draw).
    """
    p = self.config.prior
    guidance = p.guidance if guidance is None else float(guidance)
    temperature = p.temperature if temperature is None else float(temperature)
    if temperature <= 0:
      raise UserError(f"--temperature={temperature:g}: it must be positive")
    conds = conditions if conditions is not None else [self.parse_condition(condition)] * n
    rng = np.random.default_rng([seed % 2**32, 7])
    fps = self.vae_run.feature_config.frames_per_second
    if mel_frames is None:
      if seconds is not None:
        if seconds <= 0:
          raise UserError(f"--seconds={seconds:g}: it must be positive")
        mel_frames = np.full(n, max(1, round(seconds * fps)))
      else:
        mel_frames = np.array([self.draw_lengths(1, c, rng)[0] for c in conds])
    latent = np.array([self.vae_run.latent_frames(int(t)) for t in mel_frames])
    if latent.max() > p.max_latent_frames:
      raise UserError(f"{mel_frames.max() / fps:.2f} s is longer than this prior can model "
                      f"({p.max_latent_frames * self.vae_run.stride / fps:.2f} s)")
    base = jax.random.fold_in(jax.random.key(seed), 4)
    z_all = []
    for start in range(0, n, batch_size):
      idx = np.arange(start, min(n, start + batch_size))
      z_all += self._sample_batch(base, idx, latent[idx], [conds[i] for i in idx],
                                  None if prompt is None else [prompt[i] for i in idx],
                                  guidance, temperature)
    return [Draw(z, self.vae_run.decode(z, int(t)), dict(c))
            for z, t, c in zip(z_all, mel_frames, conds)]

  def _sample_batch(self, base, idx, latent, conds, prompt, guidance, temperature) -> list[np.ndarray]:
    m = len(idx)
    t_pad = -(-int(latent.max()) // training.LENGTH_MULTIPLE) * training.LENGTH_MULTIPLE
    c = self.vae_run.latent_channels
    null = list(self.model.num_classes)
    labels = np.array([[cond.get(name, null[j]) for j, name in enumerate(self.conditions)]
                       for cond in conds], np.int32).reshape(m, len(null))
    prompt_z = np.zeros((m, t_pad, c), np.float32)
    prompt_frames = np.zeros(m, np.int32)
    for j, pz in enumerate(prompt or []):
      if len(pz) >= latent[j]:
        raise UserError(f"a prompt of {len(pz)} latent frames leaves nothing to sample in {latent[j]}")
      prompt_z[j, :len(pz)], prompt_frames[j] = pz, len(pz)
    keys = example_keys(base, jnp.asarray(idx))
    guided = bool(guidance != 1.0 and len(null) and (labels != np.array(null)).any())
    z = sampling.sample_latents(self.model, self.params, keys, jnp.asarray(latent, jnp.int32),
                                jnp.asarray(labels), jnp.asarray(prompt_z), jnp.asarray(prompt_frames),
                                num_frames=t_pad, guidance=guidance, temperature=temperature,
                                guided=guided)
    z = np.asarray(jax.device_get(z))
    return [z[j, :latent[j]] for j in range(m)]

  def log_prior_fn(self):
    """(z_BxTzxC, mask_z_BxTz) -> unconditional log p(z | T) per example, for the bound."""
    log_prior = training.make_log_prior(self.model)
    unknown = np.asarray(self.model.num_classes, np.int32)

    def fn(z, mask_z):
      labels = jnp.broadcast_to(unknown, (z.shape[0], len(unknown)))
      return log_prior(self.params, z, mask_z, labels)

    return fn


def is_prior_workdir(workdir: str) -> bool:
  """Whether a workdir holds a prior run (its config.json says kind = 'prior')."""
  path = os.path.join(workdir, "config.json")
  try:
    return json.loads(fileio.read_text(path)).get("kind") == "prior"
  except (OSError, ValueError):
    return False


def load_prior(workdir: str, step: int | None = None) -> TrainedPrior:
  """Restores a prior workdir and its VAE run; CheckpointError in one line if either is unusable."""
  hint = (f"train the prior first with `python train.py --config=configs/fsdd_prior.py "
          f"--workdir={workdir}`")
  ckpt, step = open_checkpoints(workdir, step, hint)
  try:
    meta = ckpt.restore_meta(step)
    try:
      config = config_from_json(meta["config"])
      config.prior.conditions = tuple(config.prior.conditions)
      vae_meta, label_names = meta["vae"], {k: tuple(v) for k, v in meta["label_names"].items()}
      lengths = meta["lengths"]
    except (KeyError, TypeError, AttributeError) as e:
      raise CheckpointError(f"checkpoint {ckpt.step_dir(step)} is not a prior checkpoint "
                            f"(no {e} in its meta)") from None
    vae_run = _load_matching_vae(workdir, vae_meta)
    model = training.build_prior(config, vae_run.latent_channels,
                                 tuple(len(label_names[n]) for n in config.prior.conditions))
    abstract = jax.eval_shape(lambda: training.create_prior_state(config, model, jax.random.key(0)))
    state, _ = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  return TrainedPrior(fileio.absolute(workdir), step, config, model, jax.device_get(state.params),
                      vae_run, label_names, lengths)


def _load_matching_vae(workdir: str, vae_meta: dict) -> Trained:
  """The VAE checkpoint a prior was trained on, refused if its parameters changed since."""
  where = f"{vae_meta['workdir']} step {vae_meta['step']}"
  try:
    vae_run = load_trained(vae_meta["workdir"], int(vae_meta["step"]))
  except CheckpointError as e:
    raise CheckpointError(f"the prior in {workdir} belongs to the VAE run {where}, which cannot be "
                          f"loaded: {e}") from None
  found = training.params_hash(vae_run.params)
  if found != vae_meta["params_hash"]:
    raise CheckpointError(f"the prior in {workdir} was trained on {where} with parameters "
                          f"{vae_meta['params_hash']}, but that checkpoint now holds {found}: "
                          "retrain the prior for this VAE")
  return vae_run
