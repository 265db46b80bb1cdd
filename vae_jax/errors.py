"""User-facing errors: one line that says what to change, never a traceback."""



class UserError(Exception):
  """A mistake in the user's input (config, data, paths) rather than a bug."""


class ConfigError(UserError):
  """A config field has a value the code cannot use."""


class DataError(UserError):
  """The corpus or an input file cannot be used."""


class CheckpointError(UserError):
  """A checkpoint is missing, incomplete or corrupt."""
