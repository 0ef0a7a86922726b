"""Semantic segmentation with SETR: data, per-pixel loss, mIoU on the original label maps,
overlay pictures."""
import functools
import os

import jax.numpy as jnp
import numpy as np

from vit_jax import compiling
from vit_jax import errors
from vit_jax import losses
from vit_jax import pretrained
from vit_jax.data import pipeline
from vit_jax.data import segmentation as data
from vit_jax.evaluators import segmentation as metrics
from vit_jax.models import setr
from vit_jax.models import sizes
from vit_jax.models import vit
from vit_jax.tasks import base

DECODER_KEYS = ('decoder', 'decoder_dim', 'norm', 'aux_layers')  # config.model's SETR keys;
# the others are the ViT encoder's.


def pixel_loss(logits, label, weight=None):
  """(Σ cross-entropy, Σ counted pixels) over pixels whose label is not IGNORE; weight [B]
  (evaluation's padding rows) scales each image's pixels."""
  counted = (label != data.IGNORE).astype(jnp.float32)
  if weight is not None:
    counted = counted * weight[:, None, None]
  safe = jnp.where(label == data.IGNORE, 0, label)
  return losses.weighted_cross_entropy(logits, safe, counted)


class SegmentationTask(base.Task):
  head = ('decoder', 'mla_', 'aux_')  # Everything but the encoder: fresh for new classes.

  @functools.cached_property
  def sources(self):
    c = self.config.data
    train, evaluation = data.make_source(c, c.train_split), data.make_source(c, c.eval_split)
    if train.classes != evaluation.classes:
      raise errors.UserError(f'The {c.train_split!r} and {c.eval_split!r} splits have different '
                             f'classes: {train.classes} vs {evaluation.classes}.')
    return train, evaluation

  def build_model(self):
    """SETR with one output per class of the data (config.model.num_classes, if given, must
    agree) on the ViT encoder that config.model's other keys describe."""
    m = dict(self.config.model)
    num_classes = len(self.sources[0].classes)
    if m.pop('num_classes') not in (None, num_classes):
      raise errors.UserError(f'model.num_classes={self.config.model.num_classes} but the data has '
                             f'{num_classes} classes.')
    decoder = {k: m.pop(k) for k in DECODER_KEYS}
    compute = base.compute_options(self.config)
    encoder = sizes.build(vit.VisionTransformer, vit.decode_variant, m, num_classes=0,
                          compute=compute)
    return setr.SETR(num_classes=num_classes, encoder=encoder, **decoder, compute=compute)

  def model_dim(self):
    return self.model.encoder.hidden_size

  def datasets(self):
    c = self.config.data
    return base.Datasets(*self.sources, data.Preprocess(c.canvas, c.scales, c.eval_size, c.flip))

  def dummy_batch(self, batch_size):
    c = self.config.data.canvas
    return {'image': np.zeros((batch_size, c, c, 3), np.float32),
            'label': np.zeros((batch_size, c, c), np.int32)}

  def init(self, rng, batch):
    return base.with_state(self.model.init({'params': rng}, batch['image']))

  def load_pretrained(self, params, path):
    """A ViT .npz (published or exported; its position table resized to this input's grid)
    into the encoder, the decoder fresh; or a whole SETR exported by --mode=export."""
    restored = pretrained.load_npz(path)
    if any(k.startswith('encoder/') for k in restored):
      return self.fit_export(params, restored, path)
    size = self.config.data.canvas
    encoder = pretrained.load_vit(params['encoder'], restored,
                                  self.model.encoder.token_grid(size, size),
                                  source=f'Checkpoint {path!r}')
    return dict(params, encoder=encoder)

  def loss_fn(self, params, batch, rng, frozen=None):
    """Per-pixel cross-entropy (IGNORE left out), plus loss.aux_weight x each auxiliary
    head's."""
    del frozen  # No teacher.
    (logits, aux), state = self.model.apply(
        base.split_state(params), batch['image'], train=True, rngs={'dropout': rng},
        mutable=list(base.STATE_COLLECTIONS))
    loss = losses.ratio(pixel_loss(logits, batch['label']))
    terms = {'pixel_loss': loss}
    for layer, aux_logits in zip(self.model.aux_layers, aux['aux_logits']):
      terms[f'aux_loss_{layer}'] = losses.ratio(pixel_loss(aux_logits, batch['label']))
      loss = loss + self.config.loss.aux_weight * terms[f'aux_loss_{layer}']
    counted = batch['label'] != data.IGNORE
    terms['pixel_accuracy'] = losses.ratio(
        losses.weighted_accuracy(logits, batch['label'], counted))
    return loss, dict(terms, **{base.STATE: state})

  def eval_step(self, params, batch):
    """Loss and pixel accuracy at the preprocessed size; each image's predicted classes for
    the metrics on the original label maps."""
    logits, _ = self.model.apply(base.split_state(params), batch['image'])
    weight = batch[pipeline.WEIGHT]
    counted = (batch['label'] != data.IGNORE) * weight[:, None, None]
    pairs = {'loss': pixel_loss(logits, batch['label'], weight),
             'pixel_accuracy_resized': losses.weighted_accuracy(logits, batch['label'],
                                                                counted)}
    return pairs, {'predicted': logits.argmax(-1).astype(jnp.uint8), 'size': batch['size']}

  def eval_metrics(self, outputs, source):
    """mIoU, pixel and mean class accuracy over the split, each prediction scored at its
    image's original size against the source's label map."""
    n = len(source.classes)
    confusion = np.zeros((n, n), np.int64)
    for i, (predicted, size) in enumerate(zip(outputs['predicted'], outputs['size'])):
      label = source[i]['label']
      confusion += metrics.confusion_matrix(metrics.at_label_size(predicted, size, label.shape),
                                            label, n)
    return metrics.scores(confusion, source.classes)

  def predict(self, params, images):
    """Predicted classes [B, H, W] for preprocessed images."""
    return self.model.apply(base.split_state(params), images)[0].argmax(-1)

  def write_plots(self, params, workdir, num_images=6):
    """segmentation.png: eval images, their label maps and the predictions (at the original
    size)."""
    from vit_jax import plots
    _, source, preprocess = self.datasets()
    examples = [source[i] for i in range(min(num_images, len(source)))]
    batch = [preprocess.eval(e) for e in examples]
    predicted = np.asarray(compiling.run_once(self.predict, params,
                                              np.stack([b['image'] for b in batch])))
    panels = [(e['image'], e['label'], metrics.at_label_size(p, b['size'], e['label'].shape))
              for e, b, p in zip(examples, batch, predicted)]
    return [plots.segmentations(panels, source.classes,
                                os.path.join(workdir, 'segmentation.png'))]
