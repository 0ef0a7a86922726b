"""Training-state checkpoints with orbax: keep the last K, resume from the newest good one,
restore onto any device count (the target shardings decide).

Orbax writes each step into a temporary folder and renames it when complete, so a save cut
short never replaces the last good checkpoint. A checkpoint that cannot be read is reported,
set aside as `<step>.damaged` (never deleted) and the previous one is used.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax import pretrained


class CheckpointMismatch(ValueError):
  """The checkpoint holds another model (or another shape of this one)."""


class Checkpointer:
  """The trainer decides when to save (orbax's own interval policy also saves the first step)."""

  def __init__(self, workdir, keep):
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())
    self.directory = directory

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state):
    """Saves in the background (orbax writes to a temporary folder, then renames)."""
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

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
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


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
