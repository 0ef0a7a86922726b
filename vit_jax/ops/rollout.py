"""Attention rollout (Abnar & Zuidema 2020): how much each input token flows into each output
token through all layers, counting the residual path. Used for ViT attention maps."""
import numpy as np


def attention_rollout(weights, residual=0.5):
  """weights: per layer [B, H, N, N] (rows: queries) → [B, N, N] rolled-out attention.

  Each layer's head-mean attention is mixed with the identity (the residual connection),
  rows renormalised, and the layers multiplied from the first to the last.
  """
  rolled = None
  for w in weights:
    a = np.asarray(w, np.float64).mean(axis=1)  # [B, N, N]
    a = residual * np.eye(a.shape[-1]) + (1 - residual) * a
    a /= a.sum(axis=-1, keepdims=True)
    rolled = a if rolled is None else a @ rolled
  return rolled


def class_token_map(rolled, grid):
  """The class token's row over the patches, as a [B, rows, cols] map that sums to 1 (the
  patches are the last rows · cols tokens, after the class and any distillation token)."""
  patches = rolled[:, 0, -grid[0] * grid[1]:]
  patches = patches / patches.sum(axis=-1, keepdims=True)
  return patches.reshape((-1,) + tuple(grid))
