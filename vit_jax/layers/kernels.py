"""How the core's arithmetic runs: one `Compute` option set, and the implementations it picks.

The attention core (attention.py) and the blocks read as the papers; what is here changes
speed and memory, never the model (tests/layers/test_kernels.py holds each choice equal to
the plain path):

- Precision (`Compute.dtype`): matmul operands in float32 or bfloat16, always accumulated in
  float32. In bfloat16 the backward matmuls run in bfloat16 too, through a custom VJP: left
  to autodiff they would mix a float32 cotangent with bfloat16 operands and run at float32
  speed.
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


def matmul(x, w, dtype):
  """x [N, K] @ w [K, M] → [N, M] in `dtype`, accumulated in float32."""
  return einsum('nk,km->nm', x, w, dtype).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _low_precision_einsum(spec, a, b, dtype):
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _low_precision_einsum_fwd(spec, a, b, dtype):
  ac, bc = a.astype(dtype), b.astype(dtype)
  out = jnp.einsum(spec, ac, bc, preferred_element_type=jnp.float32)
  # Zero-size arrays carry the operands' dtypes to the backward pass.
  return out, (ac, bc, jnp.zeros(0, a.dtype), jnp.zeros(0, b.dtype))


def _low_precision_einsum_bwd(spec, dtype, residuals, g):
  ac, bc, a_like, b_like = residuals
  _, vjp = jax.vjp(lambda x, y: jnp.einsum(spec, x, y), ac, bc)
  da, db = vjp(g.astype(dtype))
  return da.astype(a_like.dtype), db.astype(b_like.dtype)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


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
    y = matmul(x.reshape(-1, x.shape[-1]), w, dtype) + b.astype(dtype)
    y = y.reshape(x.shape[:-1] + (len(names), heads, head_dim))
    out.update({n: y[..., i, :, :] for i, n in enumerate(names)})
  return out


def merge_heads(x, kernel, bias, dtype):
  """[B, L, H, Dh] @ kernel [H, Dh, D] + bias as one flat 2-D matmul → [B, L, D]."""
  heads, head_dim, features = kernel.shape
  y = matmul(x.reshape(-1, heads * head_dim), kernel.reshape(-1, features), dtype)
  return (y + bias.astype(dtype)).reshape(x.shape[:-2] + (features,))


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
