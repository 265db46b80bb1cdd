"""Loading config files and checking every field before any work starts."""

import difflib
import importlib.util
import os
import sys
from typing import Any, Callable

import ml_collections

from vae_jax.errors import ConfigError


def load_config(path: str, overrides: dict[str, Any] | None = None,
                validate_fields: bool = True) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file, applies dotted overrides and validates."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # Config files import their siblings as `configs.default`.
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f"_vae_jax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as e:  # A broken config file is the user's to fix: say where.
    raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from None
  for key, value in (overrides or {}).items():
    set_field(config, key, value)
  return validate(config) if validate_fields else config


def lookup(config: ml_collections.ConfigDict, dotted: str) -> tuple[ml_collections.ConfigDict, str]:
  """The node holding a dotted field and the field's name; ConfigError (with a suggestion) if unknown."""
  *parents, leaf = dotted.split(".")
  node, path = config, []
  for name in parents + [leaf]:
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(name, options, n=1)
      hint = f" (did you mean {'.'.join(path + close)}?)" if close else ""
      raise ConfigError(f"unknown config field {dotted!r}{hint}")
    parent, node = node, node[name]
    path.append(name)
  return parent, leaf


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """config.a.b = value, refusing keys that the config does not define."""
  node, leaf = lookup(config, dotted)
  old = node[leaf]
  if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
    value = type(old)(value)
  elif isinstance(old, bool) and not isinstance(value, bool):
    raise ConfigError(f"config field {dotted!r} must be true or false, got {value!r}")
  elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif type(old) is not type(value):
    raise ConfigError(f"config field {dotted!r} must be {type(old).__name__}, got {value!r}")
  node[leaf] = value


def _check(config, field: str, ok: Callable[[Any], bool], accepted: str) -> None:
  node = config
  for part in field.split("."):
    node = node[part]
  try:
    good = ok(node)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f"config field {field}={node!r} is out of range: it must be {accepted}")


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns the config, or raises ConfigError naming the first bad field and its accepted range."""
  from vae_jax.features import FeatureConfig  # pylint: disable=g-import-not-at-top

  pos_int = lambda x: _is_int(x) and x > 0
  nonneg_int = lambda x: _is_int(x) and x >= 0
  nonneg = lambda x: _is_num(x) and x >= 0
  checks = [
      ("seed", _is_int, "an integer"),
      ("data.corpus", lambda x: x in ("synthetic", "fsdd", "folder"), "'synthetic', 'fsdd' or 'folder'"),
      ("data.segment_frames", pos_int, "a positive integer"),
      ("data.test_fraction", lambda x: _is_num(x) and 0 < x < 1, "in (0, 1)"),
      ("data.num_workers", nonneg_int, "an integer >= 0 (0: one per core)"),
      ("data.prefetch", nonneg_int, "an integer >= 0"),
      ("data.max_memory_mb", pos_int, "a positive integer"),
      ("synthetic.num_speakers", lambda x: _is_int(x) and 1 <= x <= 64, "an integer in [1, 64]"),
      ("synthetic.utterances_per_speaker", lambda x: _is_int(x) and x >= 10, "an integer >= 10"),
      ("model.name", lambda x: x in ("conv", "mlp"), "'conv' or 'mlp'"),
      ("model.latent_channels", pos_int, "a positive integer"),
      ("model.channels", pos_int, "a positive integer"),
      ("model.strides", lambda x: len(x) >= 1 and all(pos_int(s) for s in x), "a non-empty tuple of positive integers"),
      ("model.channel_multipliers", lambda x: len(x) == len(config.model.strides) and all(pos_int(s) for s in x),
       f"a tuple of {len(config.model.strides)} positive integers (one per stride)"),
      ("model.blocks_per_stage", nonneg_int, "an integer >= 0"),
      ("model.kernel_size", lambda x: pos_int(x) and x % 2 == 1, "a positive odd integer"),
      ("model.mlp_hidden", lambda x: len(x) >= 1 and all(pos_int(s) for s in x), "a non-empty tuple of positive integers"),
      ("model.conv_impl", lambda x: x in ("auto", "lax", "matmul"), "'auto', 'lax' or 'matmul'"),
      ("model.dtype", lambda x: x in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
      ("model.init_log_scale", _is_num, "a number"),
      ("loss.beta", nonneg, "a number >= 0"),
      ("loss.kl_warmup_steps", nonneg_int, "an integer >= 0"),
      ("loss.free_bits", nonneg, "a number >= 0"),
      ("optim.learning_rate", lambda x: _is_num(x) and 0 < x < 1, "in (0, 1)"),
      ("optim.warmup_steps", nonneg_int, "an integer >= 0"),
      ("optim.end_lr_factor", lambda x: _is_num(x) and 0 <= x <= 1, "in [0, 1]"),
      ("optim.weight_decay", nonneg, "a number >= 0"),
      ("optim.b1", lambda x: _is_num(x) and 0 <= x < 1, "in [0, 1)"),
      ("optim.b2", lambda x: _is_num(x) and 0 <= x < 1, "in [0, 1)"),
      ("optim.grad_clip_norm", nonneg, "a number >= 0 (0 disables clipping)"),
      ("train.num_steps", pos_int, "a positive integer"),
      ("train.max_steps_per_run", nonneg_int, "an integer >= 0 (0: no limit)"),
      ("train.batch_size", pos_int, "a positive integer"),
      ("train.parallel", lambda x: x in ("pmap", "shard_map"), "'pmap' or 'shard_map'"),
      ("train.num_devices", nonneg_int, "an integer >= 0 (0: all local devices)"),
      ("train.log_every", pos_int, "a positive integer"),
      ("train.eval_every", pos_int, "a positive integer"),
      ("train.checkpoint_every", pos_int, "a positive integer"),
      ("train.keep_checkpoints", pos_int, "a positive integer"),
      ("train.on_nonfinite", lambda x: x in ("stop", "skip"), "'stop' or 'skip'"),
      ("eval.batch_size", pos_int, "a positive integer"),
      ("eval.length_multiple", lambda x: pos_int(x) and x % _time_stride(config) == 0,
       f"a positive multiple of the model's time stride {_time_stride(config)}"),
      ("eval.max_utterances", nonneg_int, "an integer >= 0 (0: all)"),
      ("eval.iwae_samples", pos_int, "a positive integer"),
      ("eval.griffin_lim_iters", pos_int, "a positive integer"),
      ("eval.num_audio_examples", nonneg_int, "an integer >= 0"),
  ]
  for field, ok, accepted in checks:
    _check(config, field, ok, accepted)
  stride = _time_stride(config)
  if config.data.segment_frames % stride:
    raise ConfigError(f"config field data.segment_frames={config.data.segment_frames} must be a multiple "
                      f"of the model's time stride {stride} (product of model.strides)")
  FeatureConfig.from_config(config.features)
  return config


def _time_stride(config) -> int:
  from vae_jax.models import time_stride  # pylint: disable=g-import-not-at-top

  try:
    return time_stride(config)
  except TypeError:
    return 1
