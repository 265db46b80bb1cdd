"""Tests of the embedded synthetic corpus: determinism, cache, labels against the audio."""

import json
import os
import pathlib

import librosa
import numpy as np
import pytest
import soundfile as sf

from vae_jax.data import synthetic
from vae_jax.errors import ConfigError, DataError

SR = 16000
HOP = 128
NUM_SPEAKERS = 3
PER_SPEAKER = 10
# A sample-to-sample jump this many times the 99th percentile of the jumps around
# it is a click; clean output stays below 2, a filter whose state is reset reaches 3+.
CLICK_RATIO = 3.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("synthetic") / "corpus")
  utts = synthetic.generate_corpus(out_dir, sample_rate=SR, num_speakers=NUM_SPEAKERS,
                                   utterances_per_speaker=PER_SPEAKER, seed=0, factor_hop=HOP)
  return out_dir, utts


def _read(out_dir, utt):
  wave, rate = sf.read(os.path.join(out_dir, utt.name + ".wav"), dtype="float32")
  assert rate == SR
  return wave


def _generate(out_dir, seed=0, **kwargs):
  kwargs = {"sample_rate": SR, "num_speakers": 2, "utterances_per_speaker": 3, "seed": seed,
            "factor_hop": HOP, **kwargs}
  return synthetic.generate_corpus(str(out_dir), **kwargs)


def _file_bytes(out_dir):
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out_dir).iterdir())}


def _phone_at(utt, t_s):
  return next(p for p, start, end in utt.phones if start <= t_s < end)


def _interior_voiced_frames(utt, margin_frames):
  """Frames whose whole analysis window lies in voiced phones."""
  voiced = utt.f0_hz > 0
  inner = voiced.copy()
  for d in range(1, margin_frames + 1):
    inner[d:] &= voiced[:-d]
    inner[:-d] &= voiced[d:]
  return inner


def _yin_f0(wave, frame_length=1024):
  return librosa.yin(wave, fmin=60, fmax=500, sr=SR, frame_length=frame_length,
                     hop_length=HOP, center=True)


def _rms(x):
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _click_ratio(wave, utt, sample_rate=SR):
  """Largest jump per 2 ms chunk over the 99th percentile of jumps in the 25 ms around it.

  Plosive phones are skipped: their bursts are meant to be abrupt.
  """
  d = np.abs(np.diff(wave.astype(np.float64)))
  chunk, ctx = int(0.002 * sample_rate), int(0.025 * sample_rate)
  bursts = [(a * sample_rate, b * sample_rate) for p, a, b in utt.phones if p in synthetic.PLOSIVES]
  floor = 1e-3 * np.abs(wave).max()
  worst = 0.0
  for s in range(0, len(d) - chunk, chunk):
    if any(a <= s and s + chunk <= b for a, b in bursts):
      continue
    around = np.concatenate([d[max(0, s - ctx):max(0, s - chunk)], d[s + 2 * chunk:s + chunk + ctx]])
    worst = max(worst, d[s:s + chunk].max() / (np.percentile(around, 99) + floor))
  return worst


def _lpc_formants(x, order=12):
  """Resonance frequencies (Hz, ascending) of an LPC fit, narrow ones only."""
  x = np.append(x[0], x[1:] - 0.97 * x[:-1]) * np.hamming(len(x))
  roots = [r for r in np.roots(librosa.lpc(x.astype(np.float64), order=order)) if r.imag > 0]
  freqs = np.angle(roots) * SR / (2 * np.pi)
  bandwidths = -np.log(np.abs(roots)) * SR / np.pi
  return np.sort(freqs[(freqs > 150) & (bandwidths < 500)])


def _speaker(f0_mean_hz, vtl_factor):
  return synthetic.SpeakerParams(index=0, f0_mean_hz=f0_mean_hz, f0_range_st=3.0,
                                 vtl_factor=vtl_factor, jitter=0.008, shimmer=0.04,
                                 breathiness=0.2, open_quotient=0.6, rate=1.0)


# ----------------------------------------------------------------------------- determinism


def test_synthesize_utterance_is_deterministic():
  spk = synthetic.make_speakers(4, seed=0)[2]
  wave_a, utt_a = synthetic.synthesize_utterance(np.random.default_rng(7), spk, 5, SR, HOP)
  wave_b, utt_b = synthetic.synthesize_utterance(np.random.default_rng(7), spk, 5, SR, HOP)
  wave_c, utt_c = synthetic.synthesize_utterance(np.random.default_rng(8), spk, 5, SR, HOP)
  assert wave_a.dtype == np.float32
  assert wave_a.tobytes() == wave_b.tobytes()
  assert utt_a == utt_b
  assert utt_a.f0_hz.tobytes() == utt_b.f0_hz.tobytes()
  assert utt_a != utt_c
  assert wave_a.shape != wave_c.shape or not np.array_equal(wave_a, wave_c)


def test_corpus_is_deterministic_and_depends_on_seed(tmp_path):
  utts_a = _generate(tmp_path / "a", seed=0)
  utts_b = _generate(tmp_path / "b", seed=0)
  utts_c = _generate(tmp_path / "c", seed=1)
  assert utts_a == utts_b
  assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")
  assert utts_a != utts_c
  wavs_a = {k: v for k, v in _file_bytes(tmp_path / "a").items() if k.endswith(".wav")}
  wavs_c = {k: v for k, v in _file_bytes(tmp_path / "c").items() if k.endswith(".wav")}
  assert wavs_a.keys() == wavs_c.keys()
  assert all(wavs_a[k] != wavs_c[k] for k in wavs_a)
  assert synthetic.make_speakers(4, 0) != synthetic.make_speakers(4, 1)


# ----------------------------------------------------------------------------- cache


def test_second_call_reuses_the_cached_corpus(tmp_path, monkeypatch):
  out_dir = tmp_path / "corpus"
  first = _generate(out_dir)
  mtimes = {e.name: e.stat().st_mtime_ns for e in os.scandir(out_dir)}

  def fail(*args, **kwargs):
    raise AssertionError("regenerated a cached corpus")

  monkeypatch.setattr(synthetic, "synthesize_utterance", fail)
  second = _generate(out_dir)
  assert second == first
  assert {e.name: e.stat().st_mtime_ns for e in os.scandir(out_dir)} == mtimes
  assert synthetic.load_corpus(str(out_dir)) == first


def test_different_arguments_regenerate_in_place(tmp_path):
  out_dir = tmp_path / "corpus"
  first = _generate(out_dir, seed=0)
  second = _generate(out_dir, seed=1)
  assert second != first
  assert synthetic.load_corpus(str(out_dir)) == second
  with open(out_dir / synthetic.MANIFEST) as f:
    assert json.load(f)["args"]["seed"] == 1
  third = _generate(out_dir, seed=1, utterances_per_speaker=4)
  assert len(third) == 8 and len(os.listdir(out_dir)) == 8 + 2
  assert os.listdir(tmp_path) == ["corpus"]  # No temporaries or replaced copies left behind.


def test_interrupted_generation_never_leaves_a_corpus(tmp_path, monkeypatch):
  out_dir = tmp_path / "corpus"
  old = _generate(out_dir, seed=0)
  real = synthetic.synthesize_utterance
  calls = []

  def fail_on_third(*args, **kwargs):
    calls.append(1)
    if len(calls) % 3 == 0:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(synthetic, "synthesize_utterance", fail_on_third)
  with pytest.raises(KeyboardInterrupt):
    _generate(out_dir, seed=5)
  with pytest.raises(KeyboardInterrupt):
    _generate(tmp_path / "fresh", seed=5)
  assert os.listdir(tmp_path) == ["corpus"]
  assert synthetic.load_corpus(str(out_dir)) == old  # The previous corpus is untouched.


def test_refuses_to_replace_a_foreign_directory(tmp_path):
  out_dir = tmp_path / "mine"
  out_dir.mkdir()
  (out_dir / "notes.txt").write_text("keep me")
  with pytest.raises(DataError, match="not a synthetic corpus"):
    _generate(out_dir)
  assert os.listdir(out_dir) == ["notes.txt"]
  with pytest.raises(DataError):
    synthetic.load_corpus(str(out_dir))


@pytest.mark.parametrize("kwargs", [
    {"num_speakers": 0}, {"utterances_per_speaker": 0}, {"seed": -1}, {"sample_rate": 4000},
    {"factor_hop": 0}, {"num_speakers": 2.5},
])
def test_rejects_impossible_arguments(tmp_path, kwargs):
  with pytest.raises(ConfigError):
    _generate(tmp_path / "corpus", **kwargs)


# ----------------------------------------------------------------------------- files and labels


def test_load_corpus_returns_what_generate_returned(corpus):
  out_dir, utts = corpus
  loaded = synthetic.load_corpus(out_dir)
  assert loaded == utts
  assert [u.name for u in loaded] == [u.name for u in utts]
  assert len({u.name for u in utts}) == NUM_SPEAKERS * PER_SPEAKER


def test_audio_is_finite_bounded_and_peak_normalised(corpus):
  out_dir, utts = corpus
  for utt in utts:
    wave = _read(out_dir, utt)
    assert wave.shape == (utt.num_samples,)
    assert np.all(np.isfinite(wave))
    peak_db = 20 * np.log10(np.abs(wave).max())
    assert -12.1 <= peak_db <= -5.9, (utt.name, peak_db)
    assert synthetic.MIN_DURATION_S - 1e-3 <= utt.num_samples / SR <= synthetic.MAX_DURATION_S + 1e-3
    # Speech is well above the silences around it.
    lead = wave[:int(utt.phones[0][2] * SR)]
    assert _rms(lead) < 1e-2 * _rms(wave)


def test_labels_follow_the_word(corpus):
  _, utts = corpus
  for utt in utts:
    names = tuple(p for p, _, _ in utt.phones)
    assert names == ("sil",) + synthetic.word_phones(utt.word) + ("sil",)
    first_vowel = next(p for p in names if p in synthetic.VOWELS)
    assert synthetic.VOWELS[utt.vowel] == first_vowel
    assert utt.name.startswith(f"spk{utt.speaker}_")
    starts = np.array([s for _, s, _ in utt.phones])
    ends = np.array([e for _, _, e in utt.phones])
    assert starts[0] == 0.0 and ends[-1] == utt.num_samples / SR
    np.testing.assert_array_equal(starts[1:], ends[:-1])
    assert np.all(ends > starts)
  assert {u.vowel for u in utts} == set(range(len(synthetic.VOWELS)))


def test_factor_frames_align_with_centred_feature_frames(corpus):
  _, utts = corpus
  for utt in utts:
    num_frames = 1 + utt.num_samples // HOP
    assert utt.f0_hz.shape == (num_frames,) and utt.f0_hz.dtype == np.float32
    assert utt.formants_hz.shape == (num_frames, 3) and utt.formants_hz.dtype == np.float32
    # f0 is zero exactly in frames whose sample lies in an unvoiced phone.
    for i, f0 in enumerate(utt.f0_hz):
      phone = _phone_at(utt, min(i * HOP, utt.num_samples - 1) / SR)
      assert (f0 > 0) == (phone in synthetic.VOICED_PHONES), (utt.name, i, phone, f0)
    assert np.all(np.diff(utt.formants_hz, axis=1) > 0)  # F1 < F2 < F3 everywhere.


def test_stored_f0_matches_the_pitch_of_the_audio(corpus):
  out_dir, utts = corpus
  errors = []
  for utt in utts:
    measured = _yin_f0(_read(out_dir, utt))
    inner = _interior_voiced_frames(utt, 1024 // 2 // HOP)
    rel = np.abs(measured[inner] / utt.f0_hz[inner] - 1)
    assert np.median(rel) < 0.02, utt.name
    errors.append(rel)
  errors = np.concatenate(errors)
  assert errors.size > 200
  assert np.mean(errors < 0.05) > 0.97


def test_speakers_have_distinct_pitch_ranges_as_specified(corpus):
  out_dir, utts = corpus
  speakers = synthetic.make_speakers(NUM_SPEAKERS, 0)
  for spk in speakers:
    measured = []
    for utt in (u for u in utts if u.speaker == spk.index):
      inner = _interior_voiced_frames(utt, 4)
      measured.append(_yin_f0(_read(out_dir, utt))[inner])
    median = np.median(np.concatenate(measured))
    # The accent raises the median a little above the speaker's mean.
    assert 0.95 * spk.f0_mean_hz < median < 1.25 * spk.f0_mean_hz, (spk, median)
  for seed in range(5):
    speakers = synthetic.make_speakers(8, seed)
    f0 = np.array([s.f0_mean_hz for s in speakers])
    vtl = np.array([s.vtl_factor for s in speakers])
    assert np.all((90 <= f0) & (f0 <= 260))
    # Stratified: a voice in the lowest and one in the highest eighth of the log range.
    assert f0.min() < 90 * (260 / 90) ** (1 / 8) and f0.max() > 90 * (260 / 90) ** (7 / 8)
    assert np.all((0.85 <= vtl) & (vtl <= 1.2))
    assert np.corrcoef(np.log(f0), vtl)[0, 1] > 0.8


@pytest.mark.parametrize("f0_mean_hz,vtl_factor", [(100.0, 0.9), (220.0, 1.15)])
def test_vowel_formants_are_where_the_labels_say(f0_mean_hz, vtl_factor):
  spk = _speaker(f0_mean_hz, vtl_factor)
  measured = {}
  for word in (synthetic.WORDS.index("ma"), synthetic.WORDS.index("ki")):
    wave, utt = synthetic.synthesize_utterance(np.random.default_rng(3), spk, word, SR, HOP)
    _, start, end = next(p for p in utt.phones if p[0] in synthetic.VOWELS)
    mid = (start + end) / 2
    lpc = _lpc_formants(wave[int(mid * SR) - 240:int(mid * SR) + 240])
    truth = utt.formants_hz[int(round(mid * SR / HOP))]
    assert abs(lpc[0] / truth[0] - 1) < 0.2, (utt.phones, lpc, truth)
    assert abs(lpc[1] / truth[1] - 1) < 0.08, (utt.phones, lpc, truth)
    measured[synthetic.VOWELS[utt.vowel]] = lpc
  # /a/ is open and back, /i/ close and front.
  assert measured["a"][0] > 2 * measured["i"][0]
  assert measured["i"][1] > 1.7 * measured["a"][1]


def test_formants_scale_with_vocal_tract_length():
  word = synthetic.WORDS.index("pesa")
  _, short = synthetic.synthesize_utterance(np.random.default_rng(1), _speaker(150, 1.2), word, SR, HOP)
  _, long = synthetic.synthesize_utterance(np.random.default_rng(1), _speaker(150, 0.85), word, SR, HOP)
  # Same random draws and timing: only the vocal-tract length differs.
  assert short.phones == long.phones
  np.testing.assert_allclose(short.formants_hz / long.formants_hz, 1.2 / 0.85, rtol=1e-5)


@pytest.mark.parametrize("sample_rate", [8000, 22050])
def test_other_sample_rates(sample_rate):
  spk = synthetic.make_speakers(8, 0)[7]
  wave, utt = synthetic.synthesize_utterance(np.random.default_rng(0), spk, 6, sample_rate, 100)
  assert np.all(np.isfinite(wave)) and 0.2 < np.abs(wave).max() < 0.51
  assert utt.f0_hz.shape == (1 + wave.size // 100,)
  assert utt.formants_hz.max() <= 0.45 * sample_rate
  assert _click_ratio(wave, utt, sample_rate) < CLICK_RATIO


# ----------------------------------------------------------------------------- splits


def test_splits_cover_every_speaker_and_word(corpus):
  _, utts = corpus
  for s in range(NUM_SPEAKERS):
    assert {u.split for u in utts if u.speaker == s} == {"train", "test"}
  assert sum(u.split == "test" for u in utts) == NUM_SPEAKERS  # 10% of 10 per speaker.

  plan = synthetic.plan_corpus(8, 200, seed=0)
  assert plan == synthetic.plan_corpus(8, 200, seed=0)
  assert plan != synthetic.plan_corpus(8, 200, seed=1)
  assert len({name for name, _, _, _ in plan}) == 1600
  test = [(s, w) for _, s, w, split in plan if split == "test"]
  train = [(s, w) for _, s, w, split in plan if split == "train"]
  assert len(test) == 160
  for split in (test, train):
    assert {s for s, _ in split} == set(range(8))
    assert {w for _, w in split} == set(range(len(synthetic.WORDS)))
  for s in range(8):
    assert sum(1 for t, _ in test if t == s) == 20
  # Every word is said equally often (within one shuffle) by every speaker.
  for s in range(8):
    counts = np.bincount([w for _, t, w, _ in plan if t == s], minlength=len(synthetic.WORDS))
    assert counts.max() - counts.min() <= 1


# ----------------------------------------------------------------------------- clicks and envelopes


def test_no_clicks(corpus):
  out_dir, utts = corpus
  ratios = [_click_ratio(_read(out_dir, u), u) for u in utts]
  assert max(ratios) < CLICK_RATIO, max(ratios)


def test_click_check_catches_a_filter_that_drops_its_state(monkeypatch):
  real = synthetic._cascade

  def blockwise(x, grid, a, b, c, block=256):
    out = np.empty_like(x)
    for s in range(0, len(x), block):
      out[s:s + block] = real(x[s:s + block], grid - s, a, b, c)
    return out

  monkeypatch.setattr(synthetic, "_cascade", blockwise)
  spk = synthetic.make_speakers(3, 0)
  ratios = []
  for i in range(6):
    wave, utt = synthetic.synthesize_utterance(np.random.default_rng(i), spk[i % 3], i, SR, HOP)
    ratios.append(_click_ratio(wave, utt))
  assert max(ratios) > CLICK_RATIO


def test_onsets_and_offsets_are_ramped():
  spk = synthetic.make_speakers(3, 0)
  edge = int(0.003 * SR)
  checked = 0
  for word in ("so", "shen", "fu", "sanuli", "mus", "em", "ifo", "ma", "ki"):
    for i in range(3):
      wave, utt = synthetic.synthesize_utterance(
          np.random.default_rng(i), spk[i], synthetic.WORDS.index(word), SR, HOP)
      phones = utt.phones
      for j in range(1, len(phones) - 1):
        p, start, end = phones[j]
        if p not in synthetic.FRICATIVES + synthetic.VOWELS:
          continue
        a, b = int(start * SR), int(end * SR)
        mid = _rms(wave[(a + b) // 2 - edge:(a + b) // 2 + edge])
        # Only edges next to silence: elsewhere the neighbour's sound overlaps.
        if phones[j - 1][0] == "sil":
          assert _rms(wave[a:a + edge]) < 0.3 * mid, (word, p, "onset")
          checked += 1
        if phones[j + 1][0] == "sil":
          assert _rms(wave[b - edge:b]) < 0.3 * mid, (word, p, "offset")
          checked += 1
  assert checked == 39
