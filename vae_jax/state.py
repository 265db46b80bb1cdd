"""The train state: parameters and the AdamW optimiser with its learning-rate schedule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

TrainState = train_state.TrainState


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up, cosine decay and global-norm clipping."""
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=max(config.train.num_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.end_lr_factor)
  adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  if o.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw), schedule
  return adamw, schedule


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array) -> TrainState:
  """Initial parameters (from `key`) and optimiser state, on the host."""
  t, f = config.data.segment_frames, config.features.n_mels
  mel, mask = jnp.zeros((1, t, f)), jnp.ones((1, t))
  params = jax.jit(model.init)(key, mel, mask, jax.random.key(0))["params"]
  tx, _ = make_optimizer(config)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  # A strongly typed step: a weakly typed one would make the second call recompile.
  return state.replace(step=jnp.zeros((), jnp.int32))


def applied_updates(opt_state) -> jax.Array:
  """How many updates the optimiser has applied: the count its schedule is read at.

  Differs from the train step after skipped (non-finite) updates, whose optimiser
  state is reverted while the step advances.
  """
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  (schedule_state,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(x)]
  return schedule_state.count
