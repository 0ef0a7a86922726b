"""Multi-scale deformable attention against a per-point float64 loop written from the paper's
Eq. 3 and grid_sample's definition, and against Hugging Face's PyTorch implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_jax import errors
from vit_jax.layers import deformable

SHAPES = ((6, 5), (3, 3))  # Two levels, not square.


def naive(value, shapes, locations, weights):
  """Every (batch, query, head, level, point) in turn: the four pixels around the point,
  weighted by their bilinear weights; pixels outside the map are zero."""
  b, _, m, dh = value.shape
  q, points = locations.shape[1], locations.shape[4]
  out = np.zeros((b, q, m, dh))
  starts = np.cumsum([0] + [h * w for h, w in shapes])
  for bi in range(b):
    for qi in range(q):
      for mi in range(m):
        for li, (h, w) in enumerate(shapes):
          level = value[bi, starts[li]:starts[li + 1], mi].reshape(h, w, dh)
          for pi in range(points):
            x = locations[bi, qi, mi, li, pi, 0] * w - 0.5  # Pixel i's centre is at i.
            y = locations[bi, qi, mi, li, pi, 1] * h - 0.5
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            sample = np.zeros(dh)
            for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
              if 0 <= xi < w and 0 <= yi < h:
                sample += (1 - abs(x - xi)) * (1 - abs(y - yi)) * level[yi, xi]
            out[bi, qi, mi] += weights[bi, qi, mi, li, pi] * sample
  return out.reshape(b, q, m * dh)


def random_inputs(seed=0, b=2, q=5, m=2, dh=4, points=3):
  rng = np.random.default_rng(seed)
  value = rng.normal(size=(b, sum(h * w for h, w in SHAPES), m, dh))
  locations = rng.uniform(-0.2, 1.2, size=(b, q, m, len(SHAPES), points, 2))  # Some outside.
  weights = rng.dirichlet(np.ones(len(SHAPES) * points), size=(b, q, m)).reshape(
      b, q, m, len(SHAPES), points)
  return value, locations, weights


@pytest.mark.parametrize('sampling', ['gather', 'dense'])
def test_matches_the_per_point_loop(sampling):
  value, locations, weights = random_inputs()
  got = jax.jit(deformable.multi_scale_deformable_attention, static_argnums=(1, 4))(
      jnp.asarray(value), SHAPES, jnp.asarray(locations), jnp.asarray(weights), sampling)
  np.testing.assert_allclose(got, naive(value, SHAPES, locations, weights), atol=1e-5)


def test_dense_and_gather_sampling_have_the_same_gradients():
  """Also on exact pixel centres (where the paper's initial offsets put the encoder's
  points): the derivative is the bilinear one-sided difference, never zero."""
  value, locations, weights = (jnp.asarray(a, jnp.float32) for a in random_inputs(seed=3))
  size = np.array([SHAPES[0][1], SHAPES[0][0]])  # Level 0's (W, H).
  inside = np.clip(np.asarray(locations), 0.05, 0.95)
  centres = (np.floor(inside * size) + 0.5) / size  # Pixel centres of level 0.
  grad_of = {s: jax.jit(jax.grad(lambda *a, s=s: (deformable.multi_scale_deformable_attention(
      a[0], SHAPES, a[1], a[2], s) ** 2).sum(), argnums=(0, 1, 2))) for s in ('gather', 'dense')}
  for loc in (locations, jnp.asarray(centres, jnp.float32)):
    grads = {s: grad(value, loc, weights) for s, grad in grad_of.items()}
    for g, d in zip(grads['gather'], grads['dense']):
      np.testing.assert_allclose(d, g, rtol=1e-5, atol=1e-5)
  assert np.abs(grads['dense'][1][:, :, :, 0]).min() > 0


def test_matches_hugging_faces_pytorch_function():
  from transformers.models.deformable_detr import modeling_deformable_detr as hf
  value, locations, weights = random_inputs(seed=1)
  t = lambda a: torch.from_numpy(np.asarray(a, np.float32))
  shapes = torch.tensor(SHAPES)
  starts = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
  want = hf.MultiScaleDeformableAttention()(t(value), shapes, list(SHAPES), starts, t(locations),
                                            t(weights), 64).numpy()
  got = deformable.multi_scale_deformable_attention(
      jnp.asarray(value, jnp.float32), SHAPES, jnp.asarray(locations, jnp.float32),
      jnp.asarray(weights, jnp.float32))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_gradients_and_vmap():
  value, locations, weights = (jnp.asarray(a, jnp.float32) for a in random_inputs(seed=2))
  fn = lambda v, loc, w: deformable.multi_scale_deformable_attention(v, SHAPES, loc, w)
  grads = jax.grad(lambda loc: fn(value, loc, weights).sum())(locations)
  assert np.isfinite(grads).all() and np.abs(grads).max() > 0  # Offsets can learn.
  one_by_one = jax.vmap(lambda v, loc, w: fn(v[None], loc[None], w[None])[0])(
      value, locations, weights)
  np.testing.assert_allclose(one_by_one, fn(value, locations, weights), atol=1e-6)


def port(module):
  dense = lambda layer: {'kernel': layer.weight.detach().numpy().T,
                         'bias': layer.bias.detach().numpy()}
  return {name: dense(getattr(module, name))
          for name in ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj')}


@pytest.mark.parametrize('coordinates', [2, 4])
def test_module_matches_hugging_face_with_ported_weights(coordinates):
  from transformers import DeformableDetrConfig
  from transformers.models.deformable_detr import modeling_deformable_detr as hf
  torch.manual_seed(0)
  config = DeformableDetrConfig(d_model=32, num_feature_levels=len(SHAPES))
  theirs = hf.DeformableDetrMultiscaleDeformableAttention(config, num_heads=4, n_points=3).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.copy_(torch.randn_like(p) * 0.3)
  rng = np.random.default_rng(0)
  s = sum(h * w for h, w in SHAPES)
  query, inputs = rng.normal(size=(2, 7, 32)), rng.normal(size=(2, s, 32))
  reference = rng.uniform(0.1, 0.9, size=(2, 7, len(SHAPES), coordinates))
  padding = rng.uniform(size=(2, s)) > 0.2
  t = lambda a: torch.from_numpy(np.asarray(a, np.float32))
  with torch.no_grad():
    want, want_weights = theirs(
        t(query), attention_mask=torch.from_numpy(padding), encoder_hidden_states=t(inputs),
        reference_points=t(reference), spatial_shapes=torch.tensor(SHAPES),
        spatial_shapes_list=list(SHAPES), level_start_index=torch.tensor([0, 30]))
  ours = deformable.MultiScaleDeformableAttention(num_heads=4, num_levels=len(SHAPES),
                                                  num_points=3)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got, (_, got_weights) = ours.apply({'params': port(theirs)}, f32(query), f32(reference), f32(inputs),
                                SHAPES, jnp.asarray(padding))
  np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
  np.testing.assert_allclose(got_weights, want_weights.numpy(), atol=1e-6)


def test_initial_points_look_around_in_every_direction():
  ours = deformable.MultiScaleDeformableAttention(num_heads=4, num_levels=2, num_points=2)
  x = jnp.zeros((1, 1, 32))
  params = ours.init(jax.random.key(0), x, jnp.full((1, 1, 2, 2), 0.5), jnp.zeros((1, 39, 32)),
                     SHAPES)['params']
  bias = np.asarray(params['sampling_offsets']['bias']).reshape(4, 2, 2, 2)
  # Head m: direction 2πm/4 (right, down, left, up), point k at k + 1 pixels, every level.
  np.testing.assert_allclose(bias[:, 0, 0], [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-6)
  np.testing.assert_allclose(bias[:, 1, 1], 2 * bias[:, 0, 0], atol=1e-6)
  with pytest.raises(errors.UserError, match=r'3 feature levels given, num_levels=2'):
    ours.init(jax.random.key(0), x, jnp.zeros((1, 1, 2, 2)), jnp.zeros((1, 48, 32)),
              SHAPES + ((3, 3),))
