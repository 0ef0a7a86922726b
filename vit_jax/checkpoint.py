"""Training-state checkpoints with orbax: keep the last K, resume from the newest, restore
onto any device count (the target shardings decide)."""
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """The trainer decides when to save (orbax's own interval policy also saves the first step)."""

  def __init__(self, workdir, keep):
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(directory, options=options)
    self.directory = directory

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state):
    """Saves in the background (orbax writes to a temporary folder, then renames)."""
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step, abstract_state):
    """abstract_state: jax.ShapeDtypeStruct leaves carrying the target shardings."""
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
