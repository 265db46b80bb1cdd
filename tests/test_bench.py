"""The benchmark harness runs at tiny sizes and writes well-formed results (speed is not checked here)."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import common, memory_bench, profile, report, run, train_bench
from bench.common import Context

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  results = run.run(["--quick", "--sections", "train,loader", "--reps", "1", "--warmup", "1",
                     "--out", str(out)])
  return out, results


def test_quick_run_writes_json_and_markdown_with_provenance(quick_run):
  out, results = quick_run
  saved = json.loads((out / "results.json").read_text())
  assert saved["machine"]["command"] == "python -m bench.run --quick --sections train,loader --reps 1 " \
      f"--warmup 1 --out {out}"
  for key in ("cpu", "cpu_cores", "date", "machine", "jax"):
    assert saved["machine"][key], key
  assert set(saved["sections"]) == {"train", "loader"}
  assert not any("error" in s for s in saved["sections"].values())
  md = (out / "results.md").read_text()
  assert saved["machine"]["date"] in md and saved["machine"]["cpu"] in md
  assert "### Train step: JAX vs PyTorch" in md and "### Does training wait on data?" in md


def test_quick_train_section_is_well_formed(quick_run):
  _, results = quick_run
  train = results["sections"]["train"]
  jax_rates = train["results"]["jax"]
  assert jax_rates["frames_per_s"] > 0 and jax_rates["audio_s_per_s"] > 0
  assert jax_rates["timing"]["reps"] == 1
  if common.torch_available():
    assert train["params_torch"] == train["params_jax"]
    assert train["ratio_jax_over_torch"] > 0
  else:
    assert "not installed" in train["torch_skipped"]
  loader = results["sections"]["loader"]
  assert loader["loader_over_step"] > 0 and loader["in_loop"]["steps"] > 0


def test_torch_part_is_skipped_with_a_message_without_torch(quick_run, monkeypatch, tmp_path):
  monkeypatch.setattr(train_bench, "torch_available", lambda: False)
  ctx = Context.create(quick=True, reps=1, warmup=0, workdir=str(tmp_path))
  out = train_bench.jax_vs_torch(ctx)
  assert "pip install -e .[bench]" in out["torch_skipped"]
  assert set(out["results"]) == {"jax"}
  assert "Train step" in report.markdown({"machine": quick_run[1]["machine"], "sections": {"train": out}})


def test_twin_computes_the_jax_model_for_the_same_parameters():
  torch = pytest.importorskip("torch")
  from bench import torch_twin  # pylint: disable=g-import-not-at-top
  from vae_jax import losses  # pylint: disable=g-import-not-at-top
  from vae_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from vae_jax.models.vae import VAE  # pylint: disable=g-import-not-at-top

  c = common.quick_config()
  c.model.blocks_per_stage, c.model.channel_multipliers = 2, (1, 2)
  model = build_model(c)
  rng = np.random.default_rng(0)
  mel = rng.standard_normal((3, 30, c.features.n_mels)).astype(np.float32)
  mask = np.ones((3, 30), np.float32)
  mask[1, 21:], mask[2, 7:] = 0, 0
  mel *= mask[..., None]
  apply = jax.jit(model.apply, static_argnames="method")  # Eager flax is slow op by op.
  params = jax.jit(model.init)(jax.random.key(0), mel, mask, jax.random.key(1))["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  mean, logvar, mask_z = apply({"params": params}, mel, mask, method=VAE.encode)
  eps = rng.standard_normal(mean.shape).astype(np.float32)
  recon = apply({"params": params}, mean + jnp.exp(0.5 * logvar) * eps, mask, method=VAE.decode)
  nll = (losses.gaussian_nll(mel, recon, params["log_scale"]) * mask[..., None]).sum((1, 2))
  kl = (losses.kl_diag_gaussian(mean, logvar) * mask_z[..., None]).sum((1, 2))

  twin = torch_twin.build_twin(c)
  assert torch_twin.num_params(twin) == train_bench.num_params(c)
  torch_twin.load_flax_params(twin, params)
  with torch.no_grad():
    out = twin(torch.from_numpy(mel), torch.from_numpy(mask),
               torch.from_numpy(np.ascontiguousarray(eps.transpose(0, 2, 1))))
  np.testing.assert_allclose(out["nll"].numpy(), nll, rtol=1e-4)
  np.testing.assert_allclose(out["kl"].numpy(), kl, rtol=1e-4)


def test_twin_trainer_steps_and_skips_nothing_finite():
  pytest.importorskip("torch")
  c = common.quick_config()
  rng = np.random.default_rng(0)
  batch = {"mel": rng.standard_normal((1, 8, 32, c.features.n_mels)).astype(np.float32),
           "mask": np.ones((1, 8, 32), np.float32)}
  step = train_bench.torch_step_runner(c, [batch], threads=1)
  losses = [step() for _ in range(3)]
  assert all(np.isfinite(losses))


def test_profile_labels_thunks_of_a_compiled_program():
  f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum())
  text = f.lower(jnp.ones((8, 4)), jnp.ones((4, 3))).compile().as_text()
  instrs = profile.parse_hlo(text)
  kinds = {profile.category(name, info) for name, info in instrs.items()}
  assert any(k.startswith("conv matmuls") for k in kinds), instrs


def test_config_overrides_name_only_the_fields_that_differ():
  base, c = common.fsdd_config(), common.fsdd_config()
  c.model.channels, c.train.batch_size = 32, 8
  assert memory_bench.config_overrides(c, base) == ["--config.model.channels=32",
                                                    "--config.train.batch_size=8"]


def test_nothing_in_the_package_imports_torch():
  pattern = re.compile(r"^\s*(import torch|from torch)", re.M)
  offenders = [str(p.relative_to(REPO)) for p in (REPO / "vae_jax").rglob("*.py")
               if pattern.search(p.read_text())]
  assert not offenders
