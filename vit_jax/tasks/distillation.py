"""DeiT's teacher (Touvron et al. 2021, §5.2): a classifier this codebase trained and exported,
loaded frozen, whose predictions the student's distillation token learns.

  --config.distillation.teacher=/tmp/resnet_mnist/params.npz   (written by --mode=export)
  --config.distillation.type=hard|soft  --config.distillation.alpha=0.5
  --config.distillation.temperature=3

The teacher's config is its training run's config.json, read from beside the .npz (the
default export place is the workdir) or from distillation.teacher_config.
"""
import json
import os

import jax
import ml_collections

from vit_jax import errors
from vit_jax import losses
from vit_jax import pretrained
from vit_jax import tasks

TYPES = ('none', 'hard', 'soft')
TEACHER_TASKS = ('classification', 'cnn_classification')


def check(config):
  """A distillation setting that cannot work is an error naming it, before anything loads."""
  d, distilled = config.distillation, config.model.get('distillation', False)
  if d.type not in TYPES:
    raise errors.UserError(f'Unknown distillation.type={d.type!r}; expected one of {TYPES}.')
  if d.type != 'none' and not distilled:
    raise errors.UserError(f'distillation.type={d.type!r} needs the distillation token: set '
                           '--config.model.distillation=True (the config argument deit does).')
  if d.type == 'none' and distilled:
    raise errors.UserError('model.distillation=True trains a distillation head, which needs a '
                           "teacher: set distillation.type='hard' or 'soft' and "
                           'distillation.teacher=PATH.npz.')
  if d.type != 'none' and not d.teacher:
    raise errors.UserError(f'distillation.type={d.type!r} needs a teacher: set '
                           '--config.distillation.teacher=PATH.npz (a classifier exported with '
                           '--mode=export).')
  if not 0 <= d.alpha <= 1 or d.temperature <= 0:
    raise errors.UserError(f'distillation.alpha={d.alpha} must lie in [0, 1] and '
                           f'distillation.temperature={d.temperature} be positive.')


class Teacher:
  """The frozen teacher: its task (model) and its parameters (numpy, as exported)."""

  def __init__(self, config):
    d = config.distillation
    config_path = d.teacher_config or os.path.join(os.path.dirname(d.teacher), 'config.json')
    if not os.path.exists(config_path):
      raise errors.NotFound(
          f'The teacher {d.teacher!r} comes without its config: no {config_path!r}. Set '
          "distillation.teacher_config to the teacher run's config.json (in its workdir).")
    with open(config_path) as f:
      teacher_config = ml_collections.ConfigDict(json.load(f))
    if teacher_config.task not in TEACHER_TASKS:
      raise errors.UserError(f'The teacher {config_path!r} is a {teacher_config.task!r} model; '
                             f'a classifier can learn from one of {TEACHER_TASKS}.')
    for key in ('data.image_size', 'data.channels', 'model.num_classes'):
      ours, theirs = _get(config, key), _get(teacher_config, key)
      if ours != theirs:
        raise errors.UserError(f'The teacher ({config_path!r}) has {key}={theirs}, the student '
                               f'{ours}; a teacher must see the same images and classes.')
    self.task = tasks.get_task(teacher_config.task)(teacher_config)
    shapes = jax.eval_shape(self.task.init, jax.random.key(0), self.task.dummy_batch(2))
    self.params = pretrained.fit(shapes, pretrained.load_npz(d.teacher),
                                 source=f'Teacher {d.teacher!r}',
                                 what=f'its config ({config_path})')

  def logits(self, params, images):
    """[B, H, W, C] → the teacher's logits [B, classes], with no gradient flowing back."""
    return jax.lax.stop_gradient(self.task.logits(params, images))


def _get(config, dotted):
  for key in dotted.split('.'):
    config = config[key]
  return config


def loss(config, aux, labels, teacher_logits):
  """DeiT's objective from the two heads' logits (aux of the ViT with distillation=True):
  (1 − α) · CE(class head, labels) + α · the distillation head's term, which is CE with the
  teacher's argmax ('hard', the paper's default) or τ²-scaled KL to the teacher's softmax at
  temperature τ ('soft'). Also returns the terms, to log."""
  d = config.distillation
  base = losses.ratio(losses.weighted_cross_entropy(
      aux['cls_logits'], labels, label_smoothing=config.get('label_smoothing', 0.0)))
  student = aux['distillation_logits']
  if d.type == 'hard':
    distill = losses.ratio(losses.weighted_cross_entropy(student, teacher_logits.argmax(-1)))
  else:
    distill = losses.ratio(losses.weighted_mean(
        losses.soft_distillation(student, teacher_logits, d.temperature)))
  return (1 - d.alpha) * base + d.alpha * distill, {'class_loss': base,
                                                    'distillation_loss': distill}
