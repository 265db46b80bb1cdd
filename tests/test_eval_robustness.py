"""eval.py --audio and the report's audio metrics survive unusual audio and diverged models.

Native metric code is screened: PESQ's library overflows fixed 50-utterance tables on
long clips (corrupted scores, then SIGSEGV), and it or pystoi raise on NaN, silence
and clips too short. What cannot be computed is recorded as missing with its reason.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from vae_jax.eval import generate, metrics, render, report, scoring
from vae_jax.inference import Trained, load_trained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 8000


def _speech(seconds: float, sr: int = SR, seed: int = 0, pause: bool = False) -> np.ndarray:
  """A voiced tone under a 4 Hz syllable envelope; with `pause`, 0.4 s on and 0.3 s off."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  x = 0.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * np.sin(2 * np.pi * 220 * t)
  x = x + 0.02 * rng.standard_normal(t.size)
  if pause:
    x = x * (np.mod(t, 0.7) < 0.4)
  return x.astype(np.float32)


# Noise bursts at the shortest period PESQ's VAD (4 ms windows) counts as separate utterances:
# 46 windows on, 54 off. Source text, so that a subprocess can run it without importing the tests.
_BURSTS = """
def bursts(seconds, sr):
  window = sr // 250
  period = np.arange(int(seconds * sr)) % (100 * window)
  return 0.3 * np.random.default_rng(0).standard_normal(period.size) * (period < 46 * window)
"""


# Metric wrappers: screened before native code, a reason whenever there is no value.


def test_pesq_screens_what_the_library_cannot_take(monkeypatch):
  clip = _speech(2.0).astype(np.float64)
  assert metrics.pesq_scored(clip, clip, SR).value >= 4.0

  def never(*args, **kwargs):
    raise AssertionError("the PESQ library was called")

  monkeypatch.setattr(metrics.pesq_lib, "pesq", never)
  long = _speech(metrics.PESQ_MAX_SECONDS + 1, pause=True)
  nan_est, inf_est = clip.copy(), clip.copy()
  nan_est[100], inf_est[5] = np.nan, -np.inf
  cases = {
      "clip longer than 15 s": (long, long),
      "clip shorter than 0.25 s": (clip[:SR // 4 - 1], clip[:SR // 4 - 1]),
      "non-finite samples in the estimate": (clip, nan_est),
      "non-finite samples in the reference": (inf_est, clip),
      "silent estimate": (clip, np.zeros_like(clip)),
      # 1e-228 of the reference: zero once PESQ scales to the joint peak in float32 (its score was NaN).
      "silent estimate relative to the other signal": (clip, 1e-228 * clip),
  }
  for reason, (ref, est) in cases.items():
    scored = metrics.pesq_scored(ref, est, SR)
    assert scored.value is None and scored.missing.startswith(reason), (reason, scored)
    assert math.isnan(metrics.pesq(ref, est, SR))
  assert "8 or 16 kHz" in metrics.pesq_scored(clip, clip, 22050).missing
  assert metrics.pesq(clip, clip, 22050) is None


def test_a_nan_score_of_the_pesq_library_is_a_reason(monkeypatch):
  def nan_score(*args, **kwargs):
    raise ValueError("cannot convert float NaN to integer")  # What pesq 0.0.4 raises for a NaN score.

  monkeypatch.setattr(metrics.pesq_lib, "pesq", nan_score)
  clip = _speech(1.0)
  assert "returned NaN" in metrics.pesq_scored(clip, clip, SR).missing


def test_the_pesq_length_cap_is_safe_for_the_densest_utterances():
  """At PESQ_MAX_SECONDS the worst case stays inside the library's tables (run apart: it would crash)."""
  code = ("import numpy as np, pesq\n" + _BURSTS +
          "for sr, mode in ((8000, 'nb'), (16000, 'wb')):\n"
          f"  x = bursts({metrics.PESQ_MAX_SECONDS}, sr)\n"
          "  y = x + 0.01 * np.random.default_rng(1).standard_normal(x.size)\n"
          "  print(pesq.pesq(sr, x, y, mode))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  scores = [float(v) for v in out.stdout.split()]
  assert len(scores) == 2 and all(1.0 <= s <= 4.7 for s in scores), scores


def test_stoi_screens_and_ignores_a_common_gain(monkeypatch):
  ref = _speech(1.5).astype(np.float64)
  est = ref + 0.05 * np.random.default_rng(1).standard_normal(ref.size)
  score = metrics.stoi_scored(ref, est, SR).value
  assert 0 < score < 1
  # pystoi alone scores this pair about 1e-39: its epsilons are absolute.
  assert metrics.stoi_scored(1e-30 * ref, 1e-30 * est, SR).value == pytest.approx(score, abs=1e-6)
  assert metrics.stoi_scored(ref[:3000], est[:3000], SR).missing == "clip shorter than 0.4 s"
  # Below 25.6 ms pystoi raises (an AxisError); such clips never reach it.
  assert metrics.stoi_scored(ref[:200], est[:200], 16000).missing == "clip shorter than 0.4 s"
  nan_est = est.copy()
  nan_est[7] = np.nan
  assert metrics.stoi_scored(ref, nan_est, SR).missing == "non-finite samples in the estimate"
  assert metrics.stoi_scored(np.zeros_like(ref), est, SR).missing == "silent reference"

  def fails(*args, **kwargs):
    raise IndexError("index 0 is out of bounds")

  monkeypatch.setattr(metrics.pystoi, "stoi", fails)
  assert metrics.stoi_scored(ref, est, SR).missing == "pystoi failed (IndexError: index 0 is out of bounds)"


def test_score_audio_counts_nan_reconstructions_instead_of_raising(caplog):
  refs = [_speech(1.5, seed=i).astype(np.float64) for i in range(3)]
  rng = np.random.default_rng(2)
  ests = [r + 0.05 * rng.standard_normal(r.size) for r in refs]
  ests[1] = np.full_like(refs[1], np.nan)
  ests[2][100:] = np.inf
  scores = scoring.score_audio(refs, ests, SR, groups=["a", "a", "b"])
  assert np.isfinite(scores.stoi_N[0]) and np.isnan(scores.stoi_N[1:]).all()
  assert np.isfinite(scores.pesq_N[0]) and np.isnan(scores.pesq_N[1:]).all()
  assert scores.stoi_missing == [None] + ["non-finite samples in the estimate"] * 2
  assert scores.pesq_missing == scores.stoi_missing
  assert scores.nonfinite_N.tolist() == [False, True, True]
  # The concatenations leave the non-finite clips out.
  assert scores.stoi_concat == pytest.approx(scoring.score_audio(refs[:1], ests[:1], SR).stoi_concat)
  assert math.isnan(scores.stoi_per_group["b"])
  m = scoring.audio_metrics(scores, "eval/vae")
  assert m["eval/vae/nonfinite_clips"] == 2 and m["eval/vae/clips"] == 3
  assert m["eval/vae/stoi_clips_scored"] == 1 and m["eval/vae/pesq_clips_scored"] == 1
  assert math.isfinite(m["eval/vae/stoi_concat"]) and math.isfinite(m["eval/vae/pesq_clip_mean"])
  assert any("2 of 3 clips have non-finite samples" in r.getMessage() for r in caplog.records)
  every = scoring.audio_metrics(scoring.score_audio(refs, [np.full_like(r, np.nan) for r in refs], SR),
                                 "eval/x")
  assert every["eval/x/nonfinite_clips"] == 3 and math.isnan(every["eval/x/stoi_concat"])


# Whole files through a trained smoke model.


@pytest.fixture(scope="module")
def trained(smoke_workdir) -> Trained:
  return load_trained(str(smoke_workdir))


def _diverged(trained: Trained, how: str) -> Trained:
  """The smoke model with finite parameters that decode to inf (bias) or NaN and inf (kernel)."""
  params = jax.tree_util.tree_map(np.array, trained.params)
  last = params["decoder"]["Conv1D_1"]  # The decoder's output convolution.
  if how == "bias":
    last["bias"] = np.full_like(last["bias"], 1e38)
  else:
    last["kernel"] = last["kernel"] * np.float32(1e38)
  return dataclasses.replace(trained, params=params)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["bias", "kernel"])
def test_a_diverged_model_is_reported_per_file(trained, tmp_path, how):
  sf.write(tmp_path / "good.wav", _speech(1.0), SR)
  results, errors = generate.reconstruct_files(_diverged(trained, how), [str(tmp_path / "good.wav")],
                                               str(tmp_path / "out"))
  assert errors == []
  with open(tmp_path / "out" / "metrics.json") as f:
    r = json.load(f)["good"]
  assert r == json.loads(json.dumps(results["good"]))
  assert r["nonfinite_output"] is True
  for key in ("logmel_mse", "logmel_l1", "mel_lsd_db", "logmel_cd_db", "stoi", "pesq"):
    assert r[key] is None and r[f"{key}_missing"] == "non-finite model output", key
  assert 0 < r["oracle_stoi"] <= 1 and r["oracle_pesq"] > 1  # Griffin-Lim from the input is unaffected.
  assert "holds zeros there" in r["note"]
  recon, _ = sf.read(tmp_path / "out" / "good.recon.wav")
  assert recon.size == SR and np.all(recon == 0)
  assert (tmp_path / "out" / "good.png").stat().st_size > 0


@pytest.mark.slow
def test_metrics_json_is_rewritten_after_each_file(trained, tmp_path, monkeypatch):
  paths = []
  for i in range(4):
    paths.append(str(tmp_path / f"f{i}.wav"))
    sf.write(paths[-1], _speech(0.5 + 0.1 * i, seed=i), SR)
  out = tmp_path / "out"
  out.mkdir()
  (out / "metrics.json").write_text('{"stale": {}}')
  seen = []

  def on_result(name, r):
    with open(out / "metrics.json") as f:
      seen.append(sorted(json.load(f)))

  real = generate.reconstruct_file

  def flaky(trained, path, name, out_dir, seed=0):
    if name == "f1":
      raise RuntimeError("boom\nsecond line")
    if name == "f3":
      raise KeyboardInterrupt  # Stands in for the process dying: nothing catches it.
    return real(trained, path, name, out_dir, seed)

  monkeypatch.setattr(generate, "reconstruct_file", flaky)
  errors = []
  with pytest.raises(KeyboardInterrupt):
    generate.reconstruct_files(trained, paths, str(out), on_error=errors.append, on_result=on_result)
  assert seen == [["f0"], ["f0", "f2"]]
  assert errors == [f"{paths[1]}: failed (RuntimeError: boom)"]
  with open(out / "metrics.json") as f:
    assert sorted(json.load(f)) == ["f0", "f2"]  # All but the file in hand; the stale entry is gone.
  assert sorted(os.listdir(out)) == sorted(f"f{i}{s}" for i in (0, 2) for s in (".recon.wav", ".oracle.wav",
                                                                               ".png")) + ["metrics.json"]


@pytest.mark.slow
def test_eval_audio_with_bad_unusual_and_good_files(smoke_workdir, tmp_path):
  files = {"good.wav": (_speech(1.0), SR, "PCM_16"),
           # A minute of speech with pauses: ~85 utterances crashed PESQ (SIGSEGV) before the cap.
           "long.flac": (_speech(60.0, pause=True), SR, "PCM_24"),
           "multi96k.wav": (np.stack([_speech(1.0, 96000, seed=c) for c in range(6)], 1), 96000, "PCM_32"),
           "short.wav": (_speech(0.3), SR, "FLOAT")}
  for name, (x, sr, subtype) in files.items():
    sf.write(tmp_path / name, x, sr, subtype=subtype)
  (tmp_path / "bad.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
  args = [str(tmp_path / n) for n in ("good.wav", "bad.wav", "long.flac", "multi96k.wav", "short.wav")]
  out = subprocess.run([sys.executable, "eval.py", f"--workdir={smoke_workdir}", "--audio", *args,
                        f"--out={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and str(tmp_path / "bad.wav") in errors[0], out.stderr
  assert "4 of 5 files in" in out.stdout
  with open(tmp_path / "out" / "metrics.json") as f:
    m = json.load(f)
  assert set(m) == {"good", "long", "multi96k", "short"}
  for r in (m["good"], m["multi96k"]):
    assert not any(k.endswith("_missing") for k in r) and "nonfinite_output" not in r
    assert all(isinstance(r[k], float) for k in ("logmel_mse", "stoi", "oracle_stoi", "pesq", "oracle_pesq"))
  assert m["long"]["seconds"] == pytest.approx(60.0)
  assert m["long"]["pesq"] is None and m["long"]["pesq_missing"].startswith("clip longer than 15 s")
  assert isinstance(m["long"]["stoi"], float)
  assert m["short"]["stoi"] is None and m["short"]["stoi_missing"] == "clip shorter than 0.4 s"
  assert isinstance(m["short"]["pesq"], float)
  line = next(l for l in out.stdout.splitlines() if l.startswith("long:"))
  assert "PESQ n/a (oracle n/a); missing: pesq, oracle_pesq (clip longer than 15 s" in line


@pytest.mark.slow
def test_the_test_split_report_of_a_diverged_model_finishes(trained, tmp_path):
  diverged = _diverged(trained, "kernel")
  r = report.evaluate_workdir(diverged.workdir, trained=diverged, num_samples=4, max_utterances=6)
  paths = render.write_report(r, str(tmp_path / "eval"))
  m = r.metrics
  assert m["eval/vae/nonfinite_utterances"] == 6 and m["eval/vae/nonfinite_clips"] == 6
  assert m["eval/pca/nonfinite_utterances"] == 0 and np.isfinite(m["eval/pca/logmel_mse"])
  with open(paths["report"]) as f:
    assert "non-finite reconstructions" in f.read().lower()
  with open(paths["metrics"]) as f:
    assert json.load(f)["eval/vae/logmel_mse"] is None  # Missing, not a number.
