"""The Python API: `vae_jax.load(workdir, step)` and a Trained model that takes audio as well as log-mels.

  import vae_jax
  m = vae_jax.load("runs/fsdd", step="best")
  z, _ = m.encode("a.wav")          # a path, a waveform [N] at m.sample_rate, or a log-mel [T, F]
  wave = m.to_audio(m.decode(z))    # Griffin-Lim
  draws = m.sample(4, seconds=1.0)  # log-mels decoded from N(0, I)
"""

import os
from typing import Sequence, Union

import numpy as np

from vae_jax import fileio
from vae_jax.checkpoints import Checkpointer
from vae_jax.errors import CheckpointError, UserError
from vae_jax.inference import Trained, load_trained

Step = Union[int, str, None]
Audio = Union[str, os.PathLike, np.ndarray]


class Model(Trained):
  """A Trained run whose single-utterance methods also take audio files and waveforms."""

  @property
  def sample_rate(self) -> int:
    return int(self.feature_config.sample_rate)

  def log_mel(self, audio: Audio) -> np.ndarray:
    """Unnormalised log-mel [T, F] of a path, a waveform [N] (at sample_rate) or a log-mel [T, F]."""
    from vae_jax.audio.features import log_mel  # pylint: disable=g-import-not-at-top

    if isinstance(audio, (str, os.PathLike)):
      return self.load_audio(os.fspath(audio))[1]
    x = np.asarray(audio, np.float32)
    if x.ndim == 1:
      return log_mel(x, self.feature_config)
    if x.ndim == 2 and x.shape[1] == self.feature_config.n_mels:
      return x
    raise UserError(f"expected a path, a waveform [samples] or a log-mel [frames, {self.feature_config.n_mels}], "
                    f"got an array of shape {x.shape}")

  def encode(self, audio: Audio) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-variance [Tz, C] of one utterance (path, waveform or log-mel)."""
    return super().encode(self.log_mel(audio))

  def reconstruct(self, audio: Audio) -> np.ndarray:
    """Log-mel [T, F] decoded from the posterior mean of one utterance (path, waveform or log-mel)."""
    return super().reconstruct(self.log_mel(audio))

  def sample(self, n: int, seconds: float | Sequence[float] = 1.0, temperature: float = 1.0,
             seed: int = 0) -> list[np.ndarray]:
    """n log-mels [T, F] decoded from N(0, temperature^2 I) latents, `seconds` long (one or one each)."""
    from vae_jax.eval.generate import standard_prior_mels  # pylint: disable=g-import-not-at-top

    lengths = np.broadcast_to(np.asarray(seconds, np.float64), (n,))
    if n < 1 or np.any(lengths <= 0):
      raise UserError(f"sample(n={n}, seconds={seconds}): n and every length must be positive")
    fps = self.feature_config.frames_per_second
    return standard_prior_mels(self, [max(1, round(s * fps)) for s in lengths], seed, temperature)


def resolve_step(workdir: str, step: Step) -> int | None:
  """'latest' or None -> None (the latest); 'best' -> the step kept as best by eval/loss; N or 'N' -> N."""
  if step is None or step == "latest":
    return None
  if step == "best":
    return best_step(workdir)
  if isinstance(step, (int, np.integer)) and not isinstance(step, bool) and step >= 0:
    return int(step)
  if isinstance(step, str) and step.isdigit():
    return int(step)
  raise UserError(f"step={step!r}: use 'latest', 'best' or a checkpoint step number")


def best_step(workdir: str) -> int:
  """The step of the checkpoint with the lowest eval/loss that the run's Checkpointer keeps."""
  directory = os.path.join(workdir, "checkpoints")
  if not fileio.isdir(directory):
    raise CheckpointError(f"no checkpoints in {workdir}: train first with `python train.py --workdir={workdir}`")
  ckpt = Checkpointer(directory, read_only=True)
  try:
    best = ckpt.best_step()
  finally:
    ckpt.close()
  if best is None:
    raise CheckpointError(f"no checkpoint in {directory} has an eval/loss to rank (none was saved at "
                          "an evaluation step): use step='latest' or a step number")
  return int(best)


def load(workdir: str | os.PathLike, step: Step = "latest") -> Model:
  """Restores a training workdir's checkpoint ('latest', 'best' by eval/loss, or a step number)."""
  workdir = os.fspath(workdir)
  t = load_trained(workdir, resolve_step(workdir, step))
  return Model(t.workdir, t.step, t.config, t.model, t.params, t.normalizer, t.feature_config)
