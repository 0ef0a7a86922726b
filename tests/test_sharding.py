"""FSDP: parameters and optimizer state sharded over 8 simulated devices train as replicated."""
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from configs import vit as vit_config
from vit_jax import sharding
from vit_jax import train


def test_fsdp_rules():
  assert sharding.fsdp_spec((32, 64), 8, min_size=0) == P(None, 'fsdp')  # Largest dimension.
  assert sharding.fsdp_spec((12, 16), 8, min_size=0) == P(None, 'fsdp')  # The divisible one.
  assert sharding.fsdp_spec((12, 6), 8, min_size=0) == P()  # Neither divides.
  assert sharding.fsdp_spec((32, 64), 8, min_size=4096) == P()  # Too small to bother.
  assert sharding.fsdp_spec((32, 64), 1, min_size=0) == P()


def per_device_state_bytes(trainer):
  batch = sharding.global_batch(trainer.task.dummy_batch(trainer.local_batch), trainer.mesh)
  state = trainer.initial_state()
  compiled = trainer.lower_train_step(state, batch, trainer.rng).compile()
  return compiled.memory_analysis().argument_size_in_bytes


def test_fsdp_trains_like_replicated_with_less_memory_per_device(tmp_path):
  config = vit_config.get_config('tiny')
  config.update_from_flattened_dict({'total_steps': 3, 'eval_every': 3,
                                     'mesh.fsdp_min_size': 0})
  replicated, replicated_eval = train.train_and_evaluate(config, str(tmp_path / 'replicated'))
  memory = {1: per_device_state_bytes(train.Trainer(config))}
  config.mesh.fsdp = 8
  sharded, sharded_eval = train.train_and_evaluate(config, str(tmp_path / 'fsdp'))
  memory[8] = per_device_state_bytes(train.Trainer(config))

  kernel = sharded['params']['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']
  assert kernel.sharding.spec == P(None, 'fsdp')  # [32, 64]: 8 columns a device.
  assert kernel.addressable_shards[0].data.shape == (32, 8)
  mu = sharded['opt_state'][1][0].mu['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']
  assert mu['kernel'].sharding.spec == P(None, 'fsdp')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0),
               jax.device_get(replicated['params']), jax.device_get(sharded['params']))
  np.testing.assert_allclose(replicated_eval['loss'], sharded_eval['loss'], rtol=1e-5)
  # Parameters + Adam moments are most of the step's inputs: well under half per device.
  assert memory[8] < 0.4 * memory[1], memory
