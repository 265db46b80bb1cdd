"""Corrupt and partial checkpoints, and non-finite updates in a real training run."""

import json
import logging
import os
import pathlib

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from vae_jax import checkpoints, train
from vae_jax.checkpoints import INTEGRITY_FILE, Checkpointer
from vae_jax.data.loader import LoaderState, TrainLoader
from vae_jax.errors import CheckpointError, UserError
from vae_jax.eval import render
from vae_jax.models import build_model


def _state(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(64, 32)).astype(np.float32), "b": rng.normal(size=(32,)).astype(np.float32)}


def _saved(directory: pathlib.Path, steps=(1, 2, 3), keep: int = 3) -> Checkpointer:
  ckpt = Checkpointer(str(directory), keep=keep)
  for s in steps:
    ckpt.save(s, _state(s), {"step": s})
  ckpt.wait()
  return ckpt


def _largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.name not in checkpoints.UNHASHED_FILES]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir: pathlib.Path) -> str:
  path = _largest_file(step_dir)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path.relative_to(step_dir).as_posix()


def _flip_byte(step_dir: pathlib.Path) -> str:
  path = _largest_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  return path.relative_to(step_dir).as_posix()


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.name == "vae_jax" and r.levelno == logging.WARNING]


def _assert_one_line(e: pytest.ExceptionInfo, *fragments: str) -> None:
  assert isinstance(e.value, UserError)
  message = str(e.value)
  assert "\n" not in message, message
  for f in fragments:
    assert f in message, message


# Integrity records.


def test_every_saved_step_has_a_matching_integrity_record(tmp_path):
  ckpt = _saved(tmp_path / "ck")
  for s in ckpt.all_steps():
    record = json.loads((tmp_path / "ck" / str(s) / INTEGRITY_FILE).read_text())
    assert any(rel.startswith("state/") for rel in record["files"]), record
    assert checkpoints.integrity_problem(ckpt.step_dir(s)) is None
    assert ckpt.verify(s) is True
  state, meta = ckpt.restore(_state(0))
  assert meta == {"step": 3}
  np.testing.assert_array_equal(state["w"], _state(3)["w"])
  ckpt.close()


@pytest.mark.parametrize("damage,reason", [(_truncate, "truncated"), (_flip_byte, "altered")])
def test_corrupt_latest_checkpoint_is_refused_in_one_line(tmp_path, damage, reason):
  _saved(tmp_path / "ck").close()
  rel = damage(tmp_path / "ck" / "3")
  ckpt = Checkpointer(str(tmp_path / "ck"))
  with pytest.raises(CheckpointError) as e:
    ckpt.restore(_state(0))
  _assert_one_line(e, str(tmp_path / "ck" / "3"), "corrupt", rel, reason)
  with pytest.raises(CheckpointError) as e:
    ckpt.restore_meta()
  _assert_one_line(e, "corrupt")
  with pytest.raises(CheckpointError):
    ckpt.restore(_state(0), 3)
  # An explicit older step is fine.
  state, meta = ckpt.restore(_state(0), 2)
  assert meta == {"step": 2}
  ckpt.close()


def test_fallback_restores_the_previous_good_step_with_one_warning(tmp_path, caplog):
  _saved(tmp_path / "ck").close()
  _truncate(tmp_path / "ck" / "3")
  ckpt = Checkpointer(str(tmp_path / "ck"))
  caplog.set_level(logging.WARNING, logger="vae_jax")
  state, meta = ckpt.restore(_state(0), fallback=True)
  assert meta == {"step": 2}
  np.testing.assert_array_equal(state["w"], _state(2)["w"])
  said = _warnings(caplog)
  assert len(said) == 1, said
  assert str(tmp_path / "ck" / "3") in said[0] and str(tmp_path / "ck" / "2") in said[0], said
  assert ckpt.all_steps() == [1, 2, 3]  # Without set_aside nothing moves.
  ckpt.close()


def test_set_aside_moves_corrupt_steps_so_they_can_be_saved_again(tmp_path, caplog):
  _saved(tmp_path / "ck").close()
  _flip_byte(tmp_path / "ck" / "3")
  _truncate(tmp_path / "ck" / "2")
  ckpt = Checkpointer(str(tmp_path / "ck"))
  caplog.set_level(logging.WARNING, logger="vae_jax")
  assert ckpt.latest_good_step(set_aside=True) == 1
  said = _warnings(caplog)
  assert len(said) == 1 and all(f"ck/{s}" in said[0] for s in (3, 2, 1)), said
  assert ckpt.all_steps() == [1]
  assert sorted(os.listdir(tmp_path / "ck-corrupt")) == ["2", "3"]
  ckpt.save(2, _state(20), {"step": 2})
  ckpt.wait()
  assert ckpt.verify(2)
  ckpt.close()


def test_corrupt_metrics_do_not_make_the_whole_directory_unreadable(tmp_path, caplog):
  ckpt = Checkpointer(str(tmp_path / "ck"), keep=3)
  for s in (1, 2):
    ckpt.save(s, _state(s), {"step": s}, {"eval/loss": 1.0 / s})
  ckpt.close()
  metrics = tmp_path / "ck" / "2" / checkpoints.METRICS_FILE
  metrics.write_text(metrics.read_text()[:5])
  with pytest.raises(CheckpointError) as e:  # Evaluation: refuse, say which.
    Checkpointer(str(tmp_path / "ck"), read_only=True)
  _assert_one_line(e, "ck/2", "corrupt", checkpoints.METRICS_FILE)
  caplog.set_level(logging.WARNING, logger="vae_jax")
  ckpt = Checkpointer(str(tmp_path / "ck"))  # Training: set it aside and go on.
  said = _warnings(caplog)
  assert len(said) == 1 and "ck/2" in said[0] and "ck-corrupt" in said[0], said
  assert ckpt.latest_good_step() == 1
  ckpt.close()


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  _saved(tmp_path / "ck", steps=(1, 2)).close()
  for s in (1, 2):
    _truncate(tmp_path / "ck" / str(s))
  ckpt = Checkpointer(str(tmp_path / "ck"))
  with pytest.raises(CheckpointError) as e:
    ckpt.latest_good_step(set_aside=True)
  _assert_one_line(e, "no intact checkpoint", "ck/2")
  assert ckpt.all_steps() == [1, 2]  # Nothing moved: the user decides.
  ckpt.close()


def test_missing_record_next_to_recorded_steps_is_corrupt(tmp_path):
  _saved(tmp_path / "ck").close()
  (tmp_path / "ck" / "3" / INTEGRITY_FILE).unlink()
  ckpt = Checkpointer(str(tmp_path / "ck"))
  with pytest.raises(CheckpointError) as e:
    ckpt.verify(3)
  _assert_one_line(e, "ck/3", INTEGRITY_FILE)
  assert ckpt.latest_good_step() == 2
  ckpt.close()


def test_checkpoints_from_before_integrity_records_restore_with_a_warning(tmp_path, caplog):
  _saved(tmp_path / "ck", steps=(1, 2)).close()
  for s in (1, 2):
    (tmp_path / "ck" / str(s) / INTEGRITY_FILE).unlink()
  ckpt = Checkpointer(str(tmp_path / "ck"))
  caplog.set_level(logging.WARNING, logger="vae_jax")
  state, meta = ckpt.restore(_state(0))
  assert meta == {"step": 2}
  said = _warnings(caplog)
  assert len(said) == 1 and "unverified" in said[0], said
  ckpt.close()


def test_unverified_checkpoint_that_orbax_cannot_read_is_a_one_line_error(tmp_path):
  _saved(tmp_path / "ck", steps=(1,)).close()
  (tmp_path / "ck" / "1" / INTEGRITY_FILE).unlink()
  for p in (tmp_path / "ck" / "1" / "state").rglob("*"):
    if p.is_file():
      p.write_bytes(b"")
  ckpt = Checkpointer(str(tmp_path / "ck"))
  with pytest.raises(CheckpointError) as e:
    ckpt.restore(_state(0))
  _assert_one_line(e, "ck/1", "cannot be restored")
  ckpt.close()


def test_a_save_that_dies_before_its_record_leaves_no_step(tmp_path, monkeypatch):
  """The record is written before Orbax renames the step into place: no step exists without one."""
  ckpt = _saved(tmp_path / "ck", steps=(1,))

  def crash(path):
    assert ".orbax-checkpoint-tmp" in path, path  # Still the temporary directory.
    raise OSError("killed")

  monkeypatch.setattr(checkpoints, "write_integrity_record", crash)
  ckpt.save(2, _state(2), {"step": 2})
  with pytest.raises(OSError, match="killed"):
    ckpt.wait()
  assert not (tmp_path / "ck" / "2").exists()
  monkeypatch.undo()
  reopened = Checkpointer(str(tmp_path / "ck"))
  assert reopened.all_steps() == [1]
  assert not list((tmp_path / "ck").glob("*.orbax-checkpoint-tmp*")), "partial save not removed"
  reopened.close()


def test_partial_save_directories_are_removed_on_open(tmp_path):
  _saved(tmp_path / "ck", steps=(1, 2)).close()
  # What a kill during an asynchronous write leaves: a temporary directory with part of a step.
  partial = tmp_path / "ck" / "3.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_bytes(b"{")
  ckpt = Checkpointer(str(tmp_path / "ck"))
  assert not partial.exists()
  assert ckpt.latest_step() == 2 and ckpt.latest_good_step() == 2
  ckpt.close()


def test_read_only_checkpointer_leaves_partial_saves_alone(tmp_path):
  _saved(tmp_path / "ck", steps=(1,)).close()
  partial = tmp_path / "ck" / "2.orbax-checkpoint-tmp"
  partial.mkdir()
  ckpt = Checkpointer(str(tmp_path / "ck"), read_only=True)
  assert partial.exists() and ckpt.all_steps() == [1]
  ckpt.close()


def test_best_checkpoint_is_kept_and_reported(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ck"), keep=1)
  for s, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None)]:
    ckpt.save(s, _state(s), {"step": s}, {"eval/loss": loss} if loss is not None else None)
  ckpt.wait()
  assert ckpt.best_step() == 2
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()


# Training runs.


def _config(tmp_path, **train_fields):
  # A slimmer model (no residual blocks): these runs are about the loop, not the model.
  return smoke_config(tmp_path / "cache", {
      "model.blocks_per_stage": 0, "train.num_steps": 8, "train.checkpoint_every": 2,
      "train.log_every": 1, "train.eval_every": 1000, "eval.num_audio_examples": 0,
      "eval.max_utterances": 8, **{f"train.{k}": v for k, v in train_fields.items()}})


def _poison(monkeypatch, steps: set[int]) -> None:
  """Puts a NaN into the batches of the given (1-based) training steps."""
  real = TrainLoader.batch_at

  def batch_at(self, state):
    batch = real(self, state)
    position = LoaderState()
    for step in range(1, max(steps) + 1):
      if state == position and step in steps:
        batch["mel"][0, 3, 5] = np.nan
      position = self.advance(position)
    return batch

  monkeypatch.setattr(TrainLoader, "batch_at", batch_at)


def _restore(c, workdir, step=None):
  template = train.create_train_state(c, build_model(c), jax.random.key(0))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  state, meta = ckpt.restore(template, step)
  ckpt.close()
  return state, meta


def _assert_finite(state) -> None:
  for leaf in jax.tree.leaves(state.params):
    assert np.all(np.isfinite(leaf))


def _rows(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(l) for l in lines]


@pytest.mark.slow
def test_nonfinite_update_stops_with_the_step_and_last_good_checkpoint(tmp_path, monkeypatch):
  c = _config(tmp_path)
  _poison(monkeypatch, {5})
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(c, workdir)
  good = os.path.join(os.path.abspath(workdir), "checkpoints", "4")
  _assert_one_line(e, "at step 5;", f"last good checkpoint: {good} ", "train.on_nonfinite=skip")
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  assert ckpt.latest_step() == 4
  ckpt.close()
  state, _ = _restore(c, workdir)
  assert int(state.step) == 4
  _assert_finite(state)


@pytest.mark.slow
def test_nonfinite_updates_are_skipped_counted_and_carried_over_a_resume(tmp_path, monkeypatch, caplog,
                                                                          capsys):
  c = _config(tmp_path, on_nonfinite="skip", max_steps_per_run=5, checkpoint_every=1, keep_checkpoints=8)
  _poison(monkeypatch, {3, 7})
  workdir = str(tmp_path / "run")
  caplog.set_level(logging.WARNING, logger="vae_jax")
  first = train.train_and_evaluate(c, workdir)
  assert first["step"] == 5 and first["skipped_updates"] == 1
  second = train.train_and_evaluate(c, workdir)
  assert second["step"] == 8 and second["skipped_updates"] == 2
  said = _warnings(caplog)
  assert any("step 3: non-finite" in w and "skipped" in w for w in said), said
  assert any("step 7: non-finite" in w for w in said), said
  assert any("skipped 2 non-finite updates in total" in w for w in said), said
  train_rows = [r for r in _rows(workdir) if "train/skipped_updates" in r]
  by_step = {r["step"]: r for r in train_rows}
  assert by_step[2]["train/skipped_updates"] == 0 and by_step[3]["train/skipped_updates"] == 1
  assert by_step[6]["train/skipped_updates"] == 1 and by_step[8]["train/skipped_updates"] == 2
  assert all(isinstance(r["train/loss"], float) for r in train_rows if r["step"] not in (3, 7))
  state, meta = _restore(c, workdir)
  assert int(state.step) == 8 and meta["skipped_updates"] == 2
  _assert_finite(state)
  # A skipped update leaves the parameters as they were; the others change them.
  params = {s: _restore(c, workdir, s)[0].params for s in (2, 3, 4)}
  for x, y, z in zip(*(jax.tree.leaves(params[s]) for s in (2, 3, 4))):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(y, z) for y, z in zip(jax.tree.leaves(params[3]), jax.tree.leaves(params[4])))
  capsys.readouterr()
  render.print_training_summary(workdir, first)
  partial = (pathlib.Path(workdir) / "report.md").read_text()
  assert "Steps: 5 of 8: this part stopped at train.max_steps_per_run" in partial, partial
  render.print_training_summary(workdir, second)
  assert "skipped:    2 updates" in capsys.readouterr().out
  report = (pathlib.Path(workdir) / "report.md").read_text()
  assert "Skipped updates (non-finite loss or gradient): 2" in report
  assert "Steps: 8\n" in report and "Last evaluation, at step 8:" in report, report


@pytest.mark.slow
def test_training_falls_back_from_a_corrupt_latest_checkpoint(tmp_path, caplog):
  c = _config(tmp_path, num_steps=6, checkpoint_every=3)
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, str(workdir))
  expected, _ = _restore(c, str(workdir))
  _truncate(workdir / "checkpoints" / "6")
  caplog.set_level(logging.INFO, logger="vae_jax")
  result = train.train_and_evaluate(c, str(workdir))
  assert result["step"] == 6
  said = _warnings(caplog)
  assert len(said) == 1, said
  assert str(workdir / "checkpoints" / "6") in said[0] and str(workdir / "checkpoints" / "3") in said[0]
  assert any(f"resumed from {workdir / 'checkpoints' / '3'}" in r.getMessage() for r in caplog.records)
  assert (workdir / "checkpoints-corrupt" / "6").is_dir()
  again, _ = _restore(c, str(workdir))
  for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(again)):
    np.testing.assert_array_equal(x, y)
