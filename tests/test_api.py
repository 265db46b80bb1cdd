"""The Python API: vae_jax.load(workdir, step) and the model's audio-in methods."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

import vae_jax
from vae_jax.api import Model, resolve_step
from vae_jax.checkpoints import Checkpointer
from vae_jax.errors import CheckpointError, UserError
from vae_jax.inference import Trained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README's example (section "Python API"), with `workdir` and `speech.wav` set by the test.
README_EXAMPLE = """\
import vae_jax
m = vae_jax.load(workdir, step="best")        # or "latest" (the default), or a step number
z, _ = m.encode("speech.wav")                 # a path, a waveform at m.sample_rate, or a log-mel
wave = m.to_audio(m.decode(z))                # Griffin-Lim; m.reconstruct("speech.wav") in one go
draws = [m.to_audio(mel) for mel in m.sample(2, seconds=0.5)]   # decoded N(0, I) draws
"""


def _eval_losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}


def test_import_is_light():
  code = "import sys, vae_jax; print(sorted(m for m in ('jax', 'flax', 'librosa') if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", "import vae_jax must not load JAX, Flax or librosa"


def test_readme_example_runs(smoke_workdir, tmp_path, monkeypatch):
  m = vae_jax.load(smoke_workdir)
  wave = m.to_audio(m.sample(1, seconds=0.6, seed=3)[0])
  sf.write(tmp_path / "speech.wav", wave, m.sample_rate)
  monkeypatch.chdir(tmp_path)
  scope = {"workdir": str(smoke_workdir)}
  exec(README_EXAMPLE, scope)  # pylint: disable=exec-used
  m, z, out, draws = scope["m"], scope["z"], scope["wave"], scope["draws"]
  assert isinstance(m, Trained) and m.step == min(_eval_losses(smoke_workdir).items(), key=lambda kv: kv[1])[0]
  assert z.shape == (m.latent_frames(len(m.log_mel(wave))), m.latent_channels)
  assert out.ndim == 1 and np.all(np.isfinite(out)) and len(out) > 0
  assert len(draws) == 2 and all(len(d) > 0 for d in draws)


def test_encode_takes_a_path_a_waveform_or_a_log_mel(smoke_workdir, tmp_path):
  m = vae_jax.load(smoke_workdir, step="latest")
  wave = m.to_audio(m.sample(1, seconds=0.5, seed=1)[0])
  path = tmp_path / "a.wav"
  sf.write(path, wave, m.sample_rate, subtype="FLOAT")
  log_mel = m.log_mel(wave)
  by_mel, by_wave, by_path = m.encode(log_mel)[0], m.encode(wave)[0], m.encode(str(path))[0]
  np.testing.assert_allclose(by_wave, by_mel, rtol=0, atol=0)
  np.testing.assert_allclose(by_path, by_mel, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(m.encode(path)[0], by_path)  # os.PathLike too.
  recon = m.reconstruct(path)
  assert recon.shape == log_mel.shape
  # reconstruct is decode of the posterior mean, whichever input form is given.
  np.testing.assert_allclose(recon, m.decode(by_path, num_frames=len(log_mel)), rtol=1e-5, atol=1e-4)
  with pytest.raises(UserError, match=r"shape \(3, 5\)"):
    m.encode(np.zeros((3, 5)))


def test_sample_lengths_and_temperature(smoke_workdir):
  m = vae_jax.load(smoke_workdir)
  fps = m.feature_config.frames_per_second
  mels = m.sample(3, seconds=[0.25, 0.5, 1.0], seed=0)
  assert [len(x) for x in mels] == [round(s * fps) for s in (0.25, 0.5, 1.0)]
  assert all(x.shape[1] == m.feature_config.n_mels for x in mels)
  again = m.sample(3, seconds=[0.25, 0.5, 1.0], seed=0)
  np.testing.assert_array_equal(mels[2], again[2])
  assert not np.allclose(m.sample(1, seconds=1.0, seed=1)[0], mels[2]), "another seed, another draw"
  with pytest.raises(UserError, match="positive"):
    m.sample(2, seconds=0)


def test_steps_latest_number_and_missing(smoke_workdir):
  kept = sorted(_eval_losses(smoke_workdir))  # The smoke run saves at each evaluation step.
  assert vae_jax.load(smoke_workdir, step="latest").step == kept[-1]
  assert vae_jax.load(smoke_workdir, step=kept[0]).step == kept[0]
  assert vae_jax.load(smoke_workdir, step=str(kept[0])).step == kept[0]
  with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 .*available: ") as e:
    vae_jax.load(smoke_workdir, step=7)
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="'latest', 'best' or a checkpoint step number"):
    vae_jax.load(smoke_workdir, step="newest")
  with pytest.raises(CheckpointError, match="no checkpoints in"):
    vae_jax.load(smoke_workdir / "nowhere")


def test_best_is_the_kept_checkpoint_with_the_lowest_eval_loss(tmp_path):
  # The latest step is not the best one here, so 'best' cannot pass by returning the latest.
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1, async_save=False)
  state = {"w": jnp.zeros(3)}
  for step, loss in [(10, 3.0), (20, 1.0), (30, 2.0), (40, None)]:
    ckpt.save(step, state, {"step": step}, None if loss is None else {"eval/loss": loss})
  ckpt.wait()
  assert sorted(ckpt.all_steps()) == [20, 40], "the preservation policy keeps the latest and the best"
  ckpt.close()
  assert resolve_step(str(tmp_path), "best") == 20
  assert resolve_step(str(tmp_path), "latest") is None


def test_best_without_any_eval_metric_is_one_line(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, async_save=False)
  ckpt.save(5, {"w": jnp.zeros(1)}, {"step": 5})
  ckpt.close()
  with pytest.raises(CheckpointError, match="no checkpoint .* has an eval/loss to rank") as e:
    resolve_step(str(tmp_path), "best")
  assert "\n" not in str(e.value)


def test_eval_py_step_flag(smoke_workdir, tmp_path):
  bad = subprocess.run([sys.executable, "eval.py", f"--workdir={smoke_workdir}", "--step=soon"], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert bad.returncode == 2
  assert bad.stderr.strip() == "error: step='soon': use 'latest', 'best' or a checkpoint step number"


def test_model_is_a_trained(smoke_workdir):
  m = vae_jax.load(smoke_workdir)
  assert isinstance(m, Model) and isinstance(m, Trained)
  leaves = jax.tree.leaves(m.params)
  assert leaves and all(isinstance(x, np.ndarray) for x in leaves), "parameters live on the host"
