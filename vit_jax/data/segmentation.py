"""Semantic-segmentation sources and preprocessing.

Sources are random-access: `[i]` → {'image': uint8 [H, W, 3], 'label': uint8 [H, W] (class
0..C-1, IGNORE where no class counts), 'image_id': int}, plus `classes` (names).
- 'shapes': the embedded default: the detection shapes (data/detection.py) with their
  semantic maps (background + circle, rectangle, triangle).
- 'folder': images in `data_dir/images/<split>/` and label PNGs of the same stem in
  `data_dir/annotations/<split>/` (the ADE20K `ADEChallengeData2016` layout);
  `reduce_zero_label` makes 0 ("other" in ADE20K) IGNORE and shifts the rest down by one.
- 'coco': COCO-format instances (`segmentation` as polygons or RLE): background 0, category k
  (in id order) k + 1, crowd regions IGNORE.
- 'panoptic': the COCO panoptic format (`data_dir/annotations/panoptic_<split>.json`, id
  PNGs in `annotations/panoptic_<split>/`, images in `data_dir/<split>/`): every category
  (things and stuff, in id order) a class, unlabelled pixels IGNORE; examples also carry the
  segment id map and each segment's (class, iscrowd) for panoptic quality.
- 'tfds': a prepared TFDS dataset with 'image' and 'annotation' (e.g. `scene_parse150`),
  read without TensorFlow; `reduce_zero_label` as for 'folder'.
"""
import pathlib

import numpy as np
from PIL import Image

from vit_jax import errors
from vit_jax.data import detection
from vit_jax.data import tfds_source

IGNORE = 255
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


def read_image(path, mode):
  try:
    return np.asarray(Image.open(path).convert(mode))
  except (OSError, ValueError) as e:
    raise errors.UserError(f'{path} cannot be read as an image: {e}') from None


def reduce_zero(label):
  """ADE20K's convention: 0 ("other") → IGNORE, class k ≥ 1 → k - 1."""
  return np.where(label == 0, IGNORE, label.astype(np.int32) - 1).astype(np.uint8)


def checked(image, label, where):
  if image.shape[:2] != label.shape:
    raise errors.UserError(f'{where}: the image is {image.shape[1]}x{image.shape[0]} but its '
                           f'label map is {label.shape[1]}x{label.shape[0]}.')
  return image, label


class Folder:
  """Image files and label PNGs paired by file stem."""

  def __init__(self, image_dir, label_dir, classes, reduce_zero_label=False):
    self.image_dir, self.label_dir = pathlib.Path(image_dir), pathlib.Path(label_dir)
    for d in (self.image_dir, self.label_dir):
      if not d.is_dir():
        raise errors.UserError(f'Segmentation folder {d} does not exist.')
    self.images = sorted(p for p in self.image_dir.iterdir()
                         if p.suffix.lower() in IMAGE_SUFFIXES)
    if not self.images:
      raise errors.UserError(f'No images ({", ".join(IMAGE_SUFFIXES)}) in {self.image_dir}.')
    missing = [p.name for p in self.images if not (self.label_dir / f'{p.stem}.png').exists()]
    if missing:
      raise errors.UserError(f'{len(missing)} images in {self.image_dir} have no label map '
                             f'{self.label_dir}/<stem>.png, e.g. {missing[0]}.')
    self.classes, self.reduce_zero_label = list(classes), reduce_zero_label

  def __len__(self):
    return len(self.images)

  def describe(self, i):
    return str(self.images[i])

  def __getitem__(self, i):
    path = self.images[i]
    label = read_image(self.label_dir / f'{path.stem}.png', 'L')
    if self.reduce_zero_label:
      label = reduce_zero(label)
    image, label = checked(read_image(path, 'RGB'), label, str(path))
    return {'image': image, 'label': label, 'image_id': i}


class CocoSemantic:
  """Semantic maps drawn from a COCO instances file's masks (larger objects first, so a
  smaller one lying on top stays visible)."""

  def __init__(self, data_dir, split):
    from pycocotools import coco as coco_api
    self.boxes = detection.Coco(data_dir, split)  # Checks the file; reads the images.
    self.api = coco_api.COCO()
    self.api.dataset = self.boxes.coco
    self.api.createIndex()
    self.label_of = {cid: k + 1 for k, cid in enumerate(self.boxes.category_ids)}
    self.classes = ['background'] + self.boxes.categories
    no_mask = [a['id'] for a in self.boxes.coco['annotations'] if not a.get('segmentation')]
    if no_mask:
      raise errors.UserError(f'{self.boxes.annotation_path}: {len(no_mask)} annotations have no '
                             f'"segmentation" (e.g. id {no_mask[0]}); semantic maps need masks.')

  def __len__(self):
    return len(self.boxes)

  def describe(self, i):
    return str(self.boxes.image_dir / self.boxes.images[i]['file_name'])

  def __getitem__(self, i):
    info = self.boxes.images[i]
    image = self.boxes[i]['image']
    label = np.zeros(image.shape[:2], np.uint8)
    anns = sorted(self.api.imgToAnns[info['id']], key=lambda a: -a.get('area', 0))
    for ann in anns:
      try:
        mask = self.api.annToMask(ann).astype(bool)
      except Exception as e:  # pycocotools raises bare exceptions for bad polygons / RLE.
        raise errors.UserError(f'{self.boxes.annotation_path}: annotation {ann["id"]} has an '
                               f'unreadable segmentation: {e}') from None
      label[mask] = IGNORE if ann.get('iscrowd', 0) else self.label_of[ann['category_id']]
    return {'image': image, 'label': label, 'image_id': info['id']}


def rgb_to_id(rgb):
  """COCO panoptic PNG [H, W, 3] → segment ids R + 256 G + 256² B."""
  rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


class CocoPanoptic:
  """COCO panoptic annotations: a PNG of segment ids per image and its segments' info."""

  def __init__(self, data_dir, split):
    root = pathlib.Path(data_dir)
    path = root / 'annotations' / f'panoptic_{split}.json'
    self.png_dir, self.image_dir = root / 'annotations' / f'panoptic_{split}', root / split
    if not path.exists():
      raise errors.UserError(f'No COCO panoptic annotations for split {split!r}: expected '
                             f'{path}.')
    coco = detection.read_json(path)
    missing = [k for k in ('images', 'annotations', 'categories') if k not in coco]
    if missing:
      raise errors.UserError(f'{path} lacks {missing}; a COCO panoptic file needs "images", '
                             '"annotations" and "categories".')
    self.path, self.panoptic = path, coco
    cats = sorted(coco['categories'], key=lambda c: c['id'])
    self.category_ids = [c['id'] for c in cats]
    self.classes = [c['name'] for c in cats]
    self.isthing = [bool(c.get('isthing', 1)) for c in cats]
    self.label_of = {cid: k for k, cid in enumerate(self.category_ids)}
    files = {im['id']: im for im in coco['images']}
    self.records = sorted(coco['annotations'], key=lambda a: a['image_id'])
    for record in self.records:
      if record['image_id'] not in files:
        raise errors.UserError(f'{path}: annotation of image {record["image_id"]} refers to an '
                               'image that is not in "images".')
      for segment in record['segments_info']:
        if segment['category_id'] not in self.label_of:
          raise errors.UserError(f'{path}: image {record["image_id"]} has a segment of '
                                 f'category_id {segment["category_id"]}; the file defines '
                                 f'{self.category_ids}.')
    self.files = files

  def __len__(self):
    return len(self.records)

  def describe(self, i):
    return str(self.png_dir / self.records[i]['file_name'])

  def __getitem__(self, i):
    record = self.records[i]
    image = read_image(self.image_dir / self.files[record['image_id']]['file_name'], 'RGB')
    segments = rgb_to_id(read_image(self.png_dir / record['file_name'], 'RGB'))
    image, _ = checked(image, segments, self.describe(i))
    label = np.full(segments.shape, IGNORE, np.uint8)
    segments_info = {}
    for s in record['segments_info']:
      k, crowd = self.label_of[s['category_id']], bool(s.get('iscrowd', 0))
      segments_info[s['id']] = (k, crowd)
      label[segments == s['id']] = IGNORE if crowd else k
    return {'image': image, 'label': label, 'segments': segments.astype(np.int32),
            'segments_info': segments_info, 'image_id': record['image_id']}


class Tfds:
  """A TFDS dataset with 'image' [H, W, 3] and 'annotation' [H, W, channels] whose first
  channel is the class (scene_parse150: ADE20K's class, then instance channels)."""

  def __init__(self, name, split, data_dir, classes, reduce_zero_label=True):
    self.source, self.info = tfds_source.open_split(name, split, data_dir)
    for key in ('image', 'annotation'):
      if key not in self.info.features:
        raise errors.UserError(f'TFDS dataset {name!r} has no {key!r} feature; segmentation '
                               "needs 'image' and 'annotation'.")
    self.classes, self.reduce_zero_label = list(classes), reduce_zero_label

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    label = np.asarray(example['annotation'])[..., 0].astype(np.uint8)
    if self.reduce_zero_label:
      label = reduce_zero(label)
    image, label = checked(np.asarray(example['image']), label, f'example {i}')
    return {'image': image, 'label': label, 'image_id': i}


def shapes(c, split):
  root = pathlib.Path(detection.shapes(c, split))
  return Folder(root / split, root / 'semantic' / split,
                ['background'] + list(detection.SHAPES))


def make_source(c, split):
  if c.name == 'shapes':
    return shapes(c, split)
  if c.name == 'folder':
    root = pathlib.Path(c.data_dir)
    return Folder(root / 'images' / split, root / 'annotations' / split,
                  class_names(c), c.reduce_zero_label)
  if c.name == 'coco':
    return CocoSemantic(c.data_dir, split)
  if c.name == 'panoptic':
    return CocoPanoptic(c.data_dir, split)
  if c.name == 'tfds':
    return Tfds(c.tfds_name, split, c.data_dir, class_names(c), c.reduce_zero_label)
  raise errors.UserError(f"Unknown data.name {c.name!r} for segmentation; expected 'shapes', "
                         "'folder', 'coco', 'panoptic' or 'tfds'.")


def class_names(c):
  if not c.num_classes:
    raise errors.UserError(f'data.name={c.name!r} needs --config.data.num_classes (the classes '
                           'in the label maps, IGNORE=255 aside).')
  return [f'class{k}' for k in range(c.num_classes)]


# Preprocessing --------------------------------------------------------------------------------
def resize(image, label, scale):
  h, w = label.shape
  size = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
  return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
          np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))


class Preprocess:
  """SETR's augmentation (mmseg's) on a `canvas` x `canvas` crop: a random rescale of the
  shorter side to one of `scales`, a random crop, a random horizontal flip; padding is IGNORE
  in the label and a false `pixel_mask`. Evaluation rescales the shorter side to `eval_size`
  (None: as it is) with the longer side at most `canvas`, and keeps each image's size so
  predictions can be scored on the original label map."""

  def __init__(self, canvas, scales, eval_size=None, flip=True):
    self.canvas, self.scales, self.eval_size, self.flip = canvas, list(scales), eval_size, flip

  def train(self, example, rng):
    image, label = example['image'], example['label']
    if self.scales:
      image, label = resize(image, label, rng.choice(self.scales) / min(label.shape))
    h, w = label.shape
    y = rng.integers(0, max(h - self.canvas, 0) + 1)
    x = rng.integers(0, max(w - self.canvas, 0) + 1)
    image, label = image[y:y + self.canvas, x:x + self.canvas], label[y:y + self.canvas,
                                                                      x:x + self.canvas]
    if self.flip and rng.random() < 0.5:
      image, label = image[:, ::-1], label[:, ::-1]
    return self._finish(image, label)

  def eval(self, example):
    image, label = example['image'], example['label']
    h, w = label.shape
    scale = min((self.eval_size or min(h, w)) / min(h, w), self.canvas / max(h, w))
    if scale != 1:
      image, label = resize(image, label, scale)
    out = self._finish(image, label)
    out['size'] = np.array(label.shape, np.int32)
    return out

  def _finish(self, image, label):
    h, w = label.shape
    padded = np.zeros((self.canvas, self.canvas, 3), np.float32)
    padded[:h, :w] = (image.astype(np.float32) / 255.0 - detection.MEAN) / detection.STD
    target = np.full((self.canvas, self.canvas), IGNORE, np.int32)
    target[:h, :w] = label
    return {'image': padded, 'label': target}
