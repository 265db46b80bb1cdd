"""Log-mel analysis and Griffin-Lim re-synthesis in JAX.

A jittable, batched mirror of the librosa front end in `vae_jax.audio.features`:
`stft`/`istft` follow librosa (centred frames with zero padding, window padded
to n_fft, window-sum-square normalisation), `log_mel` is ln(max(M, log_floor))
with the same Slaney filterbank, and `griffin_lim` is librosa's fast
Griffin-Lim with momentum after a non-negative least-squares mel inversion.

Arrays are time-major: spectrograms are [..., frames, bins], any leading axes
are batch axes. The FeatureConfig is a static (hashable) argument everywhere.
"""

import functools
import math

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from vae_jax.audio.features import FeatureConfig, mel_filterbank

_HIGHEST = jax.lax.Precision.HIGHEST
# librosa guards the window-sum division and the phase normalisation with the
# smallest normal float32; matching it keeps silent regions identical.
_TINY = float(np.finfo(np.float32).tiny)


@functools.lru_cache(maxsize=None)
def _window(fc: FeatureConfig) -> np.ndarray:
  """The analysis window of win_length samples, zero-padded to n_fft, centred."""
  win = librosa.filters.get_window(fc.window, fc.win_length, fftbins=True)
  return librosa.util.pad_center(win, size=fc.n_fft).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _inverse_window_sum(fc: FeatureConfig, n_frames: int) -> np.ndarray:
  """1 / (sum of squared windows) over an uncropped istft output, 1 where ~0."""
  wss = librosa.filters.window_sumsquare(
      window=fc.window, n_frames=n_frames, win_length=fc.win_length,
      n_fft=fc.n_fft, hop_length=fc.hop_length, dtype=np.float32)
  return np.where(wss > _TINY, 1.0 / np.maximum(wss, _TINY), 1.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _mel_basis(fc: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """The filterbank B [F, K], its pseudo-inverse [K, F], B^T B [K, K] and 1 / ||B||^2."""
  fb_FxK = mel_filterbank(fc).astype(np.float64)
  pinv_KxF = np.linalg.pinv(fb_FxK)
  gram_KxK = fb_FxK.T @ fb_FxK
  step = 1.0 / float(np.linalg.norm(fb_FxK, 2) ** 2)
  return (fb_FxK.astype(np.float32), pinv_KxF.astype(np.float32),
          gram_KxK.astype(np.float32), step)


def num_frames(num_samples: int, fc: FeatureConfig) -> int:
  """Frames of a centred STFT of num_samples samples (1 + n // hop for even n_fft)."""
  return 1 + (num_samples + 2 * (fc.n_fft // 2) - fc.n_fft) // fc.hop_length


def _frame(wave_BxN: jax.Array, fc: FeatureConfig) -> jax.Array:
  """Centred, zero-padded frames [..., T, n_fft] of a waveform."""
  n_fft, hop = fc.n_fft, fc.hop_length
  n_frames = num_frames(wave_BxN.shape[-1], fc)
  pad = [(0, 0)] * (wave_BxN.ndim - 1) + [(n_fft // 2, n_fft // 2)]
  padded_BxP = jnp.pad(wave_BxN, pad)
  batch = wave_BxN.shape[:-1]
  if n_fft % hop == 0:
    # Frames are r = n_fft / hop consecutive hop-sized blocks; shifted block
    # slices replace a gather and run a little faster inside Griffin-Lim on CPU.
    r = n_fft // hop
    n_blocks = n_frames + r - 1
    blocks_BxMxH = padded_BxP[..., :n_blocks * hop].reshape(*batch, n_blocks, hop)
    return jnp.concatenate([blocks_BxMxH[..., j:j + n_frames, :] for j in range(r)], axis=-1)
  index_TxW = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  return padded_BxP[..., index_TxW]


def _overlap_add(frames_BxTxW: jax.Array, hop: int) -> jax.Array:
  """Sums frames placed hop samples apart: [..., T, n_fft] -> [..., n_fft + hop (T - 1)]."""
  *batch, n_frames, n_fft = frames_BxTxW.shape
  if n_fft % hop == 0:
    # Block j of frame t lands on output block t + j, so r padded adds
    # replace a scatter-add.
    r = n_fft // hop
    blocks_BxTxRxH = frames_BxTxW.reshape(*batch, n_frames, r, hop)
    out_BxMxH = None
    for j in range(r):
      pad = [(0, 0)] * len(batch) + [(j, r - 1 - j), (0, 0)]
      shifted = jnp.pad(blocks_BxTxRxH[..., j, :], pad)
      out_BxMxH = shifted if out_BxMxH is None else out_BxMxH + shifted
    return out_BxMxH.reshape(*batch, (n_frames + r - 1) * hop)
  index_TxW = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  out = jnp.zeros((*batch, n_fft + hop * (n_frames - 1)), frames_BxTxW.dtype)
  return out.at[..., index_TxW].add(frames_BxTxW)


def _fix_length(x_BxN: jax.Array, size: int) -> jax.Array:
  """Trims or zero-pads the last axis to `size`."""
  n = x_BxN.shape[-1]
  if n >= size:
    return x_BxN[..., :size]
  return jnp.pad(x_BxN, [(0, 0)] * (x_BxN.ndim - 1) + [(0, size - n)])


@functools.partial(jax.jit, static_argnames=("fc",))
def stft(wave_BxN: jax.Array, fc: FeatureConfig) -> jax.Array:
  """Complex STFT [..., T, 1 + n_fft // 2] as librosa.stft(center=True, pad_mode='constant')."""
  frames_BxTxW = _frame(jnp.asarray(wave_BxN, jnp.float32), fc)
  return jnp.fft.rfft(frames_BxTxW * _window(fc), n=fc.n_fft, axis=-1)


@functools.partial(jax.jit, static_argnames=("fc", "length"))
def istft(stft_BxTxK: jax.Array, fc: FeatureConfig, length: int | None = None) -> jax.Array:
  """Inverse STFT [..., N] as librosa.istft(center=True, length=length)."""
  n_fft, hop = fc.n_fft, fc.hop_length
  n_frames = stft_BxTxK.shape[-2]
  if length is not None:
    # Like librosa, frames that cannot reach the requested samples are ignored.
    n_frames = min(n_frames, math.ceil((length + 2 * (n_fft // 2)) / hop))
    stft_BxTxK = stft_BxTxK[..., :n_frames, :]
  frames_BxTxW = jnp.fft.irfft(stft_BxTxK, n=n_fft, axis=-1) * _window(fc)
  wave_BxM = _overlap_add(frames_BxTxW, hop) * _inverse_window_sum(fc, n_frames)
  wave_BxM = wave_BxM[..., n_fft // 2:]
  size = length if length is not None else wave_BxM.shape[-1] - n_fft // 2
  return _fix_length(wave_BxM, size)


@functools.partial(jax.jit, static_argnames=("fc",))
def mel_amplitude(wave_BxN: jax.Array, fc: FeatureConfig) -> jax.Array:
  """Mel amplitude [..., T, n_mels]: the filterbank applied to the STFT magnitude."""
  fb_FxK = _mel_basis(fc)[0]
  mag_BxTxK = jnp.abs(stft(wave_BxN, fc))
  return jnp.einsum("...tk,fk->...tf", mag_BxTxK, fb_FxK, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("fc",))
def log_mel(wave_BxN: jax.Array, fc: FeatureConfig) -> jax.Array:
  """Log-mel features [..., T, n_mels], as `vae_jax.audio.features.log_mel`."""
  return jnp.log(jnp.maximum(mel_amplitude(wave_BxN, fc), fc.log_floor))


@functools.partial(jax.jit, static_argnames=("fc", "n_iter"))
def mel_to_magnitude(mel_BxTxF: jax.Array, fc: FeatureConfig, n_iter: int = 30) -> jax.Array:
  """Non-negative linear magnitude [..., T, K] whose mel projection best fits mel_BxTxF.

  Starts from the pseudo-inverse clipped at zero and runs n_iter accelerated
  projected-gradient (FISTA) steps on ||x B^T - m||^2 subject to x >= 0.
  n_iter=0 returns the clipped pseudo-inverse, which is what
  librosa.feature.inverse.mel_to_stft returns in practice: its L-BFGS-B NNLS
  scales the objective by 1 / size and stops at that starting point.
  """
  fb_FxK, pinv_KxF, gram_KxK, step = _mel_basis(fc)
  mel_BxTxF = jnp.asarray(mel_BxTxF, jnp.float32)
  x = jnp.maximum(jnp.einsum("...tf,kf->...tk", mel_BxTxF, pinv_KxF, precision=_HIGHEST), 0.0)
  if n_iter == 0:
    return x
  # The gradient x B^T B - m B needs one K x K product per step.
  target_BxTxK = jnp.einsum("...tf,fk->...tk", mel_BxTxF, fb_FxK, precision=_HIGHEST)

  def body(i, carry):
    x, y = carry
    grad = jnp.einsum("...tk,kj->...tj", y, gram_KxK, precision=_HIGHEST) - target_BxTxK
    x_next = jnp.maximum(y - step * grad, 0.0)
    # Nesterov extrapolation; (k - 1) / (k + 2) is the usual FISTA weight.
    y_next = x_next + (i / (i + 3.0)) * (x_next - x)
    return x_next, y_next

  x, _ = jax.lax.fori_loop(0, n_iter, body, (x, x))
  return x


@functools.partial(jax.jit, static_argnames=("fc", "length", "init"))
def griffin_lim_magnitude(mag_BxTxK: jax.Array, fc: FeatureConfig, key: jax.Array,
                          n_iter: int = 32, length: int | None = None,
                          momentum: float = 0.99, init: str | None = "random") -> jax.Array:
  """Fast Griffin-Lim with momentum (librosa.griffinlim) from a linear magnitude.

  init="random" draws uniform initial phases from `key`; init=None starts from
  zero phase, as librosa does, which makes the two directly comparable.
  """
  mag_BxTxK = jnp.asarray(mag_BxTxK, jnp.float32)
  n_frames = mag_BxTxK.shape[-2]
  if length is not None and num_frames(length, fc) != n_frames:
    raise ValueError(f"length={length} gives {num_frames(length, fc)} frames, "
                     f"the magnitude has {n_frames}")
  if init == "random":
    phase = 2 * jnp.pi * jax.random.uniform(key, mag_BxTxK.shape)
    angles = mag_BxTxK * jnp.exp(1j * phase)
  elif init is None:
    angles = mag_BxTxK.astype(jnp.complex64)
  else:
    raise ValueError(f"init={init!r} must be 'random' or None")
  decay = momentum / (1 + momentum)

  def body(_, carry):
    angles, previous = carry
    rebuilt = stft(istft(angles, fc, length), fc)
    angles = rebuilt - decay * previous
    # A real rescale is cheaper than complex division by |angles|.
    angles = angles * (mag_BxTxK / (jnp.abs(angles) + _TINY))
    return angles, rebuilt

  # librosa has no momentum term on the first iteration; a zero "previous"
  # rebuild is the same.
  angles, _ = jax.lax.fori_loop(0, n_iter, body, (angles, jnp.zeros_like(angles)))
  return istft(angles, fc, length)


def griffin_lim(log_mel_BxTxF: jax.Array, fc: FeatureConfig, n_iter: int = 32,
                length: int | None = None, key: jax.Array | int = 0,
                momentum: float = 0.99, nnls_iter: int = 30) -> jax.Array:
  """Waveform [..., N] from log-mel features: NNLS mel inversion, then fast Griffin-Lim.

  `key` (a PRNG key or an int seed) draws the initial phases for the whole
  batch at once, so an example's output depends on its position in the batch.
  Without `length` the output is as long as librosa.istft makes it,
  (T - 1) * hop_length samples for an even n_fft.
  """
  if isinstance(key, (int, np.integer)):
    key = jax.random.PRNGKey(key)
  mag_BxTxK = mel_to_magnitude(jnp.exp(jnp.asarray(log_mel_BxTxF, jnp.float32)), fc, nnls_iter)
  return griffin_lim_magnitude(mag_BxTxK, fc, key, n_iter=n_iter, length=length,
                               momentum=momentum)
