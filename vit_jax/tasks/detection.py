"""Object detection with DETR: data, Hungarian matching, set loss, COCO evaluation, plots."""
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import tasks
from vit_jax.data import detection as data
from vit_jax.evaluators import coco
from vit_jax.models import detr
from vit_jax.ops import boxes as box_ops
from vit_jax.ops import matching


def make_source(c, split):
  if c.name == 'shapes':
    root = c.data_dir or os.path.join(
        tempfile.gettempdir(), 'vit_jax_shapes',
        f'seed{c.shapes_seed}_train{c.shapes_train_images}_eval{c.shapes_eval_images}_'
        f'size{c.shapes_min_size}-{c.shapes_max_size}_objects{c.shapes_max_objects}_'
        f'{c.shapes_object_size[0]:.3f}-{c.shapes_object_size[1]:.3f}')
    size = c.shapes_train_images if split == 'train' else c.shapes_eval_images
    data.write_shapes(root, split, size, seed=c.shapes_seed, min_size=c.shapes_min_size,
                      max_size=c.shapes_max_size, max_objects=c.shapes_max_objects,
                      object_size=c.shapes_object_size)
    return data.Coco(root, split)
  if c.name == 'coco':
    return data.Coco(c.data_dir, split)
  if c.name == 'tfds':
    return data.Tfds(c.tfds_name, split, c.data_dir)
  raise ValueError(f"Unknown data.name {c.name!r} for detection; expected 'shapes', 'coco' or "
                   "'tfds'.")


def set_criterion(outputs, targets, *, num_classes, eos_coef=0.1, class_weight=1.0,
                  l1_weight=5.0, giou_weight=2.0, matcher='scipy', image_weight=None):
  """DETR's set loss (§3.1, A.2), summed over the decoder layers given.

  outputs: 'logits' [L, B, Q, C+1], 'boxes' [L, B, Q, 4]; targets: 'labels' [B, T],
  'boxes' [B, T, 4] (cx, cy, w, h), 'valid' [B, T]. image_weight [B] (0 for padding copies).
  Cross-entropy with no-object weight eos_coef, normalised like torch's weighted mean; L1 and
  GIoU over matched pairs, normalised by the number of target boxes (at least 1) in the
  global batch. → (loss, metrics of the last layer).
  """
  logits, pred = outputs['logits'], outputs['boxes']
  num_layers, batch, num_queries = logits.shape[:3]
  weight = jnp.ones(batch) if image_weight is None else image_weight
  valid = targets['valid'] & (weight[:, None] > 0)
  layers = lambda x: jnp.broadcast_to(x[None], (num_layers,) + x.shape)
  cost = matching.match_cost(logits, pred, layers(targets['labels']), layers(targets['boxes']),
                             layers(valid), class_weight=class_weight, l1_weight=l1_weight,
                             giou_weight=giou_weight)
  assign = matching.hungarian(cost, layers(valid), matcher)  # [L, B, T]: query of each target.
  matched = (assign[..., None, :] == jnp.arange(num_queries)[:, None]) & valid[None, :, None]
  target_class = jnp.where(matched.any(-1), (matched * targets['labels'][None, :, None]).sum(-1),
                           num_classes)  # [L, B, Q]
  class_w = jnp.where(target_class == num_classes, eos_coef, 1.0) * weight[None, :, None]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, target_class[..., None], -1)[..., 0]
  loss_ce = (nll * class_w).sum((1, 2)) / class_w.sum((1, 2))

  num_boxes = jnp.maximum(valid.sum(), 1)
  matched_pred = jnp.take_along_axis(pred, jnp.maximum(assign, 0)[..., None], axis=2)
  target_boxes = layers(targets['boxes'])
  loss_l1 = (jnp.abs(matched_pred - target_boxes).sum(-1) * valid).sum((1, 2)) / num_boxes
  giou = box_ops.generalized_iou(box_ops.cxcywh_to_xyxy(matched_pred),
                                 box_ops.cxcywh_to_xyxy(target_boxes))
  loss_giou = ((1 - giou) * valid).sum((1, 2)) / num_boxes
  per_layer = class_weight * loss_ce + l1_weight * loss_l1 + giou_weight * loss_giou

  # Logged for the last layer, as in DETR: error of the matched queries' classes, and how far
  # the number of predicted objects is from the number of targets.
  matched_logits = jnp.take_along_axis(logits[-1], jnp.maximum(assign[-1], 0)[..., None], 1)
  correct = (matched_logits.argmax(-1) == targets['labels']) * valid
  predicted = (logits[-1].argmax(-1) != num_classes).sum(-1)
  cardinality = jnp.abs(predicted - valid.sum(-1)) * weight
  metrics = {'loss_ce': loss_ce[-1], 'loss_bbox': loss_l1[-1], 'loss_giou': loss_giou[-1],
             'class_error': 100.0 * (1.0 - correct.sum() / num_boxes),
             'cardinality_error': cardinality.sum() / jnp.maximum(weight.sum(), 1)}
  return per_layer.sum(), metrics


def postprocess(logits, pred_boxes):
  """[B, Q, C+1], [B, Q, 4] → scores [B, Q], labels [B, Q] (no-object dropped: the best real
  class of each query), boxes [B, Q, 4] as normalised (x0, y0, x1, y1)."""
  prob = jax.nn.softmax(logits, -1)[..., :-1]
  return prob.max(-1), prob.argmax(-1), box_ops.cxcywh_to_xyxy(pred_boxes)


class DetectionTask:

  def __init__(self, config, workdir=None):
    del workdir
    self.config = config
    c = config.data
    self.train_source = make_source(c, c.train_split)
    self.eval_source = make_source(c, c.eval_split)
    if self.train_source.categories != self.eval_source.categories:
      raise ValueError(f'The {c.train_split!r} and {c.eval_split!r} splits have different '
                       f'categories: {self.train_source.categories} vs '
                       f'{self.eval_source.categories}.')
    m = dict(config.model)
    if m.pop('num_classes') not in (None, len(self.train_source.categories)):
      raise ValueError(f'model.num_classes={config.model.num_classes} but the data has '
                       f'{len(self.train_source.categories)} categories.')
    if m['num_queries'] < c.max_boxes:
      raise ValueError(f'model.num_queries={m["num_queries"]} must be ≥ data.max_boxes='
                       f'{c.max_boxes}: every target needs a query.')
    self.model = detr.DETR(num_classes=len(self.train_source.categories), **m,
                           **tasks.compute_options(config))
    self.loss_config = dict(config.loss)
    self.aux_loss = self.loss_config.pop('aux_loss')

  def datasets(self):
    c = self.config.data
    preprocess = data.Preprocess(c.canvas, c.scales, c.eval_size, c.max_boxes, c.crop_scales,
                                 c.crop_min, c.flip)
    return self.train_source, self.eval_source, preprocess

  def dummy_batch(self, batch_size):
    canvas = self.config.data.canvas
    return {'image': np.zeros((batch_size, canvas, canvas, 3), np.float32),
            'pixel_mask': np.ones((batch_size, canvas, canvas), bool)}

  def init(self, rng, batch):
    return self.model.init({'params': rng}, batch['image'], batch['pixel_mask'])['params']

  def criterion(self, outputs, batch, image_weight=None):
    if not self.aux_loss:
      outputs = jax.tree.map(lambda x: x[-1:], outputs)
    return set_criterion(outputs, batch, num_classes=self.model.num_classes,
                         image_weight=image_weight, **self.loss_config)

  def loss_fn(self, params, batch, rng):
    outputs, _ = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'],
                                  train=True, rngs={'dropout': rng})
    loss, metrics = self.criterion(outputs, batch)
    return loss, dict(metrics, loss=loss)

  def eval_step(self, params, batch):
    """Sums of the set loss over real images, and every query's prediction for COCO AP."""
    outputs, _ = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'])
    mask = batch['mask']
    loss, metrics = self.criterion(outputs, batch, image_weight=mask)
    scores, labels, boxes = postprocess(outputs['logits'][-1], outputs['boxes'][-1])
    sums = {'loss': loss * mask.sum(), 'class_error': metrics['class_error'] * mask.sum(),
            'cardinality_error': metrics['cardinality_error'] * mask.sum(), 'count': mask.sum()}
    return sums, {'scores': scores, 'labels': labels, 'boxes': boxes, 'mask': mask,
                  'image_id': batch['image_id'], 'orig_size': batch['orig_size']}

  def detections(self, outputs):
    """Host outputs → COCO result records, boxes scaled to each image's original size."""
    ids = self.train_source.category_ids
    out = []
    for o in outputs:
      for scores, labels, boxes, mask, image_id, (h, w) in zip(
          o['scores'], o['labels'], o['boxes'], o['mask'], o['image_id'], o['orig_size']):
        if not mask:
          continue
        for score, label, (x0, y0, x1, y1) in zip(scores, labels, boxes * [w, h, w, h]):
          out.append({'image_id': int(image_id), 'category_id': ids[int(label)],
                      'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                      'score': float(score)})
    return out

  def summarize(self, sums, outputs, source):
    metrics = coco.evaluate(source.ground_truth(), self.detections(outputs),
                            verbose=jax.process_index() == 0)
    count = sums['count']
    metrics.update({k: sums[k] / count for k in ('loss', 'class_error', 'cardinality_error')})
    return dict(metrics, count=count)

  def predict(self, params, batch):
    """(scores, labels, normalised xyxy boxes, aux with attention) for a preprocessed batch."""
    outputs, aux = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'])
    return postprocess(outputs['logits'][-1], outputs['boxes'][-1]) + (aux,)

  def write_plots(self, params, workdir, num_images=4, threshold=0.7):
    """detections.png (boxes on eval images) and detr_attention.png (where each object's
    query looks in the last decoder layer, first image)."""
    from vit_jax import plots
    preprocess = self.datasets()[2]
    examples = [self.eval_source[i] for i in range(min(num_images, len(self.eval_source)))]
    batch = [preprocess.eval(e) for e in examples]
    batch = {k: np.stack([b[k] for b in batch]) for k in ('image', 'pixel_mask')}
    scores, labels, boxes, aux = jax.device_get(self.predict(params, batch))
    names = self.train_source.categories
    panels, kept = [], []
    for e, s, lab, b in zip(examples, scores, labels, boxes):
      h, w = e['image'].shape[:2]
      keep = np.flatnonzero(s > threshold)
      kept.append(keep)
      panels.append((e['image'], b[keep] * [w, h, w, h],
                     [f'{names[lab[q]]} {s[q]:.2f}' for q in keep]))
    path = plots.detections(panels, os.path.join(workdir, 'detections.png'),
                            f'Predicted boxes (score > {threshold})')
    cross = aux['decoder_attention'][-1]['cross'][0].mean(0)  # [Q, h*w], first image.
    fh, fw = aux['feature_mask'].shape[1:]
    valid = aux['feature_mask'][0]
    rows, cols = valid.any(1).sum(), valid.any(0).sum()  # The unpadded part of the grid.
    image = examples[0]['image']
    objects = [(box, caption, cross[q].reshape(fh, fw)[:rows, :cols])
               for q, box, caption in zip(kept[0], panels[0][1], panels[0][2])]
    if objects:
      plots.attention_per_object(image, objects, os.path.join(workdir, 'detr_attention.png'))
      # Encoder self-attention from each detected object's centre (DETR Fig. 3).
      points = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in panels[0][1]]
      maps = self.encoder_attention_at(aux, 0, points, image.shape[:2])
      plots.attention_at_points(image, points, maps,
                                os.path.join(workdir, 'encoder_attention.png'))
    return path

  @staticmethod
  def encoder_attention_at(aux, index, points, image_size):
    """The last encoder layer's attention (mean over heads) from the feature cells under
    `points` ((x, y) pixels of batch element `index`, an image of `image_size` (h, w) before
    resizing), each as a map over the unpadded feature grid (which covers the image)."""
    weights = np.asarray(aux['encoder_attention'][-1][index]).mean(0)  # [h*w, h*w]
    valid = np.asarray(aux['feature_mask'][index])
    fh, fw = valid.shape
    rows, cols = valid.any(1).sum(), valid.any(0).sum()
    maps = []
    for x, y in points:
      r = min(int(y / image_size[0] * rows), rows - 1)
      c = min(int(x / image_size[1] * cols), cols - 1)
      maps.append(weights[r * fw + c].reshape(fh, fw)[:rows, :cols])
    return maps
