"""Family-agnostic input pipeline on grain: random-access source → fixed-shape dict batches.

Batch `s` of training is a pure function of (seed, s): resuming at step s reproduces the run
exactly, with no iterator state in the checkpoint. Each process reads only its own rows of
every global batch, so N processes see the same global batches as one process would.
An example that fails to load or preprocess is named in the error (its index, or what the
source's `describe(index)` says, e.g. a file path), not lost in a stack trace.
"""
import math

import grain
import jax
import numpy as np
import tqdm

from vit_jax import errors

# Batch keys the trainer itself relies on; every other key belongs to a family's task.
# WEIGHT, float32 [B], in evaluation batches: 1 for a real example, 0 for a copy that pads
# the last batch to full size. Tasks weight their eval sums by it, and the trainer drops the
# padding rows from the outputs it gathers for host-side metrics.
WEIGHT = 'weight'


class MalformedExample(errors.UserError):
  """An example that cannot be read or preprocessed; the message names it."""


def describe(source, index):
  return source.describe(index) if hasattr(source, 'describe') else f'example {index}'


class Subset:
  """The examples of `source` at `indices` (those that fit the maximum lengths, few-shot
  images), still named as in `source` when they fail."""

  def __init__(self, source, indices):
    self.source, self.indices = source, list(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]

  def describe(self, i):
    return describe(self.source, self.indices[i])


class _Indexed:
  """source[i] → (i, example), naming the example if reading it fails."""

  def __init__(self, source, what):
    self.source, self.what = source, what

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return index, call_naming(self.source, index, self.what, self.source.__getitem__, index)


def call_naming(source, index, what, fn, *args):
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    raise MalformedExample(f'{what} {describe(source, index)} is malformed: '
                           f'{type(e).__name__}: {e}') from e


def _host_rows(ds, local_batch):
  """Global batches of local_batch * processes; keep this process's rows of each."""
  return ds.batch(local_batch)[jax.process_index()::jax.process_count()]


def _iterate(ds, num_threads):
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(ds.to_iter_dataset(options))


def train_batches(source, preprocess, local_batch, *, seed, start_step=0, num_threads=2):
  """Endless iterator of this process's training batches, from step `start_step` on.

  `preprocess(example, rng)` gets a numpy Generator seeded by (seed, example position), so
  augmentation is deterministic too. Epochs are reshuffled.
  """
  ds = grain.MapDataset.source(_Indexed(source, 'Training')).shuffle(seed=seed).repeat()
  ds = ds.random_map(lambda pair, rng: call_naming(source, pair[0], 'Training', preprocess,
                                                   pair[1], rng), seed=seed + 1)
  return _iterate(_host_rows(ds, local_batch)[start_step:], num_threads)


class _Padded:
  """Source padded to a multiple of the global batch with copies of the last example; the
  WEIGHT entry is 0 on the copies so metrics count every real example exactly once."""

  def __init__(self, source, preprocess, global_batch):
    self.source, self.preprocess = source, preprocess
    self.length = math.ceil(len(source) / global_batch) * global_batch

  def __len__(self):
    return self.length

  def __getitem__(self, index):
    real = min(index, len(self.source) - 1)
    example = call_naming(self.source, real, 'Evaluation',
                          lambda: self.preprocess(self.source[real]))
    return dict(example, **{WEIGHT: np.float32(index < len(self.source))})


def eval_batches(source, preprocess, local_batch, *, num_threads=2):
  """This process's eval batches over the whole split, the last one padded (WEIGHT 0)."""
  if len(source) == 0:
    raise errors.UserError('The evaluation split is empty.')
  padded = _Padded(source, preprocess, local_batch * jax.process_count())
  return _iterate(_host_rows(grain.MapDataset.source(padded), local_batch), num_threads)


def check_all(source, fn, what, *, num_threads=2, desc=None):
  """fn(example) for every example of `source`, in threads, with a progress bar: the first
  example that cannot be read or processed stops it with an error naming it. → its length."""
  def check(pair):
    index, example = pair
    call_naming(source, index, what, fn, example)
    return index  # Not the output: only whether it could be made.

  ds = grain.MapDataset.source(_Indexed(source, what)).map(check)
  quiet = jax.process_index() != 0
  for _ in tqdm.tqdm(_iterate(ds, num_threads), total=len(source), desc=desc or what,
                     unit='example', leave=False, disable=quiet, dynamic_ncols=True):
    pass
  return len(source)


def num_eval_batches(source, global_batch):
  return math.ceil(len(source) / global_batch)
