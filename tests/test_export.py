"""eval.py --export: parameters, config, normaliser, model card and jax.export'ed encode/decode."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import serialization
import jax

import vae_jax
from vae_jax import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu")

# Run in a fresh interpreter that may import nothing but jax, numpy (and jax.export's flatbuffers).
CONSUMER = textwrap.dedent("""
    import sys, jax, jax.export, numpy as np
    d, inputs, out = sys.argv[1:]
    encode = jax.export.deserialize(open(f"{d}/encode.jaxexport", "rb").read())
    decode = jax.export.deserialize(open(f"{d}/decode.jaxexport", "rb").read())
    x = np.load(inputs)
    results = {}
    for name in ("a", "b"):
      mean, logvar = encode.call(x[f"{name}_mel"], x[f"{name}_mask"])
      results[f"{name}_mean"], results[f"{name}_logvar"] = np.asarray(mean), np.asarray(logvar)
      results[f"{name}_recon"] = np.asarray(decode.call(mean, x[f"{name}_mask"]))
    leaked = sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("vae_jax", "flax", "optax", "orbax", "librosa"))
    assert not leaked, leaked
    np.savez(out, **results)
""")


@pytest.fixture(scope="module")
def exported(smoke_workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "model"
  r = subprocess.run([sys.executable, "eval.py", f"--workdir={smoke_workdir}", "--step=best",
                      f"--export={out}"], cwd=REPO, capture_output=True, text=True, env=ENV)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "export: step" in r.stdout
  return out


def test_export_holds_parameters_only_config_normaliser_and_card(exported, smoke_workdir):
  m = vae_jax.load(smoke_workdir, step="best")
  assert sorted(os.listdir(exported)) == sorted(["params.msgpack", "config.json", "normalizer.json", "README.md",
                                                 "encode.jaxexport", "decode.jaxexport", "export.json"])
  with open(exported / "params.msgpack", "rb") as f:
    params = serialization.msgpack_restore(f.read())
  assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(np.asarray, m.params))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(m.params)):
    np.testing.assert_array_equal(a, b)
  assert "opt_state" not in params and "step" not in params
  assert json.loads((exported / "normalizer.json").read_text()) == json.loads(
      json.dumps(m.normalizer.to_dict()))
  assert json.loads((exported / "config.json").read_text())["model"]["latent_channels"] == m.latent_channels
  manifest = json.loads((exported / "export.json").read_text())
  assert manifest["step"] == m.step and manifest["stride"] == m.stride
  card = (exported / "README.md").read_text()
  assert f"step {m.step} of {m.config.train.num_steps}" in card and "Intended use" in card
  assert "synthetic" in card, "the card names the corpus"
  assert f"multiple of the stride, {m.stride} frames" in card


def _inputs(m, rng) -> dict[str, np.ndarray]:
  """Two padded batches of real log-mels: one 32-frame multiple, one only a multiple of the stride."""
  mels = [m.log_mel(m.to_audio(x)) for x in m.sample(3, seconds=[0.3, 0.45, 0.6], seed=5)]
  out = {}
  for name, t in (("a", 64), ("b", 12 * m.stride)):
    batch = rng.normal(size=(len(mels), t, m.feature_config.n_mels)).astype(np.float32) * 5  # Junk padding.
    mask = np.zeros((len(mels), t), np.float32)
    for i, x in enumerate(mels):
      n = min(len(x), t - 3)
      batch[i, :n], mask[i, :n] = x[:n], 1.0
    out[f"{name}_mel"], out[f"{name}_mask"] = batch, mask
  return out


def test_exported_functions_match_the_package_in_a_process_without_it(exported, smoke_workdir, tmp_path):
  m = vae_jax.load(smoke_workdir, step="best")
  x = _inputs(m, np.random.default_rng(0))
  np.savez(tmp_path / "in.npz", **x)
  r = subprocess.run([sys.executable, "-c", CONSUMER, str(exported), str(tmp_path / "in.npz"),
                      str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True, env=ENV)
  assert r.returncode == 0, r.stderr[-2000:]
  got = np.load(tmp_path / "out.npz")
  for name in ("a", "b"):  # Batch size and length are symbolic: both shapes run from the same files.
    mel, mask = x[f"{name}_mel"], x[f"{name}_mask"]
    # The package's batched path on the same arrays (normalised; padding zero, as Trained pads).
    normalised = np.where(mask[..., None] > 0, m.normalizer.normalize(mel), 0.0).astype(np.float32)
    mean, logvar, _ = m.encode_batch(m.params, normalised, mask)
    recon = m.normalizer.denormalize(np.asarray(m.decode_batch(m.params, mean, mask)))
    tz = -(-mask.sum(1).astype(int) // m.stride)
    for i in range(len(mask)):
      n = int(mask[i].sum())
      np.testing.assert_allclose(got[f"{name}_mean"][i, :tz[i]], np.asarray(mean)[i, :tz[i]], atol=1e-5)
      np.testing.assert_allclose(got[f"{name}_logvar"][i, :tz[i]], np.asarray(logvar)[i, :tz[i]], atol=1e-5)
      np.testing.assert_allclose(got[f"{name}_recon"][i, :n], recon[i, :n], atol=1e-4)
  for i in range(len(x["a_mask"])):
    # 64 frames is also what Trained pads these utterances to: the single-utterance API agrees.
    n = int(x["a_mask"][i].sum())
    single, _ = m.encode(x["a_mel"][i, :n])
    np.testing.assert_allclose(got["a_mean"][i, :len(single)], single, atol=1e-5)


def test_existing_non_empty_directory_is_refused_and_untouched(smoke_workdir, tmp_path):
  target = tmp_path / "taken"
  target.mkdir()
  (target / "notes.txt").write_text("mine")
  r = subprocess.run([sys.executable, "eval.py", f"--workdir={smoke_workdir}", f"--export={target}"],
                     cwd=REPO, capture_output=True, text=True, env=ENV)
  assert r.returncode == 2
  assert r.stderr.strip() == f"error: --export={target}: the directory exists and is not empty; name a new one"
  assert os.listdir(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "mine"


def test_empty_directory_is_used(smoke_workdir, tmp_path):
  m = vae_jax.load(smoke_workdir)
  (tmp_path / "empty").mkdir()
  paths = export.export(m, str(tmp_path / "empty"))
  assert all(os.path.isfile(p) for p in paths.values())
  with pytest.raises(export.ExportDirError, match="not empty"):
    export.export(m, str(tmp_path / "empty"))


def test_model_card_carries_the_reports_figures(smoke_workdir, tmp_path):
  m = vae_jax.load(smoke_workdir)
  figures, source = {"eval/vae/logmel_mse": 0.1725, "probe/digit/accuracy": 0.86}, "metrics.json, step 40"
  card = export.model_card(m, {"platforms": ["cpu"]}, (figures, source))
  assert "| log-mel MSE (natural log) | 0.1725 |" in card and "| probe/digit/accuracy | 0.86 |" in card
  assert "Not measured" in export.model_card(m, {"platforms": ["cpu"]}, ({}, "no report"))
