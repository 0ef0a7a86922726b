"""Tasks: what the one trainer needs from a model family (data, init, loss, eval metrics)."""
import jax.numpy as jnp

DTYPES = ('float32', 'bfloat16')


def compute_options(config):
  """Model keyword arguments for config.dtype (compute; parameters, softmax and loss stay
  float32, matmuls accumulate in float32), config.remat and config.scan_layers."""
  if config.dtype not in DTYPES:
    raise ValueError(f'Unknown dtype {config.dtype!r}; expected one of {DTYPES}.')
  return {'dtype': jnp.dtype(config.dtype), 'remat': config.remat,
          'scan_layers': config.scan_layers}


def get_task(name):
  from vit_jax.tasks import classification
  from vit_jax.tasks import detection
  from vit_jax.tasks import translation
  tasks = {'classification': classification.ClassificationTask,
           'detection': detection.DetectionTask,
           'translation': translation.TranslationTask}
  if name not in tasks:
    raise ValueError(f'Unknown task {name!r}; expected one of {sorted(tasks)}.')
  return tasks[name]
