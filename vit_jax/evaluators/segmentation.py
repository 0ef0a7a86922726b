"""Semantic-segmentation metrics over a whole split, from one confusion matrix: per-class IoU,
mean IoU (classes that occur in the labels or the predictions), pixel accuracy and mean
class accuracy, with IGNORE pixels left out (as mmseg computes them)."""
import numpy as np
from PIL import Image

from vit_jax.data.segmentation import IGNORE


def confusion_matrix(predicted, label, num_classes):
  """int [...] predicted and true classes → [C, C] counts (rows: truth, columns: predicted),
  IGNORE (and any label outside 0..C-1) left out."""
  keep = (label != IGNORE) & (label < num_classes)
  index = label[keep].astype(np.int64) * num_classes + predicted[keep]
  return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(confusion, classes=None):
  """[C, C] → {'mIoU', 'pixel_accuracy', 'mean_accuracy', 'IoU/<class>' ...}."""
  confusion = confusion.astype(np.float64)
  true, predicted, hit = confusion.sum(1), confusion.sum(0), np.diag(confusion)
  union = true + predicted - hit
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, hit / union, np.nan)
    accuracy = np.where(true > 0, hit / true, np.nan)
  out = {'mIoU': float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
         'pixel_accuracy': float(hit.sum() / max(true.sum(), 1)),
         'mean_accuracy': float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else 0.0}
  names = classes or [str(k) for k in range(len(iou))]
  out.update({f'IoU/{n}': float(v) for n, v in zip(names, iou) if np.isfinite(v)})
  return out


def at_label_size(predicted, size, label_shape):
  """A prediction on the preprocessed image (its top-left `size` [h, w] of a padded canvas)
  → at the original label map's size (nearest neighbour)."""
  h, w = size
  crop = predicted[:h, :w].astype(np.uint8)
  if crop.shape == tuple(label_shape):
    return crop
  return np.asarray(Image.fromarray(crop).resize(label_shape[::-1], Image.NEAREST))
