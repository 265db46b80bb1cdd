"""Packaging: what the wheel ships, the console scripts, and configs by name."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile

import pytest

from vae_jax import entry
from vae_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_is_listed_and_configs_ship_as_vae_jax_configs():
  listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
  on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vae_jax").rglob("__init__.py")
             if "__pycache__" not in p.parts}
  assert on_disk <= listed, f"missing from [tool.setuptools] packages: {sorted(on_disk - listed)}"
  assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"vae_jax.configs": "configs"}
  assert (REPO / "configs" / "__init__.py").is_file()


def test_console_scripts_point_at_the_entry_functions():
  scripts = PYPROJECT["project"]["scripts"]
  assert scripts == {"vae-jax-train": "vae_jax.entry:train_main", "vae-jax-eval": "vae_jax.entry:eval_main"}
  assert callable(entry.train_main) and callable(entry.eval_main)


def test_config_short_names_resolve_to_the_shipped_files():
  assert os.path.samefile(entry.resolve_config("fsdd"), REPO / "configs" / "fsdd.py")
  assert entry.resolve_config("configs/smoke.py") == "configs/smoke.py", "paths are kept as given"
  with pytest.raises(ConfigError, match=r"--config=fsd: no such config .*shipped: default, fsdd,") as e:
    entry.resolve_config("fsd")
  assert "\n" not in str(e.value)


def test_train_py_takes_a_config_name(tmp_path):
  r = subprocess.run([sys.executable, "train.py", "--config=nosuch", f"--workdir={tmp_path / 'w'}"],
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.startswith("error: --config=nosuch: no such config")
  assert len(r.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()


def _fresh_venv_with_this_venvs_packages(root: pathlib.Path) -> pathlib.Path:
  """A new venv outside the repository that sees this venv's dependencies (none downloaded)."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
  purelib = sysconfig.get_paths()["purelib"]
  site = next((root / "lib").glob("python3*/site-packages"))
  # A plain path entry: the checkout's editable-install finder (a .pth in purelib) is not run.
  (site / "deps.pth").write_text(purelib + "\n")
  return root / "bin"


@pytest.mark.slow
def test_wheel_installs_and_its_console_scripts_train_and_evaluate(tmp_path):
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
                 check=True, capture_output=True)
  (wheel,) = dist.glob("vae_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "vae_jax/configs/fsdd.py" in names and "vae_jax/configs/default.py" in names
  assert not [n for n in names if n.startswith(("tests/", "bench/", "configs/"))]
  bin_dir = _fresh_venv_with_this_venvs_packages(tmp_path / "venv")
  t0 = time.perf_counter()
  subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                 check=True, capture_output=True, env={**os.environ, "PYTHONPATH": ""})
  print(f"wheel install (--no-deps) {time.perf_counter() - t0:.1f} s")
  work = tmp_path / "elsewhere"  # Outside the checkout: nothing can come from it.
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env.update(JAX_PLATFORMS="cpu", VAE_JAX_CACHE=str(tmp_path / "cache"))
  where = subprocess.run([str(bin_dir / "python"), "-c", "import vae_jax.configs as c; print(c.__file__)"],
                         cwd=work, env=env, capture_output=True, text=True, check=True).stdout
  assert str(tmp_path / "venv") in where, f"vae_jax must come from the wheel, not {where}"
  train = subprocess.run([str(bin_dir / "vae-jax-train"), "--config=smoke", "--workdir=run",
                          "--config.train.num_steps=20", "--config.train.eval_every=20",
                          "--config.train.checkpoint_every=20", "--config.train.progress_bar=false"],
                         cwd=work, env=env, capture_output=True, text=True)
  assert train.returncode == 0, train.stderr[-3000:]
  assert (work / "run" / "checkpoints" / "20").is_dir() and "checkpoint:" in train.stdout
  ev = subprocess.run([str(bin_dir / "vae-jax-eval"), "--workdir=run", "--step=best", "--sample=2",
                       "--seconds=0.5", "--export=exported"], cwd=work, env=env, capture_output=True, text=True)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert sorted(p.name for p in (work / "run" / "eval" / "samples").glob("sample_*.wav")) == [
      "sample_00.wav", "sample_01.wav"]
  assert (work / "exported" / "decode.jaxexport").is_file()
