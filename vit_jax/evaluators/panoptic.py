"""Panoptic quality (Kirillov et al. 2019, §4), as the COCO panoptic API computes it.

Per category: a predicted and a ground-truth segment match when their IoU is over 0.5 (which
makes the match unique); void pixels (ground-truth id 0) are left out of the union. An
unmatched ground-truth segment is a false negative unless it is a crowd region; an unmatched
prediction is a false positive unless more than half of it lies on void or on a crowd region
of its category. PQ = Σ_TP IoU / (TP + FP/2 + FN/2) = SQ · RQ, averaged over the categories
that occur (in the ground truth or the predictions), over all, things and stuff.
"""
import collections

import numpy as np

VOID = 0


def segment_areas(ids):
  values, counts = np.unique(ids, return_counts=True)
  return dict(zip(values.tolist(), counts.tolist()))


class PanopticQuality:
  """Accumulates TP/FP/FN and matched IoU per category over images; `result()` → the scores.

  categories: {category id: (name, isthing)}."""

  def __init__(self, categories):
    self.categories = dict(categories)
    self.iou = collections.defaultdict(float)
    self.tp, self.fp, self.fn = (collections.Counter() for _ in range(3))

  def add(self, gt_ids, gt_segments, pred_ids, pred_segments):
    """One image. gt_ids, pred_ids: int [H, W] segment ids (0: void / nothing predicted);
    gt_segments {id: (category id, iscrowd)}, pred_segments {id: category id}."""
    gt_ids, pred_ids = np.asarray(gt_ids, np.int64), np.asarray(pred_ids, np.int64)
    if gt_ids.shape != pred_ids.shape:
      raise ValueError(f'Ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in '
                       'size.')
    for what, ids, segments in (('ground-truth', gt_ids, gt_segments),
                                ('predicted', pred_ids, pred_segments)):
      unknown = set(np.unique(ids).tolist()) - set(segments) - {VOID}
      if unknown:
        raise ValueError(f'{what} segment ids {sorted(unknown)} have no segment info.')
      cats = {(c[0] if isinstance(c, tuple) else c) for c in segments.values()}
      if cats - set(self.categories):
        raise ValueError(f'{what} category ids {sorted(cats - set(self.categories))} are not '
                         f'among {sorted(self.categories)}.')
    gt_area, pred_area = segment_areas(gt_ids), segment_areas(pred_ids)
    width = int(pred_ids.max()) + 1  # Pixel counts of every (gt id, pred id) pair present.
    overlap = {(k // width, k % width): n
               for k, n in segment_areas(gt_ids * width + pred_ids).items()}
    crowd_of = {cat: gid for gid, (cat, crowd) in gt_segments.items() if crowd}
    matched_gt, matched_pred = set(), set()
    for (gid, pid), inter in overlap.items():
      if gid == VOID or pid == VOID:
        continue
      cat, crowd = gt_segments[gid]
      if crowd or pred_segments[pid] != cat:
        continue
      union = pred_area[pid] + gt_area[gid] - inter - overlap.get((VOID, pid), 0)
      iou = inter / union
      if iou > 0.5:
        self.tp[cat] += 1
        self.iou[cat] += iou
        matched_gt.add(gid)
        matched_pred.add(pid)
    for gid, (cat, crowd) in gt_segments.items():
      if gid in gt_area and not crowd and gid not in matched_gt:
        self.fn[cat] += 1
    for pid, cat in pred_segments.items():
      if pid not in pred_area or pid in matched_pred:
        continue
      ignored = overlap.get((VOID, pid), 0) + overlap.get((crowd_of.get(cat, -1), pid), 0)
      if ignored / pred_area[pid] > 0.5:
        continue
      self.fp[cat] += 1

  def result(self):
    """{'PQ', 'SQ', 'RQ'} over all categories, '_things' and '_stuff' versions, and
    'PQ/<name>' per category that occurs."""
    out = {}
    per = {}
    for cat, (name, _) in self.categories.items():
      tp, fp, fn = self.tp[cat], self.fp[cat], self.fn[cat]
      if tp + fp + fn == 0:
        continue
      sq = self.iou[cat] / tp if tp else 0.0
      rq = tp / (tp + 0.5 * fp + 0.5 * fn)
      per[cat] = (sq * rq, sq, rq)
      out[f'PQ/{name}'] = sq * rq
    for suffix, keep in (('', lambda t: True), ('_things', bool), ('_stuff', lambda t: not t)):
      cats = [c for c in per if keep(self.categories[c][1])]
      for i, key in enumerate(('PQ', 'SQ', 'RQ')):
        out[key + suffix] = float(np.mean([per[c][i] for c in cats])) if cats else 0.0
    return out
