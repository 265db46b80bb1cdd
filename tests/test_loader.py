"""Deterministic training batches, loader state, and whole-utterance evaluation batches."""

import threading

import numpy as np
import pytest

from vae_jax.audio.features import Normalizer
from vae_jax.data.loader import LoaderState, TrainLoader, eval_batches
from vae_jax.data.store import Split
from vae_jax.errors import ConfigError

T = 16  # Segment frames.
F = 5  # Mel bins.
LENGTHS = (40, 3, 70, 16, 25, 9, 100, 17, 33, 15, 50, 64, 1, 28)


def make_split(lengths=LENGTHS) -> Split:
  """Frames whose bins 0 and 1 hold (utterance index, frame index), so crops can be traced."""
  rng = np.random.default_rng(1)
  parts = []
  for i, n in enumerate(lengths):
    x = rng.normal(3.0, 2.0, size=(n, F)).astype(np.float32)
    x[:, 0], x[:, 1] = i, np.arange(n)
    parts.append(x)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  labels = {"speaker": np.arange(len(lengths), dtype=np.int32) % 3}
  return Split([f"u{i}" for i in range(len(lengths))], [f"u{i}.wav" for i in range(len(lengths))],
               labels, np.concatenate(parts), offsets)


SPLIT = make_split()
NORM = Normalizer(np.linspace(-1, 1, F).astype(np.float32),
                  np.linspace(0.5, 2, F).astype(np.float32))


def loader(**kw) -> TrainLoader:
  args = dict(global_batch=4, num_local_devices=1, segment_frames=T, seed=0)
  args.update(kw)
  return TrainLoader(SPLIT, NORM, **args)


def take(it, k: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(k)]


def flat(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """The batch's (mel, mask) rows in the global order of the examples."""
  return (batch["mel"].reshape(-1, T, F), batch["mask"].reshape(-1, T))


def assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["mel"], y["mel"])
    np.testing.assert_array_equal(x["mask"], y["mask"])


def trace(mel_TxF: np.ndarray, mask_T: np.ndarray) -> tuple[int, int, int]:
  """(utterance, start frame, valid frames) of one crop."""
  valid = int(mask_T.sum())
  raw = NORM.denormalize(mel_TxF[:valid])
  return int(round(raw[0, 0])), int(round(raw[0, 1])), valid


def test_batch_shapes_masks_and_contents():
  it = loader(global_batch=8, num_local_devices=4)
  seen_short = False
  for batch in take(it, 2 * it.steps_per_epoch):
    # Flat: the parallel wrapper, not the loader, splits the rows over the 4 devices.
    assert batch["mel"].shape == (8, T, F) and batch["mel"].dtype == np.float32
    assert batch["mask"].shape == (8, T) and batch["mask"].dtype == np.float32
    for mel, mask in zip(*flat(batch)):
      utt, start, valid = trace(mel, mask)
      n = LENGTHS[utt]
      assert valid == min(n, T)
      np.testing.assert_array_equal(mask, np.arange(T) < valid)  # Valid frames come first.
      assert 0 <= start <= max(n - T, 0)
      source = SPLIT.utterance(utt)[start:start + valid]
      np.testing.assert_array_equal(mel[:valid], NORM.normalize(source))
      assert np.all(mel[valid:] == 0.0)  # Padding is exactly zero, not normalised zeros.
      seen_short |= n < T
  assert seen_short


def test_each_epoch_is_a_permutation():
  it = loader()
  assert it.steps_per_epoch == len(LENGTHS) // 4
  epochs = []
  for _ in range(3):
    utts = [trace(m, k)[0] for b in take(it, it.steps_per_epoch) for m, k in zip(*flat(b))]
    assert len(set(utts)) == len(utts) == it.steps_per_epoch * 4
    epochs.append(utts)
  assert it.state == LoaderState(3, 0)
  assert epochs[0] != epochs[1] != epochs[2]


def test_same_seed_same_batches_other_seed_other_batches():
  a, b, c = take(loader(seed=7), 5), take(loader(seed=7), 5), take(loader(seed=8), 5)
  assert_same(a, b)
  assert not all(np.array_equal(x["mel"], y["mel"]) for x, y in zip(a, c))
  assert not np.array_equal(a[0]["mel"], a[1]["mel"])


def test_negative_seed_is_usable_and_deterministic():
  a, b, c = take(loader(seed=-3), 3), take(loader(seed=-3), 3), take(loader(seed=3), 3)
  assert_same(a, b)
  assert not np.array_equal(a[0]["mel"], c[0]["mel"])


def test_batches_do_not_depend_on_local_device_count():
  ref = take(loader(global_batch=8, num_local_devices=1), 6)
  for d in (2, 4, 8):
    other = take(loader(global_batch=8, num_local_devices=d), 6)
    for x, y in zip(ref, other):
      assert y["mel"].shape[0] == 8
      for u, v in zip(flat(x), flat(y)):
        np.testing.assert_array_equal(u, v)


def test_process_slices_concatenate_to_the_global_batch():
  ref = take(loader(global_batch=8, num_local_devices=1), 6)
  for count, devices in ((2, 2), (2, 4), (4, 1)):
    parts = [take(loader(global_batch=8, num_local_devices=devices, process_index=p,
                         process_count=count), 6) for p in range(count)]
    for step, x in enumerate(ref):
      mel = np.concatenate([flat(p[step])[0] for p in parts])
      mask = np.concatenate([flat(p[step])[1] for p in parts])
      np.testing.assert_array_equal(mel, flat(x)[0])
      np.testing.assert_array_equal(mask, flat(x)[1])


@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.parametrize("k", [2, 3, 5])  # 3 = steps_per_epoch: the restore sits on a rollover.
def test_restore_continues_the_sequence(prefetch, k):
  ref = take(loader(), k + 4)
  first = loader(prefetch=prefetch)
  take(first, k)
  state = LoaderState.from_dict(first.state.to_dict())
  first.close()
  second = loader(prefetch=prefetch)
  second.restore(state)
  assert_same(take(second, 4), ref[k:])
  second.close()


def test_prefetch_gives_the_same_sequence_and_restores_midway():
  ref = take(loader(), 8)
  it = loader(prefetch=2)
  assert_same(take(it, 3), ref[:3])
  state = it.state
  take(it, 2)  # Moves past `state`, with more batches queued behind.
  it.restore(state)
  assert_same(take(it, 5), ref[3:])
  it.close()


def test_restore_past_the_end_of_an_epoch_starts_the_next():
  it = loader()
  it.restore(LoaderState(2, it.steps_per_epoch + 5))
  assert it.state == LoaderState(3, 0)
  assert_same([next(it)], [loader().batch_at(LoaderState(3, 0))])


def test_prefetch_error_reaches_the_consumer():
  it = loader(prefetch=2)

  def broken(state):
    if state.index == 1:
      raise RuntimeError("broken batch")
    return TrainLoader.batch_at(it, state)

  it.batch_at = broken
  errors = []

  def consume():
    try:
      take(it, 3)
    except RuntimeError as e:
      errors.append(e)

  thread = threading.Thread(target=consume, daemon=True)
  thread.start()
  thread.join(timeout=20)
  assert not thread.is_alive(), "the consumer waits forever for a batch that never comes"
  assert [str(e) for e in errors] == ["broken batch"]
  assert it.state == LoaderState(0, 1)  # The failed batch was not consumed.
  it.close()


def test_loader_refuses_impossible_batches():
  with pytest.raises(ConfigError, match="train.batch_size"):
    loader(global_batch=6, num_local_devices=4)
  with pytest.raises(ConfigError, match="train.batch_size"):
    loader(global_batch=4, num_local_devices=1, process_count=3)
  with pytest.raises(ConfigError, match="train.batch_size"):
    loader(global_batch=16)


def test_eval_batches_cover_every_utterance_once():
  batch_size, multiple = 4, 8
  seen = []
  for batch in eval_batches(SPLIT, NORM, batch_size, multiple):
    mel, mask, index = batch["mel"], batch["mask"], batch["index"]
    t = mel.shape[1]
    assert mel.shape == (batch_size, t, F)
    assert mask.shape == (batch_size, t) and index.shape == (batch_size,)
    real = index[index >= 0]
    longest = max(LENGTHS[i] for i in real)
    assert t % multiple == 0 and longest <= t < longest + multiple
    for j, i in enumerate(index):
      if i < 0:  # Padding row.
        assert mask[j].sum() == 0 and np.all(mel[j] == 0)
        continue
      n = LENGTHS[i]
      np.testing.assert_array_equal(mask[j], np.arange(t) < n)
      np.testing.assert_array_equal(mel[j, :n], NORM.normalize(SPLIT.utterance(i)))
      assert np.all(mel[j, n:] == 0)
    seen.extend(real.tolist())
  assert sorted(seen) == list(range(len(LENGTHS)))
  assert len(seen) % batch_size != 0  # So the padding rows above were exercised.


def test_eval_batches_max_utterances():
  batches = eval_batches(SPLIT, NORM, 4, 8, max_utterances=5)
  seen = [i for b in batches for i in b["index"] if i >= 0]
  assert sorted(seen) == [0, 1, 2, 3, 4]
