"""The two Conv1D formulations on every conv shape of the model: forward and each gradient alone."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing
from bench.common import Context
from vae_jax.models.layers import conv1d

IMPLS = ("lax", "matmul")


def conv_shapes(config) -> list[tuple[int, int, int, int, int]]:
  """Distinct (T_in, C_in, C_out, kernel, stride) of the conv VAE's Conv1D layers, at the training shapes."""
  m = config.model
  t, c, k = config.data.segment_frames, m.channels, m.kernel_size
  shapes = [(t, config.features.n_mels, c, k, 1)]
  widths = [c * mult for mult in m.channel_multipliers]
  for stride, width in zip(m.strides, widths):
    shapes += [(t, c, c, k, 1), (t, c, width, k, stride)]
    t, c = -(-t // stride), width
  shapes += [(t, c, c, k, 1), (t, c, 2 * m.latent_channels, 3, 1), (t, m.latent_channels, c, 3, 1)]
  for i, stride in enumerate(reversed(m.strides)):
    out = widths[-2 - i] if i + 1 < len(m.strides) else m.channels
    shapes += [(t, c, out * stride, k, 1)]
    t, c = t * stride, out
    shapes += [(t, c, c, k, 1)]
  shapes += [(t, c, config.features.n_mels, k, 1)]
  return sorted(set(shapes), key=shapes.index)


def per_shape(ctx: Context) -> dict[str, Any]:
  """Forward, input-gradient and kernel-gradient time of each formulation, timed in turns."""
  b = ctx.config.train.batch_size
  rng = np.random.default_rng(0)
  fns, flops = {}, {}
  for t, c_in, c_out, k, stride in conv_shapes(ctx.config):
    x = jnp.asarray(rng.standard_normal((b, t, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, c_in, c_out)) / np.sqrt(k * c_in), jnp.float32)
    t_out = -(-t // stride)
    cot = jnp.asarray(rng.standard_normal((b, t_out, c_out)), jnp.float32)
    tag = f"T={t} {c_in}->{c_out} k{k} s{stride}"
    flops[tag] = 2 * b * t_out * k * c_in * c_out
    for impl in IMPLS:
      fwd = jax.jit(functools.partial(conv1d, stride=stride, impl=impl))
      loss = lambda x, w, impl=impl, stride=stride, cot=cot: jnp.sum(conv1d(x, w, stride, impl) * cot)
      dx, dw = jax.jit(jax.grad(loss, argnums=0)), jax.jit(jax.grad(loss, argnums=1))
      for part, f in (("forward", fwd), ("d input", dx), ("d kernel", dw)):
        fns[(tag, part, impl)] = functools.partial(lambda f, x, w: f(x, w).block_until_ready(), f, x, w)
  names = {f"{tag} | {part} | {impl}": fn for (tag, part, impl), fn in fns.items()}
  timed = timing.interleaved(names, ctx.reps, ctx.warmup, inner=2)
  rows = []
  for (tag, part, _) in list(fns)[::len(IMPLS)]:
    row = {"shape": tag, "part": part, "gflop": flops[tag] / 1e9}
    for impl in IMPLS:
      s = timed[f"{tag} | {part} | {impl}"]
      row[impl] = {"ms": s["median_s"] * 1000, "gflop_per_s": flops[tag] / s["median_s"] / 1e9,
                   "load1": s["load1"]}
    row["lax_over_matmul_time"] = row["lax"]["ms"] / row["matmul"]["ms"]
    rows.append(row)
  total = {impl: sum(r[impl]["ms"] for r in rows) for impl in IMPLS}
  return {"batch": b, "rows": rows, "total_ms": total,
          "total_lax_over_matmul": total["lax"] / total["matmul"]}
