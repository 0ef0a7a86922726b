"""Helpers shared by the tests: tiny configs, parameters, one loss-and-gradient step, PyTorch
reference models with non-trivial weights."""
import os

import jax
import numpy as np

from configs import detr as detr_config
from configs import rnn as rnn_config
from configs import transformer as transformer_config
from configs import vit as vit_config
from vit_jax import compiling
from vit_jax import tasks

FAMILIES = {'vit': vit_config, 'transformer': transformer_config, 'detr': detr_config,
            'rnn': rnn_config}


def with_devices(count):
  """The environment for a subprocess (main.py, a notebook) with `count` CPU devices and
  otherwise the tests' XLA flags (conftest.py)."""
  flags = os.environ['XLA_FLAGS'].replace('device_count=8', f'device_count={count}')
  return dict(os.environ, XLA_FLAGS=flags)


def tiny(family='vit', **overrides):
  """The family's 'tiny' config with dotted-key overrides ('optim.learning_rate': 1e-3)."""
  config = FAMILIES[family].get_config('tiny')
  config.update_from_flattened_dict(overrides)
  return config


def params_of(state):
  return jax.device_get(state['params'])


def assert_trees_close(a, b, atol, rtol=0.0):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=rtol), a, b)


def training_batch(task, size):
  """The task's first `size` training examples, augmented (seed 0) and stacked."""
  source, _, preprocess = task.datasets()
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda *x: np.stack(x), *[preprocess.train(source[i], rng)
                                                for i in range(size)])


def loss_and_grads(config, workdir, params=None):
  """(params, loss, grads) of the task's loss on 4 training examples (fresh params if None)."""
  task = tasks.get_task(config.task)(config, str(workdir))
  batch = training_batch(task, 4)
  if params is None:
    params = compiling.run_once(task.init, jax.random.key(0), batch)  # Quicker than op by op.
  grad_fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
  (loss, _), grads = grad_fn(params, batch, jax.random.key(1))
  return params, loss, grads


def fit_one_batch(task, steps, learning_rate, size=8):
  """Adam on one batch of `size` augmented training examples for `steps` steps (BatchNorm
  statistics written back, as the trainer does) → ([(loss, {name: scalar})] per step, the
  first step's gradients)."""
  import optax
  from vit_jax.tasks import base
  batch = training_batch(task, size)
  params = compiling.run_once(task.init, jax.random.key(0), batch)
  tx = optax.adam(learning_rate)
  grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)

  @jax.jit
  def step(params, opt_state):
    (loss, terms), grads = grad_fn(params, batch, jax.random.key(1))
    state = terms.pop(base.STATE, {})
    updates, opt_state = tx.update(grads, opt_state)
    return {**optax.apply_updates(params, updates), **state}, opt_state, loss, terms, grads

  opt_state, history, first = tx.init(params), [], None
  for _ in range(steps):
    params, opt_state, loss, terms, grads = step(params, opt_state)
    history.append((float(loss), jax.tree.map(float, terms)))
    first = grads if first is None else first
  return history, first


def perturbed(model):
  """A PyTorch model with every parameter and frozen statistic moved away from its initial
  value (variances into [0.5, 1.5)), so ports of 1s, 0s and BatchNorm statistics are tested."""
  import torch
  with torch.no_grad():
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
      if 'running_var' in name:
        p.copy_(torch.rand_like(p) + 0.5)
      elif p.dtype == torch.float32:
        p.copy_(p + torch.randn_like(p) * 0.1)
  return model
