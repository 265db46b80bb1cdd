"""Evaluation of a trained (smoke) workdir: loading, bounds, the report and the generation modes."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import smoke_config
from vae_jax import latents
from vae_jax.audio.features import FeatureConfig, Normalizer
from vae_jax.data.store import Split, load_dataset
from vae_jax.errors import CheckpointError
from vae_jax.eval import bounds, generate, render, report
from vae_jax.eval import cli as eval_cli
from vae_jax.inference import Trained, load_trained
from vae_jax.models import build_model
from vae_jax.rng import utterance_keys


@pytest.fixture(scope="module")
def trained(smoke_workdir) -> Trained:
  return load_trained(str(smoke_workdir))


@pytest.fixture(scope="module")
def data(trained):
  return load_dataset(trained.config, trained.normalizer)


def test_load_trained_restores_the_final_checkpoint(trained):
  assert trained.step == trained.config.train.num_steps
  assert trained.params["log_scale"].shape == (trained.feature_config.n_mels,)
  assert trained.stride == 4 and trained.latent_channels == trained.config.model.latent_channels


def test_missing_or_broken_checkpoints_are_checkpoint_errors(tmp_path, smoke_workdir):
  with pytest.raises(CheckpointError, match="no checkpoints"):
    load_trained(str(tmp_path / "nowhere"))
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(CheckpointError, match="no checkpoints"):
    load_trained(str(tmp_path / "empty"))
  copy = tmp_path / "copy"
  shutil.copytree(smoke_workdir / "checkpoints", copy / "checkpoints")
  with pytest.raises(CheckpointError, match="no checkpoint for step 7"):
    load_trained(str(copy), step=7)
  step = max(int(p.name) for p in (copy / "checkpoints").iterdir())
  for root, _, files in os.walk(copy / "checkpoints" / str(step) / "state"):
    for f in files:
      if f != "commit_success.txt":
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  with pytest.raises(CheckpointError) as e:
    load_trained(str(copy))
  assert str(copy / "checkpoints" / str(step)) in str(e.value)
  assert "\n" not in str(e.value)


def test_single_utterance_helpers_agree_and_ignore_padding(trained, data):
  mel = np.asarray(data.test.utterance(0))
  mean, logvar = trained.encode(mel)
  assert mean.shape == logvar.shape == (trained.latent_frames(len(mel)), trained.latent_channels)
  recon = trained.reconstruct(mel)
  np.testing.assert_allclose(trained.decode(mean, len(mel)), recon, atol=1e-5)
  # The same latents decoded inside a much longer padded buffer give the same frames.
  trained.config.eval.length_multiple = 128
  try:
    np.testing.assert_allclose(trained.decode(mean, len(mel)), recon, atol=1e-4)
  finally:
    trained.config.eval.length_multiple = 32
  with pytest.raises(ValueError):
    trained.decode(mean, len(mel) + 4 * trained.stride)
  wave = trained.to_audio(recon, length=1000)
  assert wave.shape == (1000,) and np.all(np.isfinite(wave))


def _bound_split(data, n_train: int = 10) -> Split:
  """Test utterances and a few train ones: enough utterances for statements about averages."""
  parts = [data.test.utterance(i) for i in range(len(data.test))]
  parts += [data.train.utterance(i) for i in range(n_train)]
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
  names = [f"u{i}" for i in range(len(parts))]
  return Split(names, names, {}, np.concatenate(parts), offsets)


def test_iwae_bounds_the_elbo_and_tightens_with_k(trained, data):
  split = _bound_split(data)
  p = bounds.run_split(trained, split, jax.random.key(0), num_samples=64, decode=False)
  m = bounds.bound_metrics(p, trained.normalizer)
  # Per utterance, log-mean-exp of the weights is at least their mean (Jensen), always.
  iwae_n = bounds.log_mean_exp(p.log_weights_NxK, axis=1)
  assert np.all(iwae_n >= p.log_weights_NxK.mean(1) - 1e-9)
  # Against the analytic-KL ELBO it holds on average.
  assert m["eval/neg_iwae"] <= m["eval/neg_elbo"]
  curve = [m[f"eval/neg_iwae_k/{k}"] for k in (1, 2, 4, 8, 16, 32, 64)]
  assert all(b <= a + 1e-3 for a, b in zip(curve, curve[1:])), curve
  assert curve[-1] < curve[0]
  # The single-sample bound is an unbiased estimate of the ELBO: same value up to MC error.
  se = p.log_weights_NxK.sum(0).std() / np.sqrt(64) / p.frames_N.sum()
  assert abs(m["eval/neg_elbo_mc"] - m["eval/neg_elbo"]) < 4 * se + 1e-3


def test_iwae_with_one_sample_is_the_model_elbo_estimate(trained, data):
  """k = 1: the log weight is -(reconstruction NLL + log q(z|x) - log p(z)) with the model's own sample."""
  t = 32  # A multiple of eval.length_multiple: no padded frames, so the model's own call agrees.
  mel = np.asarray(data.test.utterance(0))[:t]
  split = Split(["u"], ["u"], {}, mel, np.array([0, t]))
  key = jax.random.key(5)
  p = bounds.run_split(trained, split, key, num_samples=1, batch_size=1)
  keys = jax.vmap(jax.random.fold_in, (0, None))(utterance_keys(key, np.array([0])), 0)
  norm = trained.normalizer.normalize(mel)[None]
  terms = trained.model.apply({"params": trained.params}, norm, np.ones((1, t), np.float32), keys)
  np.testing.assert_allclose(p.nll_N[0], float(terms["nll"][0]), rtol=1e-5)
  # log q - log p averages to the analytic KL.
  many = bounds.run_split(trained, split, key, num_samples=128, batch_size=1)
  # Per sample: -log w - nll = log q - log p; the utterance's nll is the sample mean.
  mc_kl = -many.log_weights_NxK[0] - many.nll_N[0]
  assert abs(mc_kl.mean() - many.kl_NxC[0].sum()) < 4 * mc_kl.std() / np.sqrt(128) + 1e-3


def _linear_gaussian_vae(exact_posterior: bool, seed: int = 0) -> tuple[Trained, callable]:
  """A frame-level VAE with linear decoder x = W z + b + N(0, s^2 I), whose log p(x) is closed-form.

  W has orthogonal columns, so the true posterior is a diagonal Gaussian, linear in x: with
  `exact_posterior` the encoder computes it exactly, otherwise it is perturbed.
  """
  f, c = 8, 3
  config = smoke_config(overrides={"model.name": "mlp", "model.mlp_hidden": (), "model.latent_channels": c,
                                   "features.n_mels": f})
  model = build_model(config)
  rng = np.random.default_rng(seed)
  w = np.linalg.qr(rng.normal(size=(f, c)))[0] * np.array([2.0, 1.0, 0.5])
  b, s = rng.normal(size=f), 0.7
  post_var = 1.0 / (1.0 + np.sum(w ** 2, 0) / s ** 2)  # Diagonal: W^T W is.
  a = post_var[:, None] * w.T / s ** 2  # Posterior mean = a (x - b).
  if not exact_posterior:
    a, post_var = a * 0.6, post_var * 3.0
  params = {
      "encoder": {"Dense_0": {"kernel": np.concatenate([a.T, np.zeros((f, c))], 1),
                              "bias": np.concatenate([-a @ b, np.log(post_var)])}},
      "decoder": {"Dense_0": {"kernel": w.T, "bias": b}},
      "log_scale": np.full(f, np.log(s)),
  }
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  identity = Normalizer(np.zeros(f, np.float32), np.ones(f, np.float32))
  trained = Trained("", 0, config, model, params, identity, FeatureConfig.from_config(config.features))
  cov = w @ w.T + s ** 2 * np.eye(f)

  def log_px(x_TxF):
    d = x_TxF - b
    _, logdet = np.linalg.slogdet(cov)
    return float(np.sum(-0.5 * (np.einsum("tf,fg,tg->t", d, np.linalg.inv(cov), d) + logdet
                                 + f * np.log(2 * np.pi))))

  return trained, log_px


def _linear_gaussian_data(n: int, t: int, seed: int) -> Split:
  mel = np.random.default_rng(seed).normal(size=(n * t, 8)).astype(np.float32) * 2.0
  return Split([f"u{i}" for i in range(n)], [f"u{i}" for i in range(n)], {}, mel, np.arange(0, n * t + 1, t))


def test_with_the_true_posterior_every_bound_is_the_closed_form_log_likelihood():
  trained, log_px = _linear_gaussian_vae(exact_posterior=True)
  split = _linear_gaussian_data(4, 16, seed=1)
  p = bounds.run_split(trained, split, jax.random.key(0), num_samples=8, decode=False, batch_size=4,
                       length_multiple=16)
  truth = np.array([log_px(np.asarray(split.utterance(i), np.float64)) for i in range(4)])
  # q = p(z|x): every importance weight is p(x), so every bound is log p(x) with zero variance.
  np.testing.assert_allclose(p.log_weights_NxK, np.repeat(truth[:, None], 8, 1), rtol=1e-5,
                             err_msg="with q = p(z|x) every importance weight must be log p(x)")


def test_iwae_climbs_from_the_elbo_towards_the_closed_form_log_likelihood():
  trained, log_px = _linear_gaussian_vae(exact_posterior=False)
  split = _linear_gaussian_data(6, 8, seed=2)
  p = bounds.run_split(trained, split, jax.random.key(1), num_samples=512, decode=False, batch_size=6,
                       length_multiple=8)
  truth = np.array([log_px(np.asarray(split.utterance(i), np.float64)) for i in range(6)]).sum()
  curve = bounds.iwae_curve(p.log_weights_NxK)  # Mean over utterances of IWAE_k.
  iwae = {k: v * 6 for k, v in curve.items()}
  elbo = float(-(p.nll_N + p.kl_NxC.sum(1)).sum())
  assert elbo < iwae[1] + 1.0 and iwae[1] < iwae[16] < iwae[512] <= truth + 0.05, (elbo, iwae, truth)
  assert truth - iwae[512] < 0.5 * (truth - elbo), "512 samples should close most of the gap"


def test_the_audio_a_run_writes_is_what_eval_writes_for_its_checkpoint(smoke_workdir, trained, data):
  # Training writes its reconstructions through the same jitted path eval.py loads a
  # checkpoint into; the last eval step's WAV must be that checkpoint's re-synthesis.
  name = data.test.names[0].replace(os.sep, "_")
  written, sr = sf.read(smoke_workdir / "samples" / f"step{trained.step:07d}_{name}.recon.wav")
  again = trained.to_audio(trained.reconstruct(np.asarray(data.test.utterance(0))))
  assert sr == trained.feature_config.sample_rate and len(written) == len(again)
  np.testing.assert_allclose(written, np.clip(again, -1, 1), atol=1.5 / 2**15)  # 16-bit PCM.


def test_a_moved_corpus_is_read_without_changing_the_run_s_config(trained):
  before = trained.config.to_json()
  moved = trained.config_for_corpus("/corpus/moved/here")
  assert moved.data.path == "/corpus/moved/here"
  assert trained.config.to_json() == before
  # The synthetic corpus ignores data.path: the data load but the run's config is untouched.
  assert len(generate.Utterances(trained, "/corpus/moved/here").data.test) > 0
  assert trained.config.to_json() == before


def test_report_for_the_smoke_workdir(smoke_workdir, tmp_path):
  # The workdir stands in for its own deterministic baseline: same features, every code path.
  r = report.evaluate_workdir(str(smoke_workdir), num_samples=4, baseline_workdir=str(smoke_workdir))
  paths = render.write_report(r, str(tmp_path))
  with open(paths["metrics"]) as f:
    m = json.load(f)
  for key in ("eval/neg_elbo", "eval/nll", "eval/kl", "eval/neg_elbo_per_bin", "eval/neg_iwae",
              "eval/neg_elbo_logmel", "eval/kl_per_channel", "eval/active_units",
              "eval/vae/logmel_mse", "eval/vae/logmel_l1", "eval/vae/mel_lsd_db", "eval/vae/logmel_cd_db",
              "eval/pca/logmel_mse", "eval/pca/ppca_nll", "eval/oracle/stoi_concat",
              "eval/vae/stoi_concat", "eval/vae/stoi_clips_scored", "eval/oracle/pesq_clip_mean",
              "eval/vae/pesq_clip_mean", "eval/vae/stoi_gap_to_oracle", "eval/vae/pesq_gap_to_oracle",
              "probe/speaker/vae", "probe/speaker/mfcc", "probe/speaker/chance", "probe/word/vae",
              "probe/vowel/vae", "eval/ae/logmel_mse", "eval/ae/stoi_concat", "probe/speaker/ae",
              "utterances"):
    assert key in m, key
  assert m["eval/neg_iwae"] <= m["eval/neg_elbo"] + 0.05
  assert m["eval/pca/components"] == 1  # 4 channels at 1/4 of the frame rate.
  assert len(m["utterances"]) == m["eval/utterances"]
  with open(paths["report"]) as f:
    text = f.read()
  assert "Gap to the oracle" in text and "oracle" in text
  for name in ("reconstructions.png", "latents.png", "iwae.png", "probes.png", "stoi.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  table = render.summary_table(r.metrics)
  assert "-ELBO" in table and "STOI" in table


def test_generation_modes_write_their_files(smoke_workdir, data, tmp_path, capsys):
  a = data.test.paths[0]
  out = tmp_path / "gen"
  status = eval_cli.run(eval_cli.EvalOptions(
      workdir=str(smoke_workdir), out=str(out), sample=2, seconds=0.5, interpolate=(a, data.test.names[1]),
      steps=3, method="lerp", traverse=True, traverse_channels=2, traverse_steps=3))
  assert status == 0
  names = {p.name for p in out.iterdir()}
  assert {"sample_00.wav", "sample_01.wav", "samples.png"} <= names
  stem = f"interp_{data.test.names[0]}_{data.test.names[1]}_lerp"
  assert {f"{stem}_00.wav", f"{stem}_02.wav", f"{stem}.wav", f"{stem}.png"} <= names
  assert sum(n.startswith("traverse_") and n.endswith(".wav") for n in names) == 2
  assert sum(n.startswith("traverse_") and n.endswith(".png") for n in names) == 1
  assert "interpolation" in capsys.readouterr().out


def test_interpolation_ends_at_the_shorter_utterances_reconstruction(trained, data):
  short, long = sorted((np.asarray(data.test.utterance(i)) for i in range(2)), key=len)
  for method in ("lerp", "slerp"):
    path_z, mels = generate.interpolation(trained, long, short, 3, method)
    assert path_z.shape == (3, trained.latent_frames(len(short)), trained.latent_channels)
    assert [m.shape for m in mels] == [short.shape] * 3
    np.testing.assert_allclose(mels[-1], trained.reconstruct(short), atol=1e-4)


def test_interpolation_endpoints_decode_to_the_reconstructions(trained, data, tmp_path):
  mel = np.asarray(data.test.utterance(0))
  other = np.asarray(data.test.utterance(1))
  za, zb = latents.align(trained.encode(mel)[0], trained.encode(other)[0], "crop")
  for method in ("lerp", "slerp"):
    path = latents.interpolation_path(za, zb, 4, method)
    if len(za) == trained.latent_frames(len(mel)):
      np.testing.assert_allclose(trained.decode(path[0], len(mel)), trained.reconstruct(mel), atol=1e-4)
  paths = generate.write_interpolation(trained, ("a", mel), ("b", other), str(tmp_path), steps=3)
  assert len(paths) == 3 + 2
