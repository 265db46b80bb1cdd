"""The .vjx file format: a small header, the entropy-coded latents and a CRC-16 of both.

Format version 3 (what `pack` writes) has the layout of version 2 below. Its payload
under N(0, I) is version 2's; under a learned prior it is coded with the tables of
vae_jax.codec.prior_net's mixtures, which are the same on every machine. Version 2's
learned-prior payloads came from the flax model's float32 outputs on XLA, which are
not (vae_jax.codec.api refuses them in one line); its N(0, I) files still decode.

Format version 2:

  offset  size  field
  0       2     magic b"VJ"
  2       1     format version (high nibble, FORMAT_VERSION) and flags (low nibble): bit 0 learned
                prior, bit 1 per-channel step exponents present, bits 2-3 zero
  3       3     model hash (first HASH_BYTES bytes of vae_jax.codec.priors.model_hash)
  .       3     prior hash (learned prior only)
  .       1     sample rate: an index into SAMPLE_RATES, or RATE_ESCAPE followed by the rate (varint)
  .       var   mel frames, samples past (mel frames - 1) * hop (LEB128 varints)
  .       1     quant step k: quant_step = 2^((k - STEP_OFFSET) / STEP_TICKS), 2^-20 .. 2^11.875
  .       C/2   per-channel step exponents e_c (4 bits each): step_c = quant_step * 2^(-e_c / 4)
  .       var   payload (vae_jax.codec.sequence), then 2 bytes CRC-16 of everything before

With 16 channels and clips under 128 mel frames that is 20 bytes besides the
payload under N(0, I) and 23 under a learned prior (28 and 32 in version 1); 12
and 15 without exponents (step mode "prior"). The latent frame count is not
stored: it is ceil(mel frames / the model's time stride), which the decoder knows
from the model. Every step lies on a grid of eighth octaves, computed from a table
of 2^(f/8) and an exact power of two, so encoder and decoder get the same float64
steps on any machine. The checksum is CRC-16/XMODEM (binascii.crc_hqx, initial
value 0, big-endian): it guards against truncated and corrupted files, not
tampering. 16 bits suffice for that: every burst of up to 16 flipped bits is
caught, other damage gets through 1 time in 65,536, and then the payload's own
end check mostly catches it (a stream that does not end where its symbols do
fails to decode). Exponents stay in quarter octaves: on the 300 FSDD test clips,
half octaves (3 bits, 2 bytes less per file) made the payload 0.2-0.8 bytes
larger at equal log-mel MSE.

Format version 1 (still read): magic b"VJX", version byte 1, flags byte, 4-byte
model hash, [4-byte prior hash], varints for sample rate, mel frames, latent
frames and extra samples, the quant step as float16, the same exponents, the
payload, CRC32 (little-endian). Byte 2 of a newer file is never 0x58 ("X"), so
the two layouts cannot be confused.

Every reason a file cannot be read raises FormatError with a short reason;
vae_jax.codec.api adds the file name.
"""

import binascii
import dataclasses
import math
import struct
import zlib

import numpy as np

MAGIC = b"VJ"
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
HASH_BYTES = 3  # Of the model hash and the prior hash (version 1 files have 4).
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
RATE_ESCAPE = 0xFF  # Sample-rate byte: a rate outside SAMPLE_RATES follows as a varint.
STEP_TICKS = 8  # Quant steps are on a grid of 2^(1/8) ...
STEP_OFFSET = 160  # ... with the byte k meaning 2^((k - 160) / 8): 2^-20 (9.5e-7) .. 2^11.875 (3755).
EXPONENT_STEPS = 4  # Per-channel step exponents are in quarter octaves ...
MAX_EXPONENT = 15  # ... from 0 to 15 (4 bits): channel steps span 2^-3.75 .. 1 of quant_step.
_LEARNED, _EXPONENTS = 1, 2
_V1_MAGIC, _V1_HASH_BYTES = b"VJX", 4
# 2^(f/8) for f = 0..7, correctly rounded (each literal reads back as exactly that float64).
_EIGHTHS = np.array([1.0, 1.0905077326652577, 1.189207115002721, 1.2968395546510096,
                     1.4142135623730951, 1.5422108254079407, 1.681792830507429, 1.8340080864093424])


class FormatError(Exception):
  """A byte string is not a readable .vjx stream (the message says why)."""


def pow2_eighths(m) -> np.ndarray:
  """2^(m / 8) for integers m (float64), the same on every machine: a table entry times 2^(m // 8)."""
  m = np.asarray(m, np.int64)
  return np.ldexp(_EIGHTHS[m % STEP_TICKS], (m // STEP_TICKS).astype(np.int32))


def grid_step(k: int) -> float:
  """The quant step that the header byte k stands for."""
  return float(pow2_eighths(k - STEP_OFFSET))


def step_index(step: float) -> int:
  """The header byte of the grid step nearest to `step` (may fall outside 0..255: not storable)."""
  return int(np.rint(STEP_TICKS * math.log2(step))) + STEP_OFFSET


MIN_STEP, MAX_STEP = grid_step(0), grid_step(255)


@dataclasses.dataclass(frozen=True)
class Header:
  """Everything a decoder needs besides the payload (and the model, which gives the latent frames)."""

  model_hash: str  # 2 * HASH_BYTES hex digits (2 * 4 in version 1 files).
  prior_hash: str  # Empty for the standard Gaussian prior.
  sample_rate: int
  mel_frames: int
  extra_samples: int  # Waveform samples past (mel_frames - 1) * hop_length.
  quant_step: float  # A grid_step value (a float16 in version 1 files).
  exponents_C: tuple[int, ...] | None  # None: every channel uses quant_step.
  version: int = FORMAT_VERSION
  latent_frames: int | None = None  # Stored by version 1 only.

  def steps(self, channels: int) -> np.ndarray:
    """Per-channel quantisation steps [C] (float64)."""
    e = np.zeros(channels, np.int64) if self.exponents_C is None else np.asarray(self.exponents_C, np.int64)
    quarter = STEP_TICKS // EXPONENT_STEPS
    if self.version == 1:
      return self.quant_step * pow2_eighths(-quarter * e)
    return pow2_eighths(step_index(self.quant_step) - STEP_OFFSET - quarter * e)


def _varint(n: int) -> bytes:
  if n < 0:
    raise ValueError(f"a header field of {n} is negative")
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


class _Cursor:
  def __init__(self, data: bytes, start: int, end: int):
    self.data, self.pos, self.end = data, start, end

  def take(self, n: int) -> bytes:
    if self.pos + n > self.end:
      raise FormatError("truncated header")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def varint(self) -> int:
    n, shift = 0, 0
    while True:
      byte = self.take(1)[0]
      n |= (byte & 0x7F) << shift
      shift += 7
      if not byte & 0x80:
        return n
      if shift > 63:
        raise FormatError("malformed header field")

  def exponents(self, channels: int) -> tuple[int, ...]:
    packed = self.take(-(-channels // 2))
    return tuple(((b >> s) & 0xF) for b in packed for s in (0, 4))[:channels]


def _crc16(data: bytes) -> bytes:
  return struct.pack(">H", binascii.crc_hqx(data, 0))


def pack(h: Header, payload: bytes) -> bytes:
  """The file bytes (format version 3) of a header and payload."""
  k = step_index(h.quant_step) if h.quant_step > 0 and math.isfinite(h.quant_step) else -1
  if not 0 <= k <= 255 or grid_step(k) != h.quant_step:
    raise ValueError(f"quant_step={h.quant_step!r} is not a point of the header's step grid")
  flags = (_LEARNED if h.prior_hash else 0) | (_EXPONENTS if h.exponents_C is not None else 0)
  out = bytearray(MAGIC + bytes([FORMAT_VERSION << 4 | flags]) + bytes.fromhex(h.model_hash))
  if h.prior_hash:
    out += bytes.fromhex(h.prior_hash)
  if h.sample_rate in SAMPLE_RATES:
    out.append(SAMPLE_RATES.index(h.sample_rate))
  else:
    out += bytes([RATE_ESCAPE]) + _varint(h.sample_rate)
  out += _varint(h.mel_frames) + _varint(h.extra_samples) + bytes([k])
  if h.exponents_C is not None:
    e = list(h.exponents_C) + [0] * (len(h.exponents_C) % 2)
    out += bytes(e[i] | (e[i + 1] << 4) for i in range(0, len(e), 2))
  out += payload
  return bytes(out + _crc16(bytes(out)))


def _version_error(version: int) -> FormatError:
  return FormatError(f"format version {version}, but this decoder reads versions "
                     f"{', '.join(map(str, READ_VERSIONS[:-1]))} and {READ_VERSIONS[-1]}")


def unpack(data: bytes, channels: int) -> tuple[Header, bytes]:
  """(header, payload) of a file's bytes (any of READ_VERSIONS); FormatError naming what is wrong."""
  if len(data) > len(_V1_MAGIC) and data.startswith(_V1_MAGIC):
    if data[3] != 1:
      raise _version_error(data[3])
    return _unpack_v1(data, channels)
  if len(data) <= len(MAGIC) or not data.startswith(MAGIC):
    raise FormatError("not a .vjx file (no VJ magic bytes)")
  version = data[2] >> 4
  if version not in READ_VERSIONS[1:]:  # Versions 2 and later share this layout.
    raise _version_error(version)
  if len(data) < len(MAGIC) + 1 + HASH_BYTES + 2:
    raise FormatError("truncated header")
  if data[-2:] != _crc16(data[:-2]):
    raise FormatError("checksum mismatch (the file is truncated or corrupted)")
  flags = data[2] & 0xF
  if flags & ~(_LEARNED | _EXPONENTS):
    raise FormatError("malformed header field (unknown flags)")
  cur = _Cursor(data, len(MAGIC) + 1, len(data) - 2)
  model_hash = cur.take(HASH_BYTES).hex()
  prior_hash = cur.take(HASH_BYTES).hex() if flags & _LEARNED else ""
  rate = cur.take(1)[0]
  if rate == RATE_ESCAPE:
    sample_rate = cur.varint()
  elif rate < len(SAMPLE_RATES):
    sample_rate = SAMPLE_RATES[rate]
  else:
    raise FormatError("malformed header field (sample rate)")
  mel_frames, extra = cur.varint(), cur.varint()
  quant_step = grid_step(cur.take(1)[0])
  exponents = cur.exponents(channels) if flags & _EXPONENTS else None
  if mel_frames < 1:
    raise FormatError("malformed header field")
  return (Header(model_hash, prior_hash, sample_rate, mel_frames, extra, quant_step, exponents, version),
          data[cur.pos:cur.end])


def _unpack_v1(data: bytes, channels: int) -> tuple[Header, bytes]:
  if len(data) < 5 + _V1_HASH_BYTES + 4:
    raise FormatError("truncated header")
  if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
    raise FormatError("checksum mismatch (the file is truncated or corrupted)")
  cur = _Cursor(data, len(_V1_MAGIC) + 1, len(data) - 4)
  flags = cur.take(1)[0]
  model_hash = cur.take(_V1_HASH_BYTES).hex()
  prior_hash = cur.take(_V1_HASH_BYTES).hex() if flags & _LEARNED else ""
  sample_rate, mel_frames, latent_frames, extra = (cur.varint() for _ in range(4))
  (quant_step,) = struct.unpack("<e", cur.take(2))
  exponents = cur.exponents(channels) if flags & _EXPONENTS else None
  if not (np.isfinite(quant_step) and quant_step > 0) or mel_frames < 1:
    raise FormatError("malformed header field")
  return (Header(model_hash, prior_hash, sample_rate, mel_frames, extra, float(quant_step), exponents,
                 version=1, latent_frames=latent_frames), data[cur.pos:cur.end])
