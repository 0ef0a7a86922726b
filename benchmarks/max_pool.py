"""The ResNet stem's max pooling: XLA's gradient against ours (layers/conv.py: stem_max_pool),
alone and inside the DETR train step, side by side in one run.

  .venv/bin/python benchmarks/max_pool.py
  .venv/bin/python benchmarks/max_pool.py --rounds=9

1. The pooling's forward and gradient on DETR's stem map (batch 32, 64x64, 16 channels: the
   benchmark DETR's 128x128 images after its stride-2 stem convolution), jitted.
2. detr_throughput.py's DETR train step (float32, backbone trained) built once with
   flax's nn.max_pool in the stem and once with stem_max_pool.
Timed alternately after warm-up; medians with min-max.
"""
import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import detr_throughput  # noqa: E402
from timing import alternate, cpu_name, our_train_step, table  # noqa: E402
from vit_jax.layers import conv  # noqa: E402
from vit_jax.models import resnet  # noqa: E402


def xla_max_pool(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


def detr_step(pool, config, data):
  """Our DETR train step with `pool` as the stem's max pooling (traced now, so the choice
  sticks)."""
  resnet.stem_max_pool = pool
  try:
    step = our_train_step(config, data)[0]
    step()  # Compiled and run once while the choice holds.
  finally:
    resnet.stem_max_pool = conv.stem_max_pool
  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=7)
  args = parser.parse_args()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 64, 64, 16)).astype(np.float32))
  grads = {name: jax.jit(jax.grad(lambda x, pool=pool: (pool(x) ** 2).sum()))
           for name, pool in (('xla', xla_max_pool), ('ours', conv.stem_max_pool))}
  config = detr_throughput.paired_config('detr', 32, 128)
  data = detr_throughput.synthetic_batch(np.random.default_rng(0), 32, 128,
                                         config.data.max_boxes, 3)
  runs = {'pool xla': lambda: jax.block_until_ready(grads['xla'](x)),
          'pool ours': lambda: jax.block_until_ready(grads['ours'](x)),
          'step xla': detr_step(xla_max_pool, config, data),
          'step ours': detr_step(conv.stem_max_pool, config, data)}
  times = alternate(runs, args.rounds)
  print(f'{cpu_name()}, float32, {args.rounds} alternating rounds')
  table('3x3 stride-2 max pooling, forward + gradient, [32, 64, 64, 16]', '',
        [('ours: stem_max_pool', times['pool ours']),
         ("XLA's gradient of nn.max_pool", times['pool xla'])], 0)
  table("DETR train step (detr_throughput.py's, backbone trained)", 'images/s',
        [('stem with stem_max_pool', times['step ours']),
         ('stem with nn.max_pool', times['step xla'])], 32)


if __name__ == '__main__':
  main()
