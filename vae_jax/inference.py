"""A trained workdir as one object: config, model, parameters, normaliser and jitted helpers.

  trained = load_trained("runs/fsdd")
  wave, log_mel = trained.load_audio("a.wav")
  mean_TzxC, logvar_TzxC = trained.encode(log_mel)
  recon_TxF = trained.decode(mean_TzxC, num_frames=len(log_mel))
  audio = trained.to_audio(recon_TxF, length=len(wave))

Single-utterance helpers take and return unnormalised natural-log mel [T, F];
batched helpers work on normalised features with a frame mask, as the model does.
Latents of padded frames are set to zero before decoding, so a decoded
utterance does not depend on how much padding its batch had.
"""

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from vae_jax import fileio
from vae_jax.audio import io as audio_io
from vae_jax.audio import spectral
from vae_jax.audio.features import FeatureConfig, Normalizer, log_mel
from vae_jax.checkpoints import Checkpointer
from vae_jax.data.loader import pad_frames
from vae_jax.data.store import Dataset, load_dataset
from vae_jax.errors import CheckpointError, DataError
from vae_jax.models.layers import downsample_mask
from vae_jax.models.vae import VAE, build_model, time_stride
from vae_jax.state import create_train_state


@dataclasses.dataclass
class Trained:
  """A restored model and everything needed to feed it and listen to it."""

  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: VAE
  params: Any
  normalizer: Normalizer
  feature_config: FeatureConfig

  def __post_init__(self):
    model = self.model

    def encode(params, mel_BxTxF, mask_BxT):
      return model.apply({"params": params}, mel_BxTxF, mask_BxT, method=VAE.encode)

    def decode(params, z_BxTzxC, mask_BxT):
      mask_z = downsample_mask(mask_BxT, self.stride)
      return model.apply({"params": params}, z_BxTzxC * mask_z[..., None], mask_BxT,
                         method=VAE.decode)

    def reconstruct(params, mel_BxTxF, mask_BxT):
      mean, _, _ = encode(params, mel_BxTxF, mask_BxT)
      return decode(params, mean, mask_BxT)

    self.encode_batch = jax.jit(encode)
    self.decode_batch = jax.jit(decode)
    self.reconstruct_batch = jax.jit(reconstruct)

  @property
  def stride(self) -> int:
    """Mel frames per latent frame."""
    return time_stride(self.config)

  @property
  def latent_channels(self) -> int:
    return int(self.config.model.latent_channels)

  @property
  def length_multiple(self) -> int:
    return int(self.config.eval.length_multiple)

  def latent_frames(self, num_frames: int) -> int:
    """Latent frames of an utterance of num_frames mel frames."""
    return -(-num_frames // self.stride)

  def padded_length(self, num_frames: int) -> int:
    return -(-num_frames // self.length_multiple) * self.length_multiple

  def config_for_corpus(self, data_path: str | None = None) -> ml_collections.ConfigDict:
    """The run's config, or a copy of it reading the corpus from `data_path` (where it moved)."""
    if not data_path:
      return self.config
    config = self.config.copy_and_resolve_references()
    config.data.path = data_path
    return config

  def dataset(self, data_path: str | None = None) -> Dataset:
    """The run's corpus (train and test splits), from `data_path` if given."""
    return load_dataset(self.config_for_corpus(data_path), self.normalizer)

  def load_audio(self, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(waveform at the model's rate, log-mel [T, F]); DataError naming the file if unusable."""
    fc = self.feature_config
    try:
      wave = audio_io.read_audio(path, fc.sample_rate, min_samples=fc.win_length)
    except audio_io.BadAudio as e:
      raise DataError(f"{path}: {e}") from None
    return wave, log_mel(wave, fc)

  def _pad(self, log_mel_TxF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One utterance, normalised, as a padded batch of one, and its frame mask."""
    return pad_frames([self.normalizer.normalize(log_mel_TxF)], 1, self.length_multiple)

  def encode(self, log_mel_TxF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-variance [Tz, C] of one utterance (valid latent frames only)."""
    mel, mask = self._pad(np.asarray(log_mel_TxF, np.float32))
    mean, logvar, _ = jax.device_get(self.encode_batch(self.params, mel, mask))
    tz = self.latent_frames(len(log_mel_TxF))
    return np.asarray(mean[0, :tz]), np.asarray(logvar[0, :tz])

  def decode(self, z_TzxC: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """Unnormalised log-mel [T, F] decoded from latents [Tz, C]; T defaults to Tz * stride."""
    z_TzxC = np.asarray(z_TzxC, np.float32)
    tz = len(z_TzxC)
    t = tz * self.stride if num_frames is None else int(num_frames)
    if self.latent_frames(t) != tz:
      raise ValueError(f"{tz} latent frames decode to {(tz - 1) * self.stride + 1}.."
                       f"{tz * self.stride} mel frames, not {t}")
    t_pad = self.padded_length(t)
    z = np.zeros((1, t_pad // self.stride, z_TzxC.shape[1]), np.float32)
    z[0, :tz] = z_TzxC
    mask = np.zeros((1, t_pad), np.float32)
    mask[0, :t] = 1.0
    recon = jax.device_get(self.decode_batch(self.params, z, mask))
    return self.normalizer.denormalize(np.asarray(recon[0, :t]))

  def reconstruct(self, log_mel_TxF: np.ndarray) -> np.ndarray:
    """Log-mel [T, F] decoded from the posterior mean of one utterance."""
    mel, mask = self._pad(np.asarray(log_mel_TxF, np.float32))
    recon = jax.device_get(self.reconstruct_batch(self.params, mel, mask))
    return self.normalizer.denormalize(np.asarray(recon[0, :len(log_mel_TxF)]))

  def to_audio(self, log_mel_TxF: np.ndarray, length: int | None = None, seed: int = 0) -> np.ndarray:
    """Griffin-Lim waveform of one log-mel [T, F] (config.eval.griffin_lim_iters iterations)."""
    return griffin_lim_batch([log_mel_TxF], self.feature_config, self.config.eval.griffin_lim_iters,
                             lengths=None if length is None else [length], seed=seed)[0]


def griffin_lim_batch(log_mels: Sequence[np.ndarray], fc: FeatureConfig, n_iter: int,
                      lengths: Sequence[int] | None = None, seed: int = 0, batch_size: int = 32,
                      frame_multiple: int = 32) -> list[np.ndarray]:
  """Waveforms of many log-mels [T_i, F], batched by length with spectral.griffin_lim.

  Utterances are sorted by length, padded with silence (the log floor) to a multiple
  of `frame_multiple` frames and cut back to their own length afterwards, so only one
  program per padded length is compiled. `lengths` (samples) defaults to
  (T_i - 1) * hop_length, the length Griffin-Lim gives an unpadded utterance.
  """
  n = len(log_mels)
  batch_size = min(batch_size, n)  # A lone utterance is not padded to a full batch.
  if lengths is None:
    lengths = [(len(m) - 1) * fc.hop_length for m in log_mels]
  floor = float(np.log(fc.log_floor))
  out: list[np.ndarray | None] = [None] * n
  order = np.argsort([len(m) for m in log_mels], kind="stable")
  key = jax.random.key(seed)
  for b in range(0, n, batch_size):
    idx = order[b:b + batch_size]
    # At least one frame of padding: Griffin-Lim's output then covers every requested sample.
    mel, _ = pad_frames([log_mels[i] for i in idx], batch_size, frame_multiple, fill=floor,
                        min_padding=1)
    waves = np.asarray(spectral.griffin_lim(mel, fc, n_iter=n_iter, key=jax.random.fold_in(key, b)))
    for j, i in enumerate(idx):
      out[i] = waves[j, :lengths[i]]
  return out


def config_from_json(d: dict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(d)
  for field in ("strides", "channel_multipliers", "mlp_hidden"):
    if field in config.model:
      config.model[field] = tuple(config.model[field])
  return config


def open_checkpoints(workdir: str, step: int | None, hint: str) -> tuple[Checkpointer, int]:
  """A read-only Checkpointer of a workdir and the step to restore (default: the latest); one-line errors."""
  directory = os.path.join(workdir, "checkpoints")
  if not fileio.isdir(directory):
    raise CheckpointError(f"no checkpoints in {workdir}: {hint}")
  # Read-only: the run may still be training and writing here.
  ckpt = Checkpointer(directory, read_only=True)
  steps = ckpt.all_steps()
  if not steps or (step is not None and int(step) not in steps):
    ckpt.close()
    if not steps:
      raise CheckpointError(f"no checkpoints in {ckpt.directory}: {hint}")
    raise CheckpointError(f"no checkpoint for step {step} in {ckpt.directory} "
                          f"(available: {', '.join(map(str, sorted(steps)))})")
  return ckpt, max(steps) if step is None else int(step)


def load_trained(workdir: str, step: int | None = None) -> Trained:
  """Restores a workdir's checkpoint (the latest, or `step`); CheckpointError in one line if it cannot."""
  ckpt, step = open_checkpoints(workdir, step, f"train first with `python train.py --workdir={workdir}`")
  try:
    meta = ckpt.restore_meta(step)
    if meta.get("config", {}).get("kind") == "prior":
      raise CheckpointError(f"{workdir} holds a learned prior, not a VAE: load it with "
                            "vae_jax.prior.load_prior (eval.py does so by itself)")
    try:
      config = config_from_json(meta["config"])
      model = build_model(config)
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"checkpoint {ckpt.step_dir(step)} has no usable config in its meta "
                            f"({type(e).__name__}: {e})") from None
    if config.get("kind") == "adversarial":  # Its state holds a discriminator beside the VAE.
      from vae_jax.adversarial.training import abstract_state  # pylint: disable=g-import-not-at-top

      abstract = abstract_state(config)
    else:  # Shapes only: tracing the initialiser is much faster than compiling it.
      abstract = jax.eval_shape(lambda: create_train_state(config, model, jax.random.key(0)))
    state, _ = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  normalizer = Normalizer.from_dict(meta["normalizer"])
  fc = FeatureConfig.from_config(config.features)
  params = jax.device_get(state.params)
  return Trained(fileio.absolute(workdir), step, config, model, params, normalizer, fc)
