"""A small CNN classifier trained here, on a generator's own training images, for what
pretrained networks do elsewhere (their weights cannot be downloaded): its feature maps are
VQGAN's perceptual space (one instance, in the loss), and its features and predictions judge
generated images (another instance, never seen by the generator): the Fréchet distance between
generated and real images in its embedding (Heusel et al. 2017's formula; not "FID", which
means Inception-v3's features) and the accuracy with which it recognises class-conditional
samples as their class.
"""
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
import tqdm

from vit_jax import compiling
from vit_jax import losses
from vit_jax import pretrained


class Classifier(nn.Module):
  """Three 3x3 convs (width, 2·width, 2·width), each after a 2x2 average pooling but the
  first, then a dense embedding of 4·width and the class logits: small enough to train in
  seconds on a CPU. → (logits, [the three conv feature maps], embedding)."""
  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x):
    maps = []
    for i, mult in enumerate((1, 2, 2)):
      if i:
        x = nn.avg_pool(x, (2, 2), (2, 2))
      x = nn.relu(nn.Conv(self.width * mult, (3, 3), name=f'conv{i}')(x))
      maps.append(x)
    embedding = nn.relu(nn.Dense(4 * self.width, name='embed')(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, name='head')(embedding), maps, embedding


def _shifted(images, rng, max_shift=2):
  """Each image translated by up to `max_shift` pixels (edge fill): the only augmentation."""
  n, h, w, _ = images.shape
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = np.pad(images, pad, mode='edge')
  dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
  return np.stack([p[y:y + h, x:x + w] for p, y, x in zip(padded, dy, dx)])


def train(images, labels, num_classes, *, width=16, steps=500, batch_size=64,
          learning_rate=2e-3, seed=0, desc='classifier'):
  """A Classifier fitted to images (float [N, H, W, C] in [-1, 1]) and labels [N] by Adam
  with a cosine decay, on random shifts of random batches. → its parameters."""
  model = Classifier(num_classes, width)
  rng = np.random.default_rng(seed)
  params = compiling.run_once(model.init, jax.random.key(seed), images[:1])['params']
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(params):
      return losses.softmax_cross_entropy(model.apply({'params': params}, x)[0], y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in tqdm.trange(steps, desc=desc, leave=False):
    rows = rng.integers(0, len(images), batch_size)
    params, opt_state = step(params, opt_state, _shifted(images[rows], rng), labels[rows])
  return params


def load_or_train(path, images, labels, num_classes, **kwargs):
  """The classifier's parameters from `path` (.npz), or trained (see `train`) and saved
  there, so that a resumed run judges with the same classifier."""
  model = Classifier(num_classes, kwargs.get('width', 16))
  if os.path.exists(path):
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1])['params'])
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
    return pretrained.fit(init, pretrained.load_npz(path), source=f'Classifier {path!r}',
                          what=f'a {num_classes}-class classifier of width {model.width}')
  params = jax.device_get(train(images, labels, num_classes, **kwargs))
  if jax.process_index() == 0:
    pretrained.save_npz(params, path)
  return params


def predict(model, params, images, batch_size=500):
  """(embeddings [N, 4·width], predicted classes [N]) of images in [-1, 1], in batches."""
  apply = jax.jit(lambda x: model.apply({'params': params}, x))
  out = [jax.device_get(apply(images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return (np.concatenate([e for _, _, e in out]),
          np.concatenate([np.argmax(logits, -1) for logits, _, _ in out]))


def frechet_distance(a, b):
  """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) between Gaussians fitted (float64) to two
  sets of features [N, D]: 0 for identical statistics."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  with warnings.catch_warnings():  # Dead units (zero variance) make Σ singular: still fine.
    warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
    root = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))  # Rounding leaves a tiny imaginary part.
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def perceptual_distance(maps_a, maps_b, epsilon=1e-10):
  """LPIPS's distance without its learned channel weights (Zhang et al. 2018, Eq. 1 with
  w = 1): per feature map, the squared difference of channel-normalised features, averaged
  over positions, summed over maps. → [B]."""
  def unit(f):
    f = f.astype(jnp.float32)
    return f / (jnp.sqrt(jnp.sum(f ** 2, -1, keepdims=True)) + epsilon)
  return sum(jnp.mean(jnp.sum((unit(a) - unit(b)) ** 2, -1), (1, 2))
             for a, b in zip(maps_a, maps_b))
