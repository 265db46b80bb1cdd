"""The .vjx speech codec: exact integer tables, bit-exact round trips, coded sizes, file errors."""

import binascii
import dataclasses
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import types
import zlib
from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from tests.conftest import REPO_ROOT
from vae_jax.codec import api, batch, bitstream, entropy, prior_net, priors, sequence
from vae_jax.errors import DataError, UserError
from vae_jax.eval import cli as eval_cli

SR = 8000
# Builds the tiny random VAE in this process and in the subprocess test: same config, same key.
TINY_VAE = """
import jax, numpy as np
from tests.conftest import smoke_config
from vae_jax.audio.features import FeatureConfig, Normalizer
from vae_jax.inference import Trained
from vae_jax.models import build_model

def tiny_vae(seed=0):
  config = smoke_config(CACHE, {})
  model = build_model(config)
  mel = np.zeros((1, config.data.segment_frames, config.features.n_mels), np.float32)
  params = model.init(jax.random.key(seed), mel, np.ones(mel.shape[:2], np.float32), jax.random.key(0))["params"]
  n = config.features.n_mels
  return Trained("tiny", 0, config, model, params, Normalizer(np.full(n, -4.0, np.float32), np.full(n, 3.0, np.float32)),
                 FeatureConfig.from_config(config.features))
"""


def _tiny_vae_fn(cache):
  scope = {"CACHE": str(cache)}
  exec(TINY_VAE, scope)  # pylint: disable=exec-used
  return scope["tiny_vae"]


@pytest.fixture(scope="module")
def tiny_vae_fn(tmp_path_factory):
  return _tiny_vae_fn(tmp_path_factory.mktemp("codec_cache"))


@pytest.fixture(scope="module")
def vae(tiny_vae_fn):
  return tiny_vae_fn(0)


@pytest.fixture(scope="module")
def learned(vae):
  """A tiny randomly initialised learned prior over the tiny VAE's latents, as load_prior gives it."""
  from vae_jax.prior.model import LatentPrior  # pylint: disable=g-import-not-at-top

  model = LatentPrior(latent_channels=vae.latent_channels, num_classes=(3,), max_frames=32, width=16,
                      depth=2, heads=2, mlp_ratio=2, num_mixtures=3)
  params = model.init(jax.random.key(1), jnp.zeros((1, 8, vae.latent_channels)), jnp.ones((1,), jnp.int32),
                      jnp.zeros((1, 1), jnp.int32))["params"]
  for head in ("mean", "log_scale"):  # Spread the components, so that they differ between frames.
    params[head]["kernel"] = 0.5 * jax.random.normal(jax.random.key(2), params[head]["kernel"].shape)
  return types.SimpleNamespace(model=model, params=params, vae_run=vae, workdir="tiny_prior")


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  f0 = rng.uniform(100, 200)
  wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * np.hanning(len(t))
  return (0.2 * wave + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def wav_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("codec_wav") / "tone.wav"
  soundfile.write(path, _wave(0.6), SR)
  return str(path)


def test_deterministic_exp_and_gauss_tail_are_accurate():
  x = np.linspace(-700, 700, 20001)
  np.testing.assert_allclose(entropy.exp_det(x), np.exp(x), rtol=1e-14)
  x = np.linspace(-35, 35, 20001)
  np.testing.assert_allclose(entropy.gauss_tail(x), special.ndtr(-np.abs(x)), rtol=2e-7)


def _random_mixture(rng, k: int, c: int):
  weights = np.exp(rng.normal(size=k) * 3)
  return weights / weights.sum(), rng.normal(size=(k, c)) * 2, np.exp(rng.uniform(-5, 1, size=(k, c)))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 8), c=st.integers(1, 5), seed=st.integers(0, 2**31), log_step=st.floats(-4, 1))
def test_every_table_sums_to_the_coder_total_and_follows_the_mixture(k, c, seed, log_step):
  rng = np.random.default_rng(seed)
  weights, mean, scale = _random_mixture(rng, k, c)
  steps = np.exp(log_step + rng.uniform(-1, 1, size=c))
  lo, freq = entropy.mixture_tables(weights, mean, scale, steps)
  assert freq.shape == (c, freq.shape[1]) and freq.min() >= 1 and np.all(freq.sum(1) == entropy.TOTAL)
  # Each bin's share is the mixture's marginal mass there (components under 1e-3 left out), for
  # the bins within Z_RANGE (beyond it, mass goes to the escape symbol).
  heavy = weights >= entropy.WINDOW_WEIGHT
  w = weights[heavy] / weights[heavy].sum()
  edges = (lo[:, None] + np.arange(freq.shape[1])[None] - 0.5) * steps[:, None]  # [C, S]: S - 1 bins.
  cdf = (w[:, None, None] * stats.norm.cdf((edges[None] - mean[heavy, :, None]) / scale[heavy, :, None])).sum(0)
  share = (freq[:, :-1] - 1) / (entropy.TOTAL - freq.shape[1] - entropy._SLACK)  # pylint: disable=protected-access
  limit = np.minimum(np.ceil(entropy.Z_RANGE / steps), entropy.MAX_HALF_BINS)[:, None]
  inside = np.abs(lo[:, None] + np.arange(freq.shape[1] - 1)[None]) <= limit
  np.testing.assert_allclose(share[inside], np.diff(cdf, axis=1)[inside], atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 40), c=st.integers(1, 6), seed=st.integers(0, 2**31), log_step=st.floats(-4, 1),
       outliers=st.integers(0, 3))
def test_standard_prior_round_trip_is_bit_exact(t, c, seed, log_step, outliers):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(t, c)) * rng.uniform(0.1, 2)
  z.flat[rng.integers(0, z.size, outliers)] = rng.choice([-1, 1], outliers) * rng.uniform(9, 1e4, outliers)
  steps = np.exp(log_step + rng.uniform(-1, 1, size=c))
  q = sequence.quantise(z, steps)
  data = sequence.encode_sequence(q, steps, priors.StandardPrior())
  np.testing.assert_array_equal(sequence.decode_sequence(data, t, steps, priors.StandardPrior()), q)


@pytest.mark.parametrize("t", [1, 2, 9, 17])
def test_learned_prior_round_trip_is_bit_exact(learned, t):
  rng = np.random.default_rng(t)
  c = learned.model.latent_channels
  z = rng.normal(size=(t, c))
  z[0, 0] = 40.0  # An escape.
  steps = np.full(c, 0.05)
  q = sequence.quantise(z, steps)
  prior = priors.LearnedPrior(learned)
  data = sequence.encode_sequence(q, steps, prior)
  np.testing.assert_array_equal(sequence.decode_sequence(data, t, steps, prior), q)


def _numpy_prior(seed: int, **fields):
  """A LatentPrior and parameters drawn with numpy (not jax.random), so their values are fixed for good."""
  from vae_jax.prior.model import LatentPrior  # pylint: disable=g-import-not-at-top

  model = LatentPrior(**fields)
  z = jnp.zeros((1, 8, model.latent_channels))
  shapes = jax.eval_shape(model.init, jax.random.key(0), z, jnp.ones((1,), jnp.int32),
                          jnp.zeros((1, len(model.num_classes)), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten(shapes)
  params = jax.tree.unflatten(tree, [(0.3 * rng.standard_normal(l.shape)).astype(np.float32) for l in leaves])
  return types.SimpleNamespace(model=model, params=params)


@pytest.mark.parametrize("fields", [
    dict(latent_channels=16, num_classes=(10, 6), max_frames=256),  # configs/fsdd_prior.py's shape.
    dict(latent_channels=3, num_classes=(), max_frames=4, width=8, depth=1, heads=1, mlp_ratio=1, num_mixtures=1)])
def test_the_coders_prior_pass_computes_the_flax_prior(fields):
  """prior_net's frame-by-frame mixtures are the model's (labels unknown) to float32 precision."""
  prior = _numpy_prior(0, **fields)
  m, t = prior.model, 11
  z = np.random.default_rng(1).normal(size=(t, m.latent_channels)).astype(np.float32)
  ref = m.apply({"params": prior.params}, jnp.asarray(z[None]), jnp.array([t]),
                jnp.asarray(m.num_classes, jnp.int32)[None])
  net = prior_net.pack(m, prior.params)
  keys, values = prior_net.empty_cache(net, t)
  for i in range(t):  # Past max_frames in the second case: positions and remaining frames clip.
    weights, mean, scale = prior_net.step(net, keys, values, z[i - 1], i, t)
    np.testing.assert_allclose(weights, jax.nn.softmax(ref["logits"][0, i]), atol=3e-6)
    np.testing.assert_allclose(mean, ref["mean"][0, i], atol=3e-5)
    np.testing.assert_allclose(np.log(scale), ref["log_scale"][0, i], atol=3e-5)


# A fixed prior's mixtures and payload. They must be the same on every machine and with every
# release of numpy and numba: a change means learned-prior files written elsewhere no longer decode.
RECORDED_PRIOR_NET_SHA256 = "897b9661588062687c7b65dbabd44cac02ed04c6a3f18c60e63cf6cfd999027c"
RECORDED_LEARNED_PAYLOAD_SHA256 = "5b6d3709ee58c44b9aa9ec013c7b992f723c7255abf9928d28bf2900b74549e4"


def test_the_learned_prior_codes_to_the_recorded_bits_and_its_information_content():
  prior = _numpy_prior(7, latent_channels=4, num_classes=(2,), max_frames=16, width=16, depth=2, heads=2,
                       mlp_ratio=2, num_mixtures=3)
  model = priors.LearnedPrior(prior)
  steps = np.array([0.25, 0.5, 0.125, 1.0])
  q = sequence.quantise(np.random.default_rng(3).normal(size=(20, 4)), steps)
  q[5, 1] = 900  # An escape.
  keys, values = prior_net.empty_cache(model.net, 20)
  z = sequence.dequantise(q, steps)
  mixtures = [prior_net.step(model.net, keys, values, z[t - 1], t, 20) for t in range(20)]
  digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for m in mixtures for a in m)).hexdigest()
  assert digest == RECORDED_PRIOR_NET_SHA256, "the coder's prior pass computes other bits"
  data = sequence.encode_sequence(q, steps, model)
  assert hashlib.sha256(data).hexdigest() == RECORDED_LEARNED_PAYLOAD_SHA256, "the learned-prior payload changed"
  np.testing.assert_array_equal(sequence.decode_sequence(data, 20, steps, model), q)
  # Coded bits against -log2 of the tables' probabilities of the coded symbols (+ 16 bits an escape).
  frames, bits = model.tables(20, steps), 0.0
  lo, freq = next(frames)
  for t in range(20):
    inside = (q[t] >= lo) & (q[t] < lo + freq.shape[1] - 1)
    symbols = np.where(inside, q[t] - lo, freq.shape[1] - 1)
    bits += -np.log2(freq[np.arange(4), symbols] / entropy.TOTAL).sum() + 16 * (~inside).sum()
    if t < 19:
      lo, freq = frames.send(z[t])
  assert abs(8 * len(data) - bits) < 40, (8 * len(data), bits)


# The bytes of a fixed sequence under the standard prior. A change means files written before it
# no longer decode (a new table construction, quantiser or constriction release): if intended,
# bump bitstream's format version and re-record.
RECORDED_PAYLOAD_SHA256 = "9a20821dcc015114a52f7fd67f7e27074d70d630f38946b1a4a745f8fde3c962"


def test_a_recorded_sequence_codes_to_the_recorded_bytes():
  rng = np.random.default_rng(2026)
  steps = np.array([0.25, 0.5, 0.125, 1.0])
  q = sequence.quantise(rng.normal(size=(12, 4)) * np.array([1.0, 0.5, 2.0, 0.1]), steps)
  q[3, 2] = 5000  # An outlier, coded through the escape symbol.
  data = sequence.encode_sequence(q, steps, priors.StandardPrior())
  assert hashlib.sha256(data).hexdigest() == RECORDED_PAYLOAD_SHA256, "the .vjx payload format changed"
  np.testing.assert_array_equal(sequence.decode_sequence(data, 12, steps, priors.StandardPrior()), q)


def _recorded_payload() -> bytes:
  rng = np.random.default_rng(2026)
  steps = np.array([0.25, 0.5, 0.125, 1.0])
  q = sequence.quantise(rng.normal(size=(12, 4)) * np.array([1.0, 0.5, 2.0, 0.1]), steps)
  q[3, 2] = 5000
  return sequence.encode_sequence(q, steps, priors.StandardPrior())


# Whole files around the recorded payload. Version 3: re-record only with a format version bump
# (a new header layout, step grid, checksum or table construction). Versions 1 and 2: written by
# their encoders; their N(0, I) files must keep decoding as long as their readers are kept.
RECORDED_V3_FILE = "564a320123ab002d25a81203" + "49ffffd0ca76526af61f496ba9d79e9f091b20699588313362316d" + "ac8b"
RECORDED_V2_FILE = "564a220123ab002d25a81203" + "49ffffd0ca76526af61f496ba9d79e9f091b20699588313362316d" + "19d4"
RECORDED_V1_FILES = {
    "standard": "564a5801020123abcdc03e2d0c250040120349ffffd0ca76526af61f496ba9d79e9f091b20699588313362316dcd404630",
    "learned": "564a58010189abcdeffedcba98c4d802ac024b00003d05060769087617"}


def _v1_file(model_hash, prior_hash, sample_rate, mel_frames, latent_frames, extra, quant_step, exponents,
             payload) -> bytes:
  """A file in the version-1 layout (as the version-1 encoder wrote it)."""
  varint = lambda n: bytes((n >> s & 0x7F) | (0x80 if n >> s + 7 else 0) for s in range(0, max(n.bit_length(), 1), 7))
  out = b"VJX" + bytes([1, (1 if prior_hash else 0) | (2 if exponents is not None else 0)])
  out += bytes.fromhex(model_hash + prior_hash)
  out += b"".join(varint(n) for n in (sample_rate, mel_frames, latent_frames, extra)) + struct.pack("<e", quant_step)
  if exponents is not None:
    e = list(exponents) + [0] * (len(exponents) % 2)
    out += bytes(e[i] | e[i + 1] << 4 for i in range(0, len(e), 2))
  out += payload
  return out + struct.pack("<I", zlib.crc32(out))


def test_recorded_files_read_back_and_v3_is_written_bit_for_bit():
  payload = _recorded_payload()
  header = bitstream.Header("0123ab", "", 8000, 45, 37, 2.0, (2, 1, 3, 0))
  data = bitstream.pack(header, payload)
  assert data.hex() == RECORDED_V3_FILE, "the .vjx file format changed: bump FORMAT_VERSION and re-record"
  assert bitstream.unpack(data, 4) == (header, payload)
  assert bitstream.unpack(bytes.fromhex(RECORDED_V2_FILE), 4) == (dataclasses.replace(header, version=2), payload)
  v1 = {"standard": ("0123abcd", "", 8000, 45, 12, 37, 2.0, (2, 1, 3, 0), payload),
        "learned": ("89abcdef", "fedcba98", 44100, 300, 75, 0, 1.25, None, b"\x05\x06\x07")}
  for name, fields in v1.items():
    data = bytes.fromhex(RECORDED_V1_FILES[name])
    assert _v1_file(*fields) == data  # The test's version-1 writer is the old encoder's.
    h, body = bitstream.unpack(data, 4)
    model_hash, prior_hash, rate, mel, tz, extra, step, exps, pay = fields
    assert h == bitstream.Header(model_hash, prior_hash, rate, mel, extra, step, exps, version=1, latent_frames=tz)
    assert body == pay
  # Version-1 steps are what the version-1 encoder used: the float16 step times np.exp2(-e / 4).
  h = bitstream.unpack(bytes.fromhex(RECORDED_V1_FILES["standard"]), 4)[0]
  np.testing.assert_array_equal(h.steps(4), 2.0 * np.exp2(-np.array([2, 1, 3, 0]) / 4))


def test_the_step_grid_is_exact_powers_of_two_to_the_eighth():
  with localcontext() as ctx:
    ctx.prec = 50
    for f in range(8):  # The table is 2^(f/8) correctly rounded.
      assert bitstream.pow2_eighths(f) == float((Decimal(2).ln() * f / 8).exp())
  m = np.arange(-300, 300)
  np.testing.assert_array_equal(bitstream.pow2_eighths(m), np.ldexp(bitstream.pow2_eighths(m % 8), m // 8))
  np.testing.assert_allclose(bitstream.pow2_eighths(m), np.exp2(m / 8), rtol=1e-15)
  assert bitstream.MIN_STEP == 2.0 ** -20 and bitstream.grid_step(bitstream.STEP_OFFSET) == 1.0
  for k in range(256):
    assert bitstream.step_index(bitstream.grid_step(k)) == k
  # A requested step goes to the nearest grid point (within 2^(1/16), 4.4%).
  assert [api._on_grid(x) for x in (1.0, 1.04, 1.05, 6.0)] == [float(bitstream.pow2_eighths(m)) for m in (0, 0, 1, 21)]
  for bad in (1e-7, 4000.0, 0.0, math.inf, math.nan):
    with pytest.raises(UserError, match="outside what a .vjx header holds"):
      api._on_grid(bad)
  with pytest.raises(UserError, match=r"outside what a .vjx header holds \(9.5e-07 .. 3756\)"):
    api.channel_steps(np.zeros((2, 3)), 5000.0, "prior")


@settings(max_examples=200, deadline=None)
@given(model=st.binary(min_size=3, max_size=3), prior=st.one_of(st.just(b""), st.binary(min_size=3, max_size=3)),
       rate=st.one_of(st.sampled_from(bitstream.SAMPLE_RATES), st.integers(1, 10**7)),
       mel=st.integers(1, 10**7), extra=st.integers(0, 10**6), k=st.integers(0, 255),
       exps=st.one_of(st.none(), st.lists(st.integers(0, bitstream.MAX_EXPONENT), min_size=1, max_size=33)),
       payload=st.binary(max_size=40))
def test_header_round_trips_every_field_value(model, prior, rate, mel, extra, k, exps, payload):
  channels = 16 if exps is None else len(exps)
  header = bitstream.Header(model.hex(), prior.hex(), rate, mel, extra, bitstream.grid_step(k),
                            None if exps is None else tuple(exps))
  data = bitstream.pack(header, payload)
  assert bitstream.unpack(data, channels) == (header, payload)
  assert data[:2] == b"VJ" and data[2] >> 4 == 3 and data[2] != ord("X")
  rate_byte = data[3 + len(model) + len(prior)]
  assert (rate_byte == bitstream.RATE_ESCAPE) == (rate not in bitstream.SAMPLE_RATES)
  varint_len = lambda n: max(1, -(-n.bit_length() // 7))
  expected = (3 + len(model) + len(prior) + 1 + (0 if rate in bitstream.SAMPLE_RATES else varint_len(rate))
              + varint_len(mel) + varint_len(extra) + 1 + (0 if exps is None else -(-len(exps) // 2)) + 2)
  assert len(data) - len(payload) == expected
  e = np.zeros(channels) if exps is None else np.array(exps)
  np.testing.assert_allclose(header.steps(channels), bitstream.grid_step(k) * np.exp2(-e / 4), rtol=1e-15)


def test_every_truncation_and_bit_flip_is_refused():
  data = bytes.fromhex(RECORDED_V3_FILE)
  for n in range(len(data)):
    with pytest.raises(bitstream.FormatError):
      bitstream.unpack(data[:n], 4)
  for i in range(len(data) * 8):
    flipped = bytearray(data)
    flipped[i // 8] ^= 1 << (i % 8)
    with pytest.raises(bitstream.FormatError):
      bitstream.unpack(bytes(flipped), 4)
  with pytest.raises(bitstream.FormatError, match="checksum mismatch"):
    bitstream.unpack(data[:-3] + data[-2:], 4)


def test_coded_size_matches_the_information_content():
  """Bits of a synthetic sequence under N(0, 1) bins, against -log2 of scipy's bin masses."""
  rng = np.random.default_rng(0)
  steps = np.array([0.05, 0.2, 0.5, 1.0])
  q = sequence.quantise(rng.normal(size=(400, 4)) * np.array([0.3, 1.0, 1.5, 1.0]), steps)
  assert np.all(np.abs(q * steps) < sequence.Z_RANGE)  # No escapes: only the tables count.
  p = stats.norm.cdf((q + 0.5) * steps) - stats.norm.cdf((q - 0.5) * steps)
  info_bytes = -np.log2(p).sum() / 8
  coded = len(sequence.encode_sequence(q, steps, priors.StandardPrior()))
  assert abs(coded - info_bytes) < 8, (coded, info_bytes)


def test_compress_and_files_round_trip_the_quantised_latents(vae, wav_path, tmp_path):
  wave, mel = vae.load_audio(wav_path)
  out = tmp_path / "tone.vjx"
  data = api.encode_file(vae, wav_path, str(out), quant_step=1.0)
  assert out.read_bytes() == data == api.compress(vae, mel, quant_step=1.0, num_samples=len(wave))
  header, z_hat = api.read(vae, data)
  # Magic and version, model hash, sample rate, mel frames, extra samples, step, exponents, CRC.
  assert len(data) - len(api.read_payload(vae, data)) == 3 + 3 + 1 + 1 + 1 + 1 + vae.latent_channels // 2 + 2
  mean, _ = vae.encode(mel)
  steps = header.steps(vae.latent_channels)
  np.testing.assert_array_equal(z_hat, sequence.dequantise(sequence.quantise(mean, steps), steps))
  z, log_mel, wave_hat = api.decode_file(vae, str(out))
  np.testing.assert_array_equal(z, z_hat)
  assert log_mel.shape == mel.shape and len(wave_hat) == len(wave)


def test_learned_prior_file_round_trip_and_needs_its_prior(vae, learned, wav_path, tmp_path):
  out = str(tmp_path / "tone.vjx")
  data = api.encode_file(vae, wav_path, out, prior=learned, quant_step=0.5)
  z, _, _ = api.decode_file(vae, out, prior=learned)
  mean, _ = vae.encode(vae.load_audio(wav_path)[1])
  steps = api.read(vae, data, learned)[0].steps(vae.latent_channels)
  np.testing.assert_array_equal(z, sequence.dequantise(sequence.quantise(mean, steps), steps))
  with pytest.raises(DataError, match="learned prior .*: pass that prior's workdir"):
    api.decode_file(vae, out)
  body = data[:2] + bytes([2 << 4 | data[2] & 0xF]) + data[3:-2]  # The same bytes, labelled version 2.
  (tmp_path / "v2.vjx").write_bytes(body + struct.pack(">H", binascii.crc_hqx(body, 0)))
  _one_line_error(vae, tmp_path / "v2.vjx", "learned prior by format version 2", learned)
  params = jax.tree.map(lambda x: x + 0.01, learned.params)  # Another prior of the same VAE.
  other = types.SimpleNamespace(model=learned.model, params=params, vae_run=vae, workdir="other_prior")
  message = _one_line_error(vae, out, "coded with the learned prior", other)
  assert priors.LearnedPrior(learned).hash[:6] in message and priors.LearnedPrior(other).hash[:6] in message


def test_a_version_1_file_still_decodes(vae, learned, tiny_vae_fn, wav_path, tmp_path):
  """Version-1 files coded under N(0, I) as the version-1 encoder did decode to the same latents;
  under a learned prior they are refused in one line (their tables came from XLA's float32)."""
  wave, mel = vae.load_audio(wav_path)
  mean, logvar = vae.encode(mel)
  scale = np.exp(0.5 * np.asarray(logvar, np.float64)).mean(0)
  top = float(np.float16(0.8 * scale.max()))  # The version-1 encoder's float16 step and exponents.
  e = np.clip(np.rint(-4 * np.log2(0.8 * scale / top)), 0, 15).astype(int)
  steps = top * np.exp2(-e / 4)
  q = sequence.quantise(mean, steps)
  extra = len(wave) - (len(mel) - 1) * vae.feature_config.hop_length
  data = _v1_file(priors.model_hash(vae)[:8], "", SR, len(mel), len(mean), extra, top, e,
                  sequence.encode_sequence(q, steps, priors.StandardPrior()))
  path = tmp_path / "v1.vjx"
  path.write_bytes(data)
  z, _, wave_hat = api.decode_file(vae, str(path))
  np.testing.assert_array_equal(z, sequence.dequantise(q, steps))
  assert len(wave_hat) == len(wave)
  (tmp_path / "v1_learned.vjx").write_bytes(_v1_file(priors.model_hash(vae)[:8], priors.LearnedPrior(learned).hash[:8],
                                                     SR, len(mel), len(mean), extra, top, e, b"\x05\x06\x07"))
  _one_line_error(vae, tmp_path / "v1_learned.vjx", "learned prior by format version 1", learned)
  other = tiny_vae_fn(1)
  message = _one_line_error(other, path, "written by the model with hash", learned)
  assert priors.model_hash(vae)[:8] in message and priors.model_hash(other)[:8] in message
  (tmp_path / "v1_bad.vjx").write_bytes(data[:-5] + data[-4:])
  _one_line_error(vae, tmp_path / "v1_bad.vjx", "checksum mismatch", learned)


# The tiny learned prior of the subprocess test, drawn with numpy so both processes hold the same one.
TINY_PRIOR = dict(num_classes=(2,), max_frames=32, width=16, depth=2, heads=2, mlp_ratio=2, num_mixtures=3)


def test_files_written_here_decode_in_another_process(vae, wav_path, tmp_path):
  """Under both priors: the other process compiles (or loads) its own coder and prior pass."""
  prior = _numpy_prior(5, latent_channels=vae.latent_channels, **TINY_PRIOR)
  prior = types.SimpleNamespace(model=prior.model, params=prior.params, vae_run=vae, workdir="tiny_prior")
  expected = []
  for name, p in (("standard.vjx", None), ("learned.vjx", prior)):
    api.encode_file(vae, wav_path, str(tmp_path / name), p, quant_step=0.7)
    expected.append(api.decompress(vae, (tmp_path / name).read_bytes(), p))
  script = TINY_VAE.replace("CACHE", repr(str(tmp_path / "cache"))) + (
      "\nimport json, types\nfrom vae_jax.codec import api\nfrom tests.test_codec import TINY_PRIOR, _numpy_prior\n"
      "vae = tiny_vae(0)\n"
      "p = _numpy_prior(5, latent_channels=vae.latent_channels, **TINY_PRIOR)\n"
      "p = types.SimpleNamespace(model=p.model, params=p.params, vae_run=vae, workdir='tiny_prior')\n"
      f"z1, _, _ = api.decode_file(vae, {str(tmp_path / 'standard.vjx')!r})\n"
      f"z2, _, _ = api.decode_file(vae, {str(tmp_path / 'learned.vjx')!r}, p)\n"
      "print(json.dumps([z1.tolist(), z2.tolist()]))\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  for z, want in zip(json.loads(result.stdout.splitlines()[-1]), expected):
    np.testing.assert_array_equal(np.array(z, np.float32), want)


def _one_line_error(trained, path, match: str, prior=None):
  with pytest.raises(DataError) as e:
    api.decode_file(trained, str(path), prior)
  message = str(e.value)
  assert "\n" not in message and str(path) in message and match in message, message
  return message


def test_bad_files_give_one_line_errors(vae, tiny_vae_fn, wav_path, tmp_path):
  data = api.encode_file(vae, wav_path, str(tmp_path / "good.vjx"), quant_step=1.0)
  cases = {"truncated.vjx": (data[:len(data) // 2], "checksum"),
           "corrupt.vjx": (data[:12] + bytes([data[12] ^ 0x40]) + data[13:], "checksum"),
           "empty.vjx": (b"", "not a .vjx file"),
           "other.vjx": (b"RIFF" + data[4:], "not a .vjx file")}
  for name, (content, match) in cases.items():
    (tmp_path / name).write_bytes(content)
    _one_line_error(vae, tmp_path / name, match)
  body = data[:2] + bytes([(bitstream.FORMAT_VERSION + 1) << 4 | data[2] & 0xF]) + data[3:-2]
  (tmp_path / "v4.vjx").write_bytes(body + struct.pack(">H", binascii.crc_hqx(body, 0)))
  _one_line_error(vae, tmp_path / "v4.vjx", "format version 4, but this decoder reads versions 1, 2 and 3")
  (tmp_path / "v7.vjx").write_bytes(b"VJX\x07" + data[3:])  # The version-1 layout with another version.
  _one_line_error(vae, tmp_path / "v7.vjx", "format version 7, but this decoder reads versions 1, 2 and 3")
  other = tiny_vae_fn(1)
  message = _one_line_error(other, tmp_path / "good.vjx", "written by the model with hash")
  assert api.short_model_hash(vae) in message and api.short_model_hash(other) in message
  (tmp_path / "noise.wav").write_text("not audio")
  with pytest.raises(DataError, match="noise.wav"):
    api.encode_file(vae, str(tmp_path / "noise.wav"), str(tmp_path / "noise.vjx"))


def test_compress_files_goes_on_past_a_bad_file(vae, wav_path, tmp_path, capsys):
  (tmp_path / "bad.wav").write_text("not audio")
  rows, status = batch.compress_files(vae, [str(tmp_path / "bad.wav"), wav_path], str(tmp_path / "out"),
                                      quant_step=1.0)
  lines = capsys.readouterr().out.strip().splitlines()
  assert status == 1 and len(rows) == 1 and len(lines) == 2
  assert "bad.wav" in lines[0] and "kbit/s" in lines[1] and "STOI" in lines[1]
  assert sorted(os.listdir(tmp_path / "out")) == ["tone.decoded.wav", "tone.vjx"]
  rows, status = batch.decompress_files(vae, [str(tmp_path / "out" / "tone.vjx"), str(tmp_path / "bad.wav")],
                                        str(tmp_path / "dec"))
  assert status == 1 and len(rows) == 1


def test_a_clip_too_short_for_stoi_says_so_on_its_line(vae, tmp_path, capsys):
  soundfile.write(tmp_path / "short.wav", _wave(0.3, seed=4), SR)
  rows, status = batch.compress_files(vae, [str(tmp_path / "short.wav")], str(tmp_path / "out"), quant_step=1.0)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert status == 0 and math.isnan(rows[0]["stoi"]) and math.isfinite(rows[0]["pesq"]), rows
  assert "STOI n/a" in line and "missing: stoi (clip shorter than 0.4 s)" in line, line
  assert "nan" not in line, line


def test_bitrate_bisection_hits_the_target(vae, tmp_path):
  soundfile.write(tmp_path / "long.wav", _wave(4.0, seed=3), SR)
  _, mel = vae.load_audio(str(tmp_path / "long.wav"))
  seconds = len(mel) / vae.feature_config.frames_per_second
  step = batch.step_for_bitrate(vae, [mel], 0.5)
  kbps = 8e-3 * len(api.compress(vae, mel, quant_step=step)) / seconds
  assert abs(kbps - 0.5) < 0.02, kbps
  # With one step for every channel the rate moves in grid steps: the finest one not above the target.
  rate = lambda s: 8e-3 * len(api.compress(vae, mel, quant_step=s, step_mode="prior")) / seconds
  k = bitstream.step_index(api.channel_steps(None, batch.step_for_bitrate(vae, [mel], 0.5, step_mode="prior"),
                                             "prior")[0])
  assert rate(bitstream.grid_step(k)) <= 0.5 < rate(bitstream.grid_step(k - 1))
  with pytest.raises(UserError, match="above what these files reach"):
    batch.step_for_bitrate(vae, [mel], 50.0)


@pytest.mark.slow
def test_fsdd_run_round_trips_with_both_priors(fsdd_dir, monkeypatch):
  """The trained FSDD runs (when present): both priors reproduce the quantised latents exactly."""
  if not (REPO_ROOT / "runs" / "fsdd_prior" / "checkpoints").is_dir():
    pytest.skip("runs/fsdd_prior not trained here")
  from vae_jax.prior import load_prior  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(REPO_ROOT)  # The prior names its VAE run by a path relative to the repository.
  prior = load_prior("runs/fsdd_prior")
  vae = prior.vae_run
  for path in sorted(fsdd_dir.glob("*_0.wav"))[:4]:
    _, mel = vae.load_audio(str(path))
    for p in (None, prior):
      data = api.compress(vae, mel, p)
      header, z = api.read(vae, data, p)
      steps = header.steps(vae.latent_channels)
      np.testing.assert_array_equal(z, sequence.dequantise(sequence.quantise(vae.encode(mel)[0], steps), steps))


@pytest.mark.slow
def test_eval_py_compresses_decompresses_and_reports_a_bad_file_in_one_line(smoke_workdir, tmp_path):
  good = tmp_path / "good.wav"
  soundfile.write(good, _wave(0.6, seed=3), 8000)
  bad = tmp_path / "notes.txt"
  bad.write_text("not audio")
  out = tmp_path / "vjx"
  run = lambda *args: subprocess.run([sys.executable, str(REPO_ROOT / "eval.py"), f"--workdir={smoke_workdir}",
                                      *args], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
  r = run("--compress", str(good), str(bad), f"--out={out}", "--quant_step=3")
  assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert any(l.startswith(f"{good}: ") and "kbit/s" in l and "STOI" in l for l in lines), lines
  assert sum(l.startswith("error: ") and str(bad) in l for l in lines) == 1, lines
  assert (out / "good.vjx").stat().st_size > 0 and (out / "good.decoded.wav").exists()
  r = run("--decompress", str(out / "good.vjx"), f"--out={tmp_path / 'wav'}")
  assert r.returncode == 0, r.stderr[-2000:]
  # More files may follow as plain arguments; a missing one is one line, the others decode.
  r = run(f"--out={tmp_path / 'wav2'}", "--decompress", str(tmp_path / "missing.vjx"), str(out / "good.vjx"))
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert (tmp_path / "wav2" / "good.decoded.wav").exists() and "missing.vjx" in r.stdout
  decoded, _ = soundfile.read(out / "good.decoded.wav")
  again, _ = soundfile.read(tmp_path / "wav" / "good.decoded.wav")
  np.testing.assert_array_equal(decoded, again)
  # A learned prior asked of a VAE workdir is one line, not a silent N(0, I).
  r = run("--compress", str(good), f"--out={tmp_path / 'learned'}", "--prior=learned")
  assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
  assert "--prior=learned needs a prior workdir" in r.stderr + r.stdout
  assert not (tmp_path / "learned").exists()


@pytest.mark.slow
def test_rate_distortion_report_has_every_system_and_falls_with_the_step(smoke_workdir, tmp_path):
  assert eval_cli.run(eval_cli.EvalOptions(workdir=str(smoke_workdir), rate_distortion=True, rd_clips=4,
                                           report_dir=str(tmp_path))) == 0
  rows = json.loads((tmp_path / "rate_distortion.json").read_text())["rows"]
  vae = [r for r in rows if r.get("quant_step")]
  assert [r["quant_step"] for r in vae] == sorted(r["quant_step"] for r in vae)
  rates = [r["kbps"] for r in vae]
  assert all(a > b for a, b in zip(rates, rates[1:])), rates  # Coarser steps, fewer bits.
  names = {r["codec"] for r in rows}
  assert {"codec2 2400", "griffin_lim oracle"} <= names and any(n.startswith("opus") for n in names)
  assert (tmp_path / "rate_distortion.png").stat().st_size > 0
  assert "| codec2 1200 |" in (tmp_path / "rate_distortion.md").read_text()
