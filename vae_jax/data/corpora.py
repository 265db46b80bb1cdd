"""Corpora as lists of labelled audio files with a deterministic train/test split."""

import collections
import dataclasses
import hashlib
import logging
import os
import re
from typing import Any, Mapping

from vae_jax.audio.io import AUDIO_EXTENSIONS, is_audio_path
from vae_jax.errors import ConfigError, DataError

log = logging.getLogger("vae_jax")

FSDD_PATTERN = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
FSDD_TEST_INDICES = range(5)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One utterance: where its audio is, its split and its integer labels."""

  name: str  # Unique within the corpus (relative path without extension).
  path: str
  split: str  # "train", "test", or "unseen" (a class left out by data.holdout).
  labels: Mapping[str, int]
  augment: str = ""  # Perturbation of the audio before extraction (vae_jax.data.augment); "" for none.


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The usable-looking files of a corpus, and the ones passed over while listing it."""

  name: str
  entries: tuple[Entry, ...]
  label_names: Mapping[str, tuple[str, ...]]  # label -> class names, indexed by label value.
  skipped: tuple[tuple[str, str], ...] = ()  # (file, reason), already warned about.


def build_corpus(config) -> Corpus:
  """Lists the corpus named by `config.data.corpus`, with the class named by `data.holdout` left out."""
  return holdout_split(_listed_corpus(config), config.data.get("holdout", ""))


def _listed_corpus(config) -> Corpus:
  kind = config.data.corpus
  if kind == "synthetic":
    return synthetic_corpus(config)
  if kind == "fsdd":
    return fsdd_corpus(_existing_dir(config.data.path, "fsdd"))
  if kind == "folder":
    return folder_corpus(_existing_dir(config.data.path, "folder"), config.data.test_fraction,
                         config.data.speaker_level)
  raise ConfigError(f"data.corpus={kind!r} is not a corpus: use 'synthetic', 'fsdd' or 'folder'")


def holdout_split(corpus: Corpus, holdout: str) -> Corpus:
  """Every utterance of one class (holdout = "label=class") in the "unseen" split; the rest keep theirs.

  "" keeps the corpus's own split. The train and test splits then hold the other
  classes' train and test utterances, so no train or test utterance has the class.
  """
  if not holdout:
    return corpus
  if not isinstance(holdout, str) or holdout.count("=") != 1:
    raise ConfigError(f"data.holdout={holdout!r} is not a holdout: use '' (the corpus's own split) or "
                      "'label=class', e.g. 'speaker=jackson' or 'digit=7'")
  label, value = (part.strip() for part in holdout.split("="))
  if label not in corpus.label_names:
    labels = ", ".join(sorted(corpus.label_names)) or "none"
    raise ConfigError(f"data.holdout={holdout!r}: the {corpus.name} corpus has no label {label!r} "
                      f"(its labels: {labels}): use one of them, as in 'label=class'")
  names = corpus.label_names[label]
  if value not in names:
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise ConfigError(f"data.holdout={holdout!r}: the {corpus.name} corpus has no {label} {value!r} "
                      f"(its {label} classes: {shown})")
  index = names.index(value)
  entries = tuple(dataclasses.replace(e, split="unseen") if e.labels.get(label) == index else e
                  for e in corpus.entries)
  return dataclasses.replace(corpus, entries=entries)


def _existing_dir(path: str, kind: str) -> str:
  if not path:
    raise ConfigError(f"data.path is empty: set --config.data.path to the {kind} audio directory")
  if not os.path.isdir(path):
    raise DataError(f"data.path={path!r} is not a directory: point --config.data.path at the {kind} audio")
  return path


def fsdd_corpus(path: str) -> Corpus:
  """Free Spoken Digit Dataset: `{digit}_{speaker}_{index}.wav`, test = index 0-4."""
  rows, skipped = [], []
  for fname in sorted(os.listdir(path)):
    m = FSDD_PATTERN.match(fname)
    if m is None:
      if not fname.startswith("."):
        skipped.append(_skip(fname, "not an FSDD file name ({digit}_{speaker}_{index}.wav)"))
      continue
    rows.append((fname, int(m.group(1)), m.group(2), int(m.group(3))))
  if not rows:
    raise DataError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {path}: check data.path")
  speakers = tuple(sorted({r[2] for r in rows}))
  entries = tuple(
      Entry(name=fname[:-4], path=os.path.join(path, fname),
            split="test" if index in FSDD_TEST_INDICES else "train",
            labels={"digit": digit, "speaker": speakers.index(spk)})
      for fname, digit, spk, index in rows)
  return Corpus("fsdd", entries, {"digit": tuple(str(d) for d in range(10)), "speaker": speakers},
                tuple(skipped))


def folder_corpus(path: str, test_fraction: float, speaker_level: int = 1) -> Corpus:
  """Any tree of audio files; split by a hash of the relative path.

  The speaker is the directory `speaker_level` levels above each file (1: its parent;
  2 for LibriSpeech's speaker/chapter/file.flac), named by its path from the root.
  """
  if speaker_level < 1:
    raise ConfigError(f"config field data.speaker_level={speaker_level} is out of range: it must be at "
                      "least 1 (1: the parent directory of each file is its speaker)")
  files, side = [], collections.Counter()
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for fname in sorted(names):
      if fname.startswith("."):
        continue
      rel = os.path.relpath(os.path.join(root, fname), path)
      if is_audio_path(fname):
        files.append(rel)
      else:  # Transcripts and notes beside the audio are expected, not a problem with the corpus.
        side[os.path.splitext(fname)[1].lower() or fname] += 1
  if not files:
    raise DataError(f"no {', '.join(AUDIO_EXTENSIONS)} files under {path}: check data.path")
  if side:
    kinds = ", ".join(f"{n} {ext}" for ext, n in side.most_common(5)) + (", ..." if len(side) > 5 else "")
    log.info("ignored the files that are not audio under %s: %s", path, kinds)
  parents = [_speaker_dir(rel, speaker_level) for rel in files]
  speakers = tuple(sorted(set(parents))) if any(parents) else ()
  stems = [os.path.splitext(rel)[0] for rel in files]
  stem_counts = collections.Counter(stems)
  entries = []
  for rel, stem, parent in zip(files, stems, parents):
    labels = {"speaker": speakers.index(parent)} if speakers else {}
    # Names key the feature cache, so `a.wav` and `a.flac` must not share one.
    name = stem if stem_counts[stem] == 1 else rel
    entries.append(Entry(name=name, path=os.path.join(path, rel),
                         split=hash_split(rel, test_fraction), labels=labels))
  return Corpus("folder", tuple(entries), {"speaker": speakers} if speakers else {})


def _speaker_dir(relpath: str, level: int) -> str:
  """The directory `level` levels above a file, as a path from the corpus root ('' above the root)."""
  parts = relpath.replace(os.sep, "/").split("/")[:-1]
  return "/".join(parts[:max(len(parts) - level + 1, 0)])


def _skip(path: str, reason: str) -> tuple[str, str]:
  log.warning("skipped %s: %s", path, reason)
  return path, reason


def hash_split(relpath: str, test_fraction: float) -> str:
  """'test' for a stable `test_fraction` of paths, independent of the rest of the corpus."""
  h = int.from_bytes(hashlib.sha256(relpath.replace(os.sep, "/").encode()).digest()[:8], "big")
  return "test" if h / 2**64 < test_fraction else "train"


def synthetic_corpus(config) -> Corpus:
  """The embedded source-filter corpus, generated into the cache on first use."""
  from vae_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  out_dir, utterances = _synthetic_utterances(config)
  entries = tuple(
      Entry(name=u.name, path=os.path.join(out_dir, u.name + ".wav"), split=u.split,
            labels={"speaker": u.speaker, "word": u.word, "vowel": u.vowel})
      for u in utterances)
  names = {"speaker": tuple(f"spk{i}" for i in range(config.synthetic.num_speakers)),
           "word": tuple(synthetic.WORDS), "vowel": tuple(synthetic.VOWELS)}
  return Corpus("synthetic", entries, names)


def synthetic_ground_truth(config) -> dict[str, Any]:
  """{name: synthetic.Utterance} of the config's synthetic corpus, with f0 and F1-F3 per mel frame."""
  if config.data.corpus != "synthetic":
    raise ConfigError(f"data.corpus={config.data.corpus!r} has no ground-truth factors: only the "
                      "'synthetic' corpus records them")
  return {u.name: u for u in _synthetic_utterances(config)[1]}


def _synthetic_utterances(config) -> tuple[str, list]:
  """The corpus directory and its utterances; generated on first use, read afterwards."""
  from vae_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  s = config.synthetic
  out_dir = os.path.join(
      cache_root(config), "synthetic",
      f"sr{config.features.sample_rate}-hop{config.features.hop_length}-spk{s.num_speakers}"
      f"-utt{s.utterances_per_speaker}-seed{s.seed}")
  # Factor frames use the feature hop, so frame i of a factor track is mel frame i.
  utterances = synthetic.generate_corpus(
      out_dir, sample_rate=config.features.sample_rate, num_speakers=s.num_speakers,
      utterances_per_speaker=s.utterances_per_speaker, seed=s.seed,
      factor_hop=config.features.hop_length, progress=True)
  return out_dir, utterances


def cache_root(config: Any) -> str:
  """The cache directory: data.cache_dir, $VAE_JAX_CACHE, or ~/.cache/vae-jax."""
  root = config.data.cache_dir or os.environ.get("VAE_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "vae-jax")
  os.makedirs(root, exist_ok=True)
  return root
