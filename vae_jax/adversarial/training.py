"""Adversarial fine-tuning of a trained VAE (RAVE-style second phase): one pure step, two updates.

The run starts from a copy of a trained VAE run's parameters (that run is never changed).
The encoder is frozen; the decoder and the likelihood's per-bin scale go on training against
a multi-scale log-mel discriminator (vae_jax.adversarial.model), with

  generator loss = nll_weight * NLL (nats per mel frame, the ELBO's reconstruction term)
                 + adv_weight * adversarial loss + feature_matching_weight * feature matching,

and the discriminator trains on the real mel against the reconstruction. Each step draws
z ~ q(z | x) from the frozen posterior (per-example keys), decodes it once, updates the
discriminator on that reconstruction, then the decoder against the updated discriminator.

The checkpointed state holds both: `AdversarialState(vae, disc)`, two TrainStates. `vae` has the
VAE's whole parameter tree (encoder included, never updated: its optimiser is
optax.multi_transform with set_to_zero on the encoder), so a workdir of this kind loads as an
ordinary VAE (vae_jax.inference.load_trained restores the state with `abstract_state`) and
evaluation during training is the VAE's own. The ELBO of the fine-tuned model stays a valid
bound: q(z | x) and hence the KL are unchanged, only the decoder p(x | z) is new.
"""

import functools
import json
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vae_jax import fileio, losses
from vae_jax.adversarial.model import (MultiScaleDiscriminator, build_discriminator, disc_loss_terms,
                                       gen_loss_term, masked_sum, output_masks)
from vae_jax.data.loader import TrainLoader
from vae_jax.data.store import load_dataset
from vae_jax.errors import ConfigError
from vae_jax.inference import Trained, load_trained
from vae_jax.models.vae import VAE, build_model
from vae_jax.prior.training import params_hash
from vae_jax.rng import example_keys
from vae_jax.state import TrainState, create_train_state, make_optimizer
from vae_jax.train import Task, apply_update
from vae_jax.train_eval import evaluate_split, make_eval_step, write_reconstructions

# Parameters of the VAE that fine-tuning leaves as they are.
FROZEN = ("encoder",)
# Sections of the config that must equal the VAE run's: the checkpoint's config builds the
# model that loads these parameters (load_trained), and the features are the model's input.
SAME_AS_VAE = ("model", "features")


class AdversarialState(flax.struct.PyTreeNode):
  """The VAE being fine-tuned (all its parameters) and the discriminator, each with its optimiser."""

  vae: TrainState
  disc: TrainState

  @property
  def step(self) -> jax.Array:
    return self.vae.step

  @property
  def params(self) -> Any:
    """The VAE's parameters: what evaluation, load_trained and eval.py use."""
    return self.vae.params


def _labels(params: dict) -> dict:
  return {k: jax.tree.map(lambda _, k=k: "frozen" if k in FROZEN else "train", v) for k, v in params.items()}


def generator_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """config.optim's AdamW (warm-up, cosine decay, clipping) on all but the encoder, which stays fixed."""
  tx, _ = make_optimizer(config)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, _labels)


def disc_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config with the discriminator's peak learning rate: its optimiser and schedule (same shape)."""
  c = config.copy_and_resolve_references()
  c.optim.learning_rate = config.adversarial.disc_learning_rate
  return c


def create_state(config: ml_collections.ConfigDict, model: VAE, disc: MultiScaleDiscriminator,
                 vae_params: Any, key: jax.Array) -> AdversarialState:
  """Fresh optimisers over the given VAE parameters and a discriminator initialised from `key`."""
  # Strongly typed steps (a weak type would recompile step 2), one array each (donated buffers).
  zero = lambda: jnp.zeros((), jnp.int32)
  vae = TrainState.create(apply_fn=model.apply, params=jax.tree.map(jnp.asarray, vae_params),
                          tx=generator_optimizer(config)).replace(step=zero())
  mel = jnp.zeros((1, config.data.segment_frames, config.features.n_mels))
  disc_params = jax.jit(disc.init)(key, mel)["params"]
  tx, _ = make_optimizer(disc_config(config))
  return AdversarialState(vae, TrainState.create(apply_fn=disc.apply, params=disc_params, tx=tx).replace(step=zero()))


def abstract_state(config: ml_collections.ConfigDict) -> AdversarialState:
  """Shapes and dtypes of a run's state, for restoring its checkpoints (load_trained)."""
  model, disc = build_model(config), build_discriminator(config)

  def make():
    vae = create_train_state(config, model, jax.random.key(0))
    return create_state(config, model, disc, vae.params, jax.random.key(0))

  return jax.eval_shape(make)


def adversarial_train_step(state: AdversarialState, batch: dict[str, jax.Array], key: jax.Array,
                           axis_name: str | None = None, *, model: VAE, disc: MultiScaleDiscriminator,
                           config: ml_collections.ConfigDict, disc_cfg: ml_collections.ConfigDict):
  """A discriminator update, then a decoder update against it; averaged over `axis_name`.

  Either both updates are applied or, if any loss or gradient is non-finite, neither.
  """
  a = config.adversarial
  psum = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  mel, mask = batch["mel"], batch["mask"]
  b = mel.shape[0]
  device = jax.lax.axis_index(axis_name) if axis_name else 0
  keys = example_keys(jax.random.fold_in(key, state.step), device * b + jnp.arange(b))
  frames = psum(mask.sum())
  params = state.vae.params
  variables = lambda p: {"params": p}

  # The frozen posterior and one draw from it.
  mean, logvar, mask_z = model.apply(variables(params), mel, mask, method=VAE.encode)
  mean, logvar = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(logvar)
  z = mean if a.decode_mean else model.apply(variables(params), keys, mean, logvar, method=VAE.sample_posterior)
  kl = psum((losses.kl_diag_gaussian(mean, logvar) * mask_z[..., None]).sum()) / frames
  recon, decode_vjp = jax.vjp(lambda p: model.apply(variables(p), z, mask, method=VAE.decode), params)

  m3 = mask[..., None]
  real, fake = mel * m3, jax.lax.stop_gradient(recon) * m3
  scales, layers = tuple(a.disc_scales), len(a.disc_channels)
  masks = output_masks(mask, scales, layers)

  def mean_of(x, m):  # This device's share of the global mean over valid positions.
    s, n = masked_sum(x, m)
    return s / psum(n)

  def d_loss_fn(dp):
    loss = logit_real = logit_fake = 0.0
    for s, ((_, lr), (_, lf)) in enumerate(zip(disc.apply(variables(dp), real), disc.apply(variables(dp), fake))):
      on_real, on_fake = disc_loss_terms(a.loss, lr, lf)
      m = masks[s][-1]
      loss += mean_of(on_real, m) + mean_of(on_fake, m)
      logit_real += mean_of(lr, m)
      logit_fake += mean_of(lf, m)
    n = len(scales)
    return loss / n, (logit_real / n, logit_fake / n)

  (d_loss, (logit_real, logit_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.disc.params)
  d_grads, d_loss = psum(d_grads), psum(d_loss)
  disc_state, d_metrics = apply_update(state.disc, d_grads, d_loss, disc_cfg)

  real_features = [[jax.lax.stop_gradient(f) for f in feats]
                   for feats, _ in disc.apply(variables(disc_state.params), real)]

  def g_loss_fn(recon_, log_scale):
    nll = (losses.gaussian_nll(mel, recon_, log_scale) * m3).sum() / frames
    adv = fm = 0.0
    for s, (feats, logits) in enumerate(disc.apply(variables(disc_state.params), recon_ * m3)):
      adv += mean_of(gen_loss_term(a.loss, logits), masks[s][-1])
      fm += sum(mean_of(jnp.abs(f - r), masks[s][i])
                for i, (f, r) in enumerate(zip(feats, real_features[s]))) / layers
    adv, fm = adv / len(scales), fm / len(scales)
    loss = a.nll_weight * nll + a.adv_weight * adv + a.feature_matching_weight * fm
    return loss, (nll, adv, fm)

  (g_loss, (nll, adv, fm)), (g_recon, g_log_scale) = jax.value_and_grad(
      g_loss_fn, argnums=(0, 1), has_aux=True)(recon, params["log_scale"])
  (g_grads,) = decode_vjp(g_recon)
  g_grads = {**g_grads, "log_scale": g_grads["log_scale"] + g_log_scale}
  g_grads, g_loss = psum(g_grads), psum(g_loss)
  vae_state, g_metrics = apply_update(state.vae, g_grads, g_loss, config)

  finite = d_metrics["train/finite"] & g_metrics["train/finite"]
  keep = lambda new, old: jax.tree.map(lambda x, y: jnp.where(finite, x, y), new, old)
  new_state = AdversarialState(keep(vae_state, state.vae).replace(step=state.vae.step + 1),
                               keep(disc_state, state.disc).replace(step=state.disc.step + 1))
  nll = psum(nll)
  sq_err = psum((((mel - jax.lax.stop_gradient(recon)) ** 2) * m3).sum()) / (frames * mel.shape[-1])
  metrics = {
      "train/loss": g_loss,  # The generator's weighted objective.
      "train/nll": nll,
      "train/kl": kl,
      "train/neg_elbo": nll + kl,
      "train/gen_adv": psum(adv),
      "train/feature_matching": psum(fm),
      "train/disc_loss": d_loss,
      "train/disc_logit_real": psum(logit_real),
      "train/disc_logit_fake": psum(logit_fake),
      "train/mse_normalized": sq_err,
      "train/frames": frames,
      "train/grad_norm": g_metrics["train/grad_norm"],
      "train/learning_rate": g_metrics["train/learning_rate"],
      "train/disc_grad_norm": d_metrics["train/grad_norm"],
      "train/disc_learning_rate": d_metrics["train/learning_rate"],
      "train/finite": finite,
  }
  return new_state, metrics


def _json(section) -> Any:
  return json.loads(section.to_json_best_effort()) if isinstance(section, ml_collections.ConfigDict) else section


def check_same_as_vae(config: ml_collections.ConfigDict, vae: Trained) -> None:
  """ConfigError (one line) if a model or features field differs from the VAE run's."""
  for section in SAME_AS_VAE:
    now, then = _json(config[section]), _json(vae.config[section])
    differ = sorted(k for k in then if now.get(k) != then[k])
    if differ:
      fields = ", ".join(f"{section}.{k}={now.get(k)!r} (VAE: {then[k]!r})" for k in differ)
      raise ConfigError(f"config fields {fields} differ from the VAE run {vae.workdir}: an adversarial "
                        "config must keep the VAE's model and features sections (import its config)")


def make_task(config: ml_collections.ConfigDict, workdir: str, meta: dict | None, devices,
              base_key: jax.Array, signals):
  """The adversarial objective for the shared training loop (vae_jax.train)."""
  a = config.adversarial
  vae = load_trained(a.vae_workdir, a.vae_step or None)
  check_same_as_vae(config, vae)
  vae_hash = params_hash(vae.params)
  if meta:
    saved = meta.get("vae", {})
    if saved.get("params_hash") not in (None, vae_hash):
      raise ConfigError(f"{workdir} holds a fine-tuning of other VAE parameters than {vae.workdir} step "
                        f"{vae.step} now has: use a new --workdir")
    before = (meta.get("config") or {}).get("adversarial")
    if before is not None and before != _json(a):
      raise ConfigError(f"{workdir} holds a run with a different adversarial config: use a new --workdir "
                        "or the original config")
  normalizer = vae.normalizer  # The VAE's: the decoder's outputs mean what they meant.
  data = load_dataset(config, normalizer, process_index=jax.process_index(),
                      process_count=jax.process_count())
  signals.check()
  model, disc = build_model(config), build_discriminator(config)
  state = create_state(config, model, disc, vae.params, jax.random.fold_in(base_key, 0))
  signals.check()
  loader = TrainLoader(data.train, normalizer, global_batch=config.train.batch_size,
                       num_local_devices=len(devices), segment_frames=config.data.segment_frames,
                       seed=config.seed, prefetch=config.data.prefetch,
                       process_index=jax.process_index(), process_count=jax.process_count())
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "normalizer.json"), normalizer.to_dict())
  eval_step, e = make_eval_step(model), config.eval
  trained = Trained(fileio.absolute(workdir), 0, config, model, state.params, normalizer, data.feature_config)

  def evaluate(step: int, params, writer) -> dict[str, Any]:
    # The fine-tuned VAE's ELBO: encoder (so q and the KL) as trained, decoder fine-tuned.
    metrics = evaluate_split(eval_step, params, data.test, normalizer, jax.random.fold_in(base_key, 2),
                             batch_size=e.batch_size, length_multiple=e.length_multiple,
                             max_utterances=e.max_utterances)
    if jax.process_index() == 0 and e.num_audio_examples:
      trained.step, trained.params = step, params
      write_reconstructions(trained, data.test, workdir, writer)
    return metrics

  def summary(m: dict[str, Any]) -> str:
    return (f"eval neg-ELBO {m['eval/loss']:.4f} nats/frame, log-mel MSE {m['eval/logmel_mse']:.4f} "
            "(fine-tuned decoder)")

  task_meta = {
      "normalizer": normalizer.to_dict(),
      "vae": {"workdir": fileio.absolute(vae.workdir), "step": vae.step, "params_hash": vae_hash},
  }
  step_fn = functools.partial(adversarial_train_step, model=model, disc=disc, config=config,
                              disc_cfg=disc_config(config))
  return Task(state, step_fn, loader, evaluate, summary, task_meta, data.feature_config.frames_per_second)
