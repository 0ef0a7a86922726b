import re

import jax
import numpy as np
import pytest
from PIL import Image

from vit_jax.data import classification
from vit_jax.data import pipeline


def make_tfds_dataset(data_dir, sizes=(('train', 12), ('test', 5))):
  """A tiny image-classification TFDS dataset, built here in array_record format (no
  download, no TensorFlow: images are given as PIL images, which tfds encodes itself)."""
  import tensorflow_datasets as tfds

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {name: self._generate_examples(n) for name, n in sizes}

    def _generate_examples(self, n):
      rng = np.random.default_rng(n)
      for i in range(n):
        pixels = rng.integers(0, 255, (10 + i, 14, 3), dtype=np.uint8)
        yield i, {'image': Image.fromarray(pixels), 'label': i % 3}

  TinyShapes(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return 'tiny_shapes'


def test_digits_fixed_split():
  train, test = classification.Digits('train'), classification.Digits('test')
  assert (len(train), len(test)) == (1437, 360)
  assert train[0]['image'].shape == (8, 8, 1) and train[0]['image'].dtype == np.uint8
  assert np.bincount(test.labels).min() >= 35  # Stratified: every digit in the test split.


def test_a_validation_split_is_carved_from_the_training_split():
  train = classification.Digits('train')
  head, tail = classification.Digits('train[:90%]'), classification.Digits('train[90%:]')
  assert (len(head), len(tail)) == (1293, 144)  # round(0.9 · 1437) = 1293.
  np.testing.assert_array_equal(np.concatenate([head.images, tail.images]), train.images)
  np.testing.assert_array_equal(classification.Digits('train[-144:]').labels, tail.labels)
  with pytest.raises(ValueError, match=re.escape(
      "Unknown split 'valid[:10]' for 'digits'; expected 'train' or 'test', optionally sliced "
      "('train[:90%]', 'train[3600:]').")):
    classification.Digits('valid[:10]')
  with pytest.raises(ValueError, match=re.escape(
      "Unreadable split 'train[0.5:]'; expected a name, optionally sliced as TFDS slices: "
      "'train', 'train[:3600]', 'train[90%:]', 'train[:2]+train[4:]'.")):
    classification.Digits('train[0.5:]')
  both = classification.Digits('train[:10]+train[-144:]')  # A '+' union of slices.
  np.testing.assert_array_equal(both.labels, np.concatenate([train.labels[:10], tail.labels]))
  with pytest.raises(ValueError, match=re.escape(
      "Split 'train[:10]+test[:10]' joins slices of ['test', 'train']; a union takes slices "
      "of one split.")):
    classification.Digits('train[:10]+test[:10]')


def test_tfds_source_and_preprocessing(tmp_path):
  name = make_tfds_dataset(str(tmp_path))
  source = classification.make_source('tfds', 'train', str(tmp_path), tfds_name=name)
  assert len(source) == 12 and source.num_classes == 3
  prep = classification.Preprocess(image_size=8, augment='inception_crop', flip=True)
  example = prep.train(source[3], np.random.default_rng(0))
  assert example['image'].shape == (8, 8, 3) and example['image'].dtype == np.float32
  assert -1.0 <= example['image'].min() and example['image'].max() <= 1.0
  assert prep.eval(source[4])['image'].shape == (8, 8, 3)
  sliced = classification.make_source('tfds', 'train[9:]', str(tmp_path), tfds_name=name)
  assert len(sliced) == 3  # TFDS slices it: example 0 is the split's example 9.
  np.testing.assert_array_equal(sliced[0]['image'], source[9]['image'])
  with pytest.raises(ValueError, match=r"Split 'validation' not found for TFDS dataset "
                                       r"'tiny_shapes'; available: \['test', 'train'\]"):
    classification.make_source('tfds', 'validation', str(tmp_path), tfds_name=name)
  with pytest.raises(ValueError, match="TFDS dataset 'cifar10' is not prepared in data_dir"):
    classification.make_source('tfds', 'train', str(tmp_path), tfds_name='cifar10')


def make_folder(root, splits):
  """root/<split>/<class>/<i>.png: grayscale 9x7 images, `n` per class."""
  for split, (classes, n) in splits.items():
    for c in classes:
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        Image.new('L', (9, 7), 40 * i).save(root / split / c / f'{i}.png')


def test_image_folder(tmp_path):
  make_folder(tmp_path, {'train': (('cat', 'dog'), 3), 'test': (('cat', 'dog'), 2)})
  source = classification.make_source('folder', 'train', str(tmp_path))
  assert len(source) == 6 and source.classes == ['cat', 'dog'] and source.num_classes == 2
  assert source[4]['image'].shape == (7, 9, 1) and source[4]['label'] == 1  # Grayscale kept.
  with pytest.raises(ValueError, match='Image folder split .*valid.* does not exist'):
    classification.make_source('folder', 'valid', str(tmp_path))


def test_image_folder_labels_come_from_the_training_classes(tmp_path):
  make_folder(tmp_path, {'train': (('cat', 'dog', 'fox'), 1), 'test': (('fox',), 2)})
  train = classification.make_source('folder', 'train', str(tmp_path))
  test = classification.make_source('folder', 'test', str(tmp_path), classes=train.classes)
  assert [test[i]['label'] for i in range(len(test))] == [2, 2]  # 'fox', not the first class.
  with pytest.raises(ValueError, match=r"'.*train' has class folders \['fox'\] that the "
                                       r"training classes \['cat', 'dog'\] lack"):
    classification.make_source('folder', 'train', str(tmp_path), classes=['cat', 'dog'])


def test_channels_are_honoured_and_converted_only_when_asked():
  grey, rgb = np.full((8, 8, 1), 90, np.uint8), np.zeros((8, 8, 3), np.uint8)
  prep = classification.Preprocess(image_size=8, augment='none', channels=1)
  assert prep.eval({'image': grey, 'label': 0})['image'].shape == (8, 8, 1)
  with pytest.raises(ValueError, match=r'Image has 3 channels; the model expects 1 '
                                       r'\(data.channels=1\)\. Set data.channels=3, or '
                                       r'data.convert_channels=True'):
    prep.eval({'image': rgb, 'label': 0})
  with pytest.raises(ValueError, match='Image has 1 channels; the model expects 3'):
    classification.Preprocess(image_size=8, augment='none').eval({'image': grey, 'label': 0})
  convert = classification.Preprocess(image_size=8, augment='none', channels=3,
                                      convert_channels=True)
  np.testing.assert_allclose(convert.eval({'image': grey, 'label': 0})['image'],
                             np.full((8, 8, 3), 90 / 127.5 - 1), rtol=1e-6)
  rgb[..., 0] = 100
  to_grey = classification.Preprocess(image_size=8, augment='none', channels=1,
                                      convert_channels=True)
  np.testing.assert_allclose(to_grey.eval({'image': rgb, 'label': 0})['image'][0, 0, 0],
                             30 / 127.5 - 1, rtol=1e-6)  # Luma: round(0.299 x 100).


def _identity(example, rng=None):
  return {'x': np.int32(example)}


def test_train_batches_are_a_function_of_the_step():
  source = list(range(10))
  full = pipeline.train_batches(source, _identity, 4, seed=3)
  first = [next(full)['x'] for _ in range(5)]
  resumed = pipeline.train_batches(source, _identity, 4, seed=3, start_step=3)
  np.testing.assert_array_equal(next(resumed)['x'], first[3])
  epoch = np.concatenate(first)[:10]  # Each epoch visits every example once.
  assert sorted(epoch.tolist()) == list(range(10))


def test_each_process_reads_its_rows_of_the_global_batch(monkeypatch):
  source = list(range(20))
  single = pipeline.train_batches(source, _identity, 8, seed=0)
  global_batches = [next(single)['x'] for _ in range(3)]
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  rows = []
  for p in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    host = pipeline.train_batches(source, _identity, 4, seed=0)
    rows.append([next(host)['x'] for _ in range(3)])
  for b in range(3):
    np.testing.assert_array_equal(np.concatenate([rows[0][b], rows[1][b]]), global_batches[b])


def test_eval_batches_count_every_example_once():
  batches = list(pipeline.eval_batches(list(range(10)), _identity, 4))
  assert len(batches) == 3 == pipeline.num_eval_batches(range(10), 4)
  x = np.concatenate([b['x'] for b in batches])
  weight = np.concatenate([b[pipeline.WEIGHT] for b in batches])
  assert weight.sum() == 10
  assert sorted(x[weight == 1].tolist()) == list(range(10))
  with pytest.raises(ValueError, match='The evaluation split is empty'):
    pipeline.eval_batches([], _identity, 4)


def test_a_malformed_example_is_named(tmp_path):
  for c in ('cat', 'dog'):
    (tmp_path / 'train' / c).mkdir(parents=True)
    for i in range(3):
      Image.new('L', (9, 7), 40 * i).save(tmp_path / 'train' / c / f'{i}.png')
  (tmp_path / 'train' / 'dog' / '1.png').write_bytes(b'not a png')
  source = classification.make_source('folder', 'train', str(tmp_path))
  prep = classification.Preprocess(image_size=8, augment='none', channels=1)
  bad = tmp_path / 'train' / 'dog' / '1.png'
  with pytest.raises(pipeline.MalformedExample,
                     match=f"Training image '{bad}' is malformed: UnidentifiedImageError"):
    next(pipeline.train_batches(source, prep.train, 6, seed=0))
  with pytest.raises(pipeline.MalformedExample, match=f"Evaluation image '{bad}' is malformed"):
    next(pipeline.eval_batches(source, prep.eval, 6))
  mixed = [{'image': np.zeros((8, 8, c), np.uint8), 'label': 0} for c in (1, 1, 3, 1)]
  gray = classification.Preprocess(image_size=8, augment='none', channels=1)
  with pytest.raises(pipeline.MalformedExample, match='Evaluation example 2 is malformed: '
                     'UserError: Image has 3 channels; the model expects 1'):
    next(pipeline.eval_batches(mixed, gray.eval, 4))
