"""Box formats and (generalised) IoU. Boxes are [..., 4]; 'cxcywh' is DETR's normalised
(centre x, centre y, width, height), 'xyxy' the corners (x0, y0, x1, y1). Written here: the
JAX stack has no box ops (torchvision's are for PyTorch tensors), and these are a few lines."""
import jax.numpy as jnp

EPS = 1e-7  # Keeps IoU finite for degenerate (zero-area) boxes.


def cxcywh_to_xyxy(b):
  cx, cy, w, h = jnp.moveaxis(b, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(b):
  x0, y0, x1, y1 = jnp.moveaxis(b, -1, 0)
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def area(b):
  return jnp.clip(b[..., 2] - b[..., 0], 0) * jnp.clip(b[..., 3] - b[..., 1], 0)


def iou_and_union(a, b):
  """a [..., 4], b [..., 4] in xyxy, broadcast against each other → (IoU, union)."""
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.clip(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a) + area(b) - inter
  return inter / (union + EPS), union


def generalized_iou(a, b):
  """GIoU (Rezatofighi et al. 2019) of broadcast xyxy boxes: IoU − (hull − union) / hull."""
  iou, union = iou_and_union(a, b)
  hull = area(jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                               jnp.maximum(a[..., 2:], b[..., 2:])], -1))
  return iou - (hull - union) / (hull + EPS)


def pairwise_generalized_iou(a, b):
  """a [..., N, 4], b [..., M, 4] (xyxy) → [..., N, M]."""
  return generalized_iou(a[..., :, None, :], b[..., None, :, :])
