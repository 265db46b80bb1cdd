"""Reading, checking and writing audio files."""

import io
import os

import numpy as np
import soundfile as sf

from vae_jax import fileio

# mp3 needs libsndfile >= 1.1 (soundfile's wheels bundle 1.2); read_audio says so if it is older.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Below this peak amplitude a clip is treated as silent (-100 dBFS).
SILENCE_PEAK = 1e-5
# Above this a decoder or reader produced garbage rather than audio.
MAX_ABS_SAMPLE = 1e3
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
# Samples (frames x channels) one file may hold: 512 MiB as float32, about 70 minutes of mono
# audio at 32 kHz. soundfile allocates what the header claims before decoding, so a header
# claiming more is refused before reading.
MAX_SAMPLES = 1 << 27


class BadAudio(ValueError):
  """An audio file that cannot be used; the message is the reason."""


def is_audio_path(path: str) -> bool:
  return path.lower().endswith(AUDIO_EXTENSIONS)


def read_audio(path: str, sample_rate: int, min_samples: int = 1) -> np.ndarray:
  """Reads a file as mono float32 at `sample_rate`; raises BadAudio with the reason."""
  if not os.path.isfile(path):
    raise BadAudio("file not found")
  if os.path.getsize(path) == 0:
    raise BadAudio("empty file (0 bytes)")
  if path.lower().endswith(".mp3") and "MP3" not in sf.available_formats():
    raise BadAudio(f"mp3 needs libsndfile >= 1.1; soundfile uses {sf.__libsndfile_version__} "
                   "(pip install -U soundfile)")
  try:
    info = sf.info(path)
  except Exception as e:  # soundfile raises several types for malformed headers
    raise BadAudio(f"unreadable audio ({_short(e, path)})") from None
  if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
    raise BadAudio(f"implausible sample rate {info.samplerate} Hz")
  if info.channels < 1 or info.channels > MAX_CHANNELS:
    raise BadAudio(f"implausible channel count {info.channels}")
  if info.frames < 0 or info.frames * info.channels > MAX_SAMPLES:
    hours = info.frames / info.samplerate / 3600
    raise BadAudio(f"header claims {info.frames} frames x {info.channels} channels ({hours:.3g} h), "
                   f"more than the {MAX_SAMPLES} samples one file may hold")
  try:
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)
  except Exception as e:
    raise BadAudio(f"unreadable audio ({_short(e, path)})") from None
  # Checked before the downmix, whose sum would overflow on garbage values.
  _check_values(data)
  mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
  return check_and_resample(mono, file_rate, sample_rate, min_samples)


def check_and_resample(
    wave: np.ndarray, rate: int, sample_rate: int, min_samples: int = 1
) -> np.ndarray:
  """Validates a mono waveform and resamples it; raises BadAudio with the reason."""
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise BadAudio(f"expected a mono waveform, got shape {wave.shape}")
  if wave.size == 0:
    raise BadAudio("no samples")
  _check_values(wave)
  if rate != sample_rate:
    import librosa  # pylint: disable=g-import-not-at-top

    try:
      wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    except Exception as e:  # e.g. a clip too short for the resampling filter
      raise BadAudio(f"cannot resample from {rate} Hz ({_short(e)})") from None
    wave = wave.astype(np.float32)
  if wave.size < min_samples:
    ms = 1000 * wave.size / sample_rate
    raise BadAudio(f"too short ({ms:.1f} ms; at least one analysis window is needed)")
  return wave


def _check_values(wave: np.ndarray) -> None:
  """Raises BadAudio for NaN/inf samples, garbage magnitudes or silence."""
  if wave.size == 0:
    raise BadAudio("no samples")
  if not np.all(np.isfinite(wave)):
    raise BadAudio("NaN or infinite samples")
  peak = float(np.max(np.abs(wave)))
  if peak > MAX_ABS_SAMPLE:
    raise BadAudio(f"sample values up to {peak:.3g}, expected audio in [-1, 1]")
  if peak < SILENCE_PEAK:
    raise BadAudio("all silent")


def write_audio(path: str, wave: np.ndarray, sample_rate: int) -> None:
  """Writes a mono waveform as 16-bit PCM, clipping to [-1, 1]."""
  buf = io.BytesIO()  # Through memory, so that the same call writes to a remote directory.
  sf.write(buf, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16",
           format="WAV")
  fileio.write_bytes(path, buf.getvalue())


def _short(e: Exception, path: str = "") -> str:
  """The first line of an exception's message, without the path the warning already names."""
  text = str(e).strip()
  if path:  # soundfile starts with "Error opening '<path>': ".
    text = text.replace(f"Error opening {path!r}: ", "").strip()
  return text.splitlines()[0][:120] if text else type(e).__name__
