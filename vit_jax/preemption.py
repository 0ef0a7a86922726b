"""Stopping cleanly on SIGTERM (preemption, `scancel`, `kill`) or SIGINT (Ctrl-C).

The handler only records the signal; the trainer finishes the step it is in, saves a
checkpoint and raises `Interrupted`. A second signal gets the default behaviour at once.
With several processes they must stop at the same step, so the flag is shared (an all-gather)
at agreed steps only; a lone process never stops on its own.

Not jax's multihost_utils.reached_preemption_sync_point: it hears SIGTERM only, through the
coordination service's own handler (so Ctrl-C would still need this one, and the two would
compete for SIGTERM), and it needs jax.distributed, which a one-process run does not start.
"""
import signal
import threading

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """Training stopped by a signal after saving a checkpoint; running again resumes."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


class StopOnSignal:
  """Context manager: `requested(agree)` says whether to stop after the current step."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python's rule for handlers.
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    self._restore()

  def _restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    self._restore()  # A second signal acts at once (KeyboardInterrupt or termination).
    print(f'\nReceived {signal.Signals(signum).name}: finishing this step and saving a '
          'checkpoint (send it again to stop at once, without saving).', flush=True)

  @property
  def name(self):
    return signal.Signals(self.signum).name if self.signum else None

  def requested(self, agree):
    """True when training should stop after this step. With several processes, decided only
    where `agree` is true (the same steps on every process): stop if any process was told."""
    if jax.process_count() == 1:
      return self.signum is not None
    if not agree:
      return False
    from jax.experimental import multihost_utils
    told = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and told.max():
      self.signum = int(told.max())
    return bool(told.max())
