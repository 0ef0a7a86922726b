"""Sharding over 8 simulated devices: FSDP trains as replicated; each family as on one device."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import vit as vit_config
from helpers import assert_trees_close
from helpers import params_of
from helpers import tiny
from helpers import training_batch
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


@pytest.mark.multi_device
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


@pytest.mark.multi_device
@pytest.mark.parametrize('family', ['detr', 'transformer'])
def test_a_family_steps_on_eight_devices_as_on_one(family):
  """The other tests train on one device; these two families bring what the ViT's sharded
  test (test_train.py) does not: DETR's matcher per example, the Transformer's text batches.
  SGD, whose update is linear in the gradient: Adam's first step is ±learning rate for any
  gradient, rounding noise included (a key bias's: softmax ignores it)."""
  config = tiny(family, **{'optim.name': 'sgd'})
  one = two_steps(train.Trainer(config, devices=jax.devices()[:1]))
  eight = two_steps(train.Trainer(config))
  assert len(jax.tree.leaves(eight['params'])[0].sharding.device_set) == 8
  assert_trees_close(params_of(one), params_of(eight), atol=1e-5)


def two_steps(trainer):
  batch = training_batch(trainer.task, trainer.config.batch_size)
  state = trainer.initial_state()
  for step in range(2):
    state, _, _ = trainer.train_step(state, sharding.global_batch(batch, trainer.mesh),
                                     jax.random.fold_in(trainer.rng, step))
  return state


@pytest.mark.multi_device
def test_a_program_run_once_compiles_cheaply_to_the_same_sharded_values(optimized_xla):
  """Initialisation compiles without LLVM's expensive passes (compiling.run_once): the same
  parameters as the fully optimised program, to float32 rounding, placed as asked."""
  from vit_jax import compiling
  placed = sharding.batch_sharding(sharding.make_mesh())

  def init(key):
    a, b = jax.random.split(key)
    return {'w': jax.random.truncated_normal(a, -2, 2, (64, 32)),
            'v': jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')(b, (16, 32))}

  cheap = compiling.run_once(init, jax.random.key(0), out_shardings=placed)
  full = jax.jit(init, out_shardings=placed)(jax.random.key(0))
  assert_trees_close(cheap, full, atol=1e-6)
  assert cheap['w'].sharding == placed and len(cheap['w'].addressable_shards) == 8
  assert float(np.std(cheap['w'])) > 0.5  # Real draws, not zeros.
