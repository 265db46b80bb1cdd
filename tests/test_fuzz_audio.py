"""Hostile and unusual audio: `load_dataset` never crashes, names every bad file once, keeps the good;
the waveform metrics take any valid clip, scoring it or saying why not."""

import functools
import io
import logging
import os
import pathlib
import struct
import tempfile

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vae_jax.audio import io as audio_io
from vae_jax.config import load_config
from vae_jax.data.corpora import hash_split
from vae_jax.data.store import load_dataset
from vae_jax.eval import metrics

SMOKE = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "smoke.py")
SR = 8000
GOOD, BAD, EITHER = "good", "bad", "either"


def _tone(rng: np.random.Generator, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  x = np.stack([np.sin(2 * np.pi * rng.uniform(150, 1500) * t) + 0.1 * rng.standard_normal(len(t))
                for _ in range(channels)], axis=1)
  return (rng.uniform(0.05, 0.9) * x / np.max(np.abs(x))).astype(np.float32)


def _encode(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
  buf = io.BytesIO()
  sf.write(buf, wave, rate, format=fmt, subtype=subtype)
  return buf.getvalue()


def _wav_header(rate: int, channels: int, bits: int, data_bytes: int, fmt: int = 1) -> bytes:
  """A canonical 44-byte WAV header; fields are masked so that absurd values still pack."""
  block = channels * bits // 8
  u32 = lambda x: struct.pack("<I", x & 0xFFFFFFFF)
  return (b"RIFF" + u32(36 + data_bytes) + b"WAVE" + b"fmt " + u32(16)
          + struct.pack("<HH", fmt, channels & 0xFFFF) + u32(rate) + u32(rate * block)
          + struct.pack("<HH", block & 0xFFFF, bits) + b"data" + u32(data_bytes))


def _pcm16(rng: np.random.Generator) -> bytes:
  return (_tone(rng, rng.uniform(0.1, 0.3), SR)[:, 0] * 32767).astype("<i2").tobytes()


@functools.lru_cache(maxsize=None)
def _long_silence() -> bytes:
  return _encode(np.zeros(SR * 600, np.float32), SR, "FLAC")  # Ten minutes, a few kB.


def _huge_frame_claim(rng: np.random.Generator) -> bytes:
  """A FLAC file whose STREAMINFO claims 2^36 - 1 samples (soundfile would allocate them all)."""
  data = bytearray(_encode(_tone(rng, 0.2, SR), SR, "FLAC"))
  # fLaC, a 4-byte block header, then STREAMINFO: the sample count is the low 36 bits of bytes 18..25.
  field = int.from_bytes(data[18:26], "big") | ((1 << 36) - 1)
  data[18:26] = field.to_bytes(8, "big")
  return bytes(data)


@functools.lru_cache(maxsize=None)
def _long_speech() -> bytes:
  """Two minutes of tone bursts with pauses (~170 utterances: more than PESQ's tables hold)."""
  t = np.arange(SR * 120) / SR
  wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.mod(t, 0.7) < 0.4)
  return _encode(wave.astype(np.float32), SR, "FLAC", "PCM_24")


def _extreme(rng: np.random.Generator) -> np.ndarray:
  """Valid but odd: DC, a full-scale (clipped) square wave, or exactly one analysis window."""
  choice = int(rng.integers(3))
  if choice == 0:
    return np.full((SR // 4, 1), rng.uniform(-1.0, 1.0), np.float32)
  if choice == 1:
    return np.sign(np.sin(2 * np.pi * 200 * np.arange(SR // 4) / SR + 0.1))[:, None].astype(np.float32)
  return _tone(rng, 256 / SR, SR)  # configs/smoke.py's win_length.


def make_file(kind: str, seed: int) -> tuple[str, bytes, str]:
  """(extension, contents, expectation) of one file of the given kind."""
  rng = np.random.default_rng(seed)
  if kind == "valid":
    return ".wav", _encode(_tone(rng, rng.uniform(0.15, 0.5), SR), SR, "WAV", "PCM_16"), GOOD
  if kind == "valid_stereo_flac":
    rate = int(rng.choice([16000, 44100]))
    return ".flac", _encode(_tone(rng, 0.3, rate, channels=2), rate, "FLAC"), GOOD
  if kind == "valid_ogg":
    return ".ogg", _encode(_tone(rng, 0.4, 22050), 22050, "OGG"), GOOD
  if kind == "valid_wide_samples":  # 24/32-bit integer and 64-bit float WAV, 24-bit FLAC
    fmt, subtype = [("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "DOUBLE"), ("FLAC", "PCM_24")][int(rng.integers(4))]
    return ".flac" if fmt == "FLAC" else ".wav", _encode(_tone(rng, 0.3, SR), SR, fmt, subtype), GOOD
  if kind == "valid_high_rate":
    rate = int(rng.choice([96000, 192000]))
    return ".wav", _encode(_tone(rng, 0.25, rate), rate, "WAV", "PCM_24"), GOOD
  if kind == "valid_many_channels":
    return ".wav", _encode(_tone(rng, 0.2, SR, channels=int(rng.integers(3, 65))), SR, "WAV", "FLOAT"), GOOD
  if kind == "valid_extreme":
    return ".wav", _encode(_extreme(rng), SR, "WAV", "PCM_16"), GOOD
  if kind == "valid_long":
    return ".flac", _long_speech(), GOOD
  if kind == "too_few_samples":  # Fewer than one analysis window.
    return ".wav", _encode(_tone(rng, int(rng.integers(1, 256)) / SR, SR), SR, "WAV", "PCM_16"), BAD
  if kind == "random_bytes":
    ext = str(rng.choice([".wav", ".flac", ".ogg"]))
    return ext, rng.bytes(int(rng.integers(1, 4096))), BAD
  if kind == "truncated_header":
    ext, fmt = [(".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG")][int(rng.integers(3))]
    whole = _encode(_tone(rng, 0.3, SR), SR, fmt)
    return ext, whole[:int(rng.integers(1, 42))], BAD
  if kind == "absurd_rate":
    rate = int(rng.choice([0, 1, 999, 384_001, 2**31 - 1, 2**32 - 1]))
    pcm = _pcm16(rng)
    return ".wav", _wav_header(rate, 1, 16, len(pcm)) + pcm, BAD
  if kind == "absurd_channels":
    channels = int(rng.choice([0, 65, 1024, 65535]))
    pcm = _pcm16(rng)
    return ".wav", _wav_header(SR, channels, 16, len(pcm)) + pcm, BAD
  if kind in ("nan", "inf"):
    wave = _tone(rng, 0.3, SR)
    wave[rng.integers(len(wave), size=int(rng.integers(1, 5))), 0] = np.nan if kind == "nan" else -np.inf
    return ".wav", _encode(wave, SR, "WAV", "FLOAT"), BAD
  if kind == "huge_amplitude":
    # Up to near float32's maximum, in several channels: the downmix must not overflow.
    wave = _tone(rng, 0.3, SR, channels=int(rng.integers(1, 5))) * np.float32(10.0 ** rng.uniform(4, 38.5))
    return ".wav", _encode(wave, SR, "WAV", "FLOAT"), BAD
  if kind == "long_silence":
    return ".flac", _long_silence(), BAD
  if kind == "huge_frame_claim":
    return ".flac", _huge_frame_claim(rng), BAD
  if kind == "flipped_header":
    data = bytearray(_encode(_tone(rng, 0.3, SR), SR, "WAV", "PCM_16"))
    for i in rng.integers(0, 44, size=int(rng.integers(1, 6))):
      data[i] = int(rng.integers(256))
    return ".wav", bytes(data), EITHER
  raise ValueError(kind)


KINDS = ("valid", "valid_stereo_flac", "valid_ogg", "valid_wide_samples", "valid_high_rate",
         "valid_many_channels", "valid_extreme", "valid_long", "too_few_samples", "random_bytes", "truncated_header", "absurd_rate",
         "absurd_channels", "nan", "inf", "huge_amplitude", "long_silence", "huge_frame_claim",
         "flipped_header")


def _anchor_names() -> list[str]:
  """Two train and one test file name, so that every generated corpus has both splits."""
  out, want, i = [], {"train": 2, "test": 1}, 0
  while any(want.values()):
    name = f"anchor{i}.wav"
    split = hash_split(name, 0.1)
    if want[split]:
      want[split] -= 1
      out.append(name)
    i += 1
  return out


class _Warnings(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(record.getMessage())


def _check_corpus(files: list[tuple[str, str]]) -> None:
  """Writes anchors plus `files` (kind, seed), loads the corpus and checks what was kept and said."""
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    data_dir = root / "audio"
    data_dir.mkdir()
    expect = {}
    for j, name in enumerate(_anchor_names()):
      sf.write(data_dir / name, _tone(np.random.default_rng(10_000 + j), 0.3, SR), SR)
      expect[name] = GOOD
    for i, (kind, seed) in enumerate(files):
      ext, contents, expectation = make_file(kind, seed)
      name = f"{kind}-{i}{ext}"
      (data_dir / name).write_bytes(contents)
      expect[name] = expectation
    config = load_config(SMOKE, {"data.corpus": "folder", "data.path": str(data_dir),
                                 "data.cache_dir": str(root / "cache"), "data.num_workers": 1})
    handler = _Warnings()
    logger = logging.getLogger("vae_jax")
    logger.addHandler(handler)
    try:
      data = load_dataset(config)
    finally:
      logger.removeHandler(handler)
    kept = set(data.train.names) | set(data.test.names)
    for name, expectation in expect.items():
      said = [m for m in handler.messages if m.startswith("skipped ") and os.sep + name + ":" in m]
      is_kept = os.path.splitext(name)[0] in kept
      assert is_kept != bool(said), (name, is_kept, said)  # Kept, or reported: never both, never neither.
      assert len(said) <= 1, (name, said)
      if expectation == GOOD:
        assert is_kept, (name, said)
      elif expectation == BAD:
        assert len(said) == 1, (name, handler.messages)
    skipped = sum(os.path.splitext(n)[0] not in kept for n in expect)
    if skipped:
      assert f"skipped {skipped} of {len(expect)} files of the folder corpus" in handler.messages[-1]


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2**32 - 1)), min_size=1, max_size=6))
def test_fuzzed_folder_corpus_never_crashes_and_reports_each_bad_file(files):
  _check_corpus(files)


def test_one_of_every_kind_with_its_reason(caplog):
  caplog.set_level(logging.WARNING, logger="vae_jax")
  _check_corpus([(kind, 1) for kind in KINDS])
  reasons = {"random_bytes": "unreadable audio", "absurd_rate": "sample rate",
             "absurd_channels": "channel", "nan": "NaN or infinite", "inf": "NaN or infinite",
             "huge_amplitude": "sample values up to", "long_silence": "all silent",
             "huge_frame_claim": "header claims 68719476735 frames", "too_few_samples": "too short"}
  for kind, reason in reasons.items():
    said = [r.getMessage() for r in caplog.records if f"{kind}-{KINDS.index(kind)}." in r.getMessage()]
    assert len(said) == 1 and reason in said[0], (kind, said)


def test_header_claims_are_checked_before_anything_is_read(tmp_path, monkeypatch):
  path = tmp_path / "long.wav"
  sf.write(path, _tone(np.random.default_rng(0), 1.0, SR), SR)

  def no_read(*args, **kwargs):
    raise AssertionError("the samples were read")

  monkeypatch.setattr(audio_io, "MAX_SAMPLES", SR // 2)
  monkeypatch.setattr(audio_io.sf, "read", no_read)
  with pytest.raises(audio_io.BadAudio, match=f"header claims {SR} frames x 1 channels"):
    audio_io.read_audio(str(path), SR)


def test_loud_garbage_in_several_channels_is_refused_without_overflow(tmp_path):
  wave = np.full((SR // 2, 4), 3e38, np.float32)  # The downmix sum would overflow float32.
  path = tmp_path / "loud.wav"
  sf.write(path, wave, SR, subtype="FLOAT")
  with pytest.raises(audio_io.BadAudio, match="sample values up to"):
    audio_io.read_audio(str(path), SR)


def _signal(kind: int, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
  """One of several valid but unusual mono signals of n samples."""
  t = np.arange(n) / rate
  if kind == 0:  # Speech-like bursts with pauses.
    return np.sin(2 * np.pi * 220 * t) * (np.mod(t, rng.uniform(0.3, 1.0)) < 0.2)
  if kind == 1:
    return np.full(n, rng.uniform(-1, 1))  # DC
  if kind == 2:
    return np.sign(np.sin(2 * np.pi * rng.uniform(50, 500) * t + 0.1))  # Clipped square.
  if kind == 3:
    x = np.zeros(n)
    x[rng.integers(n, size=int(rng.integers(1, 4)))] = 1.0  # Clicks in silence.
    return x
  if kind == 4:
    return (-1.0) ** np.arange(n)  # Nyquist.
  return rng.standard_normal(n) * np.exp(-t * rng.uniform(0, 50))  # Decaying noise.


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([8000, 16000]), st.sampled_from([3, 100, 255, 2000, 3999, 0.41, 1.0, 4.0, 15.0, 20.0]),
       st.integers(0, 5), st.integers(0, 5), st.floats(-5, 3), st.floats(-30, 2), st.integers(0, 2**32 - 1))
def test_waveform_metrics_score_any_valid_clip_or_say_why(rate, length, ref_kind, est_kind, ref_db, est_db,
                                                          seed):
  """Samples or seconds of audio at the reader's levels (1e-5..1e3 peak); the estimate at any level."""
  rng = np.random.default_rng(seed)
  n = int(length) if length > 100 else int(length * rate)
  ref = 10.0 ** ref_db * _signal(ref_kind, n, rate, rng)
  est = 10.0 ** est_db * _signal(est_kind, n, rate, rng) + ref * rng.uniform(0, 1)
  for scored, (lo, hi) in ((metrics.stoi_scored(ref, est, rate), (-1.0, 1.0)),
                           (metrics.pesq_scored(ref, est, rate), (0.9, 4.7))):
    if scored.value is None:
      assert isinstance(scored.missing, str) and scored.missing, scored
    else:
      assert scored.missing is None and lo <= scored.value <= hi, scored
  assert metrics.pesq_scored(ref, est, rate).value is None or n <= metrics.PESQ_MAX_SECONDS * rate
