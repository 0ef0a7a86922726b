"""Object detection with DETR: data, Hungarian matching, set loss, COCO evaluation, plots."""
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import compiling
from vit_jax import errors
from vit_jax import losses
from vit_jax import pretrained
from vit_jax.data import detection as data
from vit_jax.data import pipeline
from vit_jax.evaluators import coco
from vit_jax.models import detr
from vit_jax.models import resnet
from vit_jax.ops import boxes as box_ops
from vit_jax.ops import matching
from vit_jax.tasks import base


def make_source(c, split):
  if c.name == 'shapes':
    return data.Coco(data.shapes(c, split), split)
  if c.name == 'coco':
    return data.Coco(c.data_dir, split)
  if c.name == 'tfds':
    return data.Tfds(c.tfds_name, split, c.data_dir)
  raise errors.UserError(
      f"Unknown data.name {c.name!r} for detection; expected 'shapes', 'coco' or "
      "'tfds'.")


def matched_terms(outputs, targets, *, num_classes, eos_coef=0.1, class_weight=1.0,
                  l1_weight=5.0, giou_weight=2.0, matcher='scipy', focal=None):
  """The set loss's parts (§3.1, A.2) per decoder layer and image, after Hungarian matching.

  outputs: 'logits' [L, B, Q, C+1], 'boxes' [L, B, Q, 4]; targets: 'labels' [B, T],
  'boxes' [B, T, 4] (cx, cy, w, h), 'valid' [B, T]. → [B, T] 'assign' (the last layer's
  query of each target, −1 for padding); [L, B] sums 'ce' (Σ_q w_q · NLL, with
  w_q = eos_coef for no-object, else 1), 'ce_weight' (Σ_q w_q), 'l1' and 'giou' (Σ over
  matched boxes of the L1 distance and of 1 − GIoU); [B] 'boxes' (targets), 'correct'
  (matched queries of the last layer with the right class), 'cardinality' (|predicted
  objects − targets| in the last layer).

  focal=(α, γ): Deformable DETR's sigmoid classes instead ('logits' [L, B, Q, C], no
  no-object class): 'ce' is the focal loss summed over every query and class (unmatched
  queries are negatives for every class), 'ce_weight' the image's target boxes, and a query
  predicts an object when its best score is over 0.5.
  """
  logits, pred = outputs['logits'], outputs['boxes']
  num_layers, _, num_queries = logits.shape[:3]
  valid = targets['valid']
  layers = lambda x: jnp.broadcast_to(x[None], (num_layers,) + x.shape)
  cost = matching.match_cost(logits, pred, layers(targets['labels']), layers(targets['boxes']),
                             layers(valid), class_weight=class_weight, l1_weight=l1_weight,
                             giou_weight=giou_weight, focal=focal)
  assign = matching.hungarian(cost, layers(valid), matcher)  # [L, B, T]: query of each target.
  matched = (assign[..., None, :] == jnp.arange(num_queries)[:, None]) & valid[None, :, None]
  target_class = jnp.where(matched.any(-1), (matched * targets['labels'][None, :, None]).sum(-1),
                           num_classes)  # [L, B, Q]
  if focal is None:
    class_w = jnp.where(target_class == num_classes, eos_coef, 1.0)
    nll = losses.softmax_cross_entropy(logits, target_class)
    ce, ce_weight = (nll * class_w).sum(-1), class_w.sum(-1)
    predicted = (logits[-1].argmax(-1) != num_classes).sum(-1)
  else:  # One-hot of the matched class; no-object (= num_classes) is all zeros.
    onehot = jax.nn.one_hot(target_class, num_classes)
    ce = losses.sigmoid_focal_loss(logits, onehot, *focal).sum((-2, -1))  # [L, B]
    ce_weight = layers(valid.sum(-1).astype(jnp.float32))
    predicted = (jax.nn.sigmoid(logits[-1]).max(-1) > 0.5).sum(-1)
  matched_pred = jnp.take_along_axis(pred, jnp.maximum(assign, 0)[..., None], axis=2)
  target_boxes = layers(targets['boxes'])
  l1 = jnp.abs(matched_pred - target_boxes).sum(-1)
  giou = box_ops.generalized_iou(box_ops.cxcywh_to_xyxy(matched_pred),
                                 box_ops.cxcywh_to_xyxy(target_boxes))
  matched_logits = jnp.take_along_axis(logits[-1], jnp.maximum(assign[-1], 0)[..., None], 1)
  return {'assign': assign[-1], 'ce': ce, 'ce_weight': ce_weight,
          'l1': (l1 * valid).sum(-1), 'giou': ((1 - giou) * valid).sum(-1),
          'boxes': valid.sum(-1), 'correct': ((matched_logits.argmax(-1) == targets['labels'])
                                              * valid).sum(-1),
          'cardinality': jnp.abs(predicted - valid.sum(-1))}


def set_criterion(outputs, targets, *, num_classes, eos_coef=0.1, class_weight=1.0,
                  l1_weight=5.0, giou_weight=2.0, matcher='scipy', focal=None):
  """DETR's set loss of a batch, summed over the decoder layers given (auxiliary losses).

  As in DETR: the cross-entropy is a weighted mean over every query of the batch, L1 and
  GIoU are normalised by the number of target boxes in the batch (at least 1); with `focal`
  (Deformable DETR) the focal loss's sum is normalised by the target boxes too.
  → (loss, metrics of the last layer).
  """
  t = matched_terms(outputs, targets, num_classes=num_classes, eos_coef=eos_coef,
                    class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                    matcher=matcher, focal=focal)
  return set_loss(t, class_weight=class_weight, l1_weight=l1_weight, giou_weight=giou_weight,
                  focal=focal)


def set_loss(t, *, class_weight=1.0, l1_weight=5.0, giou_weight=2.0, focal=None):
  """matched_terms of a batch → (loss summed over its layers, metrics of the last layer)."""
  num_boxes = jnp.maximum(t['boxes'].sum(), 1)
  if focal is None:
    loss_ce = t['ce'].sum(1) / t['ce_weight'].sum(1)  # [L]
  else:
    loss_ce = t['ce'].sum(1) / num_boxes
  loss_l1 = t['l1'].sum(1) / num_boxes
  loss_giou = t['giou'].sum(1) / num_boxes
  per_layer = class_weight * loss_ce + l1_weight * loss_l1 + giou_weight * loss_giou
  # Logged for the last layer, as in DETR: error of the matched queries' classes, and how far
  # the number of predicted objects is from the number of targets.
  metrics = {'loss_ce': loss_ce[-1], 'loss_bbox': loss_l1[-1], 'loss_giou': loss_giou[-1],
             'class_error': 100.0 * (1.0 - t['correct'].sum() / num_boxes),
             'cardinality_error': t['cardinality'].mean()}
  return per_layer.sum(), metrics


def image_losses(t, *, class_weight=1.0, l1_weight=5.0, giou_weight=2.0):
  """matched_terms → each image's own set loss [B] (summed over layers), normalised within
  the image: what evaluation averages, so it does not depend on how images are batched."""
  boxes = jnp.maximum(t['boxes'], 1)
  per_layer = (class_weight * t['ce'] / jnp.maximum(t['ce_weight'], 1e-9) +
               l1_weight * t['l1'] / boxes +
               giou_weight * t['giou'] / boxes)
  return per_layer.sum(0)


def split_query_groups(outputs, targets, num_queries):
  """Group DETR's training outputs [L, B, G·Q, ...] → [L, B·G, Q, ...] and each image's
  targets repeated G times: every group is matched and scored as an image of its own, so the
  loss is the mean of the groups' losses (the paper sums them; Adam and gradient clipping
  make the scale immaterial, and the logged loss stays comparable with plain DETR's)."""
  groups = outputs['logits'].shape[2] // num_queries
  if groups == 1:
    return outputs, targets
  split = lambda x: x.reshape(x.shape[:1] + (x.shape[1] * groups, num_queries) + x.shape[3:])
  return (jax.tree.map(split, outputs),
          {k: jnp.repeat(targets[k], groups, axis=0) for k in ('labels', 'boxes', 'valid')})


def postprocess(logits, pred_boxes, sigmoid=False):
  """[B, Q, C+1], [B, Q, 4] → scores [B, Q], labels [B, Q] (no-object dropped: the best real
  class of each query), boxes [B, Q, 4] as normalised (x0, y0, x1, y1). `sigmoid`: logits
  [B, Q, C] of the focal loss, each query's best class."""
  prob = jax.nn.sigmoid(logits) if sigmoid else jax.nn.softmax(logits, -1)[..., :-1]
  return prob.max(-1), prob.argmax(-1), box_ops.cxcywh_to_xyxy(pred_boxes)


class DetectionTask(base.Task):
  head = ('class_head/',)
  model_class = detr.DETR  # Deformable DETR's task changes it.

  @functools.cached_property
  def sources(self):
    """(train, eval) COCO-style sources, generated (shapes) or read on first use."""
    c = self.config.data
    train, evaluation = make_source(c, c.train_split), make_source(c, c.eval_split)
    if train.categories != evaluation.categories:
      raise errors.UserError(f'The {c.train_split!r} and {c.eval_split!r} splits have different '
                             f'categories: {train.categories} vs {evaluation.categories}.')
    return train, evaluation

  def build_model(self):
    """The model with one class per category of the data (config.model.num_classes, if
    given, must agree)."""
    m, c = dict(self.config.model), self.config.data
    num_classes = len(self.sources[0].categories)
    if m.pop('num_classes') not in (None, num_classes):
      raise errors.UserError(f'model.num_classes={self.config.model.num_classes} but the data has '
                             f'{num_classes} categories.')
    if m['num_queries'] < c.max_boxes:
      raise errors.UserError(f'model.num_queries={m["num_queries"]} must be ≥ data.max_boxes='
                             f'{c.max_boxes}: every target needs a query.')
    # .get: a workdir trained before these keys existed still exports and resumes.
    attention = m.get('backbone_attention')
    resnet.check_attention(attention, m['backbone_norm'], key='model.backbone_attention')
    m['backbone_attention_args'] = resnet.attention_args(
        attention, dict(m.get('backbone_attention_args') or {}),
        key='model.backbone_attention_args')
    if m.get('backbone_attention_stages') is not None:
      m['backbone_attention_stages'] = tuple(m['backbone_attention_stages'])
    if issubclass(self.model_class, detr.DETR):  # Deformable DETR's classes are always sigmoid.
      m['sigmoid_classes'] = 'focal' in self._loss_settings()
    return self.model_class(num_classes=num_classes, **m,
                            compute=base.compute_options(self.config))

  def model_dim(self):
    return self.model.hidden_size

  def load_pretrained(self, params, path):
    """config.pretrained.path: a torchvision ResNet's ImageNet weights (.safetensors or .npz
    in its state-dict names) into the backbone, the rest fresh; or a whole detector exported
    by --mode=export."""
    restored = pretrained.load_npz(path)
    if not pretrained.is_torchvision_resnet(restored):
      return self.fit_export(params, restored, path)
    m = self.model
    if m.backbone_norm != 'frozen_bn':
      raise errors.UserError(f'{path!r} is a torchvision ResNet, whose BatchNorm statistics '
                             f'need model.backbone_norm=\'frozen_bn\', not '
                             f'{m.backbone_norm!r}.')
    # An attention module in the backbone is not in an ImageNet ResNet: it starts fresh.
    fresh = tuple(k for k in pretrained.flatten(params['backbone'])
                  if re.search(r'(^|/)(stage\d+_)?attention/', k))
    backbone = pretrained.fit(params['backbone'], pretrained.from_torchvision_resnet(restored),
                              fresh=fresh, source=f'torchvision ResNet {path!r}',
                              what=f'the {m.backbone_name} backbone')
    return dict(params, backbone=backbone)

  def datasets(self):
    c = self.config.data
    preprocess = data.Preprocess(c.canvas, c.scales, c.eval_size, c.max_boxes, c.crop_scales,
                                 c.crop_min, c.flip)
    return base.Datasets(*self.sources, preprocess)

  def dummy_batch(self, batch_size):
    c = self.config.data
    return {'image': np.zeros((batch_size, c.canvas, c.canvas, 3), np.float32),
            'pixel_mask': np.ones((batch_size, c.canvas, c.canvas), bool),
            'boxes': np.zeros((batch_size, c.max_boxes, 4), np.float32),
            'labels': np.zeros((batch_size, c.max_boxes), np.int32),
            'valid': np.zeros((batch_size, c.max_boxes), bool)}

  def init(self, rng, batch):
    return self.model.init({'params': rng}, batch['image'], batch['pixel_mask'])['params']

  def _loss_outputs(self, outputs):
    """Every decoder layer's predictions with the auxiliary losses (loss.aux_loss), else
    the last layer's."""
    return outputs if self.config.loss.aux_loss else jax.tree.map(lambda x: x[-1:], outputs)

  def _loss_settings(self):
    """config.loss as set_criterion's arguments; loss.focal_alpha (with focal_gamma) set
    gives sigmoid focal-loss classes ('focal')."""
    s = {k: v for k, v in self.config.loss.items() if k != 'aux_loss'}
    alpha, gamma = s.pop('focal_alpha', None), s.pop('focal_gamma', 2.0)
    if alpha is not None:
      s['focal'] = (alpha, gamma)
    return s

  def loss_fn(self, params, batch, rng, frozen=None):
    del frozen  # No teacher.
    outputs, aux = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'],
                                    train=True, rngs={'dropout': rng})
    return self.criterion(outputs, aux, batch)

  def criterion(self, outputs, aux, batch):
    """The training loss of the model's outputs → (loss, metrics)."""
    del aux
    outputs, targets = split_query_groups(self._loss_outputs(outputs), batch,
                                          self.model.num_queries)
    return set_criterion(outputs, targets, num_classes=self.model.num_classes,
                         **self._loss_settings())

  def eval_step(self, params, batch):
    """Each image's set loss and errors, and every query's prediction for COCO AP."""
    outputs, _ = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'])
    settings = self._loss_settings()
    t = matched_terms(self._loss_outputs(outputs), batch, num_classes=self.model.num_classes,
                      **settings)
    loss = image_losses(t, class_weight=settings['class_weight'],
                        l1_weight=settings['l1_weight'], giou_weight=settings['giou_weight'])
    weight = batch[pipeline.WEIGHT]
    boxes = t['boxes'] * weight  # The class error is a rate over target boxes, not images.
    pairs = {'loss': losses.weighted_mean(loss, weight),
             'class_error': ((100.0 * (t['boxes'] - t['correct']) * weight).sum(), boxes.sum()),
             'cardinality_error': losses.weighted_mean(t['cardinality'], weight)}
    scores, labels, pred_boxes = self.postprocess(outputs['logits'][-1], outputs['boxes'][-1])
    return pairs, {'scores': scores, 'labels': labels, 'boxes': pred_boxes,
                   'image_id': batch['image_id'], 'orig_size': batch['orig_size']}

  def detections(self, outputs):
    """Host outputs → COCO result records, boxes scaled to each image's original size."""
    ids = self.sources[0].category_ids
    out = []
    for scores, labels, boxes, image_id, (h, w) in zip(
        outputs['scores'], outputs['labels'], outputs['boxes'], outputs['image_id'],
        outputs['orig_size']):
      for score, label, (x0, y0, x1, y1) in zip(scores, labels, boxes * [w, h, w, h]):
        out.append({'image_id': int(image_id), 'category_id': ids[int(label)],
                    'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    'score': float(score)})
    return out

  def eval_metrics(self, outputs, source):
    """COCO box AP (pycocotools) of every query's prediction on every eval image."""
    return coco.evaluate(source.ground_truth(), self.detections(outputs),
                         verbose=jax.process_index() == 0)

  def predict(self, params, batch, return_attention=True):
    """(scores, labels, normalised xyxy boxes, aux with attention) for a preprocessed batch."""
    outputs, aux = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'],
                                    return_attention=return_attention)
    return self.postprocess(outputs['logits'][-1], outputs['boxes'][-1]) + (aux,)

  def postprocess(self, logits, boxes):
    """The last layer's outputs → (scores, labels, normalised xyxy boxes) per prediction."""
    return postprocess(logits, boxes, sigmoid=self.model.sigmoid_classes)

  def write_plots(self, params, workdir, num_images=4, threshold=0.7, top_k=3):
    """detections.png (boxes on eval images); for the objects found in the first image,
    detr_attention.png (where each object's query looks in the last decoder layer) and
    encoder_attention.png (encoder self-attention from each object's centre). Objects are
    the boxes scoring over `threshold`; in an image with none (an undertrained model), the
    `top_k` best, marked '(top)', so the pictures are always drawn."""
    drawn = self.detection_panels(params, num_images, threshold, top_k)
    return self.draw_detections(*drawn, workdir, threshold, top_k)

  def draw_detections(self, examples, panels, kept, aux, workdir, threshold, top_k):
    """write_plots' pictures from detection_panels' results (→ their paths)."""
    from vit_jax import plots
    paths = [plots.detections(panels, os.path.join(workdir, 'detections.png'),
                              f'Predicted boxes (score > {threshold}, else the top {top_k})')]
    cross = aux['decoder_attention'][-1]['cross'][0].mean(0)  # [Q, h*w], first image.
    fh, fw = aux['feature_mask'].shape[1:]
    valid = aux['feature_mask'][0]
    rows, cols = valid.any(1).sum(), valid.any(0).sum()  # The unpadded part of the grid.
    image = examples[0]['image']
    objects = [(box, caption, cross[q].reshape(fh, fw)[:rows, :cols])
               for q, box, caption in zip(kept[0], panels[0][1], panels[0][2])]
    if objects:
      paths.append(plots.attention_per_object(image, objects,
                                              os.path.join(workdir, 'detr_attention.png')))
      # Encoder self-attention from each detected object's centre (DETR Fig. 3).
      points = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in panels[0][1]]
      maps = self.encoder_attention_at(aux, 0, points, image.shape[:2])
      paths.append(plots.attention_at_points(image, points, maps,
                                             os.path.join(workdir, 'encoder_attention.png')))
    return paths

  def first_eval_examples(self, num_images):
    """(The first `num_images` eval examples, their evaluation preprocessing stacked)."""
    _, source, preprocess = self.datasets()
    examples = [source[i] for i in range(min(num_images, len(source)))]
    batch = [preprocess.eval(e) for e in examples]
    return examples, {k: np.stack([b[k] for b in batch]) for k in batch[0]}

  def detection_panels(self, params, num_images, threshold, top_k):
    """The first eval images with their kept predictions: (examples, panels (image, boxes in
    pixels, captions), kept prediction indices per image, the model's aux)."""
    examples, batch = self.first_eval_examples(num_images)
    scores, labels, boxes, aux = jax.device_get(compiling.run_once(self.predict, params, batch))
    names = self.sources[0].categories
    panels, kept = [], []
    for e, s, lab, b in zip(examples, scores, labels, boxes):
      h, w = e['image'].shape[:2]
      keep = np.flatnonzero(s > threshold)
      mark = ''
      if not len(keep):
        keep, mark = np.argsort(-s)[:top_k], ' (top)'
      kept.append(keep)
      panels.append((e['image'], b[keep] * [w, h, w, h],
                     [f'{names[lab[q]]} {s[q]:.2f}{mark}' for q in keep]))
    return examples, panels, kept, aux

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
