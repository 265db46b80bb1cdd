"""Rate-distortion of the VAE codec on a set of clips, against Codec2, Opus and the Griffin-Lim oracle.

  rows = rate_distortion(trained, paths, quant_steps=[1, 2, 4, 8], prior=None)
  plot_rate_distortion(rows, "rd.png")

Rates are totals over the clips (kbit/s = coded bits / audio seconds); quality
is the mean over clips of PESQ (narrow-band at 8 kHz), STOI and log-mel MSE.
Every VAE waveform goes through Griffin-Lim, so the "griffin_lim" row (the
true mel inverted the same way) bounds what any quant step can reach.
"""

import io
import math
import os
from typing import Any, Sequence

import numpy as np
import soundfile

from vae_jax import fileio
from vae_jax.audio.features import log_mel
from vae_jax.codec import api, batch
from vae_jax.errors import UserError
from vae_jax.inference import griffin_lim_batch

CODEC2_MODES = (3200, 2400, 1600, 1400, 1300, 1200)
_MAX_DELAY = 400  # Samples searched for Codec2's algorithmic delay (about 140 at 8 kHz).
OPUS_LEVELS = (1.0,)  # libsndfile's compression_level 1.0: Opus at its lowest bitrate.


def _log_mel(trained, wave: np.ndarray) -> np.ndarray:
  return log_mel(wave, trained.feature_config)


def _scores(trained, clips, waves_hat, mels_hat=None) -> dict[str, float]:
  """Mean log-mel MSE, STOI and PESQ of decoded clips (log-mel from the decoded waves if not given)."""
  mels_hat = mels_hat or [_log_mel(trained, w)[:len(m)] for w, (_, m) in zip(waves_hat, clips)]
  rows = [batch.quality(trained, w, wh, m[:len(mh)], mh) for (w, m), wh, mh in zip(clips, waves_hat, mels_hat)]
  return {k: float(np.nanmean([r[k] for r in rows])) for k in ("logmel_mse", "stoi", "pesq")}


def _synth(trained, clips, mels) -> list[np.ndarray]:
  return griffin_lim_batch(mels, trained.feature_config, trained.config.eval.griffin_lim_iters,
                           lengths=[len(w) for w, _ in clips])


def kl_kbps(trained, clips, prior=None, seed: int = 0) -> float:
  """kbit/s implied by KL(q(z|x) || prior): closed form for N(0, I), one posterior draw for a learned prior."""
  nats = 0.0
  rng = np.random.default_rng(seed)
  log_prior = None if prior is None else prior.log_prior_fn()
  for _, m in clips:
    mean, logvar = (np.asarray(a, np.float64) for a in trained.encode(m))
    if log_prior is None:
      nats += 0.5 * float(np.sum(mean ** 2 + np.exp(logvar) - 1.0 - logvar))
      continue
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape)
    log_q = -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar))
    log_p = float(log_prior(z[None].astype(np.float32), np.ones((1, len(z)), np.float32))[0])
    nats += log_q - log_p
  return nats / math.log(2) / 1000 / _seconds(trained, clips)


def _seconds(trained, clips) -> float:
  return sum(len(w) for w, _ in clips) / trained.feature_config.sample_rate


def run_label(trained, prior=None) -> str:
  """'vae β=0.3 (fsdd), learned prior': the model and the entropy model of a curve."""
  name = os.path.basename(os.path.normpath(trained.workdir))
  return (f"vae β={trained.config.loss.beta:g} ({name}), "
          + ("learned prior" if prior is not None else "N(0, I) prior"))


def vae_rows(trained, clips, quant_steps: Sequence[float], prior=None,
             step_mode: str = api.DEFAULT_STEP_MODE) -> list[dict[str, Any]]:
  """One row per quant step: coded and KL-implied kbit/s, coding overhead, quality."""
  seconds, kl = _seconds(trained, clips), kl_kbps(trained, clips, prior)
  name = run_label(trained, prior)
  unq = [trained.reconstruct(m) for _, m in clips]
  rows = [{"codec": name + " unquantised", "kbps": math.nan, "kl_kbps": kl,
           **_scores(trained, clips, _synth(trained, clips, unq), unq)}]
  for step in quant_steps:
    data = [api.compress(trained, m, prior, step, step_mode, num_samples=len(w)) for w, m in clips]
    mels = [trained.decode(api.decompress(trained, d, prior), len(m)) for d, (_, m) in zip(data, clips)]
    header_bits = 8 * sum(len(d) - len(api.read_payload(trained, d)) for d in data)
    kbps = 8e-3 * sum(len(d) for d in data) / seconds
    rows.append({"codec": name, "quant_step": step, "kbps": kbps,
                 "payload_kbps": kbps - 1e-3 * header_bits / seconds, "kl_kbps": kl,
                 "overhead": kbps / kl - 1.0, **_scores(trained, clips, _synth(trained, clips, mels), mels)})
  return rows


def codec2_rows(trained, clips, modes: Sequence[int] = CODEC2_MODES) -> list[dict[str, Any]]:
  """Codec2 at each mode (bit/s), its frames' bytes as the rate, its output aligned to the input."""
  rows = []
  for mode in modes:
    waves, bits = codec2(mode, [w for w, _ in clips])
    rows.append({"codec": f"codec2 {mode}", "kbps": 1e-3 * bits / _seconds(trained, clips),
                 **_scores(trained, clips, waves)})
  return rows


def codec2(mode: int, waves: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
  """Codec2 at `mode` bit/s on 8 kHz waveforms: (decoded waveforms aligned to the inputs, coded bits)."""
  import pycodec2  # pylint: disable=g-import-not-at-top  # An evaluation-only dependency.

  c2 = pycodec2.Codec2(mode)
  n, bits, outs = c2.samples_per_frame(), 0, []
  for w in waves:
    pcm = np.round(np.clip(w, -1, 1) * 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % n, np.int16)])
    frames = [c2.encode(pcm[i:i + n]) for i in range(0, len(pcm), n)]
    bits += 8 * sum(len(f) for f in frames)
    # Frames past the end flush the delay line; they are not counted in the rate.
    tail = [c2.decode(c2.encode(np.zeros(n, np.int16))) for _ in range(-(-_MAX_DELAY // n))]
    outs.append(np.concatenate([c2.decode(f) for f in frames] + tail).astype(np.float32) / 32767)
  return _undelayed(waves, outs), bits


def _undelayed(refs: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Outputs shifted back by the codec's delay: the median over clips of the best-correlating lag."""
  lags = [np.argmax([np.dot(o[d:d + len(r)], r) for d in range(_MAX_DELAY)]) for r, o in zip(refs, outs)]
  lag = int(np.median(lags))
  return [o[lag:lag + len(r)] for r, o in zip(refs, outs)]


def opus_rows(trained, clips, levels: Sequence[float] = OPUS_LEVELS) -> list[dict[str, Any]]:
  """Ogg/Opus through libsndfile at each compression level: the whole file's bytes as the rate."""
  sr, rows = trained.feature_config.sample_rate, []
  for level in levels:
    bits, waves = 0, []
    for w, _ in clips:
      buf = io.BytesIO()
      soundfile.write(buf, w, sr, format="OGG", subtype="OPUS", compression_level=level)
      bits += 8 * len(buf.getvalue())
      buf.seek(0)
      waves.append(soundfile.read(buf, dtype="float32")[0][:len(w)])
    rows.append({"codec": f"opus level {level:g}", "kbps": 1e-3 * bits / _seconds(trained, clips),
                 **_scores(trained, clips, waves)})
  return rows


def rate_distortion(trained, paths: Sequence[str], quant_steps: Sequence[float], prior=None,
                    step_mode: str = api.DEFAULT_STEP_MODE, others: Sequence[Any] = ()) -> list[dict[str, Any]]:
  """VAE rows at each quant step (N(0, I), the learned prior if given, then each run of `others`),
  then Codec2, Opus and the Griffin-Lim oracle, all on the same clips."""
  clips = [trained.load_audio(p) for p in paths]
  oracle = {"codec": "griffin_lim oracle", "kbps": math.nan,
            **_scores(trained, clips, _synth(trained, clips, [m for _, m in clips]), [m for _, m in clips])}
  rows = vae_rows(trained, clips, quant_steps, None, step_mode)
  if prior is not None:
    rows += vae_rows(trained, clips, quant_steps, prior, step_mode)
  for other in others:
    if other.feature_config != trained.feature_config:
      raise UserError(f"{other.workdir} has other features than {trained.workdir}: compare runs with the same features")
    rows += vae_rows(other, [other.load_audio(p) for p in paths], quant_steps, None, step_mode)
  return rows + codec2_rows(trained, clips) + opus_rows(trained, clips) + [oracle]


def write_rate_distortion(rows: Sequence[dict[str, Any]], out_dir: str, clips: int) -> dict[str, str]:
  """rate_distortion.json, .png and .md (a table per curve and baseline) in out_dir; returns their paths."""
  fileio.makedirs(out_dir)
  paths = {k: os.path.join(out_dir, f"rate_distortion.{k}") for k in ("json", "png", "md")}
  fileio.write_json(paths["json"], {"clips": clips, "rows": list(rows)}, indent=1)
  plot_rate_distortion(rows, paths["png"])
  num = lambda v, d: "—" if v is None or not math.isfinite(v) else f"{v:.{d}f}"
  lines = [f"# Rate–distortion ({clips} test clips)", "",
           "| system | quant step | kbit/s (file) | kbit/s (payload) | kbit/s (KL) | STOI | PESQ | log-mel MSE |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['codec']} | {num(r.get('quant_step'), 1)} | {num(r['kbps'], 2)} | "
                 f"{num(r.get('payload_kbps'), 2)} | {num(r.get('kl_kbps'), 2)} | {num(r['stoi'], 3)} | "
                 f"{num(r['pesq'], 2)} | {num(r['logmel_mse'], 4)} |")
  lines += ["", "![rate-distortion](rate_distortion.png)", ""]
  fileio.write_text(paths["md"], "\n".join(lines))
  return paths


def plot_rate_distortion(rows: Sequence[dict[str, Any]], path: str) -> None:
  """One PNG: PESQ and STOI against kbit/s, VAE curves as lines, baselines as points, oracle as a line."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  from vae_jax import plots  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, metric in zip(axes, ("pesq", "stoi")):
    colours = {}
    for name in dict.fromkeys(r["codec"] for r in rows if "quant_step" in r):
      curve = sorted((r["kbps"], r[metric]) for r in rows if r["codec"] == name)
      colours[name] = ax.plot(*zip(*curve), "o-", label=name)[0].get_color()
    for r in rows:
      if "quant_step" in r:
        continue
      if math.isnan(r["kbps"]):  # Unquantised reconstructions (in their curve's colour) and the oracle.
        colour = colours.get(r["codec"].removesuffix(" unquantised"), "gray")
        ax.axhline(r[metric], ls="--", lw=1, color=colour, label=r["codec"] if colour == "gray" else None)
      else:
        ax.plot(r["kbps"], r[metric], "s" if "codec2" in r["codec"] else "^", label=r["codec"])
    ax.set_xscale("log")
    ax.set_xlabel("kbit/s")
    ax.set_ylabel(metric.upper())
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  plots.save_figure(fig, path, dpi=120)
