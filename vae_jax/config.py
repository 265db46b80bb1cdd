"""Loading config files and checking every field before any work starts."""

import difflib
import importlib.util
import math
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


def _value(config, field: str) -> Any:
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_ints(x) -> bool:
  return isinstance(x, (tuple, list)) and all(_is_int(v) for v in x)


# What each kind of field holds; a value of another type is refused before its range is checked.
_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": _is_int, "num": _is_num, "str": lambda x: isinstance(x, str),
    "bool": lambda x: isinstance(x, bool), "ints": _is_ints,
    "strs": lambda x: isinstance(x, (tuple, list)) and all(isinstance(v, str) for v in x),
}


def _check(config, field: str, kind: str, ok: Callable[[Any], bool], accepted: str) -> None:
  try:
    value = _value(config, field)
  except (KeyError, AttributeError):
    raise ConfigError(f"config field {field} is missing: it must be {accepted}") from None
  if not _TYPES[kind](value):
    raise ConfigError(f"config field {field}={value!r} has the wrong type: it must be {accepted}")
  if not ok(value):
    raise ConfigError(f"config field {field}={value!r} is out of range: it must be {accepted}")


def _remote(x) -> bool:
  return isinstance(x, str) and "://" in x


def _any(_) -> bool:
  return True


def _pos(x) -> bool:
  return x > 0


def _nonneg(x) -> bool:
  return x >= 0


# Native rate of the fixed corpora: higher feature rates upsample and leave the mel bands
# above the recordings' Nyquist frequency empty.
CORPUS_SAMPLE_RATES = {"fsdd": 8000}


def _get(config, field: str) -> Any:
  try:
    return _value(config, field)
  except (KeyError, AttributeError):
    return None


def _checks(config) -> list[tuple[str, str, Callable[[Any], bool], str]]:
  """(field, kind, in range, accepted values) for every field the code reads."""
  stride = _time_stride(config)
  strides = _get(config, "model.strides") if _is_ints(_get(config, "model.strides")) else ()
  corpus = _get(config, "data.corpus")
  kind = _get(config, "kind")
  return [
      ("seed", "int", _any, "an integer"),
      ("kind", "str", lambda x: x in ("vae", "prior", "adversarial"), "'vae', 'prior' or 'adversarial'"),
      ("data.corpus", "str", lambda x: x in ("synthetic", "fsdd", "folder"),
       "'synthetic', 'fsdd' or 'folder'"),
      ("data.path", "str", lambda x: (bool(x) or corpus == "synthetic") and not _remote(x),
       "a local path (unused by the synthetic corpus)" if corpus == "synthetic"
       else f"the local {corpus} audio directory (copy a remote corpus to local disk first)"),
      # The cache reads shards by position and publishes them by rename: object stores can do neither.
      ("data.cache_dir", "str", lambda x: not _remote(x),
       "a local directory path ('' for $VAE_JAX_CACHE or ~/.cache/vae-jax); the workdir may be remote"),
      ("data.segment_frames", "int", _pos, "a positive integer"),
      ("data.test_fraction", "num", lambda x: 0 < x < 1, "in (0, 1)"),
      ("data.speaker_level", "int", _pos, "a positive integer (1: each file's parent directory)"),
      ("data.num_workers", "int", _nonneg, "an integer >= 0 (0: one per core)"),
      ("data.prefetch", "int", _nonneg, "an integer >= 0"),
      ("data.max_memory_mb", "int", _pos, "a positive integer"),
      ("data.holdout", "str", _any, "'' (the corpus's own split) or 'label=class', e.g. 'speaker=jackson'"),
      ("augment.copies", "int", lambda x: 0 <= x <= 64, "an integer in [0, 64] (0: no augmentation)"),
      ("augment.seed", "int", _any, "an integer"),
      ("augment.speed", "num", lambda x: 0 <= x <= 0.5, "in [0, 0.5]"),
      ("augment.pitch_semitones", "num", lambda x: 0 <= x <= 12, "in [0, 12] semitones"),
      ("augment.gain_db", "num", lambda x: 0 <= x <= 24, "in [0, 24] dB"),
      ("augment.eq_db", "num", lambda x: 0 <= x <= 24, "in [0, 24] dB (0: no colouring)"),
      ("augment.noise_snr_db", "num", lambda x: -20 <= x <= 40, "in [-20, 40] dB (0: no noise)"),
      ("synthetic.num_speakers", "int", lambda x: 1 <= x <= 64, "an integer in [1, 64]"),
      ("synthetic.utterances_per_speaker", "int", lambda x: x >= 10, "an integer >= 10"),
      ("synthetic.seed", "int", _any, "an integer"),
      ("features.sample_rate", "int", lambda x: 1000 <= x <= CORPUS_SAMPLE_RATES.get(corpus, 384_000),
       _sample_rate_range(corpus)),
      ("features.n_fft", "int", lambda x: x >= 16, "an integer >= 16"),
      ("features.win_length", "int", _pos, "a positive integer (at most features.n_fft)"),
      ("features.hop_length", "int", _pos, "a positive integer (at most features.win_length)"),
      ("features.window", "str", _any, "a window name librosa knows, e.g. 'hann'"),
      ("features.n_mels", "int", _pos, "a positive integer"),
      ("features.fmin", "num", _nonneg, "a frequency >= 0 Hz"),
      ("features.fmax", "num", _pos, "a positive frequency in Hz (at most sample_rate / 2)"),
      ("features.log_floor", "num", _pos, "a positive amplitude, e.g. 1e-5"),
      ("model.name", "str", lambda x: x in ("conv", "mlp"), "'conv' or 'mlp'"),
      ("model.latent_channels", "int", _pos, "a positive integer"),
      ("model.channels", "int", _pos, "a positive integer"),
      ("model.strides", "ints", lambda x: len(x) >= 1 and all(s > 0 for s in x),
       "a non-empty tuple of positive integers"),
      ("model.channel_multipliers", "ints", lambda x: len(x) == len(strides) and all(s > 0 for s in x),
       f"a tuple of {len(strides)} positive integers (one per stride)"),
      ("model.blocks_per_stage", "int", _nonneg, "an integer >= 0"),
      ("model.kernel_size", "int", lambda x: x > 0 and x % 2 == 1, "a positive odd integer"),
      ("model.mlp_hidden", "ints", lambda x: len(x) >= 1 and all(s > 0 for s in x),
       "a non-empty tuple of positive integers"),
      ("data.segment_frames", "int", lambda x: x % stride == 0,
       f"a multiple of the model's time stride {stride} (product of model.strides)"),
      ("model.conv_impl", "str", lambda x: x in ("auto", "lax", "matmul"), "'auto', 'lax' or 'matmul'"),
      ("model.deterministic", "bool", _any, "true or false"),
      ("model.dtype", "str", lambda x: x in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
      ("model.init_log_scale", "num", math.isfinite, "a finite number"),
      ("loss.beta", "num", _nonneg, "a number >= 0"),
      ("loss.kl_warmup_steps", "int", _nonneg, "an integer >= 0"),
      ("loss.free_bits", "num", _nonneg, "a number >= 0"),
      ("optim.learning_rate", "num", lambda x: 0 < x < 1, "in (0, 1)"),
      ("optim.warmup_steps", "int", _nonneg, "an integer >= 0"),
      ("optim.end_lr_factor", "num", lambda x: 0 <= x <= 1, "in [0, 1]"),
      ("optim.weight_decay", "num", _nonneg, "a number >= 0"),
      ("optim.b1", "num", lambda x: 0 <= x < 1, "in [0, 1)"),
      ("optim.b2", "num", lambda x: 0 <= x < 1, "in [0, 1)"),
      ("optim.grad_clip_norm", "num", _nonneg, "a number >= 0 (0 disables clipping)"),
      ("train.num_steps", "int", _pos, "a positive integer"),
      ("train.max_steps_per_run", "int", _nonneg, "an integer >= 0 (0: no limit)"),
      ("train.batch_size", "int", _pos, "a positive integer (a multiple of the device count)"),
      ("train.parallel", "str", lambda x: x in ("pmap", "shard_map"), "'pmap' or 'shard_map'"),
      ("train.stop_check_every", "int", _pos, "a positive integer"),
      ("train.num_devices", "int", _nonneg, "an integer >= 0 (0: all local devices)"),
      ("train.log_every", "int", _pos, "a positive integer"),
      ("train.eval_every", "int", _pos, "a positive integer"),
      ("train.checkpoint_every", "int", _pos, "a positive integer"),
      ("train.keep_checkpoints", "int", _pos, "a positive integer"),
      ("train.async_checkpoints", "bool", _any, "true or false"),
      ("train.on_nonfinite", "str", lambda x: x in ("stop", "skip"), "'stop' or 'skip'"),
      ("train.progress_bar", "bool", _any, "true or false"),
      ("prior.vae_workdir", "str", lambda x: bool(x) or kind != "prior",
       "the workdir of a trained VAE run (a non-empty path)"),
      ("prior.vae_step", "int", _nonneg, "an integer >= 0 (0: the latest)"),
      ("prior.conditions", "strs", lambda x: len(set(x)) == len(x), "a tuple of distinct label names"),
      ("prior.label_dropout", "num", lambda x: 0 <= x <= 1, "in [0, 1]"),
      ("prior.width", "int", lambda x: x > 0 and x % max(_get(config, "prior.heads") or 1, 1) == 0,
       "a positive multiple of prior.heads"),
      ("prior.depth", "int", _pos, "a positive integer"),
      ("prior.heads", "int", _pos, "a positive integer"),
      ("prior.mlp_ratio", "int", _pos, "a positive integer"),
      ("prior.num_mixtures", "int", _pos, "a positive integer"),
      ("prior.dropout", "num", lambda x: 0 <= x < 1, "in [0, 1)"),
      ("prior.max_latent_frames", "int", _pos, "a positive integer"),
      ("prior.guidance", "num", math.isfinite, "a finite number (0: unconditional, 1: conditional)"),
      ("prior.temperature", "num", lambda x: x > 0, "a positive number"),
      ("prior.eval_samples", "int", _pos, "a positive integer"),
      ("adversarial.vae_workdir", "str", lambda x: bool(x) or kind != "adversarial",
       "the workdir of a trained VAE run (a non-empty path)"),
      ("adversarial.vae_step", "int", _nonneg, "an integer >= 0 (0: the latest)"),
      ("adversarial.loss", "str", lambda x: x in ("hinge", "lsgan"), "'hinge' or 'lsgan'"),
      ("adversarial.decode_mean", "bool", _any, "true or false"),
      ("adversarial.nll_weight", "num", _nonneg, "a number >= 0"),
      ("adversarial.adv_weight", "num", _nonneg, "a number >= 0"),
      ("adversarial.feature_matching_weight", "num", _nonneg, "a number >= 0"),
      ("adversarial.disc_channels", "ints", lambda x: len(x) >= 1 and all(s > 0 for s in x),
       "a non-empty tuple of positive integers"),
      ("adversarial.disc_kernel", "int", lambda x: x > 0 and x % 2 == 1, "a positive odd integer"),
      ("adversarial.disc_scales", "ints", lambda x: len(x) >= 1 and len(set(x)) == len(x) and all(s > 0 for s in x),
       "a non-empty tuple of distinct positive integers"),
      ("adversarial.disc_learning_rate", "num", lambda x: 0 < x < 1, "in (0, 1)"),
      ("eval.batch_size", "int", _pos, "a positive integer"),
      ("eval.length_multiple", "int", lambda x: x > 0 and x % stride == 0,
       f"a positive multiple of the model's time stride {stride}"),
      ("eval.max_utterances", "int", _nonneg, "an integer >= 0 (0: all)"),
      ("eval.iwae_samples", "int", _pos, "a positive integer"),
      ("eval.griffin_lim_iters", "int", _pos, "a positive integer"),
      ("eval.num_audio_examples", "int", _nonneg, "an integer >= 0"),
      ("eval.audio_metrics", "bool", _any, "true or false"),
  ]


def _sample_rate_range(corpus: Any) -> str:
  native = CORPUS_SAMPLE_RATES.get(corpus) if isinstance(corpus, str) else None
  if native is None:
    return "an integer in [1000, 384000] Hz"
  return (f"an integer in [1000, {native}] Hz for the {corpus} corpus, which is recorded at {native} Hz "
          f"(a higher rate upsamples and leaves the mel bands above {native // 2} Hz empty)")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns the config, or raises ConfigError naming the first bad field and its accepted range."""
  # Here, not at the top: librosa and jax load in seconds, and a bad flag should fail at once.
  from vae_jax.audio.features import FeatureConfig  # pylint: disable=g-import-not-at-top

  for field, kind, ok, accepted in _checks(config):
    _check(config, field, kind, ok, accepted)
  FeatureConfig.from_config(config.features)
  return config


def _time_stride(config) -> int:
  from vae_jax.models import time_stride  # pylint: disable=g-import-not-at-top  (jax: see validate)

  try:
    stride = time_stride(config)
  except (TypeError, KeyError, AttributeError):  # Bad or missing fields: refused by their checks.
    return 1
  return stride if _is_int(stride) and stride > 0 else 1
