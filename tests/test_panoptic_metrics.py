"""Panoptic quality against torchmetrics' PanopticQuality (which follows the COCO panoptic
API) on random maps, and crowd/void cases by hand."""
import numpy as np
import pytest

from vit_jax.evaluators import panoptic

CATEGORIES = {1: ('circle', True), 2: ('square', True), 7: ('sky', False)}


def random_panoptic(rng, shape=(12, 16)):
  """Blocks of random categories and instances: (category map, instance map)."""
  cats = rng.choice([1, 2, 7, 0], size=(3, 4), p=[0.35, 0.3, 0.25, 0.1])  # 0: void.
  inst = rng.integers(0, 2, (3, 4))
  up = lambda a: np.kron(a, np.ones((shape[0] // 3, shape[1] // 4), int))
  cats, inst = up(cats), up(inst)
  inst = np.where(np.isin(cats, [1, 2]), inst, 0)  # One segment per stuff category.
  return cats, inst


def to_ids(cats, inst, crowd=()):
  """(category, instance) maps → (segment ids, {id: (category, iscrowd)})."""
  ids = np.zeros(cats.shape, int)
  segments = {}
  for n, (c, i) in enumerate(sorted({(int(c), int(i)) for c, i in zip(cats.ravel(),
                                                                       inst.ravel()) if c})):
    ids[(cats == c) & (inst == i)] = n + 1
    segments[n + 1] = (c, (c, i) in crowd)
  return ids, segments


def test_equals_torchmetrics_on_random_maps():
  import torch
  from torchmetrics.detection import PanopticQuality as Reference
  rng = np.random.default_rng(0)
  ours = panoptic.PanopticQuality(CATEGORIES)
  reference = Reference(things={1, 2}, stuffs={7}, return_sq_and_rq=True, return_per_class=True,
                        allow_unknown_preds_category=True)
  for _ in range(20):
    gt, pred = random_panoptic(rng), random_panoptic(rng)
    # Ragged edges; and no void in the predictions: torchmetrics (unlike the COCO API) does
    # not count a missed segment that the prediction leaves mostly void.
    cats = np.where(pred[0] == 0, 7, pred[0])
    pred = (np.where(rng.random(cats.shape) < 0.15, 1, cats), pred[1])
    gt_ids, gt_segments = to_ids(*gt)
    pred_ids, pred_segments = to_ids(*pred)
    ours.add(gt_ids, gt_segments, pred_ids, {k: c for k, (c, _) in pred_segments.items()})
    as_torch = lambda m: torch.tensor(np.stack(m, -1)[None])
    reference.update(as_torch(pred), as_torch(gt))
  result, ref = ours.result(), reference.compute().numpy()  # [classes, (PQ, SQ, RQ)].
  for k, cat in enumerate(sorted(CATEGORIES)):
    name = CATEGORIES[cat][0]
    np.testing.assert_allclose(result[f'PQ/{name}'], ref[k, 0], atol=1e-6)
  np.testing.assert_allclose([result['PQ'], result['SQ'], result['RQ']], ref.mean(0), atol=1e-6)


def test_crowd_and_void_by_hand():
  gt = np.zeros((4, 10), int)
  gt[:, :4] = 1   # A circle.
  gt[:, 4:8] = 2  # A crowd of circles.
  gt[:, 8:] = 0   # Void.
  gt_segments = {1: (1, False), 2: (1, True)}
  pred = np.zeros((4, 10), int)
  pred[:, :3] = 5   # 12 of the circle's 16 pixels: IoU 0.75, a TP.
  pred[:, 3:7] = 6  # Mostly on the crowd (12 of 16 pixels): neither FP nor TP.
  pred[:, 8:] = 7   # A square on void: ignored.
  pred[:2, 7] = 8   # A small circle on the crowd: ignored.
  pq = panoptic.PanopticQuality(CATEGORIES)
  pq.add(gt, gt_segments, pred, {5: 1, 6: 1, 7: 2, 8: 1})
  r = pq.result()
  assert (pq.tp[1], pq.fp[1], pq.fn[1], pq.fp[2]) == (1, 0, 0, 0)
  np.testing.assert_allclose([r['PQ'], r['SQ'], r['RQ']], [0.75, 0.75, 1.0])
  pq.add(gt, gt_segments, np.zeros_like(gt), {})  # Nothing predicted: the circle is a FN.
  np.testing.assert_allclose(pq.result()['PQ/circle'], 0.75 / 1.5)
  assert r['PQ_stuff'] == 0.0 and 'PQ/sky' not in r  # Categories that never occur are left out.


def test_unknown_segments_are_named():
  pq = panoptic.PanopticQuality(CATEGORIES)
  with pytest.raises(ValueError, match=r'predicted segment ids \[3\] have no segment info'):
    pq.add(np.zeros((2, 2)), {}, np.full((2, 2), 3), {})
  with pytest.raises(ValueError, match=r'ground-truth category ids \[9\] are not among'):
    pq.add(np.ones((2, 2)), {1: (9, False)}, np.zeros((2, 2)), {})
