import json

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import detection
from vit_jax.data import segmentation


def test_shapes_semantic_maps_agree_with_the_coco_masks(tmp_path):
  detection.write_shapes(tmp_path, 'train', 6, seed=3)
  folder = segmentation.Folder(tmp_path / 'train', tmp_path / 'semantic/train',
                               ['background'] + list(detection.SHAPES))
  coco = segmentation.CocoSemantic(str(tmp_path), 'train')  # Drawn from the RLE masks.
  assert coco.classes == folder.classes == ['background', 'circle', 'rectangle', 'triangle']
  for i in range(6):
    a, b = folder[i], coco[i]
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
    assert set(np.unique(a['label'])) <= {0, 1, 2, 3} and (a['label'] > 0).any()
  # Each object's visible mask lies inside its box and its area is the mask's.
  gt = json.loads((tmp_path / 'annotations/instances_train.json').read_text())
  from pycocotools import mask as mask_utils
  for ann in gt['annotations']:
    m = mask_utils.decode({'size': ann['segmentation']['size'],
                           'counts': ann['segmentation']['counts'].encode()})
    x, y, w, h = ann['bbox']
    assert m.sum() == ann['area'] and m[y:y + h, x:x + w].sum() == m.sum()


def write_pair(root, split, stem, label, size=None):
  (root / 'images' / split).mkdir(parents=True, exist_ok=True)
  (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
  h, w = size or label.shape
  Image.new('RGB', (w, h), (10, 20, 30)).save(root / 'images' / split / f'{stem}.jpg')
  Image.fromarray(label.astype(np.uint8)).save(root / 'annotations' / split / f'{stem}.png')


def test_folder_reduces_the_zero_label_and_names_bad_files(tmp_path):
  write_pair(tmp_path, 'training', 'a', np.array([[0, 1], [2, 150]]))
  source = segmentation.Folder(tmp_path / 'images/training', tmp_path / 'annotations/training',
                               ['c'] * 150, reduce_zero_label=True)
  np.testing.assert_array_equal(source[0]['label'], [[255, 0], [1, 149]])
  write_pair(tmp_path, 'bad', 'b', np.zeros((4, 5)), size=(4, 6))
  bad = segmentation.Folder(tmp_path / 'images/bad', tmp_path / 'annotations/bad', ['c'])
  with pytest.raises(ValueError, match=r'b\.jpg: the image is 6x4 but its label map is 5x4'):
    bad[0]
  (tmp_path / 'images/bad/c.png').write_bytes(b'')
  with pytest.raises(ValueError, match=r'1 images in .*bad have no label map .*c\.png'):
    segmentation.Folder(tmp_path / 'images/bad', tmp_path / 'annotations/bad', ['c'])


def test_coco_polygons_rle_and_crowd(tmp_path):
  (tmp_path / 'annotations').mkdir()
  (tmp_path / 'val').mkdir()
  Image.new('RGB', (8, 6)).save(tmp_path / 'val/x.png')
  rle = detection_rle(np.pad(np.ones((2, 2), np.uint8), ((4, 0), (6, 0))))  # Rows 4-5, cols 6-7.
  coco = {'images': [{'id': 7, 'file_name': 'x.png', 'width': 8, 'height': 6}],
          'categories': [{'id': 3, 'name': 'a'}, {'id': 9, 'name': 'b'}],
          'annotations': [
              {'id': 1, 'image_id': 7, 'category_id': 9, 'bbox': [0, 0, 4, 3], 'area': 12,
               'segmentation': [[0, 0, 4, 0, 4, 3, 0, 3]], 'iscrowd': 0},
              {'id': 2, 'image_id': 7, 'category_id': 3, 'bbox': [6, 4, 2, 2], 'area': 4,
               'segmentation': rle, 'iscrowd': 1}]}
  (tmp_path / 'annotations/instances_val.json').write_text(json.dumps(coco))
  source = segmentation.CocoSemantic(str(tmp_path), 'val')
  label = source[0]['label']
  assert source.classes == ['background', 'a', 'b']
  assert (label[:3, :4] == 2).all() and (label[4:, 6:] == 255).all()
  assert (label[3, :] == 0).all() and label.shape == (6, 8)
  coco['annotations'][0].pop('segmentation')
  (tmp_path / 'annotations/instances_val.json').write_text(json.dumps(coco))
  with pytest.raises(ValueError, match=r'1 annotations have no "segmentation" \(e\.g\. id 1\)'):
    segmentation.CocoSemantic(str(tmp_path), 'val')


def detection_rle(mask):
  from pycocotools import mask as mask_utils
  rle = mask_utils.encode(np.asfortranarray(mask))
  return {'size': rle['size'], 'counts': rle['counts'].decode()}


def test_tfds_segmentation_source(tmp_path):
  import tensorflow_datasets as tfds

  class TinyParse(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'annotation': tfds.features.Image(shape=(None, None, 3))}))  # As scene_parse150.

    def _split_generators(self, dl_manager):
      return {'validation': self._generate_examples()}

    def _generate_examples(self):
      for i in range(2):
        classes = np.array([[0, 1, 2, 3]] * 3, np.uint8)  # The first channel; then instances.
        yield i, {'image': Image.new('RGB', (4, 3), (i, i, i)),
                  'annotation': Image.fromarray(np.stack([classes, classes * 7, classes * 0],
                                                         -1))}

  TinyParse(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  source = segmentation.Tfds('tiny_parse', 'validation', str(tmp_path), ['c'] * 3)
  assert len(source) == 2 and source[1]['image'].shape == (3, 4, 3)
  np.testing.assert_array_equal(source[1]['label'][0], [255, 0, 1, 2])


def test_preprocess_pads_with_ignore_and_keeps_the_size():
  example = {'image': np.zeros((30, 40, 3), np.uint8), 'label': np.ones((30, 40), np.uint8),
             'image_id': 0}
  prep = segmentation.Preprocess(canvas=32, scales=[20, 40], eval_size=None)
  out = prep.eval(example)  # Longer side 40 > 32: scaled by 0.8 → 24x32.
  assert out['image'].shape == (32, 32, 3) and tuple(out['size']) == (24, 32)
  assert (out['label'][:24] == 1).all() and (out['label'][24:] == 255).all()
  for seed in range(6):
    out = prep.train(example, np.random.default_rng(seed))
    assert out['label'].shape == (32, 32) and set(np.unique(out['label'])) <= {1, 255}
    assert (out['label'] == 1).any()


def test_shapes_panoptic_files_agree_with_the_semantic_maps(tmp_path):
  detection.write_shapes(tmp_path, 'val', 5, seed=2)
  source = segmentation.CocoPanoptic(str(tmp_path), 'val')
  semantic = segmentation.Folder(tmp_path / 'val', tmp_path / 'semantic/val', ['x'] * 4)
  assert source.classes == list(detection.SHAPES) + ['background']
  assert source.isthing == [True, True, True, False]
  for i in range(5):
    example = source[i]
    label = semantic[i]['label']  # 0 background, k + 1 shape k; panoptic: 3 background.
    np.testing.assert_array_equal(example['label'], np.where(label == 0, 3, label - 1))
    ids = example['segments']
    assert set(np.unique(ids)) == set(example['segments_info'])  # No void in the shapes.
    things = [k for k, (c, _) in example['segments_info'].items() if c < 3]
    assert len(things) == len(source.records[i]['segments_info']) - 1


def test_panoptic_rgb_ids_crowd_and_bad_categories(tmp_path):
  (tmp_path / 'annotations/panoptic_val').mkdir(parents=True)
  (tmp_path / 'val').mkdir()
  Image.new('RGB', (3, 2)).save(tmp_path / 'val/a.jpg')
  ids = np.array([[0, 300, 300], [70000, 70000, 5]])
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'annotations/panoptic_val/a.png')
  record = {'image_id': 1, 'file_name': 'a.png', 'segments_info': [
      {'id': 300, 'category_id': 2}, {'id': 70000, 'category_id': 8, 'iscrowd': 1},
      {'id': 5, 'category_id': 8}]}
  coco = {'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 3, 'height': 2}],
          'annotations': [record],
          'categories': [{'id': 8, 'name': 'person', 'isthing': 1},
                         {'id': 2, 'name': 'grass', 'isthing': 0}]}
  path = tmp_path / 'annotations/panoptic_val.json'
  path.write_text(json.dumps(coco))
  example = segmentation.CocoPanoptic(str(tmp_path), 'val')[0]
  np.testing.assert_array_equal(example['segments'], ids)
  np.testing.assert_array_equal(example['label'], [[255, 0, 0], [255, 255, 1]])
  assert example['segments_info'] == {300: (0, False), 70000: (1, True), 5: (1, False)}
  record['segments_info'][0]['category_id'] = 3
  path.write_text(json.dumps(coco))
  with pytest.raises(ValueError, match=r'image 1 has a segment of category_id 3; the file '
                                       r'defines \[2, 8\]'):
    segmentation.CocoPanoptic(str(tmp_path), 'val')
