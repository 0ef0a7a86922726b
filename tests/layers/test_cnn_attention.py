"""The ten attention modules for CNNs against float64 numpy written from their papers'
equations (timm's versions cannot be imported here: timm needs torchvision, whose PyPI build
does not load beside the CPU-only torch), with random weights in every path (the zero-initialised
ones too), BatchNorm in training mode; plus the properties the papers state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.layers import channel_attention as ca
from vit_jax.layers import conv as conv_lib
from vit_jax.layers import spatial_attention as sa

EPS = 1e-5


# ---- float64 numpy building blocks -------------------------------------------------------

def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def relu(x):
  return np.maximum(x, 0)


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def dense(p, x):
  return x @ p['kernel'] + (p['bias'] if 'bias' in p else 0)


def bn(p, x, axis=-1):
  """Training-mode BatchNorm: batch mean and biased variance over every other axis."""
  axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
  shape = [1] * x.ndim
  shape[axis] = -1
  mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
  return (x - mean) / np.sqrt(var + EPS) * p['scale'].reshape(shape) + p['bias'].reshape(shape)


def conv2d(p, x, stride=1, dilation=1):
  """NHWC cross-correlation with PyTorch's padding dilation · (k // 2)."""
  k = p['kernel']
  kh = k.shape[0]
  pad = dilation * (kh // 2)
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
  wo = (x.shape[2] + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
  out = sum(xp[:, i * dilation:i * dilation + stride * (ho - 1) + 1:stride,
               j * dilation:j * dilation + stride * (wo - 1) + 1:stride] @ k[i, j]
            for i in range(kh) for j in range(kh))
  return out + (p['bias'] if 'bias' in p else 0)


def attend(q, k, v, scale=1.0):
  w = softmax(scale * np.einsum('bqd,bkd->bqk', q, k))
  return np.einsum('bqk,bkd->bqd', w, v), w


def adaptive_pool(x, s):
  """PyTorch's AdaptiveAvgPool2d, written as its documentation defines the bins."""
  b, h, w, c = x.shape
  out = np.zeros((b, s, s, c))
  for i in range(s):
    for j in range(s):
      r0, r1 = int(np.floor(i * h / s)), int(np.ceil((i + 1) * h / s))
      c0, c1 = int(np.floor(j * w / s)), int(np.ceil((j + 1) * w / s))
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


def pyramid(x, sizes):
  return np.concatenate([adaptive_pool(x, s).reshape(x.shape[0], -1, x.shape[-1])
                         for s in sizes], 1)


# ---- the modules' equations ----------------------------------------------------------------

def se_ref(p, x):
  s = sigmoid(dense(p['expand'], relu(dense(p['reduce'], x.mean((1, 2))))))
  return x * s[:, None, None]


def eca_ref(p, x):
  w = p['conv']['kernel'][:, 0, 0]
  k = len(w)
  z = np.pad(x.mean((1, 2)), ((0, 0), (k // 2, k // 2)))
  s = np.stack([z[:, c:c + k] @ w for c in range(x.shape[-1])], -1)
  return x * sigmoid(s)[:, None, None]


def gc_ref(p, x):
  b, h, w, c = x.shape
  alpha = softmax(dense(p['attention'], x).reshape(b, h * w))
  context = np.einsum('bn,bnc->bc', alpha, x.reshape(b, h * w, c))
  t = dense(p['transform_reduce'], context)
  t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + EPS)
  t = relu(t * p['norm']['scale'] + p['norm']['bias'])
  return x + dense(p['transform_expand'], t)[:, None, None]


def gsop_ref(p, x):
  y = relu(bn(p['reduce_bn'], dense(p['reduce'], relu(x))))
  b, h, w, d = y.shape
  m = h * w
  flat = y.reshape(b, m, d)
  i_bar = np.eye(m) / m - np.ones((m, m)) / m ** 2  # (1/M) Ī with Ī = I − (1/M) 1 1ᵀ.
  cov = np.einsum('bmi,mn,bnj->bij', flat, i_bar, flat)
  cov = bn(p['row_bn'], cov, axis=1)
  rows = relu(np.einsum('bij,ijk->bik', cov, p['row_conv']) + p['row_conv_bias'])
  return x * sigmoid(dense(p['expand'], rows.reshape(b, 4 * d)))[:, None, None]


def sk_ref(p, x, features, stride, dilations):
  u = [relu(bn(p[f'branch{m}_bn'], conv2d(p[f'branch{m}_conv'], x, stride, d)))
       for m, d in enumerate(dilations)]
  z = relu(bn(p['fuse_bn'], dense(p['fuse'], sum(u).mean((1, 2)))))
  a = softmax(dense(p['select'], z).reshape(-1, len(dilations), features), axis=1)
  return sum(a[:, m, None, None] * u[m] for m in range(len(dilations)))


def cbam_ref(p, x):
  mlp = lambda z: dense(p['mlp_expand'], relu(dense(p['mlp_reduce'], z)))
  x = x * sigmoid(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None]
  pooled = np.stack([x.mean(-1), x.max(-1)], -1)
  return x * sigmoid(conv2d(p['spatial_conv'], pooled))


def bam_ref(p, x, dilation):
  m = relu(bn(p['channel_reduce_bn'], dense(p['channel_reduce'], x.mean((1, 2)))))
  channel = bn(p['channel_bn'], dense(p['channel_expand'], m))
  s = x
  for i, d in enumerate([1, dilation, dilation]):
    s = relu(bn(p[f'spatial_bn{i}'], conv2d(p[f'spatial_conv{i}'], s, 1, d)))
  spatial = bn(p['spatial_bn'], conv2d(p['spatial_conv3'], s))
  return x + x * sigmoid(channel[:, None, None] + spatial)


def max_pool2(t):
  b, h, w, c = t.shape
  return t[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))


def nonlocal_ref(p, x, subsample):
  b, h, w, c = x.shape
  theta, phi, g = (dense(p[n], x) for n in ('theta', 'phi', 'g'))
  if subsample:
    phi, g = max_pool2(phi), max_pool2(g)
  flat = lambda t: t.reshape(b, -1, t.shape[-1])
  y, _ = attend(flat(theta), flat(phi), flat(g))
  return bn(p['out_bn'], dense(p['out'], y.reshape(b, h, w, -1))) + x


def danet_ref(p, x):
  b, h, w, c = x.shape
  a = x.reshape(b, h * w, c)
  position, _ = attend(dense(p['position_query'], a), dense(p['position_key'], a),
                       dense(p['position_value'], a))
  # Channel attention as the paper writes it: X = softmax_i(A_iᵀ A_j), E = X A.
  chan = a.transpose(0, 2, 1)  # [B, C, N]
  energy = np.einsum('bin,bjn->bji', chan, chan)
  channel = np.einsum('bji,bin->bjn', softmax(energy, -1), chan).transpose(0, 2, 1)
  return x + (p['alpha'] * position + p['beta'] * channel).reshape(x.shape)


def pyramid_attention_ref(p, q_src, kv_src, d, sizes):
  embed = lambda t, n: relu(bn(p[f'{n}_bn'], dense(p[n], t)))
  b, h, w, _ = q_src.shape
  key = embed(kv_src, 'key')
  query = key if q_src is kv_src else embed(q_src, 'query')
  value = dense(p['value'], kv_src)
  out, _ = attend(query.reshape(b, h * w, -1), pyramid(key, sizes), pyramid(value, sizes),
                  d ** -0.5)
  return dense(p['out'], out).reshape(b, h, w, -1)


def anl_ref(p, low, high, d, sizes):
  out = pyramid_attention_ref(p['attention'], high, low, d, sizes)
  return relu(bn(p['fuse_bn'], dense(p['fuse'], np.concatenate([out, high], -1))))


# ---- tests --------------------------------------------------------------------------------

def randomized(params, seed=1):
  """Every parameter random (zero-initialised outputs and gates included), BN scales near 1."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [np.asarray(l) + rng.normal(0, 0.3, np.shape(l))
                                   .astype(np.float32) for l in leaves])


def run(module, *inputs, seed=0, **kw):
  """(our output in float32 training mode, the float64 parameters, the float64 inputs)."""
  variables = module.init(jax.random.key(seed), *inputs, train=True, **kw)
  params = randomized(variables['params'])
  state = {k: v for k, v in variables.items() if k != 'params'}
  out = module.apply({'params': params, **state}, *inputs, train=True,
                     mutable=list(state) or False, **kw)
  out = out[0] if state else out
  as64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
  return np.asarray(out), as64(params), [np.asarray(i, np.float64) for i in inputs]


def feature_map(shape=(2, 6, 5, 32), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


CASES = {
    'se': (ca.SqueezeExcite(reduction=4), se_ref),
    'eca': (ca.EfficientChannelAttention(), eca_ref),
    'gc': (ca.GlobalContext(reduction=4), gc_ref),
    'gsop': (ca.GlobalSecondOrderPooling(dim=8), gsop_ref),
    'cbam': (sa.CBAM(reduction=4), cbam_ref),
    'bam': (sa.BAM(reduction=4, dilation=2), lambda p, x: bam_ref(p, x, 2)),
    'nonlocal': (sa.NonLocal(subsample=True), lambda p, x: nonlocal_ref(p, x, True)),
    'nonlocal_full': (sa.NonLocal(subsample=False), lambda p, x: nonlocal_ref(p, x, False)),
    'danet': (sa.DualAttention(reduction=8), danet_ref),
    'apnb': (sa.APNB(key_dim=8, sizes=(1, 2, 3)),
             lambda p, x: anl_ref(p, x, x, 8, (1, 2, 3))),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_module_equals_its_papers_equations(name):
  module, reference = CASES[name]
  out, params, (x,) = run(module, feature_map())
  np.testing.assert_allclose(out, reference(params, x), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_selective_kernel_equals_its_equations(stride):
  # A batch of 4: with 2 the Fuse BatchNorm can meet a channel whose two values nearly agree
  # (spread 0.0015 against sqrt(eps) 0.003) and magnify float32's rounding 1000-fold.
  module = ca.SelectiveKernel(features=24, stride=stride, reduction=4, min_dim=8)
  out, params, (x,) = run(module, feature_map((4, 7, 6, 16)))
  assert out.shape == (4, 7 // stride + (stride > 1), 6 // stride, 24)
  np.testing.assert_allclose(out, sk_ref(params, x, 24, stride, (1, 2)), rtol=1e-4, atol=2e-5)


def test_afnb_high_level_queries_the_low_level_anchors():
  low, high = feature_map((2, 8, 8, 16), 1), feature_map((2, 4, 4, 32), 2)
  out, params, (low, high) = run(sa.AFNB(key_dim=8, sizes=(1, 3)), low, high)
  assert out.shape == high.shape
  np.testing.assert_allclose(out, anl_ref(params, low, high, 8, (1, 3)), rtol=1e-4, atol=2e-5)


def test_adaptive_pooling_matches_pytorch():
  import torch
  x = feature_map((2, 7, 9, 3))
  for size in (1, 3, 6, 8):
    ours = conv_lib.adaptive_avg_pool(jnp.asarray(x), size)
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                                     size).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_max_pools_give_the_max_and_its_whole_gradient_to_the_first_maximal_element():
  x = feature_map((2, 3, 4, 5))
  x[0, 1, 2, 3] = x[0, 2, 0, 3] = x[0].max() + 1  # A tie: the first in (h, w) order wins.
  x = jnp.asarray(x)
  np.testing.assert_array_equal(conv_lib.global_max_pool(x), x.max(axis=(1, 2)))
  np.testing.assert_array_equal(conv_lib.max_over(x, -1), x.max(-1, keepdims=True))
  grad = jax.jit(jax.grad(lambda x: conv_lib.global_max_pool(x).sum()))(x)
  expected = (np.arange(12)[None, :, None] == np.argmax(
      np.asarray(x).reshape(2, 12, 5), axis=1)[:, None]).reshape(2, 3, 4, 5)
  np.testing.assert_array_equal(grad, expected)
  assert grad[0, 1, 2, 3] == 1 and grad[0, 2, 0, 3] == 0


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_stem_max_pool_and_its_gradient_equal_pytorchs(shape):
  """Values and gradients of torch's max_pool2d(3, 2, 1), ties included (integer-valued
  inputs: many windows hold several maxima, each gives its gradient to the first)."""
  import torch
  rng = np.random.default_rng(1)
  for x in (feature_map(shape), rng.integers(0, 3, shape).astype(np.float32)):
    dy = rng.normal(size=(shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3]))
    dy = dy.astype(np.float32)
    y, vjp = jax.vjp(conv_lib.stem_max_pool, jnp.asarray(x))
    t = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    expected = torch.nn.functional.max_pool2d(t, 3, 2, 1)
    expected.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(y, expected.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(vjp(jnp.asarray(dy))[0], t.grad.permute(0, 2, 3, 1).numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('module', [ca.GlobalContext(), sa.NonLocal(), sa.DualAttention()],
                         ids=['gc', 'nonlocal', 'danet'])
def test_zero_initialised_blocks_start_as_the_identity(module):
  x = feature_map()
  variables = module.init(jax.random.key(0), x)
  out = module.apply(variables, x)
  np.testing.assert_array_equal(out, x)


def kernel_count(params):
  return sum(np.size(v) for path, v in jax.tree_util.tree_leaves_with_path(params)
             if 'kernel' in jax.tree_util.keystr(path))


def test_parameter_counts_follow_the_papers_formulas():
  c, r = 64, 16
  x = feature_map((1, 4, 4, c))
  count = lambda m: kernel_count(m.init(jax.random.key(0), x)['params'])
  assert count(ca.SqueezeExcite(reduction=r)) == 2 * c * c // r  # SE §6.1: 2C²/r.
  assert count(sa.CBAM(reduction=r)) == 2 * c * c // r + 2 * 7 * 7  # Shared MLP + f⁷ˣ⁷.
  assert count(ca.EfficientChannelAttention()) == ca.eca_kernel_size(c) == 3  # k weights only.
  assert [ca.eca_kernel_size(n) for n in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
  assert count(ca.GlobalContext(reduction=r)) == c + 2 * c * c // r  # W_k, W_v1, W_v2.


def flops(module, x):
  variables = jax.eval_shape(module.init, jax.random.key(0), x)  # Shapes suffice to compile.
  compiled = jax.jit(lambda v, t: module.apply(v, t)).lower(variables, x).compile()
  analysis = compiled.cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)['flops']


def test_anl_cost_grows_linearly_in_positions_non_local_quadratically():
  small, large = feature_map((1, 16, 16, 32)), feature_map((1, 32, 32, 32))  # N x 4.
  anl = flops(sa.APNB(), large) / flops(sa.APNB(), small)
  non_local = (flops(sa.NonLocal(subsample=False), large)
               / flops(sa.NonLocal(subsample=False), small))
  assert 3.5 < anl < 4.5, anl
  assert non_local > 10, non_local


def test_batch_norm_running_statistics_are_used_at_evaluation():
  module = sa.BAM(reduction=4, dilation=2)
  x = feature_map()
  variables = module.init(jax.random.key(0), x)
  _, updated = module.apply(variables, x, train=True, mutable=['batch_stats'])
  before = module.apply(variables, x)
  after = module.apply({'params': variables['params'], **updated}, x)
  assert not np.allclose(before, after)  # Evaluation reads the updated averages.
