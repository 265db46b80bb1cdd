"""Reading, validating, downmixing and resampling audio files."""

import pathlib

import numpy as np
import pytest
import soundfile as sf

from vae_jax.audio import io as audio_io

SR = 8000


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def write_bytes(path: pathlib.Path, data: bytes) -> pathlib.Path:
  with open(path, "wb") as f:
    f.write(data)
  return path


def test_reads_pcm16_wav_exactly(tmp_path):
  wave = tone(440, 0.25, SR)
  sf.write(tmp_path / "a.wav", wave, SR, subtype="PCM_16")
  expected, _ = sf.read(tmp_path / "a.wav", dtype="float32")
  got = audio_io.read_audio(str(tmp_path / "a.wav"), SR)
  assert got.dtype == np.float32 and got.ndim == 1
  np.testing.assert_array_equal(got, expected)


def test_stereo_flac_is_downmixed_and_resampled(tmp_path):
  rate, n = 44100, 44100 // 2
  left, right = tone(440, 0.5, rate, 0.6), tone(440, 0.5, rate, 0.2)
  sf.write(tmp_path / "s.flac", np.stack([left, right], axis=1), rate)
  got = audio_io.read_audio(str(tmp_path / "s.flac"), SR)
  assert got.dtype == np.float32 and got.ndim == 1
  assert abs(len(got) - n * SR / rate) <= 1
  assert peak_hz(got, SR) == pytest.approx(440, abs=4)
  # The mean of the channels, not the first channel (0.6) or their sum (0.8).
  middle = got[len(got) // 4:3 * len(got) // 4]
  assert np.max(np.abs(middle)) == pytest.approx(0.4, abs=0.01)


def test_ogg_at_another_rate_is_resampled(tmp_path):
  rate = 22050
  sf.write(tmp_path / "v.ogg", tone(1000, 0.5, rate), rate)
  got = audio_io.read_audio(str(tmp_path / "v.ogg"), SR)
  assert abs(len(got) - 0.5 * SR) <= 1
  assert peak_hz(got, SR) == pytest.approx(1000, abs=8)


def _bad_files(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
  """Bad files, each with a fragment of the reason it must be refused with."""
  good = tmp_path / "good.wav"
  sf.write(good, tone(300, 0.2, SR), SR)
  header = good.read_bytes()
  nan, inf = tone(300, 0.2, SR), tone(300, 0.2, SR).astype(np.float64)
  nan[100] = np.nan
  inf[7] = -np.inf
  sf.write(tmp_path / "nan.wav", nan, SR, subtype="FLOAT")
  sf.write(tmp_path / "inf.wav", inf, SR, subtype="DOUBLE")
  sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
  sf.write(tmp_path / "short.wav", tone(300, 0.01, SR), SR)  # 80 samples < 256.
  sf.write(tmp_path / "huge.wav", tone(300, 0.1, SR, amp=5e3), SR, subtype="FLOAT")
  rng = np.random.default_rng(0)
  return {
      "random bytes": (write_bytes(tmp_path / "random.wav", rng.bytes(3000)), "unreadable audio"),
      "truncated header": (write_bytes(tmp_path / "trunc.wav", header[:20]), "unreadable audio"),
      "header only": (write_bytes(tmp_path / "nodata.wav", header[:44]), "no samples"),
      "zero length": (write_bytes(tmp_path / "empty.wav", b""), "empty file"),
      "missing": (tmp_path / "missing.wav", "file not found"),
      "nan": (tmp_path / "nan.wav", "NaN or infinite"),
      "inf": (tmp_path / "inf.wav", "NaN or infinite"),
      "silent": (tmp_path / "silent.wav", "all silent"),
      "short": (tmp_path / "short.wav", "too short"),
      "huge": (tmp_path / "huge.wav", "expected audio in [-1, 1]"),
  }


def test_bad_files_raise_bad_audio_with_reason(tmp_path):
  for case, (path, reason) in _bad_files(tmp_path).items():
    with pytest.raises(audio_io.BadAudio) as e:
      audio_io.read_audio(str(path), SR, min_samples=256)
    assert reason in str(e.value), case
    assert "\n" not in str(e.value), case
    # The path is already in the warning that quotes the reason.
    assert str(path) not in str(e.value), case


def test_short_clip_is_judged_after_resampling(tmp_path):
  # 300 samples at 16 kHz are 150 at 8 kHz: fewer than one 256-sample window.
  sf.write(tmp_path / "a.wav", tone(300, 300 / 16000, 16000), 16000)
  with pytest.raises(audio_io.BadAudio, match="too short"):
    audio_io.read_audio(str(tmp_path / "a.wav"), SR, min_samples=256)
  assert len(audio_io.read_audio(str(tmp_path / "a.wav"), SR, min_samples=100)) == 150


def test_check_and_resample_refuses_multichannel_arrays():
  with pytest.raises(audio_io.BadAudio, match="mono"):
    audio_io.check_and_resample(np.ones((10, 2), np.float32), SR, SR)


def test_write_audio_clips_and_round_trips(tmp_path):
  wave = np.array([0.0, 0.5, -0.25, 3.0, -3.0], np.float32)
  path = tmp_path / "sub" / "w.wav"
  audio_io.write_audio(str(path), wave, SR)
  back, rate = sf.read(path, dtype="float32")
  assert rate == SR and sf.info(path).subtype == "PCM_16"
  np.testing.assert_allclose(back, [0.0, 0.5, -0.25, 1.0, -1.0], atol=1 / 32768)


def test_is_audio_path():
  assert all(audio_io.is_audio_path(p) for p in ("a/B.WAV", "x.flac", "y.ogg"))
  assert not audio_io.is_audio_path("notes.txt") and not audio_io.is_audio_path("wav")
