import numpy as np

from vit_jax.evaluators import segmentation as metrics


def test_confusion_matrix_leaves_out_ignore():
  label = np.array([[0, 0, 1], [1, 2, 255]])
  predicted = np.array([[0, 1, 1], [1, 0, 2]])
  np.testing.assert_array_equal(metrics.confusion_matrix(predicted, label, 3),
                                [[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_scores_by_hand():
  confusion = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
  s = metrics.scores(confusion, ['a', 'b', 'c'])
  # IoU: a 1/(2+2-1) = 1/3, b 2/(2+3-2) = 2/3, c 0/(1+0-0) = 0.
  np.testing.assert_allclose([s['IoU/a'], s['IoU/b'], s['IoU/c'], s['mIoU']],
                             [1 / 3, 2 / 3, 0, 1 / 3])
  np.testing.assert_allclose([s['pixel_accuracy'], s['mean_accuracy']], [3 / 5, (0.5 + 1) / 3])
  # A class absent from both labels and predictions does not count in the mean.
  s = metrics.scores(np.array([[2, 0], [0, 0]]))
  assert s['mIoU'] == 1.0 and '1' not in {k.split('/')[-1] for k in s if k.startswith('IoU')}


def test_predictions_are_scored_at_the_label_size():
  predicted = np.zeros((8, 8), np.uint8)
  predicted[:4, 2:4] = 1  # On a 4x4 resized image (top-left of the canvas).
  out = metrics.at_label_size(predicted, (4, 4), (8, 8))
  expected = np.zeros((8, 8))
  expected[:, 4:] = 1
  np.testing.assert_array_equal(out, expected)


def test_mask_ap_of_the_true_masks_is_one(tmp_path):
  """pycocotools' 'segm' AP on the shapes' RLE masks: the true masks score 1 (objects
  hidden entirely by others are ignored), and a wrong mask lowers it."""
  import json
  from vit_jax.data import detection
  from vit_jax.evaluators import coco
  detection.write_shapes(tmp_path, 'val', 8, seed=4)
  gt = json.loads((tmp_path / 'annotations/instances_val.json').read_text())
  masks = [dict(image_id=a['image_id'], category_id=a['category_id'], score=1.0,
                segmentation=a['segmentation']) for a in gt['annotations'] if a['area']]
  assert coco.evaluate(gt, masks, iou_type='segm')['AP'] == 1.0
  wrong = dict(masks[0], segmentation=masks[1]['segmentation'])  # Another object's mask.
  assert coco.evaluate(gt, [wrong] + masks[1:], iou_type='segm')['AP'] < 1.0
