"""The notebooks run top to bottom against a smoke-trained workdir and are committed without outputs."""

import json
import pathlib
import re
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from vae_jax import train
from vae_jax.config import load_config

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "vae-jax-test"
CELL_TIMEOUT_S = 300

# Appended to a notebook before it runs: facts about its results, printed as one JSON line.
EXPLORE_PROBE = """
import json
print(json.dumps({"points": len(xy), "utterances": len(data.train) + len(data.test),
                  "channels": len(kl), "latent_channels": trained.latent_channels, "shown": len(shown),
                  "coded_bytes": len(coded), "decoded_error": float(np.abs(
                      codec.decompress(trained, coded) - trained.encode(mel)[0]).max())}))
"""
INTERPOLATION_PROBE = """
import json
# The path's end at the shorter input is that input's reconstruction; the other end is shared.
near, far = (0, -1) if len(mel_a) <= len(mel_b) else (-1, 0)
recon = trained.reconstruct(mel_a if near == 0 else mel_b)
print(json.dumps({
    "end_error": {m: float(np.abs(mels[near] - recon).max()) for m, (_, mels) in path.items()},
    "far_end_gap": float(np.abs(path["lerp"][1][far] - path["slerp"][1][far]).max()),
    "path_lengths": [len(mels) for _, mels in path.values()],
    "factor_rows": len(pair_measured), "truth_finite": bool(np.isfinite(ends_truth[:, :3]).all()),
    "traversed": len(traversal), "steps": STEPS}))
"""
GENERATION_PROBE = """
import json
p = len(prompt)
print(json.dumps({
    "compare": {"requested": [int(t) for t in compare_frames], "standard": [len(m) for m in standard],
                "learned": [len(m) for m in learned]},
    "grid": {"cells": len(grid), "rows": len(grid_rows), "columns": len(grid_cols),
             "row_classes": len(prior.label_names[row_label]),
             "conditions": [d.condition for d in grid] == cells,
             "distinct": len({tuple(sorted(d.condition.items())) for d in grid})},
    "sweep": {"guidance": list(sweep), "accuracy": [s["accuracy"] for s in sweep.values()],
              "inception_score": [s["inception_score"] for s in sweep.values()],
              "draws": len(wanted), "classes": len(sweep_names), "real_accuracy": real_accuracy},
    "classifier": classifier.hash, "classifier_steps": classifier.info.get("steps"),
    "continuation": {"prompt_frames": p, "latent_frames": len(z_mean),
                     "utterance_frames": len(mel), "mel_frames": [len(d.log_mel) for d in continued],
                     "z_frames": [len(d.z) for d in continued],
                     "prompt_error": max(float(np.abs(d.z[:p] - prompt).max()) for d in continued),
                     "spread": float(np.abs(continued[0].z[p:] - continued[-1].z[p:]).max()),
                     "conditions": [d.condition == condition for d in continued]}}))
"""


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
  """A kernelspec for this interpreter: the notebooks run in the environment under test."""
  root = tmp_path_factory.mktemp("kernels")
  (root / KERNEL).mkdir()
  (root / KERNEL / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "vae-jax tests", "language": "python"}))
  return KernelSpecManager(kernel_dirs=[str(root)])


def _run(name: str, workdir: pathlib.Path, kernel_specs: KernelSpecManager, probe: str,
         params: dict | None = None) -> tuple[list, dict]:
  """Executes notebooks/<name>.ipynb from notebooks/ with WORKDIR and `params` set in its first cell.

  Returns its code cells and the probe's facts.
  """
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  cell = next(c for c in nb.cells if c.cell_type == "code")
  for key, value in {"WORKDIR": str(workdir), **(params or {})}.items():
    cell.source, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", cell.source, flags=re.M)
    assert n == 1, f"{name}: the parameters cell has no `{key} = ...` line"
  nb.cells.append(nbformat.v4.new_code_cell(probe))
  km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
  # A failing cell raises CellExecutionError with its traceback. The client shuts down a kernel
  # it was given only when told to.
  NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                 resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(cleanup_kc=True)
  code = [c for c in nb.cells if c.cell_type == "code"]
  warnings = [o.text for c in code for o in c.outputs
              if o.output_type == "stream" and o.name == "stderr" and re.search(r"\w+Warning\b", o.text)]
  assert not warnings, f"{name} shows warnings:\n" + "\n".join(warnings)
  facts = json.loads(code[-1].outputs[-1].text)
  return code[:-1], facts


def _outputs(cells: list, mime: str) -> list[str]:
  return [o.data[mime] for c in cells for o in c.outputs if mime in o.get("data", {})]


@pytest.mark.slow
def test_notebooks_run_against_a_trained_workdir(smoke_workdir, kernel_specs):
  cells, facts = _run("explore", smoke_workdir, kernel_specs, EXPLORE_PROBE)
  # Waveforms, log-mels, reconstructions, KL bars and the PCA scatter.
  assert len(_outputs(cells, "image/png")) >= 5
  players = [h for h in _outputs(cells, "text/html") if "<audio" in h]
  # Original, vocoder only and reconstruction per utterance; original, VAE codec, Codec 2.
  assert len(players) == 3 * facts["shown"] + 3
  assert facts["coded_bytes"] > 0 and facts["decoded_error"] < 2.0  # Within a few quantisation steps.
  assert facts["points"] == facts["utterances"]
  assert facts["channels"] == facts["latent_channels"]

  cells, facts = _run("interpolation", smoke_workdir, kernel_specs, INTERPOLATION_PROBE)
  assert max(facts["end_error"].values()) < 1e-3, facts["end_error"]
  assert facts["far_end_gap"] < 1e-3
  assert facts["path_lengths"] == [facts["steps"]] * 2
  assert facts["factor_rows"] == facts["steps"] and facts["truth_finite"]
  assert facts["traversed"] >= 1
  assert len(_outputs(cells, "image/png")) >= 6
  assert any("<audio" in h for h in _outputs(cells, "text/html"))


@pytest.mark.slow
def test_generation_notebook_runs_against_a_prior_workdir(smoke_workdir, kernel_specs, tmp_path):
  # A cheap prior over the session's smoke VAE, sharing its feature cache.
  prior_workdir = tmp_path / "prior"
  config = load_config(str(NOTEBOOKS.parent / "configs" / "smoke_prior.py"), {
      "prior.vae_workdir": str(smoke_workdir), "data.cache_dir": str(smoke_workdir.parent / "cache"),
      "train.num_steps": 30, "train.eval_every": 30, "train.checkpoint_every": 30,
      "train.progress_bar": False})
  train.train_and_evaluate(config, str(prior_workdir))
  # Few classifier steps: its scores only need to be scores here, not good ones.
  cells, facts = _run("generation", prior_workdir, kernel_specs, GENERATION_PROBE,
                       {"CLASSIFIER_STEPS": 20})

  compare = facts["compare"]
  assert compare["standard"] == compare["learned"] == compare["requested"], "both priors draw the same lengths"
  grid = facts["grid"]
  # Every speaker (the smoke prior's first label) x the first GRID_COLUMNS = 4 of its 15 words.
  assert grid["rows"] == grid["row_classes"] == 3 and grid["columns"] == 4
  assert grid["cells"] == grid["distinct"] == grid["rows"] * grid["columns"] and grid["conditions"]
  sweep = facts["sweep"]
  assert sweep["guidance"] == [0.0, 1.0, 2.0, 3.0]
  assert len(sweep["accuracy"]) == len(sweep["inception_score"]) == len(sweep["guidance"])
  assert all(0.0 <= a <= 1.0 for a in sweep["accuracy"] + [sweep["real_accuracy"]]), sweep
  assert all(1.0 - 1e-6 <= s <= sweep["classes"] + 1e-6 for s in sweep["inception_score"]), sweep
  assert sweep["draws"] == 4 * sweep["classes"]  # PER_CLASS draws of every speaker.
  assert re.fullmatch(r"[0-9a-f]{12}", facts["classifier"]) and facts["classifier_steps"] == 20
  cont = facts["continuation"]
  assert 0 < cont["prompt_frames"] == cont["latent_frames"] // 2
  assert cont["prompt_error"] < 1e-6, "a continuation keeps its prompt's latents"
  assert cont["spread"] > 0, "continuations of one prompt differ after it"
  assert cont["mel_frames"] == [cont["utterance_frames"]] * len(cont["mel_frames"])
  assert cont["z_frames"] == [cont["latent_frames"]] * len(cont["z_frames"]) and all(cont["conditions"])
  # Spectrogram grids of sections 1, 2 and 4 and the guidance plot.
  assert len(_outputs(cells, "image/png")) >= 4
  # Two in section 1, one per grid row, one per guidance value, two for the continuation.
  players = [h for h in _outputs(cells, "text/html") if "<audio" in h]
  assert len(players) == 2 + grid["rows"] + len(sweep["guidance"]) + 2


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_stripped_and_parametrised(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
  assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; strip them "
                     "with `nbstripout notebooks/*.ipynb` (the pre-commit hook does it on commit)")
  assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"
  assert re.search(r"^WORKDIR = \"\"", code[0].source, flags=re.M), "WORKDIR defaults to training a smoke run"
