"""Object detection with Deformable DETR (Zhu et al. 2021): DETR's data, Hungarian matching,
COCO evaluation and pictures (tasks/detection.py), with sigmoid focal-loss classification
(α 0.25, γ 2; matching costs class 2, L1 5, GIoU 2) and top-k post-processing over
queries x classes."""
import os

import jax
import jax.numpy as jnp

from vit_jax.models import deformable_detr
from vit_jax.ops import boxes as box_ops
from vit_jax.tasks import detection

TOP_K = 100  # Detections kept per image (the paper's evaluation).


def topk_postprocess(logits, boxes, k=TOP_K):
  """[B, Q, C] sigmoid logits, [B, Q, 4] boxes → the k best (query, class) pairs per image:
  scores [B, k], labels [B, k], normalised xyxy boxes [B, k, 4], queries [B, k] (a query may
  appear with several classes)."""
  b, q, c = logits.shape
  scores, index = jax.lax.top_k(jax.nn.sigmoid(logits).reshape(b, q * c), min(k, q * c))
  chosen = jnp.take_along_axis(boxes, (index // c)[..., None], axis=1)
  return scores, index % c, box_ops.cxcywh_to_xyxy(chosen), index // c


class DeformableDetectionTask(detection.DetectionTask):
  head = ('class_embed',)  # 'class_embed', or with box refinement 'class_embed_<layer>'.
  model_class = deformable_detr.DeformableDETR

  def criterion(self, outputs, aux, batch):
    """With two-stage, plus the proposals' set loss, every target as class 0 ("object"), as
    the official code trains them (Hugging Face's port leaves this term out)."""
    loss, metrics = super().criterion(outputs, aux, batch)
    if 'proposals' in aux:
      objects = dict(batch, labels=jnp.zeros_like(batch['labels']))
      metrics['loss_proposals'], _ = detection.set_criterion(
          aux['proposals'], objects, num_classes=self.model.num_classes, **self._loss_settings())
      loss = loss + metrics['loss_proposals']
    return loss, metrics

  def postprocess(self, logits, boxes):
    return topk_postprocess(logits, boxes)[:3]

  def predict(self, params, batch, return_attention=False):
    """(scores, labels, normalised xyxy boxes, aux) of the top-k (query, class) pairs; aux
    has each pair's 'query'."""
    del return_attention  # Deformable attention has sampling points, not attention maps.
    outputs, aux = self.model.apply({'params': params}, batch['image'], batch['pixel_mask'])
    *detections, aux['query'] = topk_postprocess(outputs['logits'][-1], outputs['boxes'][-1])
    return tuple(detections) + (aux,)

  def write_plots(self, params, workdir, num_images=4, threshold=0.5, top_k=3):
    """detections.png: boxes on eval images scoring over `threshold` (else the `top_k`);
    sampling_points.png: for the objects found in the first image, where the last decoder
    layer's deformable attention reads (every head, level and point, coloured by weight)
    around the object's reference point (the paper's Fig. 6)."""
    from vit_jax import plots
    examples, panels, kept, aux = self.detection_panels(params, num_images, threshold, top_k)
    paths = [plots.detections(panels, os.path.join(workdir, 'detections.png'),
                              f'Predicted boxes (score > {threshold}, else the top {top_k})')]
    h, w = examples[0]['image'].shape[:2]
    objects = []
    for pair, box, caption in zip(kept[0], panels[0][1], panels[0][2]):
      query = aux['query'][0, pair]
      locations, weights = (a[0, query] for a in aux['sampling'])  # [heads, L, P, (2)]
      # Normalised over each level's padded map → pixels of the (unpadded) original image.
      points = locations / aux['valid_ratios'][0][None, :, None] * [w, h]
      reference = aux['reference'][-1][0, query, :2] * [w, h]
      objects.append((box, caption, reference, points.reshape(-1, 2), weights.reshape(-1)))
    if objects:
      paths.append(plots.sampling_points(examples[0]['image'], objects,
                                         os.path.join(workdir, 'sampling_points.png')))
    return paths
