"""Whole images through a model that takes fixed-size tiles (IPT's learned patch positions fix
its input side): overlapping tiles, restored in batches, blended back with weights that ramp
down across each overlap so no seam shows (IPT's test code cuts images into overlapping
48x48 patches the same way)."""
import numpy as np


def starts(length, tile, stride):
  """Tile offsets along one side: every `stride` pixels, the last one flush with the end."""
  last = max(length - tile, 0)
  return sorted(set(range(0, last, stride)) | {last})


def ramp(size, width):
  """1-D blending weights for a tile of `size` outputs: 1 inside, falling linearly to
  1/width at both edges across `width` outputs (all 1 for width ≤ 1)."""
  i = np.arange(size)
  return np.minimum(np.minimum(i + 1, size - i), max(width, 1)) / max(width, 1)


def restore_tiled(restore_batch, image, tile, scale=1, overlap=8, batch_size=16):
  """image float [H, W, C] → restore_batch's output for the whole image, [H·s, W·s, C].

  restore_batch: float32 [batch_size, tile, tile, C] → [batch_size, tile·s, tile·s, C]
  (always a full batch, so a jitted function compiles once). Tiles overlap by at least
  `overlap` input pixels; an image smaller than a tile is mirrored out to one tile and
  cropped back."""
  if not 0 <= overlap < tile:
    raise ValueError(f'overlap must be in [0, {tile}), not {overlap}.')
  h, w, c = image.shape
  padded = np.pad(image, ((0, max(tile - h, 0)), (0, max(tile - w, 0)), (0, 0)), 'symmetric')
  ph, pw = padded.shape[:2]
  corners = [(y, x) for y in starts(ph, tile, tile - overlap)
             for x in starts(pw, tile, tile - overlap)]
  t = tile * scale
  window = np.outer(ramp(t, overlap * scale), ramp(t, overlap * scale))[..., None]
  total = np.zeros((ph * scale, pw * scale, c), np.float64)
  weight = np.zeros((ph * scale, pw * scale, 1), np.float64)
  for first in range(0, len(corners), batch_size):
    chunk = corners[first:first + batch_size]
    tiles = np.zeros((batch_size, tile, tile, c), np.float32)
    for k, (y, x) in enumerate(chunk):
      tiles[k] = padded[y:y + tile, x:x + tile]
    outputs = np.asarray(restore_batch(tiles), np.float64)
    for (y, x), out in zip(chunk, outputs):
      total[y * scale:y * scale + t, x * scale:x * scale + t] += window * out
      weight[y * scale:y * scale + t, x * scale:x * scale + t] += window
  return (total / weight)[:h * scale, :w * scale]
