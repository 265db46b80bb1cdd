"""The learned latent prior: its density, causality, guidance, sampling, training and loading."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from tests.conftest import REPO_ROOT, smoke_config
from vae_jax import train
from vae_jax.config import load_config
from vae_jax.errors import CheckpointError
from vae_jax.eval import cli as eval_cli
from vae_jax.eval import generate
from vae_jax.prior import load_prior, sampling
from vae_jax.prior import report as prior_report
from vae_jax.prior.model import LatentPrior, guide, mixture_log_prob

C, K, NUM_CLASSES = 3, 2, (4, 3)


@pytest.fixture(scope="module")
def tiny():
  """A tiny randomly initialised prior with two conditioning labels."""
  model = LatentPrior(latent_channels=C, num_classes=NUM_CLASSES, max_frames=16, width=16, depth=2,
                      heads=2, mlp_ratio=2, num_mixtures=K)
  z = jnp.zeros((1, 8, C))
  params = model.init(jax.random.key(0), z, jnp.ones((1,), jnp.int32), jnp.zeros((1, 2), jnp.int32))["params"]
  # Non-zero log-scales, so that the test sees them (they are initialised to zero).
  params["log_scale"]["kernel"] = 0.3 * jax.random.normal(jax.random.key(1), params["log_scale"]["kernel"].shape)
  return model, params


def test_mixture_log_prob_matches_scipy():
  rng = np.random.default_rng(0)
  p = {"logits": rng.normal(size=(2, 3, K)), "mean": rng.normal(size=(2, 3, K, C)),
       "log_scale": 0.5 * rng.normal(size=(2, 3, K, C))}
  z = rng.normal(size=(2, 3, C))
  got = np.asarray(mixture_log_prob(jnp.asarray(z), jax.tree.map(jnp.asarray, p)))
  pi = np.exp(p["logits"]) / np.exp(p["logits"]).sum(-1, keepdims=True)
  want = np.zeros((2, 3))
  for b in range(2):
    for t in range(3):
      dens = sum(pi[b, t, k] * np.prod(stats.norm.pdf(z[b, t], p["mean"][b, t, k], np.exp(p["log_scale"][b, t, k])))
                 for k in range(K))
      want[b, t] = np.log(dens)
  np.testing.assert_allclose(got, want, rtol=1e-5, err_msg="mixture log-density differs from scipy's")


def test_sequence_log_density_is_the_sum_of_brute_force_conditionals(tiny):
  """log p(z_1:T) from one pass equals the sum over t of p(z_t | z_<t) computed on each prefix alone."""
  model, params = tiny
  t = 6
  z = jax.random.normal(jax.random.key(2), (1, t, C))
  lengths, labels = jnp.array([t]), jnp.array([[1, 2]])
  full = mixture_log_prob(z, model.apply({"params": params}, z, lengths, labels))[0]
  brute = []
  for i in range(t):
    # Only z_<i is given; frames from i on are replaced by noise the model must not see.
    prefix = z.at[:, i:].set(jax.random.normal(jax.random.key(10 + i), (1, t - i, C)))
    p = model.apply({"params": params}, prefix, lengths, labels)
    p_i = jax.tree.map(lambda x: x[0, i], p)
    pi = np.asarray(jax.nn.softmax(p_i["logits"]))
    dens = sum(pi[k] * np.prod(stats.norm.pdf(np.asarray(z[0, i]), np.asarray(p_i["mean"][k]),
                                              np.exp(np.asarray(p_i["log_scale"][k])))) for k in range(K))
    brute.append(np.log(dens))
  np.testing.assert_allclose(np.asarray(full), brute, rtol=1e-4, atol=1e-5)


def test_changing_a_frame_never_changes_earlier_frames(tiny):
  model, params = tiny
  z = jax.random.normal(jax.random.key(3), (2, 8, C))
  lengths, labels = jnp.array([8, 6]), jnp.array([[0, 1], [4, 3]])
  base = mixture_log_prob(z, model.apply({"params": params}, z, lengths, labels))
  for t in range(7):
    z2 = z.at[:, t + 1].add(5.0)
    moved = mixture_log_prob(z2, model.apply({"params": params}, z2, lengths, labels))
    np.testing.assert_allclose(moved[:, :t + 1], base[:, :t + 1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(moved[:, t + 1], base[:, t + 1]), "frame t+1's own density must change"


def test_dropout_masks_are_per_example_and_keep_causality(tiny):
  """Example i's dropped-out densities depend on its own key only, never on later frames."""
  model, params = tiny
  drop = model.clone(dropout=0.3)
  z = jax.random.normal(jax.random.key(3), (3, 8, C))
  lengths, labels = jnp.array([8, 6, 7]), jnp.array([[0, 1], [4, 3], [2, 0]])
  keys = jax.random.split(jax.random.key(5), 3)
  apply = jax.jit(lambda z, n, y, k: mixture_log_prob(z, drop.apply({"params": params}, z, n, y, k)))
  batch = apply(z, lengths, labels, keys)
  alone = apply(z[1:2], lengths[1:2], labels[1:2], keys[1:2])
  np.testing.assert_allclose(batch[1], alone[0], rtol=1e-5, atol=1e-5,
                             err_msg="an example's dropout must not depend on the others in the batch")
  plain = mixture_log_prob(z, model.apply({"params": params}, z, lengths, labels))
  assert not np.allclose(batch, plain, atol=1e-3), "dropout with keys must change the densities"
  np.testing.assert_allclose(mixture_log_prob(z, drop.apply({"params": params}, z, lengths, labels)), plain,
                             rtol=1e-6, err_msg="without keys (evaluation, sampling) dropout is off")
  z2 = z.at[:, 5].add(5.0)
  np.testing.assert_allclose(apply(z2, lengths, labels, keys)[:, :5], batch[:, :5], rtol=1e-5, atol=1e-5,
                             err_msg="dropout must keep the prior causal")


def _sample(model, params, labels, *, guidance=1.0, guided=False, seed=0, prompt=None, prompt_frames=None,
            lengths=(8, 5, 8)):
  n = len(lengths)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.arange(n))
  prompt = jnp.zeros((n, 8, C)) if prompt is None else prompt
  prompt_frames = jnp.zeros((n,), jnp.int32) if prompt_frames is None else prompt_frames
  return np.asarray(sampling.sample_latents(model, params, keys, jnp.asarray(lengths, jnp.int32),
                                            jnp.asarray(labels, jnp.int32), prompt, prompt_frames,
                                            num_frames=8, guidance=guidance, guided=guided))


def test_sampling_is_keyed_zero_past_the_length_and_consistent_with_its_prompt(tiny):
  model, params = tiny
  labels = [[0, 1], [2, 2], [4, 3]]
  a = _sample(model, params, labels)
  np.testing.assert_array_equal(a, _sample(model, params, labels), err_msg="same key, same sample")
  assert not np.allclose(a, _sample(model, params, labels, seed=1))
  assert np.all(a[1, 5:] == 0) and np.all(a[1, :5] != 0)
  # Continuing the first 4 frames of a draw with the same keys reproduces the draw: frame t is
  # drawn from z_<t alone, whatever else the buffer holds.
  garbage = jnp.asarray(a).at[:, 4:].set(99.0)
  cont = _sample(model, params, labels, prompt=garbage, prompt_frames=jnp.array([4, 4, 4]))
  np.testing.assert_allclose(cont, a, rtol=1e-5, atol=1e-5)


def test_guidance_zero_is_unconditional_and_one_is_conditional(tiny):
  model, params = tiny
  labels = [[0, 1], [2, 2], [3, 0]]
  unknown = [list(NUM_CLASSES)] * 3
  unconditional = _sample(model, params, unknown)
  np.testing.assert_array_equal(_sample(model, params, labels, guidance=0.0, guided=True), unconditional)
  np.testing.assert_allclose(_sample(model, params, labels, guidance=1.0, guided=True),
                             _sample(model, params, labels), rtol=1e-6, atol=1e-6)
  assert not np.allclose(_sample(model, params, labels, guidance=3.0, guided=True), _sample(model, params, labels))
  p = {"mean": jnp.array([1.0]), "logits": jnp.array([0.0])}
  q = {"mean": jnp.array([3.0]), "logits": jnp.array([2.0])}
  np.testing.assert_allclose(guide(q, p, 2.0)["mean"], [5.0])


# End to end: a prior trained on the session's smoke VAE.


def _prior_config(vae_workdir, cache_dir, **train_fields):
  overrides = {"prior.vae_workdir": str(vae_workdir), "data.cache_dir": str(cache_dir),
               "train.progress_bar": False, **{f"train.{k}": v for k, v in train_fields.items()}}
  return load_config(str(REPO_ROOT / "configs" / "smoke_prior.py"), overrides)


@pytest.fixture(scope="module")
def prior_workdir(smoke_workdir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("prior") / "workdir"
  config = _prior_config(smoke_workdir, smoke_workdir.parent / "cache")
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == config.train.num_steps
  return workdir


@pytest.mark.slow
def test_prior_trains_lowers_the_kl_and_resumes_exactly(smoke_workdir, prior_workdir, tmp_path):
  rows = [json.loads(line) for line in (prior_workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/kl" in r]
  assert evals[-1]["eval/kl"] < evals[-1]["eval/kl_standard"], "the learned prior must beat N(0, I) on test"
  assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
  # Interrupted after half the steps and resumed: bit-equal to the uninterrupted run.
  config = _prior_config(smoke_workdir, smoke_workdir.parent / "cache")
  half = config.train.num_steps // 2
  resumed = tmp_path / "resumed"
  train.train_and_evaluate(_prior_config(smoke_workdir, smoke_workdir.parent / "cache",
                                         max_steps_per_run=half), str(resumed))
  train.train_and_evaluate(config, str(resumed))
  a, b = load_prior(str(prior_workdir)), load_prior(str(resumed))
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


@pytest.mark.slow
def test_loaded_prior_samples_conditions_and_lengths(prior_workdir):
  prior = load_prior(str(prior_workdir))
  assert prior.conditions == ("speaker", "word")
  draws = prior.sample(6, condition="speaker=spk1", guidance=2.0, seed=3)
  again = prior.sample(8, condition={"speaker": 1}, guidance=2.0, seed=3)
  for d, e in zip(draws, again):  # Draw i depends on (seed, i) only, not on how many are drawn.
    np.testing.assert_allclose(d.z, e.z, rtol=1e-5, atol=1e-5)
  mel_lengths = {len(d.log_mel) for d in prior.sample(12, seed=0)}
  assert mel_lengths <= set(prior.lengths["mel_frames"]) and len(mel_lengths) > 1
  fixed = prior.sample(2, seconds=0.5, seed=0)
  fps = prior.vae_run.feature_config.frames_per_second
  assert [len(d.log_mel) for d in fixed] == [round(0.5 * fps)] * 2
  with pytest.raises(Exception, match="not a class"):
    prior.parse_condition("speaker=nobody")


@pytest.mark.slow
def test_prior_of_another_vae_or_corrupt_checkpoint_is_refused(smoke_workdir, prior_workdir, tmp_path):
  # A prior whose VAE run was replaced by another one at the same path and step.
  vae, prior = tmp_path / "vae", tmp_path / "prior"
  shutil.copytree(smoke_workdir, vae)
  train.train_and_evaluate(_prior_config(vae, smoke_workdir.parent / "cache", num_steps=4, eval_every=4,
                                         checkpoint_every=4), str(prior))
  load_prior(str(prior))
  shutil.rmtree(vae)
  config = smoke_config(smoke_workdir.parent / "cache", {"seed": 1})
  train.train_and_evaluate(config, str(vae))
  with pytest.raises(CheckpointError, match="retrain the prior"):
    load_prior(str(prior))
  # The command line says so in one line.
  out = subprocess.run([sys.executable, str(REPO_ROOT / "eval.py"), f"--workdir={prior}", "--sample=2"],
                       capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
  assert out.stderr.startswith("error: ") and "retrain the prior" in out.stderr
  # A truncated file in the prior's checkpoint.
  damaged = tmp_path / "damaged"
  shutil.copytree(prior_workdir, damaged)
  latest = max((p for p in (damaged / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  biggest = max((p for p in latest.rglob("*") if p.is_file()), key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  with pytest.raises(CheckpointError):
    load_prior(str(damaged))


@pytest.mark.slow
def test_eval_sample_mode_names_lengths_and_grid(smoke_workdir, prior_workdir, tmp_path):
  out = tmp_path / "standard"
  eval_cli.run(eval_cli.EvalOptions(workdir=str(smoke_workdir), sample=101, out=str(out)))
  wavs = sorted(p.name for p in out.glob("*.wav"))
  assert wavs == [f"sample_{i:03d}.wav" for i in range(101)], "names must sort in sample order"
  rows = json.loads((out / "samples.json").read_text())
  assert len({r["seconds"] for r in rows}) > 1, "lengths are drawn like the data's, not fixed"
  height = matplotlib.image.imread(out / "samples.png").shape[0]
  assert height <= 100 * 2.6 * (generate.MAX_GRID_PANELS // 4) + 1, "the grid is capped"

  out = tmp_path / "learned"
  eval_cli.run(eval_cli.EvalOptions(workdir=str(prior_workdir), sample=3, out=str(out),
                                    condition="word=" + load_prior(str(prior_workdir)).label_names["word"][2],
                                    guidance=2.0, seconds=0.4))
  rows = json.loads((out / "samples.json").read_text())
  assert [r["prior"] for r in rows] == ["learned"] * 3 and all(r["guidance"] == 2.0 for r in rows)
  assert all(abs(r["seconds"] - 0.4) < 0.02 for r in rows) and all("word" in r["condition"] for r in rows)


@pytest.mark.slow
def test_eval_codes_under_the_workdirs_prior_unless_told_standard(prior_workdir, tmp_path):
  import soundfile  # pylint: disable=g-import-not-at-top
  from vae_jax.codec import api  # pylint: disable=g-import-not-at-top

  wav = tmp_path / "tone.wav"
  t = np.arange(int(0.6 * 8000)) / 8000
  soundfile.write(wav, 0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(len(t)), 8000)
  prior = load_prior(str(prior_workdir))
  headers = {}
  for choice in (None, "standard"):
    out = tmp_path / str(choice)
    assert eval_cli.run(eval_cli.EvalOptions(workdir=str(prior_workdir), compress=(str(wav),), out=str(out),
                                             prior=choice)) == 0
    headers[choice] = api.read(prior.vae_run, (out / "tone.vjx").read_bytes(), prior)[0]
  assert headers[None].prior_hash, "a prior workdir codes under its learned prior by default"
  assert not headers["standard"].prior_hash, "--prior=standard codes under N(0, I)"


@pytest.mark.slow
def test_generation_report_of_a_prior_workdir(prior_workdir):
  # A briefly trained classifier: the test checks the report's wiring, not the scores.
  m, lines = prior_report.generation_report(load_prior(str(prior_workdir)), num_samples=2, n=8,
                                            classifier_steps=40)
  # The learned prior's bound is finite, and IWAE is the tighter of the two.
  assert np.isfinite(m["eval/prior/neg_elbo"]) and m["eval/prior/neg_iwae"] <= m["eval/prior/neg_elbo"] + 1e-6
  rows = {k.split("/")[1] for k in m if k.startswith("sample_quality/") and k.count("/") >= 2}
  assert {"real", "griffin_lim", "white_noise", "time_reversed", "N(0, I) prior",
          "learned prior, unconditional", prior_report.RECONSTRUCTION_ROW} <= rows
  assert any(r.startswith("learned prior, speaker given") for r in rows)
  g = next(r for r in rows if r.startswith("learned prior, speaker given")).split("(guidance ")[1].rstrip(")")
  assert (f"learned prior, labels drawn from the train split (guidance {g})" in rows) == (g != "1"), rows
  speaker_acc = [v for k, v in m.items() if k.endswith("/accuracy/speaker") and "given" in k]
  assert speaker_acc and all(0 <= v <= 1 for v in speaker_acc)
  assert m["sample_quality/real/is/word"] >= 1.0
  table = "\n".join(lines)
  assert m["sample_quality/classifier_hash"] in table and "| white_noise |" in table
