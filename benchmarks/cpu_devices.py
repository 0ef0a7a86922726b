"""Each family's train step on one CPU device against the same step on every CPU device of the
process, its batch split across them (data parallel, as on that many accelerators), side by
side in one process.

  .venv/bin/python benchmarks/cpu_devices.py                   # 2 devices; every family
  .venv/bin/python benchmarks/cpu_devices.py --devices=4 --only=vit_ti,transformer

XLA:CPU runs one device's operations one at a time, each spread over the cores; its small
matmuls gain little from the second core (benchmarks/matmul_scaling.py). N devices run N
streams of operations at once, one per core. The process is given its devices through
JAX_NUM_CPU_DEVICES, which a training run takes too:
`JAX_NUM_CPU_DEVICES=2 python main.py --config=...`.
"""
import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_kernels  # noqa: E402
import transformer_throughput  # noqa: E402
from timing import alternate, cpu_name, our_train_step, pair_row  # noqa: E402

from configs import vit as vit_config  # noqa: E402


def transformer():
  config, _, data = transformer_throughput.paired_setup(64, 48)
  return config, data


def vit(variant, batch):
  """As benchmarks/vit_throughput.py times it."""
  config = vit_config.get_config(variant)
  config.update_from_flattened_dict({'data.image_size': 224, 'model.num_classes': 1000,
                                     'optim.warmup_steps': 1})
  return conv_kernels.classification(config, batch, 224, 3)


FAMILIES = {  # name: (what, () → (config, one batch))
    'vit_ti': ('ViT-Ti/16, batch 16, 224x224', lambda: vit('Ti/16', 16)),
    'vit_s': ('ViT-S/16, batch 8, 224x224', lambda: vit('S/16', 8)),
    'transformer': ("transformer_throughput.py's Transformer, batch 64, lengths 48",
                    transformer),
    'detr': ("detr_throughput.py's DETR, batch 32, 128x128",
             lambda: conv_kernels.detection('detr', 32)),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--devices', type=int, default=2)
  parser.add_argument('--only', default=','.join(FAMILIES))
  parser.add_argument('--rounds', type=int, default=7)
  args = parser.parse_args()
  jax.config.update('jax_num_cpu_devices', args.devices)  # Before JAX starts.
  devices = jax.devices()
  print(f'\n{cpu_name()}; jax {jax.__version__}; float32 train steps, {args.rounds} '
        'alternating rounds, ms (median, min-max)\n')
  print(f'| train step | 1 device | {len(devices)} devices | speed ratio |')
  print('|---|---|---|---|')
  for family in args.only.split(','):
    what, make = FAMILIES[family]
    config, data = make()
    times = alternate({'one': our_train_step(config, data, devices[:1])[0],
                       'all': our_train_step(config, data, devices)[0]}, args.rounds)
    pair_row(what, times['one'], times['all'])


if __name__ == '__main__':
  main()
