"""`eval.py --export DIR`: a trained VAE as files that need neither this package nor its checkpoint format.

DIR holds
  params.msgpack     the parameters only (no optimiser state), flax.serialization msgpack
  config.json        the run's resolved config
  normalizer.json    per-mel-bin mean and std of the train split
  encode.jaxexport   jax.export'ed encode(log_mel [B, S*t, F], mask [B, S*t]) -> (mean, logvar) [B, t, C]
  decode.jaxexport   jax.export'ed decode(z [B, t, C], mask [B, S*t]) -> log_mel [B, S*t, F]
  export.json        shapes, stride S, feature settings and the step, for programs
  README.md          the model card
Both functions take and return unnormalised natural-log mel (the normaliser and the parameters are
baked in); B and t are symbolic, so one file serves any batch and any length that is a multiple of S.
"""

import json
import os
from typing import Any

import jax
import jax.export  # noqa: F401  # An attribute of jax only once imported, before jax 0.8.
import jax.numpy as jnp
import numpy as np

from vae_jax import fileio
from vae_jax.errors import UserError
from vae_jax.inference import Trained

FORMAT_VERSION = 1
# Lowered for each so that the files run on any of them; a platform JAX cannot lower for here is left out.
PLATFORMS = ("cpu", "cuda", "tpu")
# Report figures copied into the model card, when the workdir has eval/metrics.json.
CARD_METRICS = {
    "eval/neg_elbo": "−ELBO, nats per frame",
    "eval/neg_iwae": "−IWAE bound, nats per frame",
    "eval/vae/logmel_mse": "log-mel MSE (natural log)",
    "eval/vae/mel_lsd_db": "log-spectral distance, dB",
    "eval/vae/logmel_cd_db": "mel-cepstral distortion, dB",
    "eval/vae/stoi_concat": "STOI (Griffin-Lim re-synthesis)",
    "eval/vae/pesq_clip_mean": "PESQ (Griffin-Lim re-synthesis)",
}


class ExportDirError(UserError):
  """The export directory exists and is not empty."""


def check_target(directory: str) -> None:
  """Refuses an existing non-empty directory (or a file) before any work: nothing is overwritten."""
  if fileio.listdir(directory):
    raise ExportDirError(f"--export={directory}: the directory exists and is not empty; name a new one")
  if fileio.exists(directory) and not fileio.isdir(directory):
    raise ExportDirError(f"--export={directory}: a file of that name exists; name a new directory")


def export(trained: Trained, directory: str) -> dict[str, str]:
  """Writes the export into `directory` (new or empty); returns the paths written, by name."""
  from flax import serialization  # pylint: disable=g-import-not-at-top

  check_target(directory)
  fileio.makedirs(directory)
  paths = {name: os.path.join(directory, name) for name in (
      "params.msgpack", "config.json", "normalizer.json", "encode.jaxexport", "decode.jaxexport",
      "export.json", "README.md")}
  params = jax.tree.map(np.asarray, trained.params)
  fileio.write_bytes(paths["params.msgpack"], serialization.msgpack_serialize(serialization.to_state_dict(params)))
  fileio.write_text(paths["config.json"], trained.config.to_json_best_effort(indent=2, sort_keys=True))
  fileio.write_json(paths["normalizer.json"], trained.normalizer.to_dict())
  encode, decode, platforms = exported_functions(trained)
  fileio.write_bytes(paths["encode.jaxexport"], bytes(encode.serialize()))
  fileio.write_bytes(paths["decode.jaxexport"], bytes(decode.serialize()))
  manifest = _manifest(trained, platforms)
  fileio.write_json(paths["export.json"], manifest, indent=1)
  fileio.write_text(paths["README.md"], model_card(trained, manifest, _test_figures(trained)))
  return paths


def exported_functions(trained: Trained) -> tuple[Any, Any, tuple[str, ...]]:
  """jax.export'ed encode and decode with symbolic batch and time, and the platforms they run on."""
  f, c, s = trained.feature_config.n_mels, trained.latent_channels, trained.stride
  params = jax.tree.map(jnp.asarray, trained.params)
  mean = jnp.asarray(trained.normalizer.mean, jnp.float32)
  std = jnp.asarray(trained.normalizer.std, jnp.float32)

  def encode(log_mel_BxTxF, mask_BxT):
    # Padded frames are zero after normalisation, as in Trained.encode: outputs do not depend on the pad value.
    x = jnp.where(mask_BxT[..., None] > 0, (log_mel_BxTxF - mean) / std, 0.0)
    mu, logvar, _ = trained.encode_batch(params, x, mask_BxT)
    return mu, logvar

  def decode(z_BxTzxC, mask_BxT):
    return trained.decode_batch(params, z_BxTzxC, mask_BxT) * std + mean

  b, t = jax.export.symbolic_shape("b, t")
  mel = jax.ShapeDtypeStruct((b, s * t, f), jnp.float32)
  mask = jax.ShapeDtypeStruct((b, s * t), jnp.float32)
  z = jax.ShapeDtypeStruct((b, t, c), jnp.float32)
  for platforms in (PLATFORMS, ("cpu",)):
    try:
      return (jax.export.export(jax.jit(encode), platforms=platforms)(mel, mask),
              jax.export.export(jax.jit(decode), platforms=platforms)(z, mask), platforms)
    except Exception:  # pylint: disable=broad-except  # No lowering for an accelerator here.
      if platforms == ("cpu",):
        raise
  raise AssertionError("unreachable")


def _manifest(trained: Trained, platforms: tuple[str, ...]) -> dict[str, Any]:
  fc = trained.feature_config
  s = trained.stride
  return {
      "format_version": FORMAT_VERSION, "step": trained.step, "workdir": trained.workdir,
      "stride": s, "n_mels": fc.n_mels, "latent_channels": trained.latent_channels,
      "platforms": list(platforms), "jax_version": jax.__version__,
      "features": {"sample_rate": fc.sample_rate, "n_fft": fc.n_fft, "win_length": fc.win_length,
                   "hop_length": fc.hop_length, "window": fc.window, "n_mels": fc.n_mels,
                   "fmin": fc.fmin, "fmax": fc.fmax, "log_floor": fc.log_floor,
                   "mel": "librosa Slaney scale and norm; ln(max(mel amplitude, log_floor))"},
      "encode": {"inputs": [f"log_mel float32 [b, {s}*t, {fc.n_mels}]", f"mask float32 [b, {s}*t]"],
                 "outputs": [f"mean float32 [b, t, {trained.latent_channels}]",
                             f"logvar float32 [b, t, {trained.latent_channels}]"]},
      "decode": {"inputs": [f"z float32 [b, t, {trained.latent_channels}]", f"mask float32 [b, {s}*t]"],
                 "outputs": [f"log_mel float32 [b, {s}*t, {fc.n_mels}]"]},
  }


def _test_figures(trained: Trained) -> tuple[dict[str, float], str]:
  """The report's figures and where they come from; empty when the workdir has no report of this step."""
  path = os.path.join(trained.workdir, "eval", "metrics.json")
  try:
    saved = json.loads(fileio.read_text(path))
  except (OSError, ValueError):
    return {}, f"no test-split report ({path}): run `python eval.py --workdir={trained.workdir}`"
  figures = {k: float(saved[k]) for k in CARD_METRICS if isinstance(saved.get(k), (int, float))}
  figures.update({k: float(v) for k, v in saved.items() if k.startswith("probe/") and isinstance(v, (int, float))})
  where = f"{path}, step {saved.get('step')}"
  if saved.get("step") != trained.step:
    where += f" (not the exported step {trained.step})"
  return figures, where


def model_card(trained: Trained, manifest: dict[str, Any], test: tuple[dict[str, float], str]) -> str:
  """README.md of an export: what the model is, how it was trained, what it scores, how to run it."""
  c, fc, s = trained.config, trained.feature_config, trained.stride
  figures, source = test
  corpus = c.data.corpus + (f" ({os.path.basename(os.path.normpath(c.data.path))})" if c.data.path else "")
  lines = [
      f"# Speech VAE: {os.path.basename(trained.workdir)}, step {trained.step}", "",
      f"- **Corpus**: {corpus}; features {fc.n_mels} log-mel bins at {fc.sample_rate} Hz, hop {fc.hop_length}.",
      f"- **Model**: run `{os.path.basename(trained.workdir)}`, `{c.model.name}` VAE, "
      f"{trained.latent_channels} latent channels at 1/{s} of the mel frame rate, β = {c.loss.beta:g}.",
      f"- **Training**: step {trained.step} of {c.train.num_steps}, batch {c.train.batch_size}, "
      f"segments of {c.data.segment_frames} frames.",
      "- **Intended use**: research on speech representations: encoding log-mel spectrograms to "
      "latents, decoding latents back, reconstruction and latent-space studies on speech like the "
      "training corpus. Not a vocoder (audio needs an inverter such as Griffin-Lim), not tested "
      "on other languages, recording conditions or sample rates, and not for identifying speakers.",
      "", "## Test split", ""]
  if figures:
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {CARD_METRICS.get(k, k)} | {v:.4g} |" for k, v in figures.items()]
    lines += ["", f"From {source}."]
  else:
    lines += [f"Not measured: {source}."]
  lines += [
      "", "## Files", "",
      "`params.msgpack` (parameters only, `flax.serialization.msgpack_restore`), `config.json`, "
      "`normalizer.json`, `export.json` (shapes and feature settings), and `encode.jaxexport` / "
      f"`decode.jaxexport` (`jax.export`, platforms: {', '.join(manifest['platforms'])}). Both take "
      "and return unnormalised natural-log mel; the normaliser and parameters are inside. Batch `b` "
      f"and time are symbolic, but the time axis must be a multiple of the stride, {s} frames: pad "
      "with any value and give a mask of 1 on real frames and 0 on padding.", "",
      "```python",
      "import jax, jax.export, numpy as np",
      "encode = jax.export.deserialize(open('encode.jaxexport', 'rb').read())",
      "decode = jax.export.deserialize(open('decode.jaxexport', 'rb').read())",
      f"log_mel = np.zeros((1, {8 * s}, {fc.n_mels}), np.float32); mask = np.ones((1, {8 * s}), np.float32)",
      "mean, logvar = encode.call(log_mel, mask)",
      "recon = decode.call(mean, mask)",
      "```", ""]
  return "\n".join(lines)
