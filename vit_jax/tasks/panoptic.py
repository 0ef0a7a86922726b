"""Panoptic segmentation with DETR's mask head (Carion et al. 2020, §4.4): the detector's set
loss plus DICE and sigmoid focal losses on the matched queries' masks, panoptic
post-processing, panoptic quality and box AP, pictures.

The detector trains jointly with the head, or stays frozen as in the paper's second stage:
load a trained DETR (--config.pretrained.path, an export with the same classes) and freeze
everything but the head with optim.lr_multipliers (configs/detr.py:panoptic,frozen).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import errors
from vit_jax import losses
from vit_jax import pretrained
from vit_jax.data import panoptic as data
from vit_jax.data import pipeline
from vit_jax.evaluators import coco
from vit_jax.evaluators import panoptic as pq
from vit_jax.models import detr_panoptic
from vit_jax.tasks import detection

MASK_KEYS = ('mask_weight', 'dice_weight')  # config.loss's keys for the masks.
MASK_HEAD = ('mask_head/', 'bbox_attention/')  # The parameters DETR does not have.


def upsample(masks, height, width):
  """Mask logits [..., h, w] → [..., height, width], bilinear with half-pixel centres
  (torch's align_corners=False, which DETR uses)."""
  return jax.image.resize(masks, masks.shape[:-2] + (height, width), 'bilinear')


def matched(masks, assign):
  """Each target's query's mask: [B, Q, h, w], assign [B, T] → [B, T, h, w]."""
  return jnp.take_along_axis(masks, jnp.maximum(assign, 0)[..., None, None], axis=1)


def mask_losses(masks, target_masks, valid):
  """Sums over the targets of the sigmoid focal loss (α 0.25, γ 2; mean over pixels) and the
  DICE loss of each target's mask against its query's mask logits upsampled to the targets'
  size. masks [B, T, h, w] (the matched queries'), target_masks [B, T, H, W], valid [B, T]
  → (focal, dice)."""
  b, t, height, width = target_masks.shape
  logits = upsample(masks, height, width).reshape(b, t, -1)
  targets = target_masks.reshape(b, t, -1)
  focal = losses.sigmoid_focal_loss(logits, targets).mean(-1)
  dice = losses.dice_loss(logits, targets)
  return (focal * valid).sum(), (dice * valid).sum()


def panoptic_map(logits, masks, size, isthing, threshold=0.85, min_area=4):
  """DETR's panoptic post-processing of a batch, on device. A query is kept when its class is
  not "no object" and scores over `threshold`; each pixel goes to the kept query with the
  highest mask logit; kept queries of one stuff class merge into one segment; segments of at
  most `min_area` pixels are dropped, their pixels going to the next best query, until none
  is that small.

  logits [B, Q, C+1], masks [B, Q, h, w], size (H, W) to upsample the masks to, isthing [C]
  → (ids [B, H, W]: each pixel's segment, named by its first query, −1 where nothing is
  kept; labels [B, Q]; scores [B, Q]).
  """
  prob = jax.nn.softmax(logits, -1)
  scores, labels = prob[..., :-1].max(-1), prob[..., :-1].argmax(-1)
  keep = (prob.argmax(-1) != logits.shape[-1] - 1) & (scores > threshold)
  masks = upsample(masks, *size)
  num_queries = logits.shape[1]
  stuff = ~jnp.asarray(isthing)[labels]  # [B, Q]
  same = (labels[:, :, None] == labels[:, None, :]) & stuff[:, :, None]

  def segment_of(keep):
    """Each query's segment: the first kept query of its class if it is stuff, else itself."""
    merged = same & keep[:, None, :]
    return jnp.where(merged.any(-1), merged.argmax(-1), jnp.arange(num_queries))

  def assign(keep):
    best = jnp.where(keep[:, :, None, None], masks, -jnp.inf).argmax(1)  # [B, H, W]
    ids = jnp.take_along_axis(segment_of(keep), best.reshape(best.shape[0], -1), 1)
    return jnp.where(keep.any(-1)[:, None], ids, -1).reshape(best.shape)

  def drop_small(state):
    keep, _ = state
    ids = assign(keep)
    area = (ids[:, None] == jnp.arange(num_queries)[None, :, None, None]).sum((2, 3))
    segment_area = jnp.take_along_axis(area, segment_of(keep), 1)
    new_keep = keep & (segment_area > min_area)
    return new_keep, (new_keep != keep).any()

  keep, _ = jax.lax.while_loop(lambda state: state[1], drop_small, (keep, jnp.array(True)))
  return assign(keep), labels, scores


def at_size(ids, size, orig_size):
  """A canvas-sized id map → its image's part (`size`), resized (nearest) to `orig_size`,
  in its own dtype."""
  h, w = size
  image = Image.fromarray(np.asarray(ids[:h, :w], np.int32))
  resized = image.resize((int(orig_size[1]), int(orig_size[0])), Image.NEAREST)
  return np.asarray(resized).astype(ids.dtype)


class PanopticTask(detection.DetectionTask):
  model_class = detr_panoptic.PanopticDETR

  @functools.cached_property
  def sources(self):
    c = self.config.data
    train, evaluation = data.make_source(c, c.train_split), data.make_source(c, c.eval_split)
    if (train.categories, train.isthing) != (evaluation.categories, evaluation.isthing):
      raise errors.UserError(
          f'The {c.train_split!r} and {c.eval_split!r} splits have different categories: '
          f'{train.categories} vs {evaluation.categories}.')
    return train, evaluation

  def build_model(self):
    if self.config.model.get('query_groups', 1) != 1:
      raise errors.UserError(f'model.query_groups={self.config.model.query_groups}: Group DETR '
                             'trains the detector only; the panoptic task needs 1.')
    if self.config.loss.get('focal_alpha') is not None:
      raise errors.UserError(f'loss.focal_alpha={self.config.loss.focal_alpha}: the panoptic '
                             'task merges softmax classes with a no-object class; it needs None.')
    return super().build_model()

  def fit_export(self, params, restored, path):
    """A panoptic DETR's export, or a detector's (DETR trained on the same segments' boxes):
    then the mask head, which it lacks, starts fresh."""
    fresh = self.head if self.config.pretrained.reset_head else ()
    if not any(k.startswith(MASK_HEAD) for k in restored):
      fresh += MASK_HEAD
    return pretrained.fit(params, restored, fresh=fresh, source=f'Checkpoint {path!r}',
                          what=f'the {self.config.task} model')

  def dummy_batch(self, batch_size):
    c = self.config.data
    return dict(super().dummy_batch(batch_size),
                masks=np.zeros((batch_size, c.max_boxes, c.canvas, c.canvas), bool))

  def _loss_settings(self):
    return {k: v for k, v in super()._loss_settings().items() if k not in MASK_KEYS}

  def _matched_terms(self, outputs, batch):
    boxes = {k: outputs[k] for k in ('logits', 'boxes')}
    return detection.matched_terms(self._loss_outputs(boxes), batch,
                                   num_classes=self.model.num_classes, **self._loss_settings())

  def loss_fn(self, params, batch, rng, frozen=None):
    """The set loss + mask_weight · focal + dice_weight · DICE, the mask losses normalised
    by the batch's target boxes as the box losses are. Only the matched queries' masks are
    drawn: the loss reads no other."""
    del frozen  # No teacher.
    variables = {'params': params}
    outputs, aux = self.model.apply(variables, batch['image'], batch['pixel_mask'], train=True,
                                    masks=False, rngs={'dropout': rng})
    t = self._matched_terms(outputs, batch)
    hidden = jnp.take_along_axis(aux['hidden'], jnp.maximum(t['assign'], 0)[..., None], axis=1)
    masks, _ = self.model.apply(variables, hidden, aux, method='masks')
    focal, dice = mask_losses(masks, batch['masks'], batch['valid'])
    s = self._loss_settings()
    loss, metrics = detection.set_loss(t, class_weight=s['class_weight'],
                                       l1_weight=s['l1_weight'], giou_weight=s['giou_weight'])
    num_boxes = jnp.maximum(t['boxes'].sum(), 1)
    loss_mask, loss_dice = focal / num_boxes, dice / num_boxes
    c = self.config.loss
    loss = loss + c.mask_weight * loss_mask + c.dice_weight * loss_dice
    return loss, dict(metrics, loss_mask=loss_mask, loss_dice=loss_dice)

  def eval_step(self, params, batch):
    """Each image's losses, every query's box for box AP, and each image's panoptic map."""
    outputs, _ = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'])
    t = self._matched_terms(outputs, batch)
    s = self._loss_settings()
    loss = detection.image_losses(t, class_weight=s['class_weight'],
                                  l1_weight=s['l1_weight'], giou_weight=s['giou_weight'])
    weight = batch[pipeline.WEIGHT]
    per_image = jax.vmap(lambda *x: mask_losses(*(a[None] for a in x)))
    focal, dice = per_image(matched(outputs['masks'], t['assign']), batch['masks'],
                            batch['valid'])
    boxes = jnp.maximum(batch['valid'].sum(-1), 1)
    pairs = {'loss_boxes': losses.weighted_mean(loss, weight),
             'loss_mask': losses.weighted_mean(focal / boxes, weight),
             'loss_dice': losses.weighted_mean(dice / boxes, weight)}
    scores, labels, pred_boxes = self.postprocess(outputs['logits'][-1], outputs['boxes'][-1])
    ids, segment_labels, _ = self.panoptic_map(outputs, batch['image'].shape[1:3])
    dtype = jnp.uint8 if self.model.num_queries < 255 else jnp.int16
    return pairs, {'scores': scores, 'labels': labels, 'boxes': pred_boxes,
                   'image_id': batch['image_id'], 'orig_size': batch['orig_size'],
                   'size': batch['size'], 'panoptic': (ids + 1).astype(dtype),
                   'segment_labels': segment_labels}

  def panoptic_map(self, outputs, size):
    c = self.config.panoptic
    return panoptic_map(outputs['logits'][-1], outputs['masks'], size,
                        self.sources[0].isthing, c.threshold, c.min_area)

  def host_outputs(self, outputs):
    """Each image's panoptic map cut from the canvas and resized to the image's original
    size (an object array): COCO's 1333 x 1333 canvases would not all fit in memory."""
    maps = np.empty(len(outputs['panoptic']), object)
    for i, (ids, size, orig_size) in enumerate(zip(outputs['panoptic'], outputs['size'],
                                                   outputs['orig_size'])):
      maps[i] = at_size(ids, size, orig_size)
    return dict(outputs, panoptic=maps)

  def eval_metrics(self, outputs, source):
    """Panoptic quality (all, things, stuff, per class) at each image's original size, and
    COCO box AP of the segments."""
    categories = {k: (name, thing) for k, (name, thing) in
                  enumerate(zip(source.categories, source.isthing))}
    quality = pq.PanopticQuality(categories)
    for i, (ids, labels) in enumerate(zip(outputs['panoptic'], outputs['segment_labels'])):
      truth = source[i]
      present = np.unique(ids)
      quality.add(truth['segments'], truth['segments_info'], ids,
                  {int(s): int(labels[s - 1]) for s in present if s})
    return dict(quality.result(), **coco.evaluate(source.ground_truth(), self.detections(outputs),
                                                   verbose=jax.process_index() == 0))

  def predict(self, params, batch, return_attention=True):
    """As the detector's, and aux['panoptic']: each image's panoptic map on the canvas
    (ids, labels, scores of panoptic_map) and the image's size on it."""
    outputs, aux = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'],
                                    return_attention=return_attention)
    aux = dict(aux, panoptic=(*self.panoptic_map(outputs, batch['image'].shape[1:3]),
                              batch['size']))
    return self.postprocess(outputs['logits'][-1], outputs['boxes'][-1]) + (aux,)

  def write_plots(self, params, workdir, num_images=4, threshold=0.7, top_k=3):
    """The detector's pictures (detections.png, attention) and panoptic.png: eval images,
    their ground truth and the predicted segments, one colour per segment. The model runs
    once for both (predict's aux carries the panoptic maps)."""
    from vit_jax import plots
    examples, panels, kept, aux = self.detection_panels(params, num_images, threshold, top_k)
    paths = self.draw_detections(examples, panels, kept, aux, workdir, threshold, top_k)
    names = self.sources[0].categories
    figure = []
    for e, m, lab, sc, size in zip(examples, *aux['panoptic']):
      pred = at_size(m + 1, size, e['image'].shape[:2])
      truth = {s: names[k] for s, (k, _) in e['segments_info'].items()}
      predicted = {int(s): f'{names[lab[s - 1]]} {sc[s - 1]:.2f}' for s in np.unique(pred) if s}
      figure.append((e['image'], e['segments'], truth, pred, predicted))
    paths.append(plots.panoptic(figure, os.path.join(workdir, 'panoptic.png')))
    return paths

