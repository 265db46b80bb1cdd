"""What a figure was measured on: the machine, the software, the date and the command."""

import datetime
import importlib.metadata
import os
import platform
import shlex


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (or what `platform` knows elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def accelerators() -> list[str]:
  """Device kinds of the default JAX backend when it is not the CPU."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() == "cpu":
    return []
  return [d.device_kind for d in jax.devices()]


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def command_line(args: list[str]) -> str:
  """The harness command with its arguments, as typed from the repository root."""
  return shlex.join(["python", "-m", "bench.run"] + list(args))


def describe(command: str) -> dict:
  """The machine, versions, date and command, stored with every result."""
  gpus = accelerators()
  return {
      "command": command,
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu": cpu_model(),
      "cpu_cores": os.cpu_count(),
      "accelerators": gpus,
      "machine": f"{cpu_model()}, {os.cpu_count()} cores" + (f", {gpus[0]} x{len(gpus)}" if gpus else ", no GPU"),
      "python": platform.python_version(),
      "jax": _version("jax"),
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "torch": _version("torch"),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_at_start": list(os.getloadavg()),
  }
