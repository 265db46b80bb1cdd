"""Stop signals: SIGTERM / SIGINT end start-up at its next phase and training after a checkpoint."""

import os
import signal


class Interrupted(BaseException):
  """A stop signal during start-up; a BaseException so that `except Exception` cannot swallow it."""

  def __init__(self, signal_name: str):
    super().__init__(signal_name)
    self.signal = signal_name


class StopSignals:
  """Records SIGTERM and SIGINT; start-up stops at its next phase, training after its current step.

  The handler only sets a flag: an exception raised from a signal handler can land in a
  garbage-collection callback, where Python prints and drops it.
  """

  def __init__(self):
    self.received: str | None = None
    self.deferred = False  # True once the loop runs: a signal then asks for a checkpoint first.
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[s] = signal.signal(s, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        break
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)

  def check(self) -> None:
    """Ends start-up (raises Interrupted) if a signal came."""
    if self.received is not None:
      raise Interrupted(self.received)

  def start_training(self) -> None:
    """From now on a signal means: save after the current step, then stop."""
    self.deferred = True
    self.check()

  def _handle(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:
      if signum == signal.SIGINT:  # Ctrl-C twice: the user does not want to wait for the save.
        raise KeyboardInterrupt
      return
    self.received = name
    then = ("saving a checkpoint after the current step" if self.deferred
            else "stopping before training starts")
    # os.write, not print: the handler may run while the main thread is inside a print.
    os.write(2, f"received {name}: {then}\n".encode())
