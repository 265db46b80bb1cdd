"""Trains a speech VAE: `python train.py [--config=configs/x.py] [--config.a.b=value] [--workdir=W]`."""

import os
import signal

# Recorded from the first moment: a stop signal during the imports below ends the run cleanly.
_EARLY_SIGNALS: list[str] = []
for _s in (signal.SIGTERM, signal.SIGINT):
  signal.signal(_s, lambda signum, frame: _EARLY_SIGNALS.append(signal.Signals(signum).name))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vae_jax.cli import default_workdir, run_main  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Config file (a Python file with get_config()); override fields with --config.a.b=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (rerunning in it resumes); "
                               "default runs/<config name>.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Join a multi-process JAX cluster: auto = when the flags below are "
                                 "given or a SLURM / TPU-pod environment is detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the cluster.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def main(argv: list[str]) -> None:
  del argv
  from vae_jax import distributed, train  # pylint: disable=g-import-not-at-top
  from vae_jax.eval import render  # pylint: disable=g-import-not-at-top
  from vae_jax.workdir import disk_full_error  # pylint: disable=g-import-not-at-top

  if _EARLY_SIGNALS:
    print(f"received {_EARLY_SIGNALS[0]} before training started: nothing to save; "
          "rerun the same command to start", flush=True)
    return
  distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  workdir = _WORKDIR.value or default_workdir()
  result = train.train_and_evaluate(_CONFIG.value, workdir)
  try:
    render.print_training_summary(workdir, result)
  except OSError as e:  # The report is written after the run: a full disk can still meet it.
    raise disk_full_error(e, workdir) or e from None


if __name__ == "__main__":
  run_main(main)
