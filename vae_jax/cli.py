"""Shared plumbing of the entry points: flag parsing, console logging, one-line errors."""

import logging
import os
import sys
import threading
from typing import Callable, NoReturn

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


def check_config_args(argv: list[str], name: str = "config") -> None:
  """Loads the config file named on the command line and checks every `--config.x.y` key exists.

  config_flags reports these mistakes lazily or as tracebacks; this gives one line first.
  """
  from vae_jax.config import load_config, lookup  # pylint: disable=g-import-not-at-top

  path = flags.FLAGS[name].default_as_str.strip("'\"")
  keys = []
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith(f"--{name}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith(f"--{name}."):
      keys.append(arg[len(name) + 3:].split("=", 1)[0])
  config = load_config(path, validate_fields=False)
  for key in keys:
    lookup(config, key)


# The extra that installs each platform's JAX build (see pyproject.toml).
_PLATFORM_EXTRAS = {"tpu": "tpu", "cuda": "cuda12", "gpu": "cuda12", "rocm": "a ROCm build of jaxlib"}


def check_backend() -> None:
  """Starts JAX's backends; UserError in one line if a requested platform's build is not installed."""
  import jax  # pylint: disable=g-import-not-at-top

  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:  # JAX raises these, with tracebacks, for a missing plugin.
    wanted = os.environ.get("JAX_PLATFORMS") or str(jax.config.jax_platforms or "")
    extras = [_PLATFORM_EXTRAS.get(p.strip()) for p in wanted.split(",") if p.strip() in _PLATFORM_EXTRAS]
    fix = f"pip install 'vae-jax[{extras[0]}]'" if extras and "ROCm" not in extras[0] else "install it"
    why = str(e).strip().splitlines()[0].split(" (set JAX_PLATFORMS")[0] if str(e).strip() else \
        "its plugin is not installed"
    raise UserError(f"JAX cannot start the {wanted or 'default'} backend ({why}): {fix}, or run on "
                    "the CPU with JAX_PLATFORMS=cpu") from None


def run_main(main: Callable[[list[str]], None]) -> None:
  """Parses flags and runs `main`; user mistakes print `error: ...` and exit with status 2."""
  try:
    if "config" in flags.FLAGS:
      check_config_args(sys.argv)
    argv = flags.FLAGS(sys.argv)
  except (flags.Error, UserError, KeyError, ValueError, TypeError, AttributeError, SyntaxError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)
  setup_logging()
  threading.excepthook = _thread_excepthook
  sys.unraisablehook = _unraisable_hook
  try:
    main(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    _exit(2, abandon_threads=getattr(e, "abandon_threads", False))


def _exit(status: int, abandon_threads: bool = False) -> NoReturn:
  """sys.exit; os._exit where an error says a thread is stuck, since the interpreter would wait for it."""
  if abandon_threads:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  sys.exit(status)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
  """A background thread's OSError (a full disk under a log writer) as one warning line, not a traceback."""
  if args.exc_type is not None and issubclass(args.exc_type, OSError):
    name = args.thread.name if args.thread is not None else "a background thread"
    logging.getLogger("vae_jax").warning("%s stopped: %s", name, args.exc_value)
    return
  threading.__excepthook__(args)


def _unraisable_hook(args) -> None:
  """Drops TensorStore's late callbacks into the closed event loop of an Orbax save that failed.

  A failed save (a full disk) closes its loop while its other writes are still finishing;
  each of them then printed a 'RuntimeError: Event loop is closed' traceback.
  """
  if isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed":
    return
  sys.__unraisablehook__(args)


def default_workdir(config_flag_name: str = "config") -> str:
  """runs/<config file name without .py>."""
  path = flags.FLAGS[config_flag_name].config_filename
  return os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
