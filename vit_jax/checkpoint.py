"""Training-state checkpoints with orbax: keep the last K, resume from the newest good one,
restore onto any device count (the target shardings decide).

Orbax writes each step into a temporary folder and renames it when complete, so a save cut
short never replaces the last good checkpoint (its leftover temporary folder is removed at the
next start). A checkpoint that cannot be read is reported, set aside as `<step>.damaged`
(never deleted) and the previous one is used. A save that would not fit on the disk, or runs
out of space, is one error, errors.DiskFull, naming the last good checkpoint.
"""
import errno
import logging
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
# Private modules, for two defaults of orbax's own (it is pinned below 0.13).
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from vit_jax import errors
from vit_jax import pretrained

# Orbax writes an array held by several devices a slice per device ("replica-parallel"),
# each slice cut by a small program of its own: 248 compiles for 30 small arrays and one of
# 2 MiB on 8 devices (tests/test_train.py's replicated-state test under orbax's default
# handler), seconds on a small model's first save. A slice under 1 MiB saves nothing, so
# such arrays are written whole by one device; otherwise this is the handler orbax
# registers by default.
REPLICA_PARALLEL_MIN_BYTES = 2**20
type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
    jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES),
    override=True, ignore_warnings=True)


class CheckpointMismatch(errors.UserError):
  """The checkpoint holds another model (or another shape of this one)."""


class Checkpointer:
  """The trainer decides when to save (orbax's own interval policy also saves the first step)."""

  def __init__(self, workdir, keep):
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())
    self.directory = directory
    self.saving, self.disk_full = None, False
    self.quiet = _QuietDiskFull()

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state):
    """Saves in the background (orbax writes to a temporary folder, then renames), if the
    disk has room for the state (its size, plus 10% and 1 MiB for orbax's metadata)."""
    self._reporting_disk_full(self.manager.wait_until_finished)  # The previous save's fate.
    self.saving = step
    need = 1.1 * sum(x.nbytes for x in jax.tree.leaves(state)) + 2**20
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise self.disk_full_error(f'checkpoint {step} needs {need / 2**20:.1f} MiB, the disk '
                                 f'has {free / 2**20:.1f} MiB free')
    self._reporting_disk_full(self.manager.save, step, args=ocp.args.StandardSave(state),
                              force=True)

  def disk_full_error(self, what):
    """errors.DiskFull naming the last good checkpoint; what: what ran out of space."""
    self.disk_full = True
    good = [s for s in self.manager.all_steps() if s != self.saving]
    last = f'{self.directory}/{max(good)}' if good else 'none yet'
    return errors.DiskFull(
        f'No space left on device in {self.directory} ({what}). The last good checkpoint is '
        f'{last}; free some space (or move the workdir) and run the same command again to '
        'resume from it.')

  def _reporting_disk_full(self, fn, *args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      if not out_of_space(e):
        raise
      raise self.disk_full_error(f'while saving checkpoint {self.saving}') from None

  def restore(self, step, abstract_state=None):
    """abstract_state: jax.ShapeDtypeStruct leaves carrying the target shardings; None
    restores every array as stored onto this process's first device (no model needed)."""
    try:
      stored = self.manager.item_metadata(step).tree
    except Exception as e:  # pylint: disable=broad-except
      raise IOError(f'cannot read its metadata ({type(e).__name__}: {e})') from e
    if abstract_state is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract_state = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
    else:
      check_matches(stored, abstract_state, f'Checkpoint {self.directory}/{step}')
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def restore_newest(self, abstract_state=None, log=print):
    """(state, step) from the newest readable checkpoint, or (None, None) if there is none.

    A damaged checkpoint (unreadable or truncated files) is reported and renamed
    `<step>.damaged`; the next older one is tried. A checkpoint of another model is an error.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state), step
      except CheckpointMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except
        log(f'Checkpoint {self.directory}/{step} is damaged and was set aside as '
            f'{step}.damaged: {type(e).__name__}: {str(e)[:500]}')
        self._set_aside(step)
    return None, None

  def _set_aside(self, step):
    if jax.process_index() == 0:
      path = os.path.join(self.directory, str(step))
      os.replace(path, _unused(path + '.damaged'))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.manager.reload()

  def wait(self):
    if not self.disk_full:  # Reported once; the failed save is over.
      self._reporting_disk_full(self.manager.wait_until_finished)

  def close(self):
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      if not (self.disk_full and out_of_space(e)):
        raise
    finally:
      if not self.disk_full:  # After one, its writers' last words come as the process exits.
        self.quiet.remove()


class _QuietDiskFull:
  """While a Checkpointer is open: orbax's background writers log every write that a full disk
  refused, and each write cut short by it reports a closed event loop (hundreds of lines in
  all); the Checkpointer reports the full disk once, as errors.DiskFull."""

  def __init__(self):
    self.handlers = list(logging.getLogger().handlers)
    for handler in self.handlers:
      handler.addFilter(self)
    self.previous_hook = sys.unraisablehook
    sys.unraisablehook = self.unraisable

  def filter(self, record):
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else '')
    return 'No space left on device' not in text

  def unraisable(self, unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            'Event loop is closed' in str(unraisable.exc_value)):
      self.previous_hook(unraisable)

  def remove(self):
    for handler in self.handlers:
      handler.removeFilter(self)
    if sys.unraisablehook == self.unraisable:
      sys.unraisablehook = self.previous_hook


def out_of_space(error):
  """Whether `error`, or an error it was raised from, is ENOSPC (orbax wraps them)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC or
        'No space left on device' in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _unused(path):
  candidate, i = path, 1
  while os.path.exists(candidate):
    candidate, i = f'{path}.{i}', i + 1
  return candidate


def check_matches(stored, expected, what):
  """Raises CheckpointMismatch naming the first parameter whose presence, shape or dtype
  differs between a checkpoint's metadata tree and the model's abstract state."""
  stored, expected = _by_path(stored), _by_path(expected)
  hint = 'Was it written with another config? Use a new --workdir for another model.'
  params_first = lambda keys: sorted(keys, key=lambda k: (not k.startswith('params/'), k))
  missing = params_first(set(expected) - set(stored))
  extra = params_first(set(stored) - set(expected))
  if missing or extra:
    stacked = lambda keys: any(pretrained.is_stacked(k) for k in keys)
    if stacked(extra) != stacked(missing):  # Only the block layout differs.
      hint = (f'The checkpoint was written with scan_layers={stacked(extra)}; run with '
              f'--config.scan_layers={stacked(extra)}, or export it to .npz and fine-tune '
              'from that (either layout loads).')
    raise CheckpointMismatch(
        f'{what} does not match the model: the model has {missing[:3]} that the checkpoint '
        f'lacks, the checkpoint has {extra[:3]} that the model lacks. {hint}')
  for key in params_first(expected):
    got, want = stored[key], expected[key]
    if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
      raise CheckpointMismatch(
          f'{what} does not match the model: {key} is {np.dtype(got.dtype).name}'
          f'{list(got.shape)} in the checkpoint but {np.dtype(want.dtype).name}'
          f'{list(want.shape)} in the model. {hint}')


def _by_path(tree):
  """{'params/encoder/kernel': leaf}; named tuples and dicts (as orbax stores them) alike."""
  def name(key):
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {'/'.join(name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def abstract_with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
