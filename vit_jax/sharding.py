"""One device mesh for 1 CPU to many hosts: batches split over ('data', 'fsdp'), parameters
replicated (the 'fsdp' axis has size 1 until parameter-sharding rules use it)."""
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def make_mesh(fsdp=1, devices=None):
  """A ('data', 'fsdp') mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  if len(devices) % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} does not divide the device count {len(devices)}.')
  grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh):
  """Process-local numpy arrays [b, ...] → global jax.Arrays [b * processes, ...] on the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def check_batch_size(batch_size, mesh, what='batch_size'):
  """The global batch must split evenly over processes and over devices."""
  devices = mesh.devices.size
  if batch_size % devices or batch_size % jax.process_count():
    raise ValueError(f'{what}={batch_size} must be divisible by the number of devices '
                     f'({devices}) and of processes ({jax.process_count()}).')
  return batch_size // jax.process_count()


def to_host(tree):
  """Global arrays → numpy on every process (gathered across processes when there are several)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
