"""Compressing utterances to .vjx bytes and files with a trained VAE, and decoding them back.

  data = compress(trained, log_mel, quant_step=2.0)        # standard Gaussian prior
  z_TzxC = decompress(trained, data)                        # the quantised latents, exactly
  encode_file(trained, "a.wav", "a.vjx", prior=load_prior("runs/fsdd_prior"))
  z_TzxC, log_mel, wave = decode_file(trained, "a.vjx", prior=...)
"""

import math
from typing import Any

import numpy as np

from vae_jax import fileio
from vae_jax.codec import bitstream, coder, priors, sequence
from vae_jax.errors import DataError, UserError
from vae_jax.prior.training import params_hash

STEP_MODES = ("posterior", "prior")
# Units of `quant_step` in the default "posterior" mode: the clip's mean posterior std per channel.
DEFAULT_STEP_MODE = "posterior"
DEFAULT_QUANT_STEP = 2.0
# (id(object), what) -> (object, derived): hashes and jitted priors, computed once per object.
_cache: dict[tuple[int, str], tuple[Any, Any]] = {}


def _cached(obj: Any, make) -> Any:
  """make(obj), computed once per live object (the entry keeps obj alive, so its id stays unique)."""
  key = (id(obj), make.__qualname__)
  hit = _cache.get(key)
  if hit is None or hit[0] is not obj:
    hit = _cache[key] = (obj, make(obj))
  return hit[1]


def short_model_hash(trained, digits: int = 2 * bitstream.HASH_BYTES) -> str:
  """The model hash a .vjx file records (2 * bitstream.HASH_BYTES hex digits; 8 in version 1 files)."""
  return _cached(trained, priors.model_hash)[:digits]


def entropy_prior(trained, prior=None):
  """The codec's view of a TrainedPrior (None: the standard Gaussian); UserError if it is another VAE's."""
  if prior is None:
    return priors.StandardPrior()
  if _cached(prior.vae_run.params, params_hash) != _cached(trained.params, params_hash):
    raise UserError(f"the prior in {prior.workdir} models the latents of another VAE than {trained.workdir}")
  return _cached(prior, priors.LearnedPrior)


def channel_steps(logvar_TxC: np.ndarray, quant_step: float, step_mode: str) -> tuple[float, tuple | None]:
  """(largest channel step on the header's grid, per-channel exponents or None) for compress."""
  if step_mode not in STEP_MODES:
    raise UserError(f"step_mode={step_mode!r}: use one of {', '.join(STEP_MODES)}")
  if not (math.isfinite(quant_step) and quant_step > 0):
    raise UserError(f"--quant_step={quant_step:g}: it must be positive")
  if step_mode == "prior":
    return _on_grid(quant_step), None
  scale_C = np.exp(0.5 * np.asarray(logvar_TxC, np.float64)).mean(0)
  top = _on_grid(quant_step * scale_C.max())
  e = np.clip(np.rint(-bitstream.EXPONENT_STEPS * np.log2(quant_step * scale_C / top)), 0,
              bitstream.MAX_EXPONENT)
  return top, tuple(int(x) for x in e)


def _on_grid(step: float) -> float:
  """A step as the header stores it (the nearest eighth-octave grid point); UserError off the grid's range."""
  k = bitstream.step_index(step) if math.isfinite(step) and step > 0 else -1
  if not 0 <= k <= 255:
    raise UserError(f"a quantisation step of {step:g} is outside what a .vjx header holds "
                    f"({bitstream.MIN_STEP:.2g} .. {bitstream.MAX_STEP:.4g})")
  return bitstream.grid_step(k)


def compress(trained, log_mel_TxF: np.ndarray, prior=None, quant_step: float = DEFAULT_QUANT_STEP,
             step_mode: str = DEFAULT_STEP_MODE, num_samples: int | None = None) -> bytes:
  """The .vjx bytes of one utterance's log-mel [T, F]; num_samples defaults to (T - 1) * hop."""
  model = entropy_prior(trained, prior)
  mean_TzxC, logvar_TzxC = trained.encode(log_mel_TxF)
  t, hop = len(log_mel_TxF), trained.feature_config.hop_length
  extra = 0 if num_samples is None else int(num_samples) - (t - 1) * hop
  top, exponents = channel_steps(logvar_TzxC, quant_step, step_mode)
  header = bitstream.Header(short_model_hash(trained), model.hash[:2 * bitstream.HASH_BYTES],
                            trained.feature_config.sample_rate, t, max(extra, 0), top, exponents)
  steps_C = header.steps(trained.latent_channels)
  payload = sequence.encode_sequence(sequence.quantise(mean_TzxC, steps_C), steps_C, model)
  return bitstream.pack(header, payload)


def read(trained, data: bytes, prior=None, name: str = "<bytes>") -> tuple[bitstream.Header, np.ndarray]:
  """(header, dequantised latents [Tz, C]) of .vjx bytes; DataError `name: reason` if unusable."""
  try:
    header, payload = bitstream.unpack(data, trained.latent_channels)
  except bitstream.FormatError as e:
    raise DataError(f"{name}: {e}") from None
  model = _check_header(trained, header, prior, name)
  steps_C = header.steps(trained.latent_channels)
  try:
    q_TzxC = sequence.decode_sequence(payload, trained.latent_frames(header.mel_frames), steps_C, model)
  except (coder.Exhausted, ValueError, RuntimeError) as e:
    raise DataError(f"{name}: the coded latents do not decode ({e})") from None
  return header, sequence.dequantise(q_TzxC, steps_C)


def _check_header(trained, header: bitstream.Header, prior, name: str):
  """The entropy model to decode with; DataError if the file belongs to another model or prior."""
  ours = short_model_hash(trained, len(header.model_hash))
  if header.model_hash != ours:
    raise DataError(f"{name}: written by the model with hash {header.model_hash}, but {trained.workdir} "
                    f"has hash {ours}: decode it with the model that wrote it")
  if header.latent_frames not in (None, trained.latent_frames(header.mel_frames)):  # Version 1 stores it.
    raise DataError(f"{name}: malformed header ({header.latent_frames} latent frames for "
                    f"{header.mel_frames} mel frames)")
  if not header.prior_hash:
    return priors.StandardPrior()
  if header.version < 3:
    raise DataError(f"{name}: coded under a learned prior by format version {header.version}, whose tables "
                    "this decoder no longer computes: encode the audio again")
  if prior is None:
    raise DataError(f"{name}: coded with the learned prior {header.prior_hash}: pass that prior's workdir")
  model = entropy_prior(trained, prior)
  theirs = model.hash[:len(header.prior_hash)]
  if theirs != header.prior_hash:
    raise DataError(f"{name}: coded with the learned prior {header.prior_hash}, but {prior.workdir} has "
                    f"hash {theirs}")
  return model


def read_payload(trained, data: bytes) -> bytes:
  """The entropy-coded part of .vjx bytes (what is left once header and checksum are taken off)."""
  return bitstream.unpack(data, trained.latent_channels)[1]


def decompress(trained, data: bytes, prior=None, name: str = "<bytes>") -> np.ndarray:
  """The quantised latents [Tz, C] (float32) that `compress` coded, exactly."""
  return read(trained, data, prior, name)[1]


def encode_file(trained, wave_path: str, out_path: str, prior=None,
                quant_step: float = DEFAULT_QUANT_STEP, step_mode: str = DEFAULT_STEP_MODE) -> bytes:
  """Compresses an audio file into out_path (.vjx) and returns its bytes; DataError if it is not audio."""
  wave, log_mel_TxF = trained.load_audio(wave_path)
  data = compress(trained, log_mel_TxF, prior, quant_step, step_mode, num_samples=len(wave))
  fileio.write_bytes(out_path, data)
  return data


def decode_file(trained, vjx_path: str, prior=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(latents [Tz, C], log-mel [T, F], waveform) of a .vjx file, re-synthesised with Griffin-Lim."""
  try:
    data = fileio.read_bytes(vjx_path)
  except OSError as e:
    raise DataError(f"{vjx_path}: cannot be read ({e.strerror or e})") from None
  header, z_TzxC = read(trained, data, prior, vjx_path)
  log_mel_TxF = trained.decode(z_TzxC, header.mel_frames)
  length = (header.mel_frames - 1) * trained.feature_config.hop_length + header.extra_samples
  return z_TzxC, log_mel_TxF, trained.to_audio(log_mel_TxF, length)
