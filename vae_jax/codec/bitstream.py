"""The .vjx file format: a small header, the entropy-coded latents and a CRC32 of both.

  offset  size  field
  0       3     magic b"VJX"
  3       1     format version (FORMAT_VERSION)
  4       1     flags: bit 0 learned prior, bit 1 per-channel step exponents present
  5       4     model hash (first 4 bytes of vae_jax.codec.priors.model_hash)
  9       4     prior hash (learned prior only)
  .       var   sample rate, mel frames, latent frames, samples past (mel frames - 1) * hop (LEB128 varints)
  .       2     quant step (float16, little-endian)
  .       C/2   per-channel step exponents e_c (4 bits each): step_c = quant_step * 2^(-e_c / 4)
  .       var   payload (vae_jax.codec.sequence), then 4 bytes CRC32 of everything before

Every reason a file cannot be read raises FormatError with a short reason;
vae_jax.codec.api adds the file name.
"""

import dataclasses
import struct
import zlib

import numpy as np

MAGIC = b"VJX"
FORMAT_VERSION = 1
HASH_BYTES = 4
EXPONENT_STEPS = 4  # Per-channel step exponents are in quarter octaves ...
MAX_EXPONENT = 15  # ... from 0 to 15 (4 bits): channel steps span 2^-3.75 .. 1 of quant_step.
_LEARNED, _EXPONENTS = 1, 2


class FormatError(Exception):
  """A byte string is not a readable .vjx stream (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Header:
  """Everything a decoder needs besides the payload."""

  model_hash: str  # 2 * HASH_BYTES hex digits.
  prior_hash: str  # Empty for the standard Gaussian prior.
  sample_rate: int
  mel_frames: int
  latent_frames: int
  extra_samples: int  # Waveform samples past (mel_frames - 1) * hop_length.
  quant_step: float  # Exactly representable in float16.
  exponents_C: tuple[int, ...] | None  # None: every channel uses quant_step.

  def steps(self, channels: int) -> np.ndarray:
    """Per-channel quantisation steps [C] (float64)."""
    e = np.zeros(channels) if self.exponents_C is None else np.asarray(self.exponents_C, np.float64)
    return self.quant_step * np.exp2(-e / EXPONENT_STEPS)


def _varint(n: int) -> bytes:
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


def pack(h: Header, payload: bytes) -> bytes:
  """The file bytes of a header and payload."""
  flags = (_LEARNED if h.prior_hash else 0) | (_EXPONENTS if h.exponents_C is not None else 0)
  out = bytearray(MAGIC + bytes([FORMAT_VERSION, flags]) + bytes.fromhex(h.model_hash))
  if h.prior_hash:
    out += bytes.fromhex(h.prior_hash)
  for n in (h.sample_rate, h.mel_frames, h.latent_frames, h.extra_samples):
    out += _varint(n)
  out += struct.pack("<e", h.quant_step)
  if h.exponents_C is not None:
    e = list(h.exponents_C) + [0] * (len(h.exponents_C) % 2)
    out += bytes(e[i] | (e[i + 1] << 4) for i in range(0, len(e), 2))
  out += payload
  return bytes(out + struct.pack("<I", zlib.crc32(out)))


def unpack(data: bytes, channels: int) -> tuple[Header, bytes]:
  """(header, payload) of a file's bytes; FormatError naming what is wrong."""
  if len(data) < len(MAGIC) + 1 or not data.startswith(MAGIC):
    raise FormatError("not a .vjx file (no VJX magic bytes)")
  if data[3] != FORMAT_VERSION:
    raise FormatError(f"format version {data[3]}, but this decoder reads version {FORMAT_VERSION}")
  if len(data) < 5 + HASH_BYTES + 4:
    raise FormatError("truncated header")
  if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
    raise FormatError("checksum mismatch (the file is truncated or corrupted)")
  cur = _Cursor(data, len(MAGIC) + 1, len(data) - 4)
  flags = cur.take(1)[0]
  model_hash = cur.take(HASH_BYTES).hex()
  prior_hash = cur.take(HASH_BYTES).hex() if flags & _LEARNED else ""
  sample_rate, mel_frames, latent_frames, extra = (cur.varint() for _ in range(4))
  (quant_step,) = struct.unpack("<e", cur.take(2))
  exponents = None
  if flags & _EXPONENTS:
    packed = cur.take(-(-channels // 2))
    exponents = tuple(((b >> s) & 0xF) for b in packed for s in (0, 4))[:channels]
  if not (np.isfinite(quant_step) and quant_step > 0) or mel_frames < 1:
    raise FormatError("malformed header field")
  return (Header(model_hash, prior_hash, sample_rate, mel_frames, latent_frames, extra,
                 float(quant_step), exponents), data[cur.pos:cur.end])
