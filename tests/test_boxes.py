import numpy as np

from vit_jax.ops import boxes


def test_conversions_roundtrip():
  cxcywh = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(cxcywh), [[0.4, 0.3, 0.6, 0.7]], atol=1e-7)
  np.testing.assert_allclose(boxes.xyxy_to_cxcywh(boxes.cxcywh_to_xyxy(cxcywh)), cxcywh,
                             atol=1e-7)


def test_generalized_iou_by_hand():
  a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2], [1, 1, 1, 1], [1, 1, 1, 1]], np.float32)
  b = np.array([[1, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 1, 1]], np.float32)
  # Overlap: IoU 1/7, hull 9, union 7 → 1/7 − 2/9. Disjoint: 0 − (3 − 2)/3. Same box: 1.
  # Degenerate boxes (zero area, even both): finite.
  expected = [1 / 7 - 2 / 9, -1 / 3, 1.0, 0.0, 0.0]
  np.testing.assert_allclose(boxes.generalized_iou(a, b), expected, atol=1e-6)
  pairwise = boxes.pairwise_generalized_iou(a[:2], b[:3])
  assert pairwise.shape == (2, 3)
  np.testing.assert_allclose(pairwise[0, 0], expected[0], atol=1e-6)
  np.testing.assert_allclose(pairwise[1, 1], expected[1], atol=1e-6)
