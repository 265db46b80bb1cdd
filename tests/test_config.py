"""Bad configurations: one line naming the field and what it accepts, before any work starts."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest

from configs import default, smoke
from vae_jax import config as config_lib
from vae_jax import train
from vae_jax.config import load_config, set_field, validate
from vae_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.py")


def _with(**fields) -> ml_collections.ConfigDict:
  """The smoke config with fields replaced, types unchecked (as a hand-written config file could)."""
  d = smoke.get_config().to_dict()
  for dotted, value in fields.items():
    section, leaf = dotted.split("__")
    d[section][leaf] = value
  return ml_collections.ConfigDict(d)


def _refused(config, field: str, *fragments: str) -> str:
  with pytest.raises(ConfigError) as e:
    validate(config)
  message = str(e.value)
  assert "\n" not in message, message
  assert f"config field {field}=" in message, message
  assert "must be" in message, message
  for f in fragments:
    assert f in message, message
  return message


@pytest.mark.parametrize("field,value,fragment", [
    ("train__batch_size", 0, "positive integer"),
    ("train__batch_size", -8, "positive integer"),
    ("train__num_steps", -1, "positive integer"),
    ("data__segment_frames", -32, "positive integer"),
    ("data__segment_frames", 30, "time stride 4"),
    ("data__test_fraction", 1.0, "(0, 1)"),
    ("model__channels", 0, "positive integer"),
    ("model__kernel_size", 4, "odd"),
    ("model__strides", (2, 0), "positive integers"),
    ("model__channel_multipliers", (1,), "2 positive integers"),
    ("model__init_log_scale", float("nan"), "finite"),
    ("optim__learning_rate", 0.0, "(0, 1)"),
    ("optim__b2", 1.0, "[0, 1)"),
    ("loss__beta", -1.0, ">= 0"),
    ("train__on_nonfinite", "ignore", "'stop' or 'skip'"),
    ("train__parallel", "vmap", "'pmap' or 'shard_map'"),
    ("train__keep_checkpoints", 0, "positive integer"),
    ("eval__length_multiple", 6, "time stride 4"),
    ("features__sample_rate", 500, "[1000, 384000]"),
    ("features__log_floor", 0.0, "positive"),
    ("data__corpus", "librispeech", "'synthetic', 'fsdd' or 'folder'"),
])
def test_out_of_range_values_name_the_field_and_range(field, value, fragment):
  message = _refused(_with(**{field: value}), field.replace("__", "."), fragment)
  assert "out of range" in message


@pytest.mark.parametrize("field,value,fragment", [
    ("train__batch_size", "32", "positive integer"),
    ("train__batch_size", 8.0, "positive integer"),
    ("seed", True, "integer"),
    ("model__deterministic", 1, "true or false"),
    ("train__progress_bar", "yes", "true or false"),
    ("model__strides", (2.0, 2.0), "tuple of positive integers"),
    ("features__n_fft", 256.0, "integer"),
    ("features__window", 3, "window name"),
    ("data__path", None, "path"),
    ("optim__learning_rate", "fast", "(0, 1)"),
])
def test_wrong_types_name_the_field(field, value, fragment):
  if field == "seed":
    config = smoke.get_config().to_dict()
    config["seed"] = value
    config = ml_collections.ConfigDict(config)
  else:
    config = _with(**{field: value})
  message = _refused(config, field.replace("__", "."), fragment)
  assert "wrong type" in message


def test_fsdd_at_a_higher_sample_rate_is_refused_with_the_reason():
  config = _with(data__corpus="fsdd", data__path="/recordings", features__sample_rate=16000,
                 features__fmax=8000.0)
  _refused(config, "features.sample_rate", "8000 Hz", "upsamples", "empty")
  # At the corpus's own rate it is fine; other corpora may use any rate.
  validate(_with(data__corpus="fsdd", data__path="/recordings"))
  validate(_with(data__corpus="folder", data__path="/audio", features__sample_rate=16000,
                 features__fmax=8000.0))


def test_fsdd_and_folder_need_a_path():
  _refused(_with(data__corpus="folder", data__path=""), "data.path", "folder audio directory")
  validate(_with(data__corpus="synthetic", data__path=""))


def test_unknown_fields_and_wrong_override_types_are_refused():
  typo = r"unknown config field 'train.batch_sise' \(did you mean train.batch_size\?\)"
  with pytest.raises(ConfigError, match=typo):
    load_config(SMOKE, {"train.batch_sise": 8})
  with pytest.raises(ConfigError, match="unknown config field 'nothing.here'"):
    load_config(SMOKE, {"nothing.here": 1})
  config = smoke.get_config()
  with pytest.raises(ConfigError, match="'train.batch_size' must be int"):
    set_field(config, "train.batch_size", "8")
  with pytest.raises(ConfigError, match="true or false"):
    set_field(config, "train.progress_bar", 1)
  with pytest.raises(ConfigError, match="train.batch_size=-8 is out of range"):
    load_config(SMOKE, {"train.batch_size": -8})


def test_device_count_checks_come_before_any_work(tmp_path):
  devices = len(jax.local_devices())
  assert devices >= 2, "conftest provides several host devices"
  for fields, fragment in (({"batch_size": 2 * devices + 1}, f"multiple of the {devices} devices"),
                           ({"num_devices": devices + 1}, f"at most the {devices} local devices")):
    config = smoke.get_config()
    config.data.cache_dir = str(tmp_path / "cache")
    for k, v in fields.items():
      config.train[k] = v
    with pytest.raises(ConfigError) as e:
      train.train_and_evaluate(config, str(tmp_path / "run"))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_validation_comes_before_any_work(tmp_path):
  config = _with(data__corpus="fsdd", data__path=str(tmp_path / "audio"), features__sample_rate=16000,
                 features__fmax=8000.0, data__cache_dir=str(tmp_path / "cache"))
  with pytest.raises(ConfigError, match="features.sample_rate"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_the_checks_cover_every_field_of_the_default_config():
  """A new field needs a check (type and range) here, or it is read unvalidated."""
  config = default.get_config()
  checked = {field for field, *_ in config_lib._checks(config)}  # pylint: disable=protected-access
  leaves = set()

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, ml_collections.ConfigDict):
        walk(v, f"{prefix}{k}.")
      else:
        leaves.add(f"{prefix}{k}")

  walk(config, "")
  assert leaves - checked == set()


@pytest.mark.parametrize("args,fragment", [
    (["--config.train.batch_sise=3"], "unknown config field 'train.batch_sise'"),
    (["--config.train.batch_size=abc"], "--config.train.batch_size=abc"),
    (["--config.model.kernel_size=4"], "config field model.kernel_size=4 is out of range"),
    (["--config.train.batch_size=6"],
     "config field train.batch_size=6 is out of range: it must be a multiple of the 4 devices"),
    (["--config.data.corpus=fsdd", "--config.data.path=.", "--config.features.sample_rate=16000",
      "--config.features.fmax=8000"], "config field features.sample_rate=16000 is out of range"),
])
def test_train_py_prints_one_line_and_exits_2(tmp_path, args, fragment):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
         f"--config.data.cache_dir={tmp_path / 'cache'}", *args]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("platform,extra", [("tpu", "tpu"), ("cuda", "cuda12")])
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_platform_whose_jax_build_is_missing_is_one_line_naming_the_extra(tmp_path, script, platform, extra):
  plugin = {"tpu": "libtpu", "cuda": "jax_cuda12_plugin"}[platform]
  if importlib.util.find_spec(plugin) is not None:
    pytest.skip(f"{plugin} is installed here: the {platform} backend may start")
  env = dict(os.environ, JAX_PLATFORMS=platform)
  cmd = [sys.executable, script, f"--workdir={tmp_path / 'run'}"]
  if script == "train.py":
    cmd += ["--config=configs/smoke.py", f"--config.data.cache_dir={tmp_path / 'cache'}"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and f"JAX cannot start the {platform} backend" in lines[0], out.stderr
  assert f"pip install 'vae-jax[{extra}]'" in lines[0] and "JAX_PLATFORMS=cpu" in lines[0], lines[0]
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
