"""Orbax checkpoints: the train state plus the loader position and the feature normalisation."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from vae_jax.errors import CheckpointError

BEST_METRIC = "eval/loss"


class Checkpointer:
  """Keeps the latest `keep` checkpoints and the best one by eval loss (lower is better)."""

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True, create: bool = True):
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(f"no checkpoints in {self.directory}")
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        # reverse=True sorts by descending loss, so the kept tail holds the lowest loss.
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=create,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves a host-side (unreplicated) state and a JSON-able `meta` dict."""
    self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def restore_meta(self, step: int | None = None) -> dict:
    step = self._step(step)
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) with the structure, shapes and shardings of `target`."""
    step = self._step(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def _step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    return step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
