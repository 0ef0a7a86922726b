"""COCO box and mask mAP with pycocotools, over the full eval split."""
import contextlib
import copy
import io

import numpy as np

NAMES = ['AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large']


def evaluate(ground_truth, detections, verbose=False, iou_type='bbox'):
  """ground_truth: a COCO-format dict; detections: [{'image_id', 'category_id',
  'bbox' [x, y, w, h] in pixels ('segm': 'segmentation' as COCO RLE), 'score'}] → {'AP': …,
  'AP50': …, …} (−1 where undefined). With 'segm', an object whose visible mask is empty (in
  the shapes: hidden by others) is ignored like a crowd region: no prediction can match it."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    gt = COCO()
    gt.dataset = copy.deepcopy(ground_truth)
    gt.dataset.setdefault('info', {})
    for ann in gt.dataset['annotations']:  # pycocotools needs an area for the size ranges.
      ann.setdefault('area', ann['bbox'][2] * ann['bbox'][3])
      if iou_type == 'segm' and not ann['area']:
        ann['iscrowd'] = 1
    gt.createIndex()
    if not detections:
      return {name: 0.0 for name in NAMES}
    dt = gt.loadRes([dict(d) for d in detections])
    coco_eval = COCOeval(gt, dt, iou_type)
    coco_eval.params.imgIds = sorted(gt.getImgIds())
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  if verbose:  # Through the progress bar's writer, so the table keeps its own lines.
    import tqdm
    tqdm.tqdm.write(output.getvalue().split('Accumulating')[-1].split('DONE')[-1].strip())
  return dict(zip(NAMES, np.asarray(coco_eval.stats[:6], float).tolist()))
