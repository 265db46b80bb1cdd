"""Adversarial fine-tuning: pure steps, a frozen encoder, the non-finite guard, exact resume, loading."""

import functools
import json
import shutil

import jax
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from vae_jax import train
from vae_jax.adversarial import training as adv
from vae_jax.adversarial.model import build_discriminator, output_masks
from vae_jax.checkpoints import Checkpointer
from vae_jax.config import load_config
from vae_jax.errors import ConfigError
from vae_jax.eval import cli as eval_cli
from vae_jax.inference import load_trained
from vae_jax.models import build_model
from vae_jax.parallel import DataParallel

CONFIG = str(REPO_ROOT / "configs" / "smoke_adversarial.py")


def _config(**overrides):
  return load_config(CONFIG, {"train.progress_bar": False, **overrides})


@pytest.fixture(scope="module")
def setup():
  """The smoke config's VAE (random init), a discriminator and the step, without a workdir."""
  c = _config()
  model, disc = build_model(c), build_discriminator(c)
  vae = train.create_train_state(c, model, jax.random.key(0))
  state = adv.create_state(c, model, disc, vae.params, jax.random.key(1))
  step = functools.partial(adv.adversarial_train_step, model=model, disc=disc, config=c,
                           disc_cfg=adv.disc_config(c))
  return c, state, step


def _batch(c, n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  t, f = c.data.segment_frames, c.features.n_mels
  mask = np.ones((n, t), np.float32)
  mask[0, t // 2 + 1:] = 0  # One short clip: padding must stay out of every loss.
  return {"mel": rng.normal(size=(n, t, f)).astype(np.float32) * mask[..., None], "mask": mask}


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_is_pure_updates_decoder_and_discriminator_and_never_the_encoder(setup):
  c, state, step = setup
  f = jax.jit(step)
  b, key = _batch(c, 8), jax.random.key(3)
  s1, m1 = f(state, b, key)
  s2, m2 = f(state, b, key)
  assert _leaves_equal(s1, s2) and _leaves_equal(m1, m2), "same inputs must give the same outputs"
  _, m3 = f(state, b, jax.random.key(4))
  assert float(m3["train/nll"]) != float(m1["train/nll"]), "the key must matter (z ~ q)"
  for _ in range(2):
    s1, m1 = f(s1, _batch(c, 8, seed=1), key)
  assert bool(m1["train/finite"]) and int(s1.step) == int(s1.disc.step) == 3
  assert _leaves_equal(s1.params["encoder"], state.params["encoder"]), "the encoder is frozen"
  assert not _leaves_equal(s1.params["decoder"], state.params["decoder"])
  assert not _leaves_equal(s1.params["log_scale"], state.params["log_scale"])
  assert not _leaves_equal(s1.disc.params, state.disc.params)
  for k in ("train/disc_loss", "train/gen_adv", "train/feature_matching", "train/nll", "train/kl",
            "train/neg_elbo", "train/grad_norm", "train/disc_grad_norm", "train/learning_rate"):
    assert np.isfinite(float(m1[k])), k


def test_discriminator_masks_follow_its_strides(setup):
  c, _, _ = setup
  t = c.data.segment_frames
  mask = np.ones((2, t), np.float32)
  mask[0, 5:] = 0
  masks = output_masks(mask, c.adversarial.disc_scales, len(c.adversarial.disc_channels))
  features, logits = zip(*build_discriminator(c).apply(
      {"params": setup[1].disc.params}, np.zeros((2, t, c.features.n_mels), np.float32)))
  for s, (m, f, l) in enumerate(zip(masks, features, logits)):
    assert [x.shape[1] for x in m] == [x.shape[1] for x in f] + [l.shape[1]], f"scale {s}"
    # A position is valid when any frame it covers is: frames 0-4 of the short clip.
    assert int(m[-1][0].sum()) == -(-5 // (c.adversarial.disc_scales[s] * 2 ** (len(f) - 1)))


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_data_parallel_equals_one_device_and_compiles_once(setup, mode):
  c, state, step = setup
  key = jax.random.key(5)
  batches = [_batch(c, 8, seed=i) for i in range(4)]
  single = state
  for b in batches[:2]:
    single, m_single = jax.jit(step)(single, b, key)
  dp = DataParallel(step, jax.local_devices()[:2], mode, donate=False)
  s = dp.put_state(state)
  s, _ = dp(s, dp.put_batch(batches[0]), key)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compiles.append(name) if "backend_compile" in name else None)
  try:
    s, m = dp(s, dp.put_batch(batches[1]), key)
    jax.block_until_ready(m)
  finally:
    jax.monitoring.clear_event_listeners()
  assert compiles == [], f"the adversarial step was recompiled: {compiles}"
  got = dp.get_state(s)
  # Everything, optimiser moments included: a gradient summed twice over the mesh would agree on
  # the parameters (Adam is scale-invariant) but not on the moments.
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(m["train/disc_loss"]), float(m_single["train/disc_loss"]), rtol=1e-5)


def test_nonfinite_batch_leaves_both_states_unchanged(setup):
  c, state, step = setup
  b = _batch(c, 4)
  b["mel"][1, 3, 5] = np.nan
  new, m = jax.jit(step)(state, b, jax.random.key(0))
  assert not bool(m["train/finite"])
  assert _leaves_equal(new.vae.params, state.vae.params) and _leaves_equal(new.vae.opt_state, state.vae.opt_state)
  assert _leaves_equal(new.disc.params, state.disc.params) and _leaves_equal(new.disc.opt_state, state.disc.opt_state)
  assert int(new.step) == int(new.disc.step) == 1


def test_config_checks(smoke_workdir, tmp_path):
  with pytest.raises(ConfigError, match="adversarial.vae_workdir"):
    _config(**{"adversarial.vae_workdir": ""})
  with pytest.raises(ConfigError, match="adversarial.loss"):
    _config(**{"adversarial.loss": "wasserstein"})
  # A model section unlike the VAE's is refused in one line before any training.
  c = _config(**{"adversarial.vae_workdir": str(smoke_workdir), "model.channels": 48,
                 "data.cache_dir": str(smoke_workdir.parent / "cache")})
  with pytest.raises(ConfigError, match=r"model.channels=48 \(VAE: 32\)"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints" / "1").exists()


# End to end over the session's smoke VAE run.


def _run_config(vae_workdir, cache=None, **train_fields):
  return _config(**{"adversarial.vae_workdir": str(vae_workdir),
                    "data.cache_dir": str(cache or vae_workdir.parent / "cache"),
                    **{f"train.{k}": v for k, v in train_fields.items()}})


@pytest.fixture(scope="module")
def adversarial_workdir(smoke_workdir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("adversarial") / "workdir"
  config = _run_config(smoke_workdir)
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == config.train.num_steps and np.isfinite(result["eval/loss"])
  return workdir


def _restore(config, workdir):
  ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
  try:
    return ckpt.restore(adv.abstract_state(config))
  finally:
    ckpt.close()


@pytest.mark.slow
def test_fine_tuning_logs_resumes_exactly_and_keeps_the_encoder(smoke_workdir, adversarial_workdir, tmp_path):
  rows = [json.loads(line) for line in (adversarial_workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/disc_loss" in r]
  for k in ("train/gen_adv", "train/feature_matching", "train/nll", "train/kl", "train/disc_grad_norm"):
    assert k in train_rows[-1], k
  assert any("eval/logmel_mse" in r for r in rows)
  config = _run_config(smoke_workdir)
  state, meta = _restore(config, adversarial_workdir)
  vae = load_trained(str(smoke_workdir))
  assert meta["vae"] == {"workdir": str(smoke_workdir.resolve()), "step": vae.step,
                         "params_hash": adv.params_hash(vae.params)}
  assert _leaves_equal(state.params["encoder"], vae.params["encoder"]), "fine-tuning changed the encoder"
  assert not _leaves_equal(state.params["decoder"], vae.params["decoder"])
  # Interrupted halfway and resumed: bit-equal to the uninterrupted run, both optimisers included.
  resumed = tmp_path / "resumed"
  half = config.train.num_steps // 2
  assert train.train_and_evaluate(_run_config(smoke_workdir, max_steps_per_run=half), str(resumed))["step"] == half
  train.train_and_evaluate(config, str(resumed))
  again, meta_again = _restore(config, resumed)
  assert int(again.step) == config.train.num_steps and meta_again["loader"] == meta["loader"]
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_result_loads_and_evaluates_as_an_ordinary_vae(smoke_workdir, adversarial_workdir, tmp_path):
  trained = load_trained(str(adversarial_workdir))
  assert trained.step == 12 and set(trained.params) == {"encoder", "decoder", "log_scale"}
  mel = np.asarray(trained.dataset().test.utterance(0))
  recon = trained.reconstruct(mel)
  assert recon.shape == mel.shape and np.all(np.isfinite(recon))
  out = tmp_path / "report"
  assert eval_cli.run(eval_cli.EvalOptions(workdir=str(adversarial_workdir), report_dir=str(out),
                                           iwae_samples=2, max_utterances=4)) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert np.isfinite(metrics["eval/neg_elbo"]) and np.isfinite(metrics["eval/vae/logmel_mse"])
  # A workdir with another VAE's parameters at the same path is refused on resume.
  other = tmp_path / "other_vae"
  shutil.copytree(smoke_workdir, other)
  run = tmp_path / "run"
  cache = smoke_workdir.parent / "cache"
  train.train_and_evaluate(_run_config(other, cache, num_steps=2, eval_every=2, checkpoint_every=2), str(run))
  shutil.rmtree(other)
  shutil.copytree(adversarial_workdir, other)  # Now a fine-tuned decoder: other parameters.
  with pytest.raises(ConfigError, match="other VAE parameters"):
    train.train_and_evaluate(_run_config(other, cache, num_steps=4, eval_every=2, checkpoint_every=2), str(run))
