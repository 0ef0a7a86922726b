"""Helpers shared by the trainer tests: tiny configs, parameters, one loss-and-gradient step."""
import jax
import numpy as np

from configs import detr as detr_config
from configs import rnn as rnn_config
from configs import transformer as transformer_config
from configs import vit as vit_config
from vit_jax import tasks

FAMILIES = {'vit': vit_config, 'transformer': transformer_config, 'detr': detr_config,
            'rnn': rnn_config}


def tiny(family='vit', **overrides):
  """The family's 'tiny' config with dotted-key overrides ('optim.learning_rate': 1e-3)."""
  config = FAMILIES[family].get_config('tiny')
  config.update_from_flattened_dict(overrides)
  return config


def params_of(state):
  return jax.device_get(state['params'])


def assert_trees_close(a, b, atol, rtol=0.0):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=rtol), a, b)


def loss_and_grads(config, workdir, params=None):
  """(params, loss, grads) of the task's loss on 4 training examples (fresh params if None)."""
  task = tasks.get_task(config.task)(config, str(workdir))
  train_source, _, preprocess = task.datasets()
  rng = np.random.default_rng(0)
  batch = [preprocess.train(train_source[i], rng) for i in range(4)]
  batch = jax.tree.map(lambda *x: np.stack(x), *batch)
  if params is None:
    params = task.init(jax.random.key(0), batch)
  grad_fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
  (loss, _), grads = grad_fn(params, batch, jax.random.key(1))
  return params, loss, grads
