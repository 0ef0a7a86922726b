"""Convolution building blocks shared by the ResNet and the attention modules in CNNs (NHWC).

Convolutions pad like PyTorch (dilation · (k // 2) on each side), so weights ported from a
PyTorch model give the same features; BatchNorm keeps PyTorch's defaults (momentum 0.1 in
PyTorch's convention, i.e. 0.9 in Flax's, eps 1e-5) and its running statistics live in the
'batch_stats' collection.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

HE_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # torchvision's ResNet.


def conv(features, kernel, stride=1, dilation=1, *, groups=1, use_bias=False, name=None,
         dtype=jnp.float32, kernel_init=HE_FAN_OUT):
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), feature_group_count=groups,
                 use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, name=name)


def batch_norm(train, name=None, scale_init=nn.initializers.ones, axis=-1, dtype=jnp.float32):
  """Batch statistics while training (and their running averages updated), the running
  averages otherwise; one pair per index of `axis`. scale_init=zeros makes a residual branch
  start as zero."""
  return nn.BatchNorm(use_running_average=not train, axis=axis, momentum=0.9, epsilon=1e-5,
                      scale_init=scale_init, dtype=dtype, name=name)


def global_avg_pool(x):
  """[B, H, W, C] → [B, C], accumulated in float32."""
  return x.astype(jnp.float32).mean(axis=(1, 2)).astype(x.dtype)


def max_over(x, axis):
  """x.max(axis, keepdims=True) with its gradient to the first maximal element. jnp.max's
  gradient divides among the elements equal to the max as recomputed in the backward pass;
  compiled without XLA's optimisations that recomputation can match none of them, and 0/0
  made CBAM's gradients NaN (the tiny ResNet on digits, step 3)."""
  return jnp.take_along_axis(x, jnp.argmax(x, axis=axis, keepdims=True), axis=axis)


def global_max_pool(x):
  """[B, H, W, C] → [B, C], max_over's gradient."""
  b, h, w, c = x.shape
  return max_over(x.reshape(b, h * w, c), 1)[:, 0]


@jax.custom_vjp
def stem_max_pool(x):
  """The ResNet stem's 3x3 max pooling, stride 2, padding 1 ([B, H, W, C] →
  [B, ⌈H/2⌉, ⌈W/2⌉, C]), each window's gradient to its first maximum in row-major order (as
  PyTorch's max_pool2d). It has its own gradient because XLA's for reduce_window
  (select-and-scatter over the padded map) is about 9x slower on a CPU
  (benchmarks/max_pool.py)."""
  return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


def _window_views(x):
  """The nine strided views [B, Ho, Wo, C] of x padded with -inf, one per window offset
  (row-major): view (a, b)[p, q] = padded x[2p + a, 2q + b]."""
  b, h, w, c = x.shape
  ho, wo = (h + 1) // 2, (w + 1) // 2
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [jax.lax.slice(padded, (0, i, j, 0), (b, i + 2 * ho - 1, j + 2 * wo - 1, c),
                        (1, 2, 2, 1)) for i in range(3) for j in range(3)]


def _stem_max_pool_forward(x):
  y = stem_max_pool(x)
  return y, (x, y)


def _stem_max_pool_backward(saved, dy):
  """Each window's gradient lands on its first maximum. Offset (a, b) of window (p, q) is
  input pixel (2p + a - 1, 2q + b - 1): a = 1 lands on even rows, a = 0 and 2 on odd ones
  (a = 0 one window later), so the gradient is built as four parity planes at the output's
  size and interleaved, all elementwise."""
  x, y = saved
  taken = jnp.zeros(y.shape, bool)
  g = []
  for view in _window_views(x):
    first = (view == y) & ~taken
    taken = taken | first
    g.append(jnp.where(first, dy, jnp.zeros_like(dy)))
  g = [g[0:3], g[3:6], g[6:9]]  # g[a][b]

  def next_window(t, axis):  # t[p + 1] at p, zero past the end.
    pad = [(0, 0)] * t.ndim
    pad[axis] = (0, 1)
    return jnp.pad(jax.lax.slice_in_dim(t, 1, t.shape[axis], axis=axis), pad)

  def rows(col):  # (even rows, odd rows) of one column parity, col(a) → [B, Ho, Wo, C].
    return col(1), col(2) + next_window(col(0), 1)

  even_even, odd_even = rows(lambda a: g[a][1])
  even_odd, odd_odd = rows(lambda a: g[a][2] + next_window(g[a][0], 2))
  planes = jnp.stack([jnp.stack([even_even, even_odd], 3), jnp.stack([odd_even, odd_odd], 3)], 2)
  b, ho, wo, c = y.shape  # planes [B, Ho, 2 (row parity), Wo, 2 (column parity), C]
  return (planes.reshape(b, 2 * ho, 2 * wo, c)[:, :x.shape[1], :x.shape[2]],)


stem_max_pool.defvjp(_stem_max_pool_forward, _stem_max_pool_backward)


def adaptive_avg_pool(x, size):
  """[B, H, W, C] → [B, size, size, C] with PyTorch's AdaptiveAvgPool2d bins: bin i covers
  rows floor(i·H/size) to ceil((i+1)·H/size) (bins overlap when size does not divide H)."""
  def bins(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
  rows = [x[:, a:b].mean(axis=1) for a, b in bins(x.shape[1])]  # size x [B, W, C]
  return jnp.stack([jnp.stack([r[:, a:b].mean(axis=1) for a, b in bins(x.shape[2])], axis=1)
                    for r in rows], axis=1)
