"""Image classification with a Vision Transformer: data, loss, metrics, fine-tuning."""
import os

import jax
import numpy as np
import optax

from vit_jax import pretrained
from vit_jax import tasks
from vit_jax.data import classification as data
from vit_jax.models import vit
from vit_jax.ops import rollout


def build_model(variant=None, **kwargs):
  """VisionTransformer from a variant string ('B/16') plus the explicit (not None) values."""
  params = vit.decode_variant(variant) if variant else {}
  params.update({k: v for k, v in kwargs.items() if v is not None})
  return vit.VisionTransformer(**params)


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
  """Per-example cross-entropy against (optionally smoothed) one-hot labels."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


class ClassificationTask:
  """Everything the trainer asks of a family; the trainer itself knows no model."""
  input_key = 'image'

  def __init__(self, config, workdir=None):
    del workdir  # Nothing to keep beside the checkpoint.
    self.config = config
    self.model = build_model(**config.model, **tasks.compute_options(config))
    self.label_smoothing = config.get('label_smoothing', 0.0)

  # Data ----------------------------------------------------------------------------------------
  def datasets(self):
    """(train source, eval source, Preprocess) for config.data."""
    c = self.config.data
    extra = {'tfds_name': c.get('tfds_name')}
    train = data.make_source(c.name, c.train_split, c.get('data_dir'), **extra)
    evaluation = data.make_source(c.name, c.eval_split, c.get('data_dir'), **extra)
    if train.num_classes != self.model.num_classes:
      raise ValueError(f'model.num_classes={self.model.num_classes} but dataset {c.name!r} has '
                       f'{train.num_classes} classes.')
    preprocess = data.Preprocess(c.image_size, c.augment, c.flip, c.channels)
    return train, evaluation, preprocess

  def dummy_batch(self, batch_size):
    c = self.config.data
    return {'image': np.zeros((batch_size, c.image_size, c.image_size, c.channels), np.float32),
            'label': np.zeros((batch_size,), np.int32)}

  # Model ---------------------------------------------------------------------------------------
  def init(self, rng, batch):
    return self.model.init({'params': rng}, batch['image'], train=False)['params']

  def load_pretrained(self, params, path):
    """Fine-tuning: params from an exported/published .npz, adapted to this model."""
    patch = self.model.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    grid = (self.config.data.image_size // ph, self.config.data.image_size // pw)
    return pretrained.load_vit(params, pretrained.load_npz(path), grid,
                               self.config.pretrained.reset_head)

  def loss_fn(self, params, batch, rng):
    logits, _ = self.model.apply({'params': params}, batch['image'], train=True,
                                 rngs={'dropout': rng})
    loss = softmax_cross_entropy(logits, batch['label'], self.label_smoothing).mean()
    accuracy = (logits.argmax(-1) == batch['label']).mean()
    return loss, {'loss': loss, 'accuracy': accuracy}

  # Evaluation ----------------------------------------------------------------------------------
  def eval_step(self, params, batch):
    """(sums over the real (mask = 1) examples of a padded batch, no host outputs)."""
    logits, _ = self.model.apply({'params': params}, batch['image'], train=False)
    mask = batch['mask']
    loss = softmax_cross_entropy(logits, batch['label'])
    return {'loss': (loss * mask).sum(),
            'correct': ((logits.argmax(-1) == batch['label']) * mask).sum(),
            'count': mask.sum()}, {}

  @staticmethod
  def summarize(sums, outputs, source):
    del outputs, source
    return {'accuracy': sums['correct'] / sums['count'], 'loss': sums['loss'] / sums['count'],
            'count': sums['count']}

  def predict(self, params, images):
    logits, aux = self.model.apply({'params': params}, images, train=False)
    return jax.nn.softmax(logits), aux

  def attention_maps(self, params, images):
    """(class probabilities [B, C], attention rollout of the class token [B, rows, cols])."""
    probs, aux = jax.device_get(self.predict(params, images))
    if self.model.classifier != 'token':
      raise ValueError("Attention rollout follows the class token; model.classifier='gap' "
                       'has none.')
    return probs, rollout.class_token_map(rollout.attention_rollout(aux['attention']),
                                          aux['grid'])

  def write_plots(self, params, workdir, num_images=8):
    """attention_rollout.png: where the class token looks, for a few eval images."""
    from vit_jax import plots
    if self.model.classifier != 'token':
      return None
    _, source, preprocess = self.datasets()
    examples = [preprocess.eval(source[i]) for i in range(min(num_images, len(source)))]
    images = np.stack([e['image'] for e in examples])
    probs, maps = self.attention_maps(params, images)
    shown = (images - images.min()) / max(np.ptp(images), 1e-6)  # Back to [0, 1] for display.
    panels = [(img, m, f'label {e["label"]}, predicted {p.argmax()} ({p.max():.2f})')
              for img, m, e, p in zip(shown, maps, examples, probs)]
    return plots.attention_maps(panels, os.path.join(workdir, 'attention_rollout.png'),
                                'Attention rollout of the class token')
