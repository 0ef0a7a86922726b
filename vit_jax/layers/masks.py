"""Boolean attention masks, shaped [B, 1 (heads), Lq, Lk]; True means "may attend"."""
import jax.numpy as jnp


def key_padding_mask(key_valid):
  """[B, Lk] validity → mask that hides padded keys from every query."""
  return key_valid[:, None, None, :].astype(bool)


def causal_mask(length):
  """[1, 1, L, L]: position i attends to positions ≤ i (paper §3.2.3)."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def segment_mask(query_segments, key_segments):
  """Packed sequences: tokens attend only within their own segment (id 0 = padding)."""
  same = query_segments[:, :, None] == key_segments[:, None, :]
  return (same & (key_segments[:, None, :] > 0))[:, None]


def combine(*masks):
  """Logical AND of the masks that are not None (None when all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out
