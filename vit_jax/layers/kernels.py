"""How the core's arithmetic runs: one `Compute` option set, and the implementations it picks.

The attention core (attention.py) and the blocks read as the papers; what is here changes
speed and memory, never the model (tests/layers/test_kernels.py holds each choice equal to
the plain path):

- Precision (`Compute.dtype`): matmul operands in float32 or bfloat16, always accumulated in
  float32. In bfloat16 the backward matmuls run in bfloat16 too, through a custom VJP: left
  to autodiff they would mix a float32 cotangent with bfloat16 operands, or return bfloat16,
  and run at float32 speed. Each is one dot in the layout XLA:CPU's fast kernels (AMX where
  the CPU has it) take, and bias, activation and head splits stay in float32 up to one cast.
- Attention (`Compute.attention_impl`):
    'plain'  the textbook in attention.py: each projection its own 3-D einsum, attention
             weights materialised.
    'fused'  projections that share an input as one flat 2-D matmul ([B*L, D] @ [D, k*H*Dh]);
             on XLA:CPU 2-D matmuls run about 2x faster than the same work as 3-D ones, and
             self-attention needs one matmul instead of three. The default.
    'xla'    'fused' projections and `jax.nn.dot_product_attention` (XLA's fused attention),
             which never materialises the weights. Where a caller asks for the weights, or
             attention dropout is active, the plain formula runs instead.
- `remat` and `scan_layers`: how the blocks of a stack are run (layers/transformer.py).
"""
import dataclasses
import functools
import math
import string
from typing import Any

import jax
import jax.numpy as jnp

from vit_jax import errors

DTYPES = ('float32', 'bfloat16')
ATTENTION_IMPLS = ('plain', 'fused', 'xla')


@dataclasses.dataclass(frozen=True)
class Compute:
  """How a model runs, not what it computes; the same for every family (config keys
  `dtype`, `attention_impl`, `remat`, `scan_layers`)."""
  dtype: Any = jnp.float32          # Compute dtype; parameters, softmax and losses stay float32.
  attention_impl: str = 'fused'     # One of ATTENTION_IMPLS.
  remat: bool = False               # Recompute each block's activations in the backward pass.
  scan_layers: bool = False         # Each stack as one nn.scan (parameters stacked [L, ...]).

  def __post_init__(self):
    try:
      name = jnp.dtype(self.dtype).name
    except TypeError:
      name = str(self.dtype)
    if name not in DTYPES:
      raise errors.UserError(f'Unknown dtype {name!r}; expected one of {DTYPES}.')
    object.__setattr__(self, 'dtype', jnp.dtype(name))  # 'bfloat16' or jnp.bfloat16 alike.
    if self.attention_impl not in ATTENTION_IMPLS:
      raise errors.UserError(f'Unknown attention_impl {self.attention_impl!r}; expected one of '
                             f'{ATTENTION_IMPLS}.')


# Precision -------------------------------------------------------------------------------------
def einsum(spec, a, b, dtype):
  """jnp.einsum with operands in `dtype`, accumulated and returned in float32; gradients
  come back in the operands' own dtypes."""
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
  return _low_precision_einsum(spec, a, b, jnp.dtype(dtype))


def matmul(x, w, dtype, bias=None, activation=None):
  """activation(x [N, K] @ w [K, M] + bias) → [N, M] in `dtype`.

  Operands in `dtype`; the sum, the bias and the activation in float32, cast once at the end.
  XLA:CPU has no bfloat16 arithmetic: each bfloat16 elementwise step would convert there and
  back, and a bfloat16 bias would have its gradient summed by a slow bfloat16 reduction.
  """
  y = einsum('nk,km->nm', x, w, dtype)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return (y if activation is None else activation(y)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _low_precision_einsum(spec, a, b, dtype):
  return _float32_dot(spec, a.astype(dtype), b.astype(dtype))


def _low_precision_einsum_fwd(spec, a, b, dtype):
  ac, bc = a.astype(dtype), b.astype(dtype)
  # Zero-size arrays carry the operands' dtypes to the backward pass.
  return _float32_dot(spec, ac, bc), (ac, bc, jnp.zeros(0, a.dtype), jnp.zeros(0, b.dtype))


def _low_precision_einsum_bwd(spec, dtype, residuals, g):
  ac, bc, a_like, b_like = residuals
  g = g.astype(dtype)
  (a_spec, b_spec), out_spec = _explicit_specs(spec, ac.ndim, bc.ndim)
  da = _float32_dot(f'{out_spec},{b_spec}->{a_spec}', g, bc)
  db = _float32_dot(f'{a_spec},{out_spec}->{b_spec}', ac, g)
  return da.astype(a_like.dtype), db.astype(b_like.dtype)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def _float32_dot(spec, x, y):
  """einsum of two low-precision operands, accumulated and returned in float32, as one dot
  [batch, M, K] @ [batch, K, N] on operands transposed to that layout.

  XLA:CPU runs a bfloat16 dot that accumulates in float32 on its fast kernels (YNNPACK, on
  AMX where the CPU has it), but only in this layout; other layouts fall to a kernel that
  cannot accumulate bfloat16 into float32 and fails at run time. A bfloat16 result would run
  at float32 speed (benchmarks/op_profile.py shows the matmuls' share).
  """
  (xs, ys), out = _explicit_specs(spec, x.ndim, y.ndim)
  size = dict(zip(xs + ys, x.shape + y.shape))
  batch = [c for c in out if c in xs and c in ys]
  x_free = [c for c in xs if c not in ys]
  y_free = [c for c in ys if c not in xs]
  contract = [c for c in xs if c in ys and c not in out]

  def flat(t, spec, groups):
    order = [spec.index(c) for g in groups for c in g]
    t = jnp.transpose(t, order).reshape([math.prod(size[c] for c in g) for g in groups])
    # A transpose XLA folds back into the dot leaves it in a layout the fast kernels refuse.
    return t if order == sorted(order) else jax.lax.optimization_barrier(t)

  z = jax.lax.dot_general(flat(x, xs, (batch, x_free, contract)),
                          flat(y, ys, (batch, contract, y_free)),
                          (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
  order = batch + x_free + y_free
  z = z.reshape([size[c] for c in order])
  return jnp.transpose(z, [order.index(c) for c in out])


def _explicit_specs(spec, x_ndim, y_ndim):
  """'...d,dhk->...hk' for operands of 3 and 3 dims → (('ABd', 'dhk'), 'ABhk'): '...'
  spelled out, and each operand's index present in the other operand or the output (so that
  each gradient is itself a product of two operands)."""
  inputs, out = spec.split('->')
  xs, ys = inputs.split(',')
  spare = [c for c in string.ascii_uppercase if c not in spec]
  ellipsis = ''.join(spare[:max(ndim - len(s) + 3 for s, ndim in ((xs, x_ndim), (ys, y_ndim))
                                if '...' in s)]) if '...' in spec else ''
  xs, ys, out = (s.replace('...', ellipsis) for s in (xs, ys, out))
  for mine, other in ((xs, ys), (ys, xs)):
    alone = set(mine) - set(other) - set(out)
    if alone:
      raise ValueError(f'einsum {spec!r}: index {sorted(alone)} is summed within one operand; '
                       'a low-precision einsum takes products of two operands only.')
  return (xs, ys), out


# Attention: 'fused' projections ------------------------------------------------------------------
def fused_projections(groups, weights, dtype):
  """Projects each group of heads from its input as one flat 2-D matmul.

  groups: [(input [B, L, D], [name, ...])]; weights: {name: (kernel [D, H, Dh], bias [H, Dh])}.
  → {name: [B, L, H, Dh]}. Self-attention is one [B*L, D] @ [D, 3*H*Dh] matmul; DETR's
  attention (queries and keys from x + pos, values from x) is two.
  """
  out = {}
  for x, names in groups:
    kernels = [weights[n][0] for n in names]
    heads, head_dim = kernels[0].shape[1:]
    w = jnp.concatenate([k.reshape(k.shape[0], -1) for k in kernels], axis=1)
    b = jnp.concatenate([weights[n][1].reshape(-1) for n in names])
    # Split in float32, each part cast on its own: their gradients meet in float32.
    y = einsum('nk,km->nm', x.reshape(-1, x.shape[-1]), w, dtype) + b.astype(jnp.float32)
    y = y.reshape(x.shape[:-1] + (len(names), heads, head_dim))
    out.update({n: y[..., i, :, :].astype(dtype) for i, n in enumerate(names)})
  return out


def merge_heads(x, kernel, bias, dtype):
  """[B, L, H, Dh] @ kernel [H, Dh, D] + bias as one flat 2-D matmul → [B, L, D]."""
  heads, head_dim, features = kernel.shape
  y = matmul(x.reshape(-1, heads * head_dim), kernel.reshape(-1, features), dtype, bias)
  return y.reshape(x.shape[:-2] + (features,))


# Attention: 'xla' ------------------------------------------------------------------------------
def xla_attention(query, key, value, mask, dtype):
  """jax.nn.dot_product_attention (weights never materialised), with the plain path's
  conventions: a query whose keys are all masked attends to nothing (output 0).

  query [B, Lq, H, Dh], key/value [B, Lk, H, Dh], mask broadcastable to [B, H, Lq, Lk].
  """
  out = jax.nn.dot_product_attention(query.astype(dtype), key.astype(dtype),
                                     value.astype(dtype), mask=mask, implementation='xla')
  if mask is None:
    return out
  attends = jnp.broadcast_to(mask, mask.shape[:2] + (query.shape[1], mask.shape[-1])).any(-1)
  return jnp.where(jnp.moveaxis(attends, 1, 2)[..., None], out, 0).astype(dtype)  # [B, Lq, H|1, 1]
