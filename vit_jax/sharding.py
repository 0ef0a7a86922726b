"""One device mesh for 1 CPU to many hosts.

Batches split over ('data', 'fsdp'). Parameters and optimizer state are replicated, or with
mesh.fsdp > 1 sharded over 'fsdp' (ZeRO-3 / FSDP: XLA gathers each weight where it is used) by
three rules: an array smaller than `min_size` elements is replicated; otherwise its largest
dimension divisible by the axis size is split; otherwise it is replicated. Activations are
kept batch-sharded by logical axis names (flax `nn.with_logical_constraint`, rules below).
"""
import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vit_jax import errors

BATCH_AXES = ('data', 'fsdp')
# Logical activation axes → mesh axes; names without a rule ('length', 'embed') stay whole.
LOGICAL_RULES = (('batch', BATCH_AXES),)


def make_mesh(fsdp=1, devices=None):
  """A ('data', 'fsdp') mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  if len(devices) % fsdp:
    raise errors.UserError(f'mesh.fsdp={fsdp} does not divide the device count {len(devices)}.')
  grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def fsdp_spec(shape, axis_size, min_size):
  """The FSDP rules for one array (see the module docstring)."""
  if axis_size == 1 or int(np.prod(shape)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0:
      return P(*[('fsdp' if d == dim else None) for d in range(len(shape))])
  return P()


def state_shardings(abstract_state, mesh, min_size=2**14):
  """A NamedSharding per leaf: the optimizer's moments follow their parameters' shapes."""
  size = mesh.shape['fsdp']
  return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, size, min_size)),
                      abstract_state)


@contextlib.contextmanager
def logical_rules(mesh):
  """Trace under this so models' `nn.with_logical_constraint` calls bind to the mesh."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # (set_mesh is refused in jit.)
    with nn.logical_axis_rules(LOGICAL_RULES):
      yield


def traced_under(mesh, fn):
  """fn, traced (by jit) with the logical rules bound to `mesh`."""
  def wrapped(*args):
    with logical_rules(mesh):
      return fn(*args)
  return wrapped


def global_batch(local_batch, mesh):
  """Process-local numpy arrays [b, ...] → global jax.Arrays [b * processes, ...] on the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def check_batch_size(batch_size, mesh, what='batch_size'):
  """The global batch must split evenly over processes and over devices."""
  devices = mesh.devices.size
  if batch_size % devices or batch_size % jax.process_count():
    raise errors.UserError(f'{what}={batch_size} must be divisible by the number of devices '
                           f'({devices}) and of processes ({jax.process_count()}).')
  return batch_size // jax.process_count()


def to_host(tree):
  """Global arrays → numpy on every process (gathered across processes when there are several)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
