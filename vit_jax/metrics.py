"""Metrics to TensorBoard and to a plain `metrics.jsonl`, from process 0 only."""
import json
import os
import sys

import jax
import numpy as np


def summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch, when
  installed, only to accept its tensors (we write floats), and that import costs each run
  about 4 s of start-up (3.9 s on an AMD EPYC Zen 3)."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while this is set.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']  # torch stays importable for everyone else.
  return SummaryWriter


class MetricWriter:

  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard = None
    if self.enabled:
      self.tensorboard = summary_writer_class()(os.path.join(workdir, 'tensorboard'))

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
