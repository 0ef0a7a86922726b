"""COCO panoptic segments as DETR's targets (Carion et al. 2020, §4.4): every segment, thing
or stuff, is one box, one class and one mask.

A source's `[i]` → the detection example (data/detection.py: 'image', 'boxes' absolute xyxy
of each segment's mask, 'labels') plus 'segments' (the id map, int32 [H, W]) and
'segment_ids' (each box's segment), and for panoptic quality 'segments_info' {id: (class,
iscrowd)}. Crowd segments are no targets, as crowd boxes in detection; they stay in the id
map and the ground truth, where the metrics ignore them. `categories`, `category_ids`,
`isthing` and `ground_truth()` (COCO boxes of the segments, for box AP) as detection sources.
"""
import functools
import pathlib

import numpy as np

from vit_jax import errors
from vit_jax.data import detection
from vit_jax.data import segmentation


class Segments:
  """A COCO panoptic split (data/segmentation.py: CocoPanoptic) read as detection targets."""

  def __init__(self, data_dir, split):
    self.panoptic = segmentation.CocoPanoptic(data_dir, split)
    self.categories = self.panoptic.classes
    self.category_ids = self.panoptic.category_ids
    self.isthing = self.panoptic.isthing
    if not self.panoptic.records:
      raise errors.UserError(f'{self.panoptic.path} has no annotations.')

  def __len__(self):
    return len(self.panoptic)

  def describe(self, i):
    return self.panoptic.describe(i)

  def __getitem__(self, i):
    e = self.panoptic[i]
    segments = e['segments']
    ids = np.array([s for s, (_, crowd) in e['segments_info'].items() if not crowd], np.int32)
    boxes, present = detection.segment_boxes(segments, ids)
    kept = ids[present]  # A segment listed but absent from the PNG has no mask to learn.
    return {'image': e['image'], 'boxes': boxes,
            'labels': np.array([e['segments_info'][s][0] for s in kept], np.int32),
            'segments': segments, 'segment_ids': kept,
            'segments_info': e['segments_info'], 'image_id': e['image_id']}

  @functools.lru_cache(maxsize=1)
  def ground_truth(self):
    """The segments as a COCO instances dict (their 'bbox', 'area', 'iscrowd')."""
    p = self.panoptic
    annotations = []
    for record in p.records:
      for s in record['segments_info']:
        if 'bbox' not in s or 'area' not in s:
          raise errors.UserError(f'{p.path}: image {record["image_id"]}, segment {s["id"]} has '
                                 'no "bbox" or "area"; box AP needs both.')
        annotations.append({'id': len(annotations) + 1, 'image_id': record['image_id'],
                            'category_id': s['category_id'], 'bbox': s['bbox'],
                            'area': s['area'], 'iscrowd': s.get('iscrowd', 0)})
    images = [p.files[r['image_id']] for r in p.records]
    return {'images': images, 'annotations': annotations,
            'categories': p.panoptic['categories']}


def shapes(c, split):
  """The embedded shapes (written once, data/detection.py) in their panoptic form: the three
  shapes as things, the background as stuff."""
  return Segments(pathlib.Path(detection.shapes(c, split)), split)


def make_source(c, split):
  if c.name == 'shapes':
    return shapes(c, split)
  if c.name == 'coco':
    return Segments(c.data_dir, split)
  raise errors.UserError(f"Unknown data.name {c.name!r} for panoptic segmentation; expected "
                         "'shapes' or 'coco' (the COCO panoptic layout in data.data_dir).")
