"""eval.py as a command: one-line errors, and audio files processed whole, a bad one reported."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from vae_jax.audio import io as audio_io
from vae_jax.data.store import load_dataset
from vae_jax.inference import load_trained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval(*args, timeout=300):
  return subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_workdir_without_checkpoint_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  out = _eval(f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().startswith("error: no checkpoints in")
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_audio_files_are_reconstructed_and_a_bad_one_is_reported(smoke_workdir, tmp_path):
  trained = load_trained(str(smoke_workdir))
  test = load_dataset(trained.config, trained.normalizer).test
  sr = trained.feature_config.sample_rate
  waves = [audio_io.read_audio(p, sr) for p in test.paths[:3]]
  short = tmp_path / "short.wav"
  sf.write(short, waves[0], sr)
  # Longer than any training crop, at another rate and in another format: read whole, resampled.
  long_wave = np.concatenate(waves + waves)
  long = tmp_path / "long.flac"
  sf.write(long, long_wave, 2 * sr)  # Declared at twice the rate: half as long once resampled.
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"RIFF not really a wave file")
  out_dir = tmp_path / "out"
  out = _eval(f"--workdir={smoke_workdir}", "--audio", short, bad, long, tmp_path / "missing.wav",
              "--out", out_dir)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 2, out.stderr
  assert str(bad) in errors[0] and str(tmp_path / "missing.wav") in errors[1]
  for name in ("short", "long"):
    for suffix in (".recon.wav", ".oracle.wav", ".png"):
      assert (out_dir / f"{name}{suffix}").stat().st_size > 0, name + suffix
  with open(out_dir / "metrics.json") as f:
    m = json.load(f)
  assert set(m) == {"short", "long"}
  for key in ("logmel_mse", "mel_lsd_db", "logmel_cd_db", "stoi", "oracle_stoi", "pesq", "oracle_pesq"):
    assert key in m["long"], key
  assert m["long"]["frames"] > trained.config.data.segment_frames
  assert sf.info(out_dir / "long.recon.wav").samplerate == sr
  assert abs(sf.info(out_dir / "long.recon.wav").frames - len(long_wave) / 2) <= 2
