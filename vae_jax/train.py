"""Training: the per-device ELBO step and the loop around it (logging, evaluation, checkpoints)."""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae_jax import fileio, losses
from vae_jax import workdir as workdir_lib
from vae_jax.audio.features import Normalizer
from vae_jax.checkpoints import Checkpointer
from vae_jax.config import validate
from vae_jax.data.loader import LoaderState, TrainLoader
from vae_jax.data.store import load_dataset
from vae_jax.errors import ConfigError, UserError
from vae_jax.inference import Trained
from vae_jax.models import build_model
from vae_jax.rng import example_keys
from vae_jax.run_log import Progress, RunLog
from vae_jax.signals import Interrupted, StopSignals
from vae_jax.state import TrainState, applied_updates, create_train_state, make_optimizer
from vae_jax.train_eval import evaluate_split, make_eval_step, write_reconstructions

log = logging.getLogger("vae_jax")

class NonFiniteError(UserError):
  """The loss or a gradient became NaN or infinite."""


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array,
               axis_name: str | None = None, *, model: nn.Module,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """One ELBO update on this device's share of the global batch, averaged over `axis_name`."""
  psum = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  mel, mask = batch["mel"], batch["mask"]
  per_device = mel.shape[0]
  device = jax.lax.axis_index(axis_name) if axis_name else 0
  # One key per example of the global batch: the update does not depend on the device count.
  step_key = jax.random.fold_in(key, state.step)
  example_ids = device * per_device + jnp.arange(per_device)
  sample_keys = example_keys(step_key, example_ids)
  frames = psum(mask.sum())
  beta = losses.kl_weight(state.step, config.loss.beta, config.loss.kl_warmup_steps)

  def loss_fn(params):
    terms = model.apply({"params": params}, mel, mask, sample_keys)
    latent_frames = psum(terms["latent_frames"].sum())
    kl_c = psum(jax.lax.stop_gradient(terms["kl_per_channel"]).sum(0)) / latent_frames
    kl = losses.free_bits_kl(terms["kl_per_channel"], terms["latent_frames"], kl_c, config.loss.free_bits)
    # This device's share of the global mean: summing over devices gives the global loss.
    loss = (terms["nll"].sum() + beta * kl.sum()) / frames
    return loss, (terms, kl_c, latent_frames)

  (loss, (terms, kl_c, latent_frames)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads, loss = psum(grads), psum(loss)
  new_state, update_metrics = apply_update(state, grads, loss, config)
  nll, kl = psum(terms["nll"].sum()) / frames, psum(terms["kl"].sum()) / frames
  metrics = {
      "train/loss": loss,
      "train/neg_elbo": nll + kl,
      "train/nll": nll,
      "train/kl": kl,
      "train/kl_per_channel": kl_c,
      "train/mse_normalized": psum(terms["sq_err"].sum()) / (frames * mel.shape[-1]),
      "train/beta": beta,
      "train/latent_frames": latent_frames,
      "train/frames": frames,
      **update_metrics,
  }
  return new_state, metrics


def apply_update(state: TrainState, grads: Any, loss: jax.Array,
                 config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimiser update of (already all-reduced) gradients, kept only if loss and gradients are finite."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.apply_gradients(grads=grads)
  # A non-finite update is never applied; the host stops or counts it (train.on_nonfinite).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  new_state = new_state.replace(step=state.step + 1)
  _, schedule = make_optimizer(config)
  # The rate this update was applied at: the optimiser's own count, which skipped updates do not advance.
  return new_state, {"train/grad_norm": grad_norm,
                     "train/learning_rate": schedule(applied_updates(state.opt_state)),
                     "train/finite": finite}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest intact checkpoint), evaluates, and writes a report.

  SIGTERM or SIGINT stops the run cleanly: during start-up at the end of the current phase
  (nothing new to save), later after the current step, with a checkpoint. Rerunning the
  same command resumes.
  """
  with StopSignals() as signals:
    try:
      return _train_and_evaluate(config, workdir, signals)
    except Interrupted as e:
      print(f"received {e.signal} before the first step of this run: nothing new to save; "
            "rerun the same command to continue", flush=True)
      return {"step": None, "stopped_by_signal": True, "skipped_updates": 0}


@dataclasses.dataclass
class Task:
  """What one objective gives the shared loop: its step, data, evaluation and checkpoint meta."""

  state: TrainState  # Initial host state (restored over when resuming).
  step_fn: Callable  # Pure per-device step(state, batch, key, axis_name) -> (state, metrics).
  loader: TrainLoader
  # (step, host params, writer) -> eval metrics; may write files and media through the writer.
  evaluate: Callable[[int, Any, RunLog], dict[str, Any]]
  summary: Callable[[dict[str, Any]], str]  # One progress line about an evaluation.
  meta: dict[str, Any]  # Saved with every checkpoint, besides the loop's own entries.
  # Mel frames per second of audio; each step reports the valid (unpadded) mel frames it
  # consumed as `train/frames`, for train/frames_per_sec and train/audio_sec_per_sec.
  frames_per_second: float


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        signals: StopSignals) -> dict[str, Any]:
  validate(config)
  devices = _devices(config)  # Device-dependent config checks, before anything is written.
  with contextlib.ExitStack() as cleanup:
    # Held before anything in the workdir is touched: a second run is refused here, so the
    # clean-up of partial saves below only ever meets saves of runs that are gone.
    cleanup.enter_context(workdir_lib.hold(workdir))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                        async_save=config.train.async_checkpoints)
    _close_on_exit(cleanup, ckpt.close)
    ckpt.on_failure = functools.partial(_stop_after_failed_save, signals)
    cleanup.enter_context(_one_line_write_errors(ckpt, workdir))
    # Corrupt newer steps are set aside, so that the steps they held can be saved again.
    resume_step = ckpt.latest_good_step(set_aside=True)
    meta = ckpt.restore_meta(resume_step) if resume_step is not None else None
    _check_resumable(workdir, config, meta)
    _write_config(workdir, config)
    signals.check()
    base_key = jax.random.key(config.seed)
    if config.kind == "prior":
      from vae_jax.prior import training as prior_training  # pylint: disable=g-import-not-at-top

      task = prior_training.make_task(config, workdir, meta, devices, base_key, signals)
    elif config.kind == "adversarial":
      from vae_jax.adversarial import training as adversarial_training  # pylint: disable=g-import-not-at-top

      task = adversarial_training.make_task(config, workdir, meta, devices, base_key, signals)
    else:
      task = _vae_task(config, workdir, meta, devices, base_key, signals)
    _close_on_exit(cleanup, task.loader.close)
    state = task.state
    if meta:
      state, meta = ckpt.restore(state, resume_step)
      task.loader.restore(LoaderState.from_dict(meta["loader"]))
      log.info("resumed from %s", ckpt.step_dir(resume_step))

    from vae_jax.parallel import DataParallel  # pylint: disable=g-import-not-at-top

    parallel = DataParallel(task.step_fn, devices, config.train.parallel)
    writer = RunLog(workdir, enabled=jax.process_index() == 0)
    _close_on_exit(cleanup, writer.close)
    loop = _Loop(config, task, parallel, ckpt, writer, base_key, signals)
    loop.resume_from(meta)
    return loop.run(parallel.put_state(state))


# How long closing one thing (a writer whose thread died on a full disk, say) may take on an
# error path before the run gives up on it.
_CLOSE_TIMEOUT_S = 60.0


def _close_on_exit(stack: contextlib.ExitStack, close: Callable[[], None]) -> None:
  """Registers `close`; while an error is on its way out, a failing or stuck close is passed over."""

  def on_exit(exc_type, exc, tb) -> bool:
    del exc_type, tb
    if exc is None:
      close()
    else:  # The error on its way out is the one to report, not a consequence of it.
      _close_within(close, _CLOSE_TIMEOUT_S)
    return False

  stack.push(on_exit)


def _close_within(close: Callable[[], None], timeout_s: float) -> None:
  """Runs `close` on a daemon thread for at most `timeout_s`, dropping what it raises."""
  def run() -> None:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      log.debug("while stopping on an error, closing failed too: %s", e)

  thread = threading.Thread(target=run, daemon=True, name="close-on-error")
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    log.debug("while stopping on an error, a close did not finish within %.0f s", timeout_s)


def _stop_after_failed_save(signals: StopSignals) -> None:
  """Makes the loop stop after its current step, as a stop signal does; its save then reports the failure."""
  if signals.received is None:
    signals.received = "a failed checkpoint save"


@contextlib.contextmanager
def _one_line_write_errors(ckpt: Checkpointer, workdir: str) -> Iterator[None]:
  """Reports a failed save as the cause of what followed it, and a full disk in one line."""
  try:
    yield
  except Exception as e:
    # A full disk fails the logs too, often before the save that first met it is reported.
    failure = ckpt.take_failure()
    if failure is not None and failure is not e:
      raise failure from None
    full = workdir_lib.disk_full_error(e, workdir)
    if full is not None:
      raise full from None
    raise


def _vae_task(config, workdir: str, meta: dict | None, devices, base_key, signals) -> Task:
  """The VAE objective: ELBO steps on mel crops; evaluation on the test split with reconstructions."""
  normalizer = Normalizer.from_dict(meta["normalizer"]) if meta else None
  data = load_dataset(config, normalizer, process_index=jax.process_index(),
                      process_count=jax.process_count())
  signals.check()
  model = build_model(config)
  state = create_train_state(config, model, jax.random.fold_in(base_key, 0))
  signals.check()
  loader = TrainLoader(data.train, data.normalizer, global_batch=config.train.batch_size,
                       num_local_devices=len(devices), segment_frames=config.data.segment_frames,
                       seed=config.seed, prefetch=config.data.prefetch,
                       process_index=jax.process_index(), process_count=jax.process_count())
  _save_normalizer(workdir, data.normalizer)
  eval_step, e = make_eval_step(model), config.eval
  # The same jitted path eval.py loads a checkpoint into: what a run writes is what eval.py hears.
  trained = Trained(fileio.absolute(workdir), 0, config, model, state.params, data.normalizer,
                    data.feature_config)

  def evaluate(step: int, params, writer: RunLog) -> dict[str, Any]:
    metrics = evaluate_split(eval_step, params, data.test, data.normalizer,
                             jax.random.fold_in(base_key, 2), batch_size=e.batch_size,
                             length_multiple=e.length_multiple, max_utterances=e.max_utterances)
    if data.unseen is not None and len(data.unseen):  # data.holdout: the held-out class's curve beside it.
      metrics.update(evaluate_split(eval_step, params, data.unseen, data.normalizer,
                                    jax.random.fold_in(base_key, 3), batch_size=e.batch_size,
                                    length_multiple=e.length_multiple, max_utterances=e.max_utterances,
                                    prefix="eval/unseen"))
    if jax.process_index() == 0 and e.num_audio_examples:
      trained.step, trained.params = step, params
      write_reconstructions(trained, data.test, workdir, writer)
    return metrics

  return Task(state, functools.partial(train_step, model=model, config=config), loader, evaluate,
              lambda m: (f"eval neg-ELBO {m['eval/loss']:.4f} nats/frame, "
                         f"log-mel MSE {m['eval/logmel_mse']:.4f}"),
              {"normalizer": data.normalizer.to_dict()}, data.feature_config.frames_per_second)


def _devices(config) -> list[jax.Device]:
  """This process's devices for training, checked against the global batch size."""
  devices = jax.local_devices()
  n = config.train.num_devices or len(devices)
  if n > len(devices):
    raise ConfigError(f"config field train.num_devices={n} is out of range: it must be at most the "
                      f"{len(devices)} local devices (0: all of them)")
  processes = jax.process_count()
  if processes > 1 and n != len(devices):
    raise ConfigError(f"config field train.num_devices={n} is out of range: a {processes}-process run "
                      f"uses all {len(devices)} local devices of each process (set it to 0)")
  total = n * processes
  if config.train.batch_size % total:
    where = f"{n} devices" if processes == 1 else f"{total} devices ({processes} processes x {n})"
    raise ConfigError(f"config field train.batch_size={config.train.batch_size} is out of range: it must "
                      f"be a multiple of the {where} in use (per-device batch = batch_size / devices)")
  return devices[:n]


def _check_resumable(workdir: str, config, meta) -> None:
  """Refuses to resume a run whose model or features differ from the config."""
  # The checkpoint's own copy: config.json may be newer than the checkpoint (a crash after
  # writing it), the checkpoint's is what the state was trained with.
  saved = (meta or {}).get("config")
  if saved is None:
    return
  now = json.loads(config.to_json_best_effort())
  for section in ("kind", "model", "features", "prior"):
    if section in saved and saved.get(section) != now.get(section):
      raise ConfigError(f"{workdir} holds a run with a different {section} config: "
                        "use a new --workdir or the original config")


def _write_config(workdir: str, config) -> None:
  if jax.process_index() == 0:
    fileio.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))


def _save_normalizer(workdir: str, normalizer: Normalizer) -> None:
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "normalizer.json"), normalizer.to_dict())


# Each skipped update is reported up to this many times; later ones are only counted.
_SKIP_WARNINGS = 5


class _Loop:
  """The host-side training loop; owns timing, logging, evaluation and checkpoint cadence."""

  def __init__(self, config, task: Task, parallel, ckpt: Checkpointer, writer: RunLog,
               base_key, signals: StopSignals):
    self.config, self.task, self.parallel, self.ckpt = config, task, parallel, ckpt
    self.writer, self.loader, self.base_key, self.signals = writer, task.loader, base_key, signals
    self.skipped = 0
    self.last_eval: dict[str, Any] = {}
    self.last_eval_step = -1

  def resume_from(self, meta: dict | None) -> None:
    """Carries the skip count and the last evaluation over from a checkpoint's meta."""
    if meta:
      self.skipped = int(meta.get("skipped_updates", 0))
      self.last_eval = dict(meta.get("last_eval", {}))
      self.last_eval_step = int(meta.get("last_eval_step", -1))

  def run(self, state) -> dict[str, Any]:
    c = self.config.train
    step = int(jax.device_get(self.parallel.get_state(state).step))
    progress = Progress(c.num_steps, step, c.log_every, c.progress_bar)
    train_key = jax.random.fold_in(self.base_key, 1)
    pending, window, t0 = None, [], time.perf_counter()
    last = c.num_steps if not c.max_steps_per_run else min(c.num_steps, step + c.max_steps_per_run)
    try:
      self.signals.start_training()
      if step >= c.num_steps and self.last_eval_step != step:
        self._evaluate(step, state, progress)  # A stop signal skipped the final evaluation.
      while step < last:
        batch = self.parallel.put_batch(next(self.loader))
        state, metrics = self.parallel(state, batch, train_key)
        step += 1
        if pending is not None:  # Read the previous step while this one runs.
          window.append(self._check(*pending))
        pending = (step, metrics)
        stopping = self._stop_requested(step, last)
        log_now = step % c.log_every == 0 or step == last or stopping
        # A preempted run saves first and leaves evaluation to the resumed one.
        evaluate = not stopping and (step % c.eval_every == 0 or step == c.num_steps)
        save = step % c.checkpoint_every == 0 or step == last or stopping
        if log_now or evaluate or save:  # Evaluate and save only steps known to be finite.
          window.append(self._check(*pending))
          pending = None
        if log_now:
          elapsed = time.perf_counter() - t0
          self._log(step, window, len(window) / max(elapsed, 1e-9), progress)
          window, t0 = [], time.perf_counter()
        if evaluate:
          self._evaluate(step, state, progress)
        if save:
          self._save(step, state)
        if stopping:
          self.ckpt.wait()
          progress.write(f"received {self.signals.received or 'a stop signal on another process'}: "
                         f"saved a checkpoint at step {step}; rerun the same command to resume")
          break
      if pending is not None:
        self._check(*pending)
    finally:
      progress.close()
    self.ckpt.wait()
    if self.skipped:
      log.warning("skipped %d non-finite updates in total (train/skipped_updates)", self.skipped)
    latest = self.ckpt.latest_step()
    result = {"step": step, "num_steps": c.num_steps, "stopped_by_signal": step < last,
              "skipped_updates": self.skipped, "last_eval_step": self.last_eval_step,
              "checkpoint": self.ckpt.step_dir(latest) if latest is not None else None}
    return {**result, **self.last_eval}

  def _stop_requested(self, step: int, last: int) -> bool:
    """Whether to stop after this step; every process of a multi-process run agrees."""
    stop = self.signals.received is not None
    if jax.process_count() == 1:
      return stop
    # The agreement is a collective the host waits for, which also waits for the step just
    # dispatched: every train.stop_check_every steps, so the steps between stay asynchronous.
    # Every process checks at the same steps, so a signal that reaches them a step apart
    # still has all of them save the same step and stop.
    if step % self.config.train.stop_check_every and step != last:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return bool(np.any(multihost_utils.process_allgather(np.int32(stop))))

  def _check(self, step: int, metrics) -> dict[str, Any]:
    m = jax.device_get(metrics)
    if not bool(m["train/finite"]):
      if self.config.train.on_nonfinite == "stop":
        self.ckpt.wait()  # Name a checkpoint that is on disk.
        latest = self.ckpt.latest_step()
        where = self.ckpt.step_dir(latest) if latest is not None else "none (no checkpoint saved yet)"
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step}; last good checkpoint: {where} "
            "(lower optim.learning_rate, or set train.on_nonfinite=skip)")
      self.skipped += 1
      if self.skipped <= _SKIP_WARNINGS:
        later = "; further skips are only counted" if self.skipped == _SKIP_WARNINGS else ""
        log.warning("step %d: non-finite loss or gradient, update skipped (%d so far%s)",
                    step, self.skipped, later)
    return m

  def _log(self, step: int, window, steps_per_sec: float, progress: Progress) -> None:
    # Skipped steps have NaN metrics: average the others, and count the skips.
    finite = [w for w in window if bool(w["train/finite"])]
    keys = [k for k in window[-1] if k not in ("train/finite", "train/latent_frames", "train/frames")]
    mean = {k: np.mean([np.asarray(w[k]) for w in finite], axis=0) for k in keys} if finite else {}
    mean["train/steps_per_sec"] = steps_per_sec
    frames_per_step = np.mean([float(w["train/frames"]) for w in window])
    mean["train/frames_per_sec"] = steps_per_sec * frames_per_step
    mean["train/audio_sec_per_sec"] = mean["train/frames_per_sec"] / self.task.frames_per_second
    mean["train/skipped_updates"] = self.skipped
    self.writer.scalars(step, mean)
    progress.update(step, float(mean.get("train/loss", np.nan)), steps_per_sec)

  def _evaluate(self, step: int, state, progress: Progress) -> None:
    metrics = self.task.evaluate(step, self.parallel.get_state(state).params, self.writer)
    self.writer.scalars(step, metrics)
    self.last_eval = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    self.last_eval_step = step
    progress.write(f"step {step}: {self.task.summary(metrics)}")

  def _save(self, step: int, state) -> None:
    meta = {**self.task.meta, "loader": self.loader.state.to_dict(),
            "config": json.loads(self.config.to_json_best_effort()),
            "skipped_updates": self.skipped, "last_eval": self.last_eval,
            "last_eval_step": self.last_eval_step}
    metrics = {"eval/loss": self.last_eval["eval/loss"]} if self.last_eval_step == step else None
    self.ckpt.save(step, self.parallel.get_state(state), meta, metrics)
