"""Image restoration with IPT: every task trained in every step on its share of the batch,
L1 loss plus the optional patch-level contrastive loss, PSNR and SSIM per task against
classic baselines measured on the same held-out inputs."""
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage
import tqdm

from vit_jax import compiling
from vit_jax import errors
from vit_jax import losses
from vit_jax import pretrained
from vit_jax.data import pipeline
from vit_jax.data import restoration as data
from vit_jax.models import ipt
from vit_jax.ops import tiling
from vit_jax.tasks import base


PIXEL_LOSSES = {'l1': jnp.abs, 'l2': jnp.square}


def dihedral(images, k, inverse=False):
  """The k-th (0..7) of the square's 8 symmetries applied to images [B, H, W, C] (H = W): a
  horizontal flip for k >= 4, then k mod 4 quarter turns; inverse=True undoes it."""
  if inverse:
    images = jnp.rot90(images, -(k % 4), axes=(1, 2))
    return images[:, :, ::-1] if k >= 4 else images
  images = images[:, :, ::-1] if k >= 4 else images
  return jnp.rot90(images, k % 4, axes=(1, 2))


def to_uint8(images):
  """Model outputs in [0, 1] → the image a user gets: ×255, clipped, rounded."""
  return jnp.round(jnp.clip(images * 255, 0, 255)).astype(jnp.uint8)


def patch_contrastive_loss(tokens, temperature):
  """IPT's Eq. 4: patches of one image are positives, patches of the other images negatives.

  tokens [B, L, D] (the body's output patch features) → the mean over anchors i and
  positives j ≠ i of the same image of −log(exp(cos(f_i, f_j)/τ) / Σ_k exp(cos(f_i, f_k)/τ)),
  k over the patches of the other images (the paper's denominator). 0 for a batch of one.
  """
  b, l, d = tokens.shape
  f = tokens.reshape(b * l, d).astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  similarity = f @ f.T / temperature  # [N, N]
  image = jnp.repeat(jnp.arange(b), l)
  same = image[:, None] == image[None, :]
  negatives = jax.nn.logsumexp(jnp.where(same, -jnp.inf, similarity), axis=1, keepdims=True)
  positive = same & ~jnp.eye(b * l, dtype=bool)
  per_pair = jnp.where(positive, negatives - similarity, 0.0)
  return jnp.where(b > 1, per_pair.sum() / jnp.maximum(positive.sum(), 1), 0.0)


def gaussian(noisy, _):
  """A Gaussian blur of standard deviation 1 pixel."""
  return ndimage.gaussian_filter(noisy, (1.0, 1.0, 0))


def nl_means(noisy, sigma):
  """scikit-image's non-local means with its documented setting for a known σ (h = 0.8 σ)."""
  from skimage import restoration
  s = sigma / 255
  return 255 * restoration.denoise_nl_means(noisy / 255, h=0.8 * s, sigma=s, fast_mode=True,
                                             patch_size=5, patch_distance=6, channel_axis=-1)


def median(noisy, _):
  """A 3x3 median filter per channel."""
  return ndimage.median_filter(noisy, (3, 3, 1))


def baselines(task):
  """The classic methods a task's result is compared with: name → fn(input on 0..255 [H, W, 3],
  task parameter) → output at the target's size."""
  if task.startswith('noise'):
    return {'gaussian': gaussian, 'nl_means': nl_means}
  if task.startswith('sr'):
    return {'bicubic': lambda x, scale: data.resize(np.round(x).astype(np.uint8),
                                                   x.shape[0] * scale, x.shape[1] * scale)}
  return {'input': lambda x, _: x, 'median': median}


def as_saved(image):
  """An image on 0..255 as it is saved: rounded, clipped uint8."""
  return np.round(np.clip(image, 0, 255)).astype(np.uint8)


def run_baseline(method, x, task):
  """A baseline's output as a saved image."""
  return as_saved(method(x, data.task_parameter(task)))


def image_scores(target, restored):
  """PSNR (dB) and SSIM of one uint8 image against its clean original (scikit-image's, on
  0..255, SSIM over the colour channels)."""
  from skimage import metrics
  return {'psnr': metrics.peak_signal_noise_ratio(target, restored, data_range=255),
          'ssim': metrics.structural_similarity(target, restored, channel_axis=-1,
                                                data_range=255)}


class RestorationTask(base.Task):

  @property
  def tasks(self):
    tasks = list(self.config.model.tasks)
    if not tasks:
      raise errors.UserError('model.tasks is empty; name at least one restoration task.')
    for task in tasks:
      data.task_scale(task)  # Names an unknown task.
    return tasks

  @functools.cached_property
  def preprocess(self):
    return data.Preprocess(self.tasks, self.config.data.canvas, self.config.data.augment)

  @functools.cached_property
  def sources(self):
    c = self.config.data
    evaluation = data.Crops(data.make_source(c, c.eval_split), self.preprocess.crop,
                            c.eval_crops)
    return data.make_source(c, c.train_split), evaluation

  def build_model(self):
    m = dict(self.config.model)
    m.pop('tasks')
    return ipt.IPT(tasks=tuple(self.tasks), scales=tuple(map(data.task_scale, self.tasks)),
                   image_size=self.config.data.canvas, **m,
                   compute=base.compute_options(self.config))

  def datasets(self):
    return base.Datasets(*self.sources, self.preprocess)

  def dummy_batch(self, batch_size):
    c, batch = self.config.data.canvas, {}
    for task in self.tasks:
      s = c * data.task_scale(task)
      batch[f'input_{task}'] = np.zeros((batch_size, c, c, 3), np.float32)
      batch[f'target_{task}'] = np.zeros((batch_size, s, s, 3), np.uint8)
    return batch

  def init(self, rng, batch):
    inputs = [batch[f'input_{t}'] / 255 for t in self.tasks]
    return self.model.init({'params': rng}, inputs, method=ipt.IPT.init_all_tasks)['params']

  def restore(self, params, inputs, task, train=False, rng=None):
    """Inputs on 0..255 → (restored in [0, 1], aux) for task index `task`. With
    config.self_ensemble, inference (not training) is the geometric self-ensemble."""
    rngs = {'dropout': rng} if train else {}
    if train or not self.config.self_ensemble:
      return self.model.apply({'params': params}, inputs / 255, task, train=train, rngs=rngs)
    views = jnp.concatenate([dihedral(inputs, k) for k in range(8)]) / 255
    restored, aux = self.model.apply({'params': params}, views, task)
    restored = jnp.stack([dihedral(y, k, inverse=True)
                          for k, y in enumerate(jnp.split(restored, 8))]).mean(0)
    return restored, jax.tree.map(lambda a: a[:len(inputs)], aux)  # aux: the plain view's.

  def loss_fn(self, params, batch, rng, frozen=None):
    """Every task on its share of the batch's rows (task k: rows k::T): the mean over tasks
    of the pixel loss (loss.pixel: 'l1', the paper's, or 'l2', the squared error PSNR
    measures) between the restored and the clean image in [0, 1], plus
    loss.contrastive_weight x each task's patch contrastive loss.

    IPT §3.2 draws one task per batch, which has the same expected gradient; a step that
    picks its task at run time (lax.switch) ran 7x slower than one task's step on CPU (XLA
    runs the branches without its fast convolutions), so every step trains every task."""
    del frozen  # No teacher.
    c, terms, loss = self.config.loss, {}, 0.0
    if c.pixel not in PIXEL_LOSSES:
      raise errors.UserError(f'Unknown loss.pixel {c.pixel!r}; expected one of '
                             f'{sorted(PIXEL_LOSSES)}.')
    for t, task in enumerate(self.tasks):
      rows = slice(t, None, len(self.tasks))
      restored, aux = self.restore(params, batch[f'input_{task}'][rows], t, True,
                                   jax.random.fold_in(rng, t))
      target = batch[f'target_{task}'][rows] / 255
      error = restored.astype(jnp.float32) - target
      terms[f'{c.pixel}_{task}'] = PIXEL_LOSSES[c.pixel](error).mean()
      loss = loss + terms[f'{c.pixel}_{task}']
      if c.contrastive_weight:
        terms[f'contrastive_{task}'] = patch_contrastive_loss(aux['tokens'], c.temperature)
        loss = loss + c.contrastive_weight * terms[f'contrastive_{task}']
    return loss / len(self.tasks), terms

  def eval_step(self, params, batch):
    """Per task: the L1 loss; the restored images (rounded, clipped) for PSNR and SSIM."""
    weight = batch[pipeline.WEIGHT]
    pairs, outputs = {}, {}
    for t, task in enumerate(self.tasks):
      restored, _ = self.restore(params, batch[f'input_{task}'], t)
      target = batch[f'target_{task}']
      l1 = jnp.abs(restored.astype(jnp.float32) - target / 255).mean((1, 2, 3))
      outputs[f'restored_{task}'] = to_uint8(restored)
      pairs[f'l1_{task}'] = losses.weighted_mean(l1, weight)
    return pairs, outputs

  @functools.lru_cache(maxsize=2)
  def baseline_scores(self, source):
    """{'psnr_<task>_<method>', 'ssim_<task>_<method>'}: the classic methods on the same
    held-out inputs (computed once per source: the inputs are fixed)."""
    sums = {}
    for i in range(len(source)):
      example = self.preprocess.eval(source[i])
      for task in self.tasks:
        x, target = example[f'input_{task}'], example[f'target_{task}']
        for name, method in baselines(task).items():
          for metric, value in image_scores(target, run_baseline(method, x, task)).items():
            sums.setdefault(f'{metric}_{task}_{name}', []).append(value)
    return {k: float(np.mean(v)) for k, v in sums.items()}

  def eval_metrics(self, outputs, source):
    """Per task, the mean over held-out crops of PSNR (dB) and SSIM of IPT's images and of
    the classic baselines', and psnr_gain_<task>: IPT's PSNR minus the best baseline's."""
    scores = {}
    for i in range(len(source)):
      example = self.preprocess.eval(source[i])
      for task in self.tasks:
        for name, value in image_scores(example[f'target_{task}'],
                                        outputs[f'restored_{task}'][i]).items():
          scores.setdefault(f'{name}_{task}', []).append(value)
    scores = {k: float(np.mean(v)) for k, v in scores.items()}
    scores.update(self.baseline_scores(source))
    for task in self.tasks:
      best = max(scores[f'psnr_{task}_{name}'] for name in baselines(task))
      scores[f'psnr_gain_{task}'] = scores[f'psnr_{task}'] - best
    return scores

  def load_pretrained(self, params, path):
    """An IPT exported by --mode=export: the body must fit; a task of the checkpoint that
    this config does not name is left out, and a task it names that the checkpoint lacks
    starts fresh (IPT §3.2: a pre-trained body fine-tuned on one task, or a new one)."""
    restored = pretrained.load_npz(path)
    per_task = lambda key: key.split('/')[0].split('_', 1)
    trained = {per_task(k)[1] for k in restored if per_task(k)[0] in ('head', 'tail', 'query')}
    restored = {k: v for k, v in restored.items()
                if per_task(k)[0] not in ('head', 'tail', 'query') or per_task(k)[1] in self.tasks}
    fresh = tuple(f'{kind}_{t}' for t in self.tasks if t not in trained
                  for kind in ('head', 'tail', 'query'))
    return pretrained.fit(params, restored, fresh=fresh, source=f'Checkpoint {path!r}',
                          what=f'IPT for tasks {self.tasks}')

  def write_plots(self, params, workdir, num_images=3):
    """restoration.png: per task, a few held-out crops: the degraded input, the best classic
    baseline, IPT's output and the clean image, each with its PSNR."""
    from vit_jax import plots
    source = self.sources[1]
    picks = np.linspace(0, len(source) - 1, num_images).round().astype(int)
    examples = [self.preprocess.eval(source[i]) for i in picks]
    rows = []
    for t, task in enumerate(self.tasks):
      inputs = np.stack([e[f'input_{task}'] for e in examples])
      restored = np.asarray(to_uint8(compiling.run_once(
          lambda p, x, t=t: self.restore(p, x, t)[0], params, inputs)))
      row = []
      for e, out in zip(examples, restored):
        x, target = e[f'input_{task}'], e[f'target_{task}']
        candidates = {name: run_baseline(fn, x, task) for name, fn in baselines(task).items()}
        score = lambda im, target=target: image_scores(target, im)['psnr']
        best = max(candidates, key=lambda n: score(candidates[n]))
        row.append([(f'{task} input', as_saved(x)),
                    (f'{best} {score(candidates[best]):.2f} dB', candidates[best]),
                    (f'IPT {score(out):.2f} dB', out), ('clean', target)])
      rows.append(row)
    return [plots.restorations(rows, os.path.join(workdir, 'restoration.png'))]

  def commands(self):
    return {'restore': self.restore_command}

  def restore_command(self, params):
    """--mode=restore: every image of config.restore.input (a file or a folder) restored
    whole for restore.task, in overlapping canvas-sized tiles (ops/tiling.py), written as
    <name>_<task>.png to restore.output (default <workdir>/restored). With restore.degrade
    the images are clean originals: each is degraded for the task first (restore.seed), and
    IPT and the classic baselines are scored against it (printed, and scores.json)."""
    if 'restore' not in self.config:
      raise errors.UserError('This run\'s config predates --mode=restore (no config.restore); '
                             'pass --config=configs/ipt.py with the run\'s settings.')
    c = self.config.restore
    if not c.input:
      raise errors.UserError('--mode=restore needs --config.restore.input: an image file or a '
                             'folder of images.')
    task = c.task or self.tasks[0]
    if task not in self.tasks:
      raise errors.UserError(f'restore.task {task!r} is not one this IPT was trained for; '
                             f'expected one of {self.tasks}.')
    canvas = self.config.data.canvas
    if not 0 <= c.overlap < canvas:
      raise errors.UserError(f'restore.overlap={c.overlap} must be in [0, {canvas}): tiles '
                             'are data.canvas pixels wide.')
    path = pathlib.Path(c.input)
    files = [path] if path.is_file() else data.Folder(path).files
    output = pathlib.Path(c.output or os.path.join(self.workdir, 'restored'))
    output.mkdir(parents=True, exist_ok=True)
    t, scale = self.tasks.index(task), data.task_scale(task)
    restore_batch = jax.jit(lambda x: self.restore(params, x, t)[0])
    scores = {}
    for file in tqdm.tqdm(files, desc=f'restoring ({task})', unit='image', leave=False):
      image = data.rgb(Image.open(file).convert('RGB'))
      if c.degrade:
        h, w = (side // scale * scale for side in image.shape[:2])
        x, clean = data.degrade(task, image[:h, :w], np.random.default_rng(c.seed))
        Image.fromarray(as_saved(x)).save(output / f'{file.stem}_{task}_input.png')
      else:
        x = image.astype(np.float32)
      restored = as_saved(255 * tiling.restore_tiled(restore_batch, x, canvas, scale,
                                                     c.overlap, c.batch_size))
      Image.fromarray(restored).save(output / f'{file.stem}_{task}.png')
      if c.degrade:
        methods = {'IPT': restored, **{name: run_baseline(fn, x, task)
                                       for name, fn in baselines(task).items()}}
        scores[file.name] = {name: image_scores(clean, out) for name, out in methods.items()}
    if c.degrade:
      print(f'{task}, whole images: PSNR (dB) / SSIM against the originals')
      mean = {m: {k: float(np.mean([row[m][k] for row in scores.values()]))
                  for k in ('psnr', 'ssim')} for m in methods}
      for name, row in {**scores, 'mean': mean}.items():
        print(f'  {name}: ' + ', '.join(f'{m} {s["psnr"]:.2f} / {s["ssim"]:.3f}'
                                        for m, s in row.items()))
      with open(output / 'scores.json', 'w') as f:
        json.dump(scores, f, indent=1)
    print(f'{len(files)} image(s) restored for {task} in {output}')
