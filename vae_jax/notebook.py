"""The set-up the notebooks share: a run to explore, trained on a smoke config when none is given."""

import pathlib
import tempfile

from vae_jax.config import load_config
from vae_jax.eval.generate import Utterances
from vae_jax.inference import Trained, load_trained
from vae_jax.train import train_and_evaluate

# The repository's configs (an editable install keeps the package beside them).
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def train_smoke(config_name: str, steps: int, workdir: str, **overrides) -> str:
  """Trains configs/<config_name>.py for `steps` steps into `workdir` (quietly); returns the workdir."""
  config = load_config(str(CONFIG_DIR / f"{config_name}.py"), {
      "train.num_steps": steps, "train.log_every": max(steps // 10, 1), "train.eval_every": steps,
      "train.checkpoint_every": steps, "train.progress_bar": False, **overrides})
  train_and_evaluate(config, workdir)
  return workdir


def open_vae_run(workdir: str = "", corpus: str = "", train_steps: int = 2000) -> tuple[Trained, Utterances]:
  """The VAE run at `workdir` ("" trains configs/smoke.py into a temporary directory) and its utterances."""
  workdir = workdir or train_smoke("smoke", train_steps, tempfile.mkdtemp(prefix="vae-jax-smoke-"))
  trained = load_trained(workdir)
  utterances = Utterances(trained, corpus or None)
  data = utterances.data
  print(f"{workdir} at step {trained.step}: {trained.config.model.name} VAE, "
        f"{trained.latent_channels} latent channels per {trained.stride} mel frames")
  print(f"{data.corpus} corpus: {len(data.train)} train and {len(data.test)} test utterances, "
        f"labels: {', '.join(data.label_names) or 'none'}")
  return trained, utterances
