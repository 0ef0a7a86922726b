"""vit_jax/compiling.py: the trainer's steps on a CPU run convolutions on XLA's own kernels and
matmuls on YNNPACK's, and compute what XLA's default compilation computes."""
import os
import sys

import jax
import numpy as np

from configs import resnet as resnet_config
from helpers import assert_trees_close
from vit_jax import sharding, train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import op_profile  # noqa: E402
from conv_kernels import YNN_DEFAULT  # noqa: E402


def library_fusions(program):
  """{'dot': n, 'convolution': n}: the compiled program's YNNPACK fusions by what they hold."""
  ops = op_profile.hlo_instructions(program.as_text()).values()
  return {op: sum(ynn and op in inner for _, _, inner, ynn in ops)
          for op in ('dot', 'convolution')}


def test_train_step_runs_convolutions_on_xla_kernels_to_the_default_values():
  config = resnet_config.get_config('tiny')
  trainer = train.Trainer(config, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  batch = trainer.task.dummy_batch(8)
  batch['image'] = rng.normal(size=batch['image'].shape).astype(np.float32)
  batch = sharding.global_batch(batch, trainer.mesh)
  lowered = trainer.lower_train_step(trainer.abstract_state, batch, trainer.rng)
  ours, default = lowered.compile(), lowered.compile(compiler_options=YNN_DEFAULT)

  assert library_fusions(default)['convolution'] > 0  # XLA's default: YNNPACK's.
  assert library_fusions(ours) == {'dot': library_fusions(default)['dot'], 'convolution': 0}
  results = [program(trainer.initial_state(), batch, trainer.rng, None)[:2]
             for program in (ours, default)]
  assert float(results[0][1]['loss']) > 0
  assert_trees_close(jax.device_get(results[0]), jax.device_get(results[1]), atol=2e-5,
                     rtol=2e-5)


def test_tracing_a_model_runs_the_collector_rarely_and_cycles_are_still_freed():
  """conftest.py, like main.py, calls collect_garbage_less_often: a tiny ViT's train step
  traces with at most a few young-generation collections where the defaults run dozens."""
  import gc
  import weakref
  from helpers import tiny

  def collections_while_tracing():
    trainer = train.Trainer(tiny('vit'), devices=jax.devices()[:1])
    state = jax.eval_shape(trainer._init, trainer.rng)
    batch = jax.eval_shape(lambda: trainer.task.dummy_batch(8))
    before = gc.get_stats()[0]['collections']
    trainer._train_step.trace(state, batch, trainer.rng, None)
    return gc.get_stats()[0]['collections'] - before

  ours = gc.get_threshold()
  assert ours == (50_000, 20, 20)
  with_ours = collections_while_tracing()  # The first trace, so the costlier one.
  try:
    gc.set_threshold(700, 10, 10)  # CPython's defaults.
    default = collections_while_tracing()
  finally:
    gc.set_threshold(*ours)
  assert with_ours * 20 < default, (with_ours, default)

  class Node:
    pass

  cycle = Node()
  cycle.self = cycle
  alive = weakref.ref(cycle)
  del cycle
  gc.collect(0)
  assert alive() is None
