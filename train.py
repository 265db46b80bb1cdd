"""Trains a speech VAE: `python train.py [--config=configs/x.py] [--config.a.b=value] [--workdir=W]`."""

import os

from absl import flags
from ml_collections import config_flags

from vae_jax.cli import default_workdir, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Config file (a Python file with get_config()); override fields with --config.a.b=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (rerunning in it resumes); "
                               "default runs/<config name>.")


def main(argv: list[str]) -> None:
  del argv
  from vae_jax import train  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value or default_workdir()
  result = train.train_and_evaluate(_CONFIG.value, workdir)
  train.print_summary(workdir, result)


if __name__ == "__main__":
  run_main(main)
