"""Shared plumbing of the entry points: flag parsing, console logging, one-line errors."""

import logging
import os
import sys
from typing import Callable

from absl import flags

from vae_jax.errors import UserError


class _ConsoleFormatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging() -> None:
  """vae_jax warnings as one line each on stderr; library INFO chatter silenced."""
  logger = logging.getLogger("vae_jax")
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter())
    logger.addHandler(handler)
    logger.propagate = False
  logger.setLevel(logging.INFO)
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def run_main(main: Callable[[list[str]], None]) -> None:
  """Parses flags and runs `main`; user mistakes print `error: ...` and exit with status 2."""
  try:
    argv = flags.FLAGS(sys.argv)
  except (flags.Error, UserError, KeyError, ValueError, TypeError, AttributeError, SyntaxError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)
  setup_logging()
  try:
    main(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def default_workdir(config_flag_name: str = "config") -> str:
  """runs/<config file name without .py>."""
  path = flags.FLAGS[config_flag_name].config_filename
  return os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
