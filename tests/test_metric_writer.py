"""metrics.jsonl stays one JSON object per line, also after a run was killed mid-write."""

import json

from vae_jax.run_log import RunLog


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_rows_are_appended_across_runs(tmp_path):
  for step in (1, 2):
    w = RunLog(str(tmp_path))
    w.scalars(step, {"train/loss": float(step)})
    w.close()
  assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_half_written_row_does_not_swallow_the_next(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "train/lo')  # kill -9 mid-write
  w = RunLog(str(tmp_path))
  w.scalars(3, {"train/loss": 3.0, "train/nll": float("nan")})
  w.close()
  lines = path.read_text().splitlines()
  assert json.loads(lines[0])["step"] == 1
  assert lines[1] == '{"step": 2, "train/lo'
  last = json.loads(lines[2])
  assert last["step"] == 3 and last["train/loss"] == 3.0 and last["train/nll"] == "nan"
