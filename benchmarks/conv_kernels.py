"""Each family's train step with XLA:CPU's convolutions on YNNPACK (XLA's default) and on XLA's
own kernels (what the trainer compiles: vit_jax/compiling.py's CPU_STEP), side by side.

  XLA_FLAGS= .venv/bin/python benchmarks/conv_kernels.py                 # the CNN families
  XLA_FLAGS= .venv/bin/python benchmarks/conv_kernels.py --only=detr,resnet --rounds=7
  XLA_FLAGS= .venv/bin/python benchmarks/conv_kernels.py \
      --fusions=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE --only=vit_ti,transformer

--fusions puts another list of YNNPACK library fusions in the first column (XLA's
xla_cpu_experimental_ynn_fusion_type: INDIVIDUAL_DOT, DOT (a dot with the elementwise work
around it), ELTWISE, REDUCE, INDIVIDUAL_CONVOLUTION), against the trainer's.

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
import transformer_throughput  # noqa: E402
from timing import alternate, cpu_name, pair_row  # noqa: E402

from configs import resnet as resnet_config  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax import compiling, sharding, train  # noqa: E402

FUSION_TYPES, = compiling.CPU_STEP  # The option's name.
# XLA's default: the trainer's list with YNNPACK's convolutions back in.
YNN_DEFAULT = {FUSION_TYPES: compiling.CPU_STEP[FUSION_TYPES]
                             + ',LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'}


def detection(family, batch):
  config = detr_throughput.paired_config(family, batch, 128)
  return config, detr_throughput.synthetic_batch(np.random.default_rng(0), batch, 128,
                                                 config.data.max_boxes, 3)


def classification(config, batch, size, channels):
  config.update_from_flattened_dict({'batch_size': batch})
  rng = np.random.default_rng(0)
  return config, {'image': rng.normal(size=(batch, size, size, channels)).astype(np.float32),
                  'label': rng.integers(0, config.model.num_classes, batch).astype(np.int32)}


def bfloat16(config):
  config.dtype = 'bfloat16'
  return config


FAMILIES = {  # name: (what, () → (config, one batch))
    'detr': ("detr_throughput.py's DETR, batch 32, 128x128", lambda: detection('detr', 32)),
    'deformable': ('its Deformable DETR, batch 8', lambda: detection('deformable', 8)),
    'resnet': ('configs/resnet.py (ResNet-10 at quarter width), batch 64, 28x28',
               lambda: classification(resnet_config.get_config(), 64, 28, 1)),
    'resnet_cbam': ('the same with CBAM', lambda: classification(
        resnet_config.get_config('cbam'), 64, 28, 1)),
    'vit_ti': ('ViT-Ti/16, batch 16, 224x224 (one convolution: the patch embedding)',
               lambda: classification(vit_config.get_config('Ti/16'), 16, 224, 3)),
    'vit_ti_bf16': ('the same in bfloat16', lambda: classification(
        bfloat16(vit_config.get_config('Ti/16')), 16, 224, 3)),
    'vit_s': ('ViT-S/16, batch 8, 224x224', lambda: classification(
        vit_config.get_config('S/16'), 8, 224, 3)),
    'transformer': ("transformer_throughput.py's Transformer, batch 64, lengths 48",
                    lambda: transformer_throughput.paired_setup(64, 48)[::2]),
}
CNNS = 'detr,deformable,resnet,resnet_cbam,vit_ti'


def steps(config, data, first=YNN_DEFAULT):
  """{setting: a no-argument function running that compilation of the train step once}: the
  `first` compiler options, then the trainer's."""
  trainer = train.Trainer(config, devices=jax.devices()[:1])
  batch = sharding.global_batch(data, trainer.mesh)
  lowered = trainer.lower_train_step(trainer.abstract_state, batch, trainer.rng)
  runs = {}
  for name, options in (('first', first), ("the trainer's", compiling.CPU_STEP)):
    program, box = lowered.compile(compiler_options=options), {'state': trainer.initial_state()}

    def run(program=program, box=box):
      box['state'], metrics, _ = program(box['state'], batch, trainer.rng, trainer.frozen)
      jax.block_until_ready(metrics)
    runs[name] = run
  return runs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--only', default=CNNS, help=f'some of {",".join(FAMILIES)}')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--fusions', help="the first column's YNNPACK fusion types")
  args = parser.parse_args()
  first, title = YNN_DEFAULT, "YNNPACK's convolutions (XLA's default)"
  if args.fusions:
    first, title = {FUSION_TYPES: args.fusions}, f'YNNPACK fusions {args.fusions}'
  print(f'\n{cpu_name()}; jax {jax.__version__}; train steps (float32 unless named), '
        f'{args.rounds} alternating rounds, ms (median, min-max)\n')
  print(f"| train step | {title} | the trainer's ({compiling.CPU_STEP[FUSION_TYPES]}) | "
        'speed ratio |')
  print('|---|---|---|---|')
  for family in args.only.split(','):
    what, make = FAMILIES[family]
    pair_row(what, *alternate(steps(*make(), first), args.rounds).values())


if __name__ == '__main__':
  main()
