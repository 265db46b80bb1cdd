"""Thin data-parallel wrappers around one per-device step function.

A per-device step has the signature `step(state, batch, key, axis_name)` and
averages over `axis_name` with collectives. Both wrappers take this process's flat
batch [B, ...] from the loader. `shard_map` (the default) runs the function under jit
over a 1-D mesh of every device, with the state replicated and the global batch split
on its leading axis; `pmap` maps it over local devices, the batch reshaped to
[devices, B / devices, ...].
"""

import functools
from typing import Any, Callable, Sequence

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


class DataParallel:
  """Places state and batches for one of the two wrappers and calls the wrapped step."""

  def __init__(self, step_fn: Callable, devices: Sequence[jax.Device], mode: str = "shard_map",
               donate: bool = True):
    self.mode, self.devices = mode, list(devices)
    # pmap maps over this process's devices (its collectives still span all processes);
    # shard_map's mesh holds every device of every process.
    mesh_devices = self.devices if mode == "pmap" or jax.process_count() == 1 else jax.devices()
    self.mesh = Mesh(np.asarray(mesh_devices), (AXIS,))
    donate_argnums = (0,) if donate else ()
    if mode == "pmap":
      # Naming devices confines pmap's collectives to them: a multi-process run names none,
      # so that they span every device of every process.
      pmap_devices = self.devices if jax.process_count() == 1 else None
      self._step = jax.pmap(functools.partial(step_fn, axis_name=AXIS), axis_name=AXIS,
                            in_axes=(0, 0, None), devices=pmap_devices, donate_argnums=donate_argnums)
    elif mode == "shard_map":
      # check_vma=False: pmap's semantics, which the step is written for. With the check,
      # autodiff already sums the replicated parameters' gradients over the mesh, and the
      # step's own psum summed them again: gradients (and train/grad_norm, and so clipping)
      # came out multiplied by the device count.
      mapped = jax.shard_map(functools.partial(step_fn, axis_name=AXIS), mesh=self.mesh,
                             in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()), check_vma=False)
      self._step = jax.jit(mapped, donate_argnums=donate_argnums)
    else:
      raise ValueError(f"unknown parallel mode {mode!r}")

  def put_state(self, state: Any) -> Any:
    """Host state -> the layout the step expects (replicated)."""
    if self.mode == "pmap":
      # Stacked copies on the same mesh pmap puts its outputs on, so step 2 reuses step 1's program.
      n, sharding = len(self.devices), NamedSharding(self.mesh, P(AXIS))
      return jax.tree.map(
          lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding), state)
    return jax.device_put(state, NamedSharding(self.mesh, P()))

  def get_state(self, state: Any) -> Any:
    """Step layout -> one host copy (for checkpoints and evaluation)."""
    if self.mode == "pmap":
      return jax.device_get(flax.jax_utils.unreplicate(state))
    # Replicated, so this process's first shard is the whole value.
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> Any:
    """This process's flat batch [B, ...] -> the layout the step expects."""
    if self.mode == "pmap":
      n = len(self.devices)
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
    # This process's rows become its part of the global batch, split over the mesh.
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P(AXIS)), batch)

  def __call__(self, state, batch, key):
    state, metrics = self._step(state, batch, key)
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

