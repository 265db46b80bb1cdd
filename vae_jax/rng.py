"""Per-example keys: results do not depend on batch composition or device count."""

import jax
import jax.numpy as jnp


def example_keys(key: jax.Array, ids_B: jax.Array) -> jax.Array:
  """One key per example id (e.g. the global index in a step's batch): fold_in(key, id)."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, ids_B)


def utterance_keys(key: jax.Array, index_B: jax.Array) -> jax.Array:
  """One key per utterance of an evaluation batch; padding rows (index -1) reuse utterance 0's."""
  return example_keys(key, jnp.maximum(index_B, 0))


def stream_keys(keys_B: jax.Array, stream: int) -> jax.Array:
  """Key `stream` of each example (a named stream: posterior draw, label drop, ...)."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys_B, stream)
