"""What each of DETR's training options costs per step, side by side in one run.

  .venv/bin/python benchmarks/detr_recipes.py

The default shapes config (configs/detr.py: batch 32 of 64x64 images, stride 8, on-device
matcher) and the same with one change each: Group DETR's 4 query groups, sigmoid focal
classes, stride 16 (`model.dilation=1`). Each is one jitted train step on the same
synthetic batch, timed alternately after warm-up; medians with min-max. README's DETR
options table reads its "cost per step" column from here.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detr_throughput import synthetic_batch  # noqa: E402
from timing import alternate, cpu_name, our_train_step, table  # noqa: E402
from configs import detr as detr_config  # noqa: E402

CHANGES = {'model.query_groups=4': {'model.query_groups': 4},
           'loss.focal_alpha=0.25, loss.class_weight=2': {'loss.focal_alpha': 0.25,
                                                          'loss.class_weight': 2.0},
           'model.dilation=1 (stride 16)': {'model.dilation': 1},
           'the default': {}}  # Last: the baseline of the speed ratio.


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=20)
  args = parser.parse_args()
  config = detr_config.get_config()
  data = synthetic_batch(np.random.default_rng(0), config.batch_size, config.data.canvas,
                         config.data.max_boxes, 3)
  runs = {}
  for name, change in CHANGES.items():
    config = detr_config.get_config()
    config.update_from_flattened_dict(change)
    runs[name], _ = our_train_step(config, data)
  times = alternate(runs, args.rounds)
  table(f'DETR train step on the shapes default (batch {config.batch_size}, '
        f'{config.data.canvas}x{config.data.canvas}), one change each; {args.rounds} '
        f'alternating rounds, {cpu_name()}', 'images/s',
        [(name, times[name]) for name in CHANGES], config.batch_size)


if __name__ == '__main__':
  main()
