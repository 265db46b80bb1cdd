"""Shared fixtures. Four host CPU devices so data-parallel code paths run on any machine."""

import os

# Must happen before JAX initialises its backends. Tests run tiny models, so compilation
# dominates their time: LLVM optimisation level 0 compiles ~3x faster (and runs slower).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build the same small models many times: identical programs compile once per session.
_XLA_CACHE = tempfile.mkdtemp(prefix="vae-jax-test-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def fsdd_path() -> pathlib.Path | None:
  """The Free Spoken Digit Dataset recordings, from $FSDD_DIR or ../shared beside the repo."""
  candidates = [os.environ.get("FSDD_DIR"), REPO_ROOT.parent / "shared" / "data" / "fsdd" / "recordings"]
  for c in candidates:
    if c and pathlib.Path(c).is_dir() and any(pathlib.Path(c).glob("*.wav")):
      return pathlib.Path(c)
  return None


def smoke_config(cache: pathlib.Path | None = None, overrides: dict | None = None):
  """configs/smoke.py without a progress bar, its feature cache in `cache`, with dotted overrides."""
  from configs import smoke  # pylint: disable=g-import-not-at-top

  c = smoke.get_config()
  c.train.progress_bar = False
  if cache is not None:
    c.data.cache_dir = str(cache)
  for key, value in (overrides or {}).items():
    *parents, field = key.split(".")
    node = c
    for name in parents:
      node = node[name]
    node[field] = value
  return c


@pytest.fixture
def extracted(monkeypatch) -> list[str]:
  """Records the name of every file the (serial) feature extractor reads."""
  from vae_jax.data import store  # pylint: disable=g-import-not-at-top

  seen, real = [], store._extract_one

  def spy(args):
    seen.append(os.path.basename(args[0]))
    return real(args)

  monkeypatch.setattr(store, "_extract_one", spy)
  return seen


@pytest.fixture(scope="session")
def fsdd_dir() -> pathlib.Path:
  path = fsdd_path()
  if path is None:
    pytest.skip("FSDD recordings not found: set FSDD_DIR or place them in ../shared/data/fsdd/recordings")
  return path


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir trained once per session with configs/smoke.py (tiny model, 8 kHz, 32 mels)."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from vae_jax import train  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("smoke_run")
  config = smoke.get_config()
  config.data.cache_dir = str(root / "cache")
  config.train.progress_bar = False
  workdir = root / "workdir"
  train.train_and_evaluate(config, str(workdir))
  return workdir
