import json

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import detection


def write_coco(root, annotations, split='val', size=(20, 30)):
  (root / 'annotations').mkdir(parents=True, exist_ok=True)
  (root / split).mkdir(exist_ok=True)
  Image.new('RGB', size, (200, 10, 10)).save(root / split / 'a.png')
  coco = {'images': [{'id': 7, 'file_name': 'a.png', 'width': size[0], 'height': size[1]}],
          'annotations': annotations,
          'categories': [{'id': 3, 'name': 'cat'}, {'id': 9, 'name': 'dog'}]}
  (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(coco))


def test_coco_loader_maps_categories_drops_crowd_and_clips(tmp_path, caplog):
  write_coco(tmp_path, [
      {'id': 1, 'image_id': 7, 'category_id': 9, 'bbox': [2, 3, 4, 5], 'iscrowd': 0},
      {'id': 2, 'image_id': 7, 'category_id': 3, 'bbox': [15, 25, 10, 10], 'iscrowd': 0},
      {'id': 3, 'image_id': 7, 'category_id': 3, 'bbox': [0, 0, 5, 5], 'iscrowd': 1},
      {'id': 4, 'image_id': 7, 'category_id': 3, 'bbox': [4, 4, 3, 0]}])  # Degenerate.
  source = detection.Coco(str(tmp_path), 'val')
  assert source.categories == ['cat', 'dog'] and source.category_ids == [3, 9]
  example = source[0]
  assert example['image'].shape == (30, 20, 3) and example['image_id'] == 7
  np.testing.assert_array_equal(example['labels'], [1, 0])
  np.testing.assert_allclose(example['boxes'], [[2, 3, 6, 8], [15, 25, 20, 30]])  # Clipped.
  assert len(source.ground_truth()['annotations']) == 4  # The evaluator sees crowd boxes.
  assert caplog.messages == [f'1 boxes with zero width or height will be dropped, e.g. '
                             f'{source.annotation_path}: annotation 4 (image 7).']


@pytest.mark.parametrize('annotation,message', [
    ({'id': 5, 'image_id': 7, 'category_id': 3, 'bbox': [1, 1, -2, 3]},
     r'annotation 5 \(image 7\): bbox must be \[x, y, width, height\] of finite numbers with '
     r'width, height ≥ 0, got \[1, 1, -2, 3\]'),
    ({'id': 4, 'image_id': 7, 'category_id': 3, 'bbox': [float('nan'), 1, 2, 3]},
     r'annotation 4 \(image 7\): bbox must be \[x, y, width, height\] of finite numbers .*'
     r'got \[nan, 1, 2, 3\]'),
    ({'id': 6, 'image_id': 7, 'category_id': 4, 'bbox': [1, 1, 2, 3]},
     r'annotation 6 \(image 7\) has category_id 4; the file defines \[3, 9\]'),
    ({'id': 8, 'image_id': 70, 'category_id': 3, 'bbox': [1, 1, 2, 3]},
     r'annotation 8 \(image 70\) refers to an image that is not in "images"'),
    ({'id': 9, 'image_id': 7, 'category_id': 3, 'bbox': [25, 0, 5, 5]},
     r'annotation 9 \(image 7\): bbox \[25, 0, 5, 5\] lies outside the 20x30 image'),
])
def test_bad_annotations_are_named(tmp_path, annotation, message):
  write_coco(tmp_path, [annotation])
  with pytest.raises(ValueError, match=message):
    detection.Coco(str(tmp_path), 'val')


def test_missing_or_malformed_annotation_files(tmp_path):
  with pytest.raises(ValueError, match=r"No COCO annotations for split 'train': expected "
                                       r".*annotations/instances_train.json"):
    detection.Coco(str(tmp_path), 'train')
  (tmp_path / 'annotations').mkdir()
  (tmp_path / 'annotations' / 'instances_x.json').write_text('{"images": [')
  with pytest.raises(ValueError, match='instances_x.json is not valid JSON'):
    detection.Coco(str(tmp_path), 'x')
  (tmp_path / 'annotations' / 'instances_y.json').write_text('{"images": []}')
  with pytest.raises(ValueError, match=r"lacks \['annotations', 'categories'\]"):
    detection.Coco(str(tmp_path), 'y')
  write_coco(tmp_path, [], split='z')
  with pytest.raises(ValueError, match=r'instances_z.json has no annotations: nothing to train '
                                       r'on and no ground truth to evaluate against'):
    detection.Coco(str(tmp_path), 'z')


def test_shapes_are_deterministic_coco_files(tmp_path):
  for root in ('a', 'b'):
    detection.write_shapes(tmp_path / root, 'train', 5, seed=1)
  a = (tmp_path / 'a/annotations/instances_train.json').read_text()
  assert a == (tmp_path / 'b/annotations/instances_train.json').read_text()
  source = detection.Coco(str(tmp_path / 'a'), 'train')
  assert len(source) == 5 and source.categories == list(detection.SHAPES)
  for i in range(5):
    example = source[i]
    h, w = example['image'].shape[:2]
    assert 48 <= h <= 64 and 48 <= w <= 64 and 1 <= len(example['labels']) <= 4
    assert np.all(example['boxes'][:, 2:] <= [w, h]) and np.all(example['boxes'][:, :2] >= 0)


def test_preprocess_pads_normalises_and_flips():
  image = np.zeros((30, 40, 3), np.uint8)
  example = {'image': image, 'boxes': np.array([[0, 0, 10, 30]], np.float32),
             'labels': np.array([1], np.int32), 'image_id': 3}
  prep = detection.Preprocess(canvas=64, scales=[60], eval_size=60, max_boxes=3)
  out = prep.eval(example)
  # Shorter side 30 → 60 unless the longer (40 → 80) exceeds 64: scale 1.6 → 48x64.
  assert out['image'].shape == (64, 64, 3) and out['pixel_mask'][:48].all()
  assert not out['pixel_mask'][48:].any()
  np.testing.assert_allclose(out['boxes'][0], [0.125, 0.5, 0.25, 1.0], atol=1e-6)
  np.testing.assert_array_equal(out['valid'], [True, False, False])
  np.testing.assert_array_equal(out['orig_size'], [30, 40])
  flipped = [prep.train(example, np.random.default_rng(s))['boxes'][0] for s in range(8)]
  assert any(np.allclose(b, [0.875, 0.5, 0.25, 1.0], atol=1e-6) for b in flipped)
  with pytest.raises(ValueError, match='Image 3 has 1 boxes, more than data.max_boxes=0'):
    detection.Preprocess(64, [60], 60, max_boxes=0).eval(example)


def test_random_size_crop_keeps_boxes_inside():
  rng = np.random.default_rng(0)
  prep = detection.Preprocess(canvas=64, scales=[48, 64], eval_size=64, max_boxes=4,
                              crop_scales=[40, 56], crop_min=24)
  example = {'image': rng.integers(0, 255, (50, 60, 3), dtype=np.uint8),
             'boxes': np.array([[5, 5, 20, 25], [30, 10, 58, 48]], np.float32),
             'labels': np.array([0, 1], np.int32), 'image_id': 1}
  for seed in range(10):
    out = prep.train(example, np.random.default_rng(seed))
    b = out['boxes'][out['valid']]
    assert np.all(b >= 0) and np.all(b <= 1) and np.all(b[:, 2:] > 0)


def make_tfds_coco(data_dir):
  """A tiny dataset with coco/2017's features, built here (no download, no TensorFlow)."""
  import tensorflow_datasets as tfds

  class TinyCoco(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'image/id': np.int64,
          'objects': tfds.features.Sequence({
              'bbox': tfds.features.BBoxFeature(),
              'label': tfds.features.ClassLabel(names=['circle', 'square']),
              'is_crowd': np.bool_})}))

    def _split_generators(self, dl_manager):
      return {'validation': self._generate_examples()}

    def _generate_examples(self):
      for i in range(3):
        yield i, {'image': Image.new('RGB', (40, 20), (i * 50, 0, 0)), 'image/id': 100 + i,
                  'objects': {'bbox': [tfds.features.BBox(0.1, 0.2, 0.5, 0.6)],
                              'label': [i % 2], 'is_crowd': [False]}}

  TinyCoco(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return 'tiny_coco'


def test_tfds_detection_source(tmp_path):
  name = make_tfds_coco(str(tmp_path))
  source = detection.Tfds(name, 'validation', str(tmp_path))
  assert len(source) == 3 and source.categories == ['circle', 'square']
  example = source[0]
  assert example['image'].shape == (20, 40, 3)
  # Normalised (ymin, xmin, ymax, xmax) = (.1, .2, .5, .6) on 40x20 → x 8..24, y 2..10.
  np.testing.assert_allclose(example['boxes'], [[8, 2, 24, 10]], atol=1e-4)
  gt = source.ground_truth()
  assert len(gt['images']) == 3 and gt['annotations'][0]['bbox'] == pytest.approx(
      [8, 2, 16, 8], abs=1e-4)
