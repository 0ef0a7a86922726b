"""Metrics to TensorBoard and to a plain `metrics.jsonl`, from process 0 only."""
import json
import os

import jax
import numpy as np


class MetricWriter:

  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, scalars):
    """scalars: {'train/loss': 0.3, ...} (device or host numbers)."""
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    for k, v in scalars.items():
      self.tensorboard.add_scalar(k, v, step)
    self.tensorboard.flush()

  def close(self):
    if self.tensorboard is not None:
      self.tensorboard.close()


def average(totals):
  """{name: (Σ w · value, Σ w)} summed over a whole split → {name: mean}; NaN for a metric
  with no weight at all (e.g. a box error on a split without boxes)."""
  return {name: float(total) / float(weight) if weight else float('nan')
          for name, (total, weight) in totals.items()}


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
