"""User-facing errors: one line that says what to change, never a traceback."""

import functools
import sys
from typing import Callable


class UserError(Exception):
  """A mistake in the user's input (config, data, paths) rather than a bug."""


class ConfigError(UserError):
  """A config field has a value the code cannot use."""


class DataError(UserError):
  """The corpus or an input file cannot be used."""


class CheckpointError(UserError):
  """A checkpoint is missing, incomplete or corrupt."""


def exit_on_user_error(main: Callable) -> Callable:
  """Wraps an entry point so that a UserError prints `error: ...` and exits 2."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped
