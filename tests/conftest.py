"""Shared fixtures. Four host CPU devices so data-parallel code paths run on any machine."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def fsdd_path() -> pathlib.Path | None:
  """The Free Spoken Digit Dataset recordings, from $FSDD_DIR or ../shared beside the repo."""
  candidates = [os.environ.get("FSDD_DIR"), REPO_ROOT.parent / "shared" / "data" / "fsdd" / "recordings"]
  for c in candidates:
    if c and pathlib.Path(c).is_dir() and any(pathlib.Path(c).glob("*.wav")):
      return pathlib.Path(c)
  return None


@pytest.fixture(scope="session")
def fsdd_dir() -> pathlib.Path:
  path = fsdd_path()
  if path is None:
    pytest.skip("FSDD recordings not found: set FSDD_DIR or place them in ../shared/data/fsdd/recordings")
  return path
