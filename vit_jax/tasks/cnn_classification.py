"""Image classification with a ResNet, optionally with one of the attention modules for CNNs
(models/resnet.py): the classification task's data, loss and metrics, with BatchNorm's running
statistics carried as model state (base.with_state)."""
import os

import flax
import numpy as np

from vit_jax import compiling
from vit_jax import losses
from vit_jax.data import pipeline
from vit_jax.models import resnet
from vit_jax.tasks import base
from vit_jax.tasks import classification

BACKBONE_FIELDS = ('stem', 'norm', 'block_attention', 'attention_stages')


class CnnClassificationTask(classification.ClassificationTask):

  def build_model(self):
    c = self.config.model
    backbone = resnet.decode_variant(c.variant)
    backbone.update({k: c[k] for k in BACKBONE_FIELDS})
    resnet.check_attention(c.block_attention)
    backbone['attention_args'] = resnet.attention_args(c.block_attention,
                                                       c.attention_args.to_dict())
    if backbone['attention_stages'] is not None:
      backbone['attention_stages'] = tuple(backbone['attention_stages'])
    return resnet.ResNetClassifier(c.num_classes, flax.core.FrozenDict(backbone, frozen_stages=-1),
                                   dtype=base.compute_options(self.config).dtype)

  def model_dim(self):
    return None

  def frozen_params(self):
    return None  # A ResNet has no distillation token: it teaches, it is not taught.

  def init(self, rng, batch):
    return base.with_state(self.model.init({'params': rng}, batch['image'], train=False))

  def load_pretrained(self, params, path):
    return base.Task.load_pretrained(self, params, path)  # Same layout; no grid to resize.

  def loss_fn(self, params, batch, rng, frozen=None):
    del rng, frozen  # No dropout, no teacher.
    logits, state = self.model.apply(base.split_state(params), batch['image'], train=True,
                                     mutable=list(base.STATE_COLLECTIONS))
    loss = losses.ratio(losses.weighted_cross_entropy(
        logits, batch['label'], label_smoothing=self.config.get('label_smoothing', 0.0)))
    return loss, {'accuracy': losses.ratio(losses.weighted_accuracy(logits, batch['label'])),
                  base.STATE: state}

  def eval_step(self, params, batch):
    logits = self.model.apply(base.split_state(params), batch['image'])
    weight = batch[pipeline.WEIGHT]
    return {'accuracy': losses.weighted_accuracy(logits, batch['label'], weight),
            'loss': losses.weighted_cross_entropy(logits, batch['label'], weight)}, {}

  def representation(self, params, batch):
    """The head's input: the last stage's globally pooled features."""
    _, sown = self.model.apply(base.split_state(params), batch['image'], mutable=['intermediates'])
    return sown['intermediates']['pre_logits'][0], batch['label']

  def logits(self, params, images):
    return self.model.apply(base.split_state(params), images)

  def predict(self, params, images, return_attention=False):
    del return_attention
    return flax.linen.softmax(self.logits(params, images)), {}

  def write_plots(self, params, workdir, num_images=8, num_examples=500):
    """The module's attention over a few test images, from its deepest map of at least 4x4:
    spatial_attention.png (CBAM, BAM, GC: the map; non-local, DANet: the weights from the
    centre position) and channel_weights.png (SE, ECA, GSoP, CBAM: the deepest module's
    weights averaged per class over the first `num_examples` test images). A plain ResNet,
    SK and ANL draw none."""
    from vit_jax import plots
    _, source, preprocess = self.datasets()
    examples = [preprocess.eval(source[i]) for i in range(min(num_examples, len(source)))]
    images = np.stack([e['image'] for e in examples])
    labels = np.array([e['label'] for e in examples])
    _, sown = compiling.run_once(lambda p, x: self.model.apply(
        base.split_state(p), x, mutable=['intermediates']), params, images)
    found = {}  # Kind → the deepest map (paths sort by stage).
    for path, value in sorted(flax.traverse_util.flatten_dict(sown.get('intermediates', {}),
                                                              sep='/').items()):
      kind, value = path.split('/')[-1], np.asarray(value[0])
      if kind == 'channel_weights' or (kind in ('spatial', 'pairwise') and
                                       min(value.shape[1:3]) >= 4):
        found[kind] = (path, value)
    paths = []
    shown = (images - images.min()) / max(np.ptp(images), 1e-6)  # Back to [0, 1].
    for kind in ('spatial', 'pairwise'):
      if kind in found:
        path, maps = found[kind]
        if kind == 'pairwise':
          h, w = maps.shape[1:3]
          maps = maps[:, h // 2, w // 2]
          path += f', from position ({h // 2}, {w // 2})'
        panels = [(img, m, f'label {e["label"]}') for img, m, e in
                  zip(shown[:num_images], maps, examples)]
        paths.append(plots.attention_maps(
            panels, os.path.join(workdir, 'spatial_attention.png'), path))
    if 'channel_weights' in found:
      path, weights = found['channel_weights']
      per_class = np.stack([weights[labels == k].mean(0) if (labels == k).any()
                            else np.full(weights.shape[1], np.nan)
                            for k in range(self.model.num_classes)])
      paths.append(plots.channel_weights(
          per_class, os.path.join(workdir, 'channel_weights.png'),
          f'{path}: mean per class'))
    return paths
