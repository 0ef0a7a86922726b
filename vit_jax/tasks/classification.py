"""Image classification with a Vision Transformer: data, loss, metrics, fine-tuning."""
import functools
import json
import os

import jax
import numpy as np

from vit_jax import compiling
from vit_jax import errors
from vit_jax import losses
from vit_jax import pretrained
from vit_jax.data import classification as data
from vit_jax.data import pipeline
from vit_jax.models import sizes
from vit_jax.models import vit
from vit_jax.ops import rollout
from vit_jax.tasks import base
from vit_jax.tasks import distillation


CLASSES = 'classes.json'  # Image folders: the class name of each label, saved in the workdir.


class ClassificationTask(base.Task):
  head = ('head/',)
  artifacts = (CLASSES,)

  def build_model(self):
    if 'distillation' in self.config:
      distillation.check(self.config)
    return sizes.build(vit.VisionTransformer, vit.decode_variant, self.config.model,
                       compute=base.compute_options(self.config))

  # Data ----------------------------------------------------------------------------------------
  def model_dim(self):
    return self.model.hidden_size

  def datasets(self):
    return self._datasets

  @functools.cached_property
  def _datasets(self):
    c = self.config.data
    extra = {'tfds_name': c.get('tfds_name')}
    saved = self._saved_classes()
    train = data.make_source(c.name, c.train_split, c.get('data_dir'), classes=saved, **extra)
    classes = getattr(train, 'classes', None)  # Named classes (image folders).
    evaluation = data.make_source(c.name, c.eval_split, c.get('data_dir'), classes=classes,
                                  **extra)
    if train.num_classes != self.model.num_classes:
      raise errors.UserError(
          f'model.num_classes={self.model.num_classes} but dataset {c.name!r} has '
          f'{train.num_classes} classes; set --config.model.num_classes={train.num_classes}.')
    if classes is not None and self.workdir and jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      with open(os.path.join(self.workdir, CLASSES), 'w') as f:
        json.dump(classes, f, indent=0)
    preprocess = data.Preprocess(c.image_size, c.augment, c.flip, c.channels,
                                 c.get('convert_channels', False))
    return base.Datasets(train, evaluation, preprocess)

  def _saved_classes(self):
    """The class names the workdir's checkpoints were trained with (resuming), so that a
    label always means the class it meant in training."""
    path = os.path.join(self.workdir, CLASSES) if self.workdir else None
    if path and os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    return None

  def dummy_batch(self, batch_size):
    c = self.config.data
    return {'image': np.zeros((batch_size, c.image_size, c.image_size, c.channels), np.float32),
            'label': np.zeros((batch_size,), np.int32)}

  # Model ---------------------------------------------------------------------------------------
  def init(self, rng, batch):
    return self.model.init({'params': rng}, batch['image'], train=False)['params']

  def load_pretrained(self, params, path):
    """A ViT .npz (ours or a published one) at a new resolution: the position embeddings are
    resized to the new patch grid (pretrained.load_vit)."""
    size = self.config.data.image_size
    grid = self.model.token_grid(size, size)
    return pretrained.load_vit(params, pretrained.load_npz(path), grid,
                               self.config.pretrained.reset_head, source=f'Checkpoint {path!r}')

  @functools.cached_property
  def teacher(self):
    """DeiT's frozen teacher (tasks/distillation.py), or None."""
    distilling = self.model.distillation  # Checks the distillation settings first.
    return distillation.Teacher(self.config) if distilling else None

  def frozen_params(self):
    return self.teacher.params if self.teacher else None

  def loss_fn(self, params, batch, rng, frozen=None):
    """Cross-entropy with the labels; with a teacher, DeiT's objective (frozen: its
    parameters)."""
    logits, aux = self.model.apply({'params': params}, batch['image'], train=True,
                                   rngs={'dropout': rng})
    accuracy = losses.ratio(losses.weighted_accuracy(logits, batch['label']))
    if self.model.distillation:
      teacher_logits = self.teacher.logits(frozen, batch['image'])
      loss, terms = distillation.loss(self.config, aux, batch['label'], teacher_logits)
      return loss, dict(terms, accuracy=accuracy)
    label_smoothing = self.config.get('label_smoothing', 0.0)
    loss = losses.ratio(losses.weighted_cross_entropy(logits, batch['label'],
                                                      label_smoothing=label_smoothing))
    return loss, {'accuracy': accuracy}

  # Evaluation ----------------------------------------------------------------------------------
  def eval_step(self, params, batch):
    """Accuracy and loss; a DeiT model's heads are also scored alone."""
    logits, aux = self.model.apply({'params': params}, batch['image'])
    weight = batch[pipeline.WEIGHT]
    pairs = {'accuracy': losses.weighted_accuracy(logits, batch['label'], weight),
             'loss': losses.weighted_cross_entropy(logits, batch['label'], weight)}
    if self.model.distillation:
      for head in ('cls', 'distillation'):
        pairs[f'accuracy_{head}_head'] = losses.weighted_accuracy(aux[f'{head}_logits'],
                                                                  batch['label'], weight)
    return pairs, {}

  def representation(self, params, batch):
    """The head's input (`pre_logits`): the class token, or the mean token with 'gap'."""
    return self.model.apply({'params': params}, batch['image'])[1]['pre_logits'], batch['label']

  def logits(self, params, images):
    """Logits [B, C] for preprocessed images [B, H, W, C] (as a teacher, see distillation)."""
    return self.model.apply({'params': params}, images)[0]

  def predict(self, params, images, return_attention=False):
    """(class probabilities [B, C], aux) for preprocessed images [B, H, W, C]."""
    logits, aux = self.model.apply({'params': params}, images,
                                   return_attention=return_attention)
    return jax.nn.softmax(logits), aux

  def attention_maps(self, params, images):
    """(class probabilities [B, C], attention rollout of the class token [B, rows, cols])."""
    if self.model.classifier != 'token':
      raise errors.UserError('Attention rollout follows the class token; '
                             f'model.classifier={self.model.classifier!r} has none.')
    probs, aux = jax.device_get(compiling.run_once(
        lambda p, x: self.predict(p, x, return_attention=True), params, images))
    return probs, rollout.class_token_map(rollout.attention_rollout(aux['attention']),
                                          aux['grid'])

  def write_plots(self, params, workdir, num_images=8):
    """attention_rollout.png: where the class token looks, for a few eval images (models
    with a class token)."""
    from vit_jax import plots
    if self.model.classifier != 'token':
      return []
    _, source, preprocess = self.datasets()
    examples = [preprocess.eval(source[i]) for i in range(min(num_images, len(source)))]
    images = np.stack([e['image'] for e in examples])
    probs, maps = self.attention_maps(params, images)
    shown = (images - images.min()) / max(np.ptp(images), 1e-6)  # Back to [0, 1] for display.
    panels = [(img, m, f'label {e["label"]}, predicted {p.argmax()} ({p.max():.2f})')
              for img, m, e, p in zip(shown, maps, examples, probs)]
    return [plots.attention_maps(panels, os.path.join(workdir, 'attention_rollout.png'),
                                 'Attention rollout of the class token')]
