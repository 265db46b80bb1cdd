"""Joining JAX's multi-controller runtime (`jax.distributed`) when a run spans several processes."""

import logging
import os

import jax

from vae_jax.errors import ConfigError

log = logging.getLogger("vae_jax")


def cluster_detected() -> bool:
  """True under a launcher that starts one process per host or GPU (SLURM, TPU pod slice)."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in workers or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300) -> bool:
  """Calls jax.distributed.initialize when asked or when a cluster is detected; returns whether it did.

  mode: "off" never joins; "on" always joins (arguments or the cluster's environment);
  "auto" joins when explicit arguments are given or a cluster is detected.
  """
  if mode not in ("auto", "on", "off"):
    raise ConfigError(f"--distributed={mode!r}: use auto, on or off")
  explicit = [coordinator_address, num_processes, process_id]
  if any(x is not None for x in explicit) and not all(x is not None for x in explicit):
    raise ConfigError("--coordinator_address, --num_processes and --process_id go together: "
                      "give all three, or none to detect the cluster")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  if mode == "off" or (mode == "auto" and coordinator_address is None and not cluster_detected()):
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, initialization_timeout=timeout_s)
  log.info("joined a %d-process cluster as process %d (%d local / %d global devices)",
           jax.process_count(), jax.process_index(), jax.local_device_count(), jax.device_count())
  return True
