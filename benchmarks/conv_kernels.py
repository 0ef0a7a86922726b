"""Each family's train step with XLA:CPU's convolutions on YNNPACK (XLA's default) and on XLA's
own kernels (what the trainer compiles: vit_jax/compiling.py's CPU_STEP), side by side.

  XLA_FLAGS= .venv/bin/python benchmarks/conv_kernels.py                 # every family
  XLA_FLAGS= .venv/bin/python benchmarks/conv_kernels.py --only=detr,resnet --rounds=7

One process, one device; both programs are compiled from the same lowered step and called
alternately on their own copies of the state, medians over the rounds.
"""
import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_throughput  # noqa: E402
from timing import alternate, cpu_name, pair_row  # noqa: E402

from configs import resnet as resnet_config  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax import compiling, sharding, train  # noqa: E402

# XLA's default: the trainer's list with YNNPACK's convolutions back in.
YNN_DEFAULT = {name: f'{fusions},LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
               for name, fusions in compiling.CPU_STEP.items()}


def detection(family, batch):
  config = detr_throughput.paired_config(family, batch, 128)
  return config, detr_throughput.synthetic_batch(np.random.default_rng(0), batch, 128,
                                                 config.data.max_boxes, 3)


def classification(config, batch, size, channels):
  config.update_from_flattened_dict({'batch_size': batch})
  rng = np.random.default_rng(0)
  return config, {'image': rng.normal(size=(batch, size, size, channels)).astype(np.float32),
                  'label': rng.integers(0, config.model.num_classes, batch).astype(np.int32)}


FAMILIES = {  # name: (what, () → (config, one batch))
    'detr': ("detr_throughput.py's DETR, batch 32, 128x128", lambda: detection('detr', 32)),
    'deformable': ('its Deformable DETR, batch 8', lambda: detection('deformable', 8)),
    'resnet': ('configs/resnet.py (ResNet-10 at quarter width), batch 64, 28x28',
               lambda: classification(resnet_config.get_config(), 64, 28, 1)),
    'resnet_cbam': ('the same with CBAM', lambda: classification(
        resnet_config.get_config('cbam'), 64, 28, 1)),
    'vit_ti': ('ViT-Ti/16, batch 16, 224x224 (one convolution: the patch embedding)',
               lambda: classification(vit_config.get_config('Ti/16'), 16, 224, 3)),
}


def steps(config, data):
  """{setting: a no-argument function running that compilation of the train step once}."""
  trainer = train.Trainer(config, devices=jax.devices()[:1])
  batch = sharding.global_batch(data, trainer.mesh)
  lowered = trainer.lower_train_step(trainer.abstract_state, batch, trainer.rng)
  runs = {}
  for name, options in (('YNNPACK convolutions (XLA default)', YNN_DEFAULT),
                        ("XLA's own convolutions (the trainer's)", compiling.CPU_STEP)):
    program, box = lowered.compile(compiler_options=options), {'state': trainer.initial_state()}

    def run(program=program, box=box):
      box['state'], metrics, _ = program(box['state'], batch, trainer.rng, trainer.frozen)
      jax.block_until_ready(metrics)
    runs[name] = run
  return runs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--only', default=','.join(FAMILIES))
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  print(f'\n{cpu_name()}; jax {jax.__version__}; float32 train steps, {args.rounds} alternating '
        'rounds, ms (median, min-max)\n')
  print("| train step | YNNPACK's convolutions (XLA's default) | XLA's own (the trainer's) | "
        'speed ratio |')
  print('|---|---|---|---|')
  for family in args.only.split(','):
    what, make = FAMILIES[family]
    pair_row(what, *alternate(steps(*make()), args.rounds).values())


if __name__ == '__main__':
  main()
