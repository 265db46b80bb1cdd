"""Log-mel features against librosa, the feature config checks and the normaliser."""

import pathlib

import librosa
import numpy as np
import pytest
import soundfile as sf

from vae_jax.audio import io as audio_io
from vae_jax.audio.features import FeatureConfig, Normalizer, log_mel, mel_to_audio
from vae_jax.config import load_config
from vae_jax.errors import ConfigError, UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FSDD_CLIP = "3_theo_12.wav"

SMOKE = FeatureConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, n_mels=32,
                      fmax=4000.0)
# Every field away from its default, so a field the code ignored would show.
UNUSUAL = FeatureConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80,
                        window="hamming", n_mels=20, fmin=60.0, fmax=3500.0, log_floor=1e-3)


def librosa_log_mel(wave: np.ndarray, fc: FeatureConfig) -> np.ndarray:
  """The definition of the features, written against librosa directly: [frames, n_mels]."""
  mel = librosa.feature.melspectrogram(
      y=wave, sr=fc.sample_rate, n_fft=fc.n_fft, hop_length=fc.hop_length,
      win_length=fc.win_length, window=fc.window, center=True, pad_mode="constant",
      power=1, n_mels=fc.n_mels, fmin=fc.fmin, fmax=fc.fmax)
  return np.log(np.maximum(mel, fc.log_floor)).T


@pytest.mark.parametrize("fc", [SMOKE, UNUSUAL], ids=["smoke", "unusual"])
def test_log_mel_matches_librosa_on_fsdd_clip(fsdd_dir, fc):
  wave, rate = sf.read(fsdd_dir / FSDD_CLIP, dtype="float32")
  assert rate == fc.sample_rate
  feats = log_mel(wave, fc)
  assert feats.dtype == np.float32
  assert feats.shape == (1 + len(wave) // fc.hop_length, fc.n_mels)
  assert feats.shape[0] == fc.num_frames(len(wave))
  np.testing.assert_allclose(feats, librosa_log_mel(wave, fc), rtol=0, atol=1e-5)
  # The same clip through the file reader gives the same features.
  read = audio_io.read_audio(str(fsdd_dir / FSDD_CLIP), rate)
  np.testing.assert_array_equal(log_mel(read, fc), feats)


def test_log_floor_bounds_features():
  wave = np.concatenate([np.zeros(2000), 0.5 * np.sin(np.arange(4000) * 0.3)]).astype(np.float32)
  for floor in (1e-5, 1e-2):
    fc = FeatureConfig(**{**SMOKE.__dict__, "log_floor": floor})
    feats = log_mel(wave, fc)
    assert feats.min() == pytest.approx(np.log(floor), abs=1e-6)  # Silence sits on the floor.
    assert feats.max() > np.log(floor) + 3


@pytest.mark.parametrize("n_fft,n", [(256, 1000), (255, 1000), (255, 1024), (257, 64 * 7)])
def test_num_frames_matches_log_mel(n_fft, n):
  fc = FeatureConfig(sample_rate=8000, n_fft=n_fft, win_length=n_fft, hop_length=64, n_mels=16,
                     fmax=4000.0)
  wave = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
  assert log_mel(wave, fc).shape[0] == fc.num_frames(n)


@pytest.mark.parametrize("field,value,fragment", [
    ("fmax", 4001.0, "Nyquist"),
    ("hop_length", 300, "win_length"),
    ("win_length", 512, "n_fft"),
    ("log_floor", -1e-5, "positive"),
    ("log_floor", 0.0, "positive"),
    ("fmin", 4000.0, "fmax"),
    ("n_mels", 160, "n_fft"),
    ("window", "nope", "window"),
])
def test_impossible_feature_config_is_refused(field, value, fragment):
  with pytest.raises(ConfigError) as e:
    FeatureConfig(**{**SMOKE.__dict__, field: value}).validated()
  message = str(e.value)
  assert f"features.{field}=" in message and fragment in message
  assert "\n" not in message


@pytest.mark.parametrize("field,value", [("fmax", 5000.0), ("hop_length", 512), ("win_length", 512),
                                         ("log_floor", -1.0)])
def test_load_config_refuses_impossible_features(field, value):
  with pytest.raises(UserError, match=rf"features\.{field}="):
    load_config(str(REPO_ROOT / "configs" / "smoke.py"), {f"features.{field}": value})


def test_from_config_reads_only_feature_fields():
  config = load_config(str(REPO_ROOT / "configs" / "smoke.py"))
  assert FeatureConfig.from_config(config.features) == SMOKE
  assert FeatureConfig().to_json() != SMOKE.to_json()


def test_normalizer_fit_round_trip():
  rng = np.random.default_rng(0)
  frames = rng.normal([1.0, -3.0, 5.0], [2.0, 0.5, 0.0], size=(500, 3)).astype(np.float32)
  norm = Normalizer.fit(frames)
  np.testing.assert_allclose(norm.mean, frames.astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(norm.std[:2], frames[:, :2].astype(np.float64).std(0), rtol=1e-5)
  assert norm.std[2] == np.float32(1e-3)  # A constant bin is not blown up.
  z = norm.normalize(frames)
  np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-4)
  np.testing.assert_allclose(norm.denormalize(z), frames, atol=1e-5)
  back = Normalizer.from_dict(norm.to_dict())
  np.testing.assert_array_equal(back.mean, norm.mean)
  np.testing.assert_array_equal(back.std, norm.std)


def test_mel_to_audio_inverts_roughly():
  t = np.arange(4000) / 8000
  wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  feats = log_mel(wave, SMOKE)
  back = mel_to_audio(feats, SMOKE, n_iter=16, length=len(wave))
  assert back.dtype == np.float32 and back.shape == wave.shape
  # Phase is lost, the magnitude mostly is not (one iteration is already at ~0.26).
  mel, mel_back = np.exp(feats), np.exp(log_mel(back, SMOKE))
  assert np.linalg.norm(mel_back - mel) / np.linalg.norm(mel) < 0.2
