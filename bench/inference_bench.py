"""Inference real-time factors: encode + decode, and full re-synthesis with JAX Griffin-Lim."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing
from bench.common import Context
from vae_jax.audio import io as audio_io
from vae_jax.audio import spectral
from vae_jax.audio.features import FeatureConfig
from vae_jax.models import build_model
from vae_jax.models.vae import VAE


def long_clip(ctx: Context, seconds: float) -> np.ndarray:
  """`seconds` of real speech: test recordings back to back (repeated if the corpus is small)."""
  fc = FeatureConfig.from_config(ctx.config.features)
  n = int(seconds * fc.sample_rate)
  parts, total = [], 0
  paths = ctx.dataset().test.paths
  while total < n:
    for p in paths:
      w = audio_io.read_audio(p, fc.sample_rate)
      parts.append(w)
      total += len(w)
      if total >= n:
        break
  return np.concatenate(parts)[:n].astype(np.float32)


def make_pipelines(ctx: Context, n_samples: int, gl_iters: int) -> dict[str, Callable]:
  """Jitted (params, wave or log-mel batch) -> output functions for each inference path."""
  c = ctx.config
  fc = FeatureConfig.from_config(c.features)
  model = build_model(c)
  norm = ctx.dataset().normalizer
  mean_f, std_f = jnp.asarray(norm.mean), jnp.asarray(norm.std)
  n_frames = spectral.num_frames(n_samples, fc)
  # Padded as evaluation pads, so the time strides divide the length.
  t_pad = -(-n_frames // c.eval.length_multiple) * c.eval.length_multiple

  def features(wave_BxN):
    log_mel = spectral.log_mel(wave_BxN, fc)
    mel = (log_mel - mean_f) / std_f
    mel = jnp.pad(mel, ((0, 0), (0, t_pad - n_frames), (0, 0)))
    mask = jnp.broadcast_to((jnp.arange(t_pad) < n_frames).astype(jnp.float32), mel.shape[:2])
    return mel * mask[..., None], mask

  def reconstruct(params, mel, mask):
    mean, _, _ = model.apply({"params": params}, mel, mask, method=VAE.encode)
    return model.apply({"params": params}, mean, mask, method=VAE.decode)

  def to_wave(recon_BxTxF):
    log_mel = recon_BxTxF[:, :n_frames] * std_f + mean_f
    return spectral.griffin_lim(log_mel, fc, n_iter=gl_iters, length=n_samples)

  return {
      "features": jax.jit(features),
      "encode_decode": jax.jit(reconstruct),
      "encode_decode_griffin_lim": jax.jit(lambda p, mel, mask: to_wave(reconstruct(p, mel, mask))),
      "wave_to_wave": jax.jit(lambda p, wave: to_wave(reconstruct(p, *features(wave)))),
  }


def real_time_factors(ctx: Context) -> dict[str, Any]:
  """Seconds of audio processed per second, batch 1 and batched, with and without Griffin-Lim."""
  seconds = 2.0 if ctx.quick else 10.0
  batch = 2 if ctx.quick else 8
  gl_iters = 4 if ctx.quick else ctx.config.eval.griffin_lim_iters
  c = ctx.config
  wave = long_clip(ctx, seconds)
  fns = make_pipelines(ctx, len(wave), gl_iters)
  model = build_model(c)
  t = c.data.segment_frames
  # Untrained parameters: the time does not depend on their values.
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, t, c.features.n_mels)),
                               jnp.ones((1, t)), jax.random.key(1))["params"]
  inputs = {}
  for b in (1, batch):
    waves = jnp.asarray(np.stack([np.roll(wave, 997 * i) for i in range(b)]))
    mel, mask = fns["features"](waves)
    inputs[b] = (waves, mel, mask)

  def case(name: str, b: int) -> Callable[[], Any]:
    waves, mel, mask = inputs[b]
    if name == "wave_to_wave":
      return lambda: fns[name](params, waves).block_until_ready()
    return lambda: fns[name](params, mel, mask).block_until_ready()

  names = ("encode_decode", "encode_decode_griffin_lim", "wave_to_wave")
  cases = {f"{n}, batch {b}": case(n, b) for n in names for b in (1, batch)}
  timed = timing.interleaved(cases, ctx.reps, ctx.warmup)
  results = {}
  for n in names:
    for b in (1, batch):
      k = f"{n}, batch {b}"
      results[k] = {"x_real_time": b * seconds / timed[k]["median_s"], "batch": b,
                    "audio_s": b * seconds, "timing": timed[k]}
  return {
      "clip_s": seconds,
      "griffin_lim_iters": gl_iters,
      "mel_frames": int(inputs[1][1].shape[1]),
      "results": results,
      "targets": {"encode_decode_x_real_time": 500, "resynthesis_x_real_time": 20},
  }
