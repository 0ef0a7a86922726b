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
  scores [B, k], labels [B, k], normalised xyxy boxes [B, k, 4] (a query may appear with
  several classes)."""
  b, q, c = logits.shape
  scores, index = jax.lax.top_k(jax.nn.sigmoid(logits).reshape(b, q * c), min(k, q * c))
  chosen = jnp.take_along_axis(boxes, (index // c)[..., None], axis=1)
  return scores, index % c, box_ops.cxcywh_to_xyxy(chosen)


class DeformableDetectionTask(detection.DetectionTask):
  head = ('class_embed',)  # 'class_embed', or with box refinement 'class_embed_<layer>'.
  model_class = deformable_detr.DeformableDETR

  def _loss_settings(self):
    s = dict(self.config.loss)
    s.pop('aux_loss')
    s['focal'] = (s.pop('focal_alpha'), s.pop('focal_gamma'))
    return s

  def postprocess(self, logits, boxes):
    return topk_postprocess(logits, boxes)

  def predict(self, params, batch, return_attention=False):
    del return_attention  # Deformable attention has sampling points, not attention maps.
    return super().predict(params, batch, return_attention=False)

  def write_plots(self, params, workdir, num_images=4, threshold=0.5, top_k=3):
    """detections.png: boxes on eval images scoring over `threshold` (else the `top_k`)."""
    from vit_jax import plots
    _, panels, _, _ = self.detection_panels(params, num_images, threshold, top_k)
    return [plots.detections(panels, os.path.join(workdir, 'detections.png'),
                             f'Predicted boxes (score > {threshold}, else the top {top_k})')]
