"""Convolution building blocks shared by the ResNet and the attention modules in CNNs (NHWC).

Convolutions pad like PyTorch (dilation · (k // 2) on each side), so weights ported from a
PyTorch model give the same features; BatchNorm keeps PyTorch's defaults (momentum 0.1 in
PyTorch's convention, i.e. 0.9 in Flax's, eps 1e-5) and its running statistics live in the
'batch_stats' collection.
"""
import flax.linen as nn
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


def adaptive_avg_pool(x, size):
  """[B, H, W, C] → [B, size, size, C] with PyTorch's AdaptiveAvgPool2d bins: bin i covers
  rows floor(i·H/size) to ceil((i+1)·H/size) (bins overlap when size does not divide H)."""
  def bins(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
  rows = [x[:, a:b].mean(axis=1) for a, b in bins(x.shape[1])]  # size x [B, W, C]
  return jnp.stack([jnp.stack([r[:, a:b].mean(axis=1) for a, b in bins(x.shape[2])], axis=1)
                    for r in rows], axis=1)
