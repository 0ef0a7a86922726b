"""Checkpoint export and fine-tuning in the published ViT `.npz` layout.

Keys are '/'-joined parameter paths ('Transformer/encoderblock_0/LayerNorm_0/scale'), exactly
as in google-research/vision_transformer, so their files load here and ours load there. A model
with scanned stacks (scan_layers=True) keeps each stack's blocks as one [L, ...] array under
'encoderblock'; files are always written per layer and loaded into either layout.
"""
import math
import os
import re

import flax
import numpy as np
import scipy.ndimage

from vit_jax import errors

POSEMB = 'Transformer/posembed_input/pos_embedding'
_STACKED = re.compile(r'(?:^|/)(?:encoder|decoder)block(?=/)')
_PER_LAYER = re.compile(r'((?:^|/)(?:encoder|decoder)block)_(\d+)(?=/)')


def flatten(params):
  """{'a': {'b': x}} → {'a/b': x}, the keys of the .npz files."""
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def unflatten(flat):
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def is_stacked(key):
  """Whether a parameter path lies in a scanned stack ('…/encoderblock/…')."""
  return _STACKED.search(key) is not None


def unstack_layers(flat):
  """{'…/encoderblock/…': [L, …]} (a scanned stack) → per-layer '…/encoderblock_i/…' keys."""
  out = {}
  for key, value in flat.items():
    match = _STACKED.search(key)
    if match is None:
      out[key] = value
    else:
      for i, layer in enumerate(value):
        out[f'{key[:match.end()]}_{i}{key[match.end():]}'] = layer
  return out


def stack_layers(flat):
  """Per-layer '…/encoderblock_i/…' keys → one [L, …] array per '…/encoderblock/…' key."""
  out, stacks = {}, {}
  for key, value in flat.items():
    match = _PER_LAYER.search(key)
    if match is None:
      out[key] = value
    else:
      stacked = key[:match.start()] + match.group(1) + key[match.end():]
      stacks.setdefault(stacked, {})[int(match.group(2))] = value
  for key, layers in stacks.items():
    if sorted(layers) != list(range(len(layers))):
      raise errors.UserError(f'Cannot stack {key}: the checkpoint has layers {sorted(layers)}, '
                             f'expected 0 to {len(layers) - 1}.')
    out[key] = np.stack([layers[i] for i in range(len(layers))])
  return out


def save_npz(params, path):
  """Writes params to `path` in the per-layer layout (atomically: a crash never leaves half a
  file)."""
  flat = unstack_layers(flatten(params))
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **flat)
  os.replace(tmp, path)
  return path


def load_npz(path):
  """Reads a flat {'a/b/c': array} dict from a .npz (or, by its extension, .safetensors)
  file; a clear error for a missing or damaged file."""
  safetensors = path.endswith('.safetensors')
  try:
    if safetensors:
      from safetensors.numpy import load_file
      return load_file(path)
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise errors.NotFound(f'Checkpoint {path!r} does not exist.') from None
  except Exception as e:
    kind = '.safetensors' if safetensors else '.npz'
    raise errors.UserError(f'Checkpoint {path!r} is not a readable {kind} file: {e}') from e


_TORCHVISION_NORM = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean',
                     'running_var': 'var'}


def is_torchvision_resnet(flat):
  return 'conv1.weight' in flat and 'layer1.0.conv1.weight' in flat


def from_torchvision_resnet(state):
  """A torchvision ResNet state dict ('layer2.0.downsample.1.running_var', ...: what
  `torch.load` gives for its ImageNet weights, saved as .safetensors or .npz) → the flat
  parameters of models/resnet.ResNet with frozen BatchNorm ('stage2_block0/shortcut_bn/var').
  Convolution kernels go from [out, in, h, w] to [h, w, in, out]; the classifier (fc) and
  BatchNorm's batch counters are dropped."""
  out = {}
  for key, value in state.items():
    *path, leaf = key.split('.')
    if path[0] == 'fc' or leaf == 'num_batches_tracked':
      continue
    if path[0].startswith('layer'):  # layer{s}.{b}.conv{i}, bn{i}, downsample.{0: conv, 1: bn}
      block = f'stage{path[0][5:]}_block{path[1]}'
      part = path[2:]
      if part[0] == 'downsample':
        name = 'shortcut_conv' if part[1] == '0' else 'shortcut_bn'
      else:
        name = part[0][:-1] + str(int(part[0][-1]) - 1)  # Ours count from 0.
      module = f'{block}/{name}'
    else:  # The stem: conv1, bn1.
      module = {'conv1': 'stem_conv', 'bn1': 'stem_bn'}.get(path[0], path[0])
    value = np.asarray(value)
    if value.ndim == 4:
      out[f'{module}/kernel'] = value.transpose(2, 3, 1, 0)
    else:
      out[f'{module}/{_TORCHVISION_NORM.get(leaf, leaf)}'] = value
  return out


def resize_posemb(posemb, grid, num_prefix_tokens):
  """[1, T + N, D] → [1, T + gh*gw, D]: bilinear resize of the (square) source grid (§3.2)."""
  prefix, tokens = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  side = math.isqrt(len(tokens))
  if side * side != len(tokens):
    raise errors.UserError(
        f'Cannot resize a position embedding of {len(tokens)} patch tokens: it is '
        'not a square grid.')
  gh, gw = grid
  tokens = tokens.reshape(side, side, -1)
  tokens = scipy.ndimage.zoom(tokens, (gh / side, gw / side, 1), order=1)
  return np.concatenate([prefix, tokens.reshape(1, gh * gw, -1)], axis=1)


def fit(init_params, restored, *, fresh=(), source='Checkpoint', what='the model'):
  """`restored` (a flat .npz dict) as a parameter tree shaped like `init_params`.

  Blocks are stacked or not as the model's are; parameters under the `fresh` path prefixes
  (a new head) keep their values from `init_params`. Anything else missing, unexpected or
  mis-shaped is an error naming every such parameter.
  """
  init = flatten(init_params)
  restored = unstack_layers(restored)
  if any(is_stacked(k) for k in init):
    restored = stack_layers(restored)
  is_fresh = lambda key: key.startswith(tuple(fresh)) if fresh else False
  restored = {k: v for k, v in restored.items() if not is_fresh(k)}
  missing = sorted(k for k in init if k not in restored and not is_fresh(k))
  unexpected = sorted(k for k in restored if k not in init)
  misshaped = sorted(f'{k}: checkpoint {restored[k].shape} vs model {init[k].shape}'
                     for k in restored if k in init and restored[k].shape != init[k].shape)
  if missing or unexpected or misshaped:
    raise errors.UserError(f'{source} does not fit {what}.\n'
                           f'  missing: {missing}\n  unexpected: {unexpected}\n'
                           f'  mis-shaped: {misshaped}')
  merged = {k: np.asarray(restored.get(k, v), dtype=v.dtype) for k, v in init.items()}
  return unflatten(merged)


# The current Linen modules' automatic names (the official code's models_vit.py, big_vision)
# → the names in the published .npz files, written when Flax numbered modules across types.
_LINEN_BLOCK = {'LayerNorm_0': 'LayerNorm_0', 'MultiHeadDotProductAttention_0':
                'MultiHeadDotProductAttention_1', 'LayerNorm_1': 'LayerNorm_2',
                'MlpBlock_0': 'MlpBlock_3'}
_BLOCK_CHILD = re.compile(r'^(Transformer/encoderblock(?:_\d+)?/)([A-Za-z]+_\d+)(/.*)$')


def to_published(flat):
  """A ViT checkpoint in any layout that loads here → (the published layout, which layout it
  was: 'published', 'Linen' or 'big_vision').

  Linen: blocks hold LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0.
  big_vision: Linen blocks, and a learned position embedding at the top ('pos_embedding', or
  'Transformer/pos_embedding' in older files) added to the patches before a class token is
  prepended; here the class token has a slot in the table, so it gets a zero row (the same
  function). Its 'map' head (MAPHead_0) and fixed 'sincos2d' positions are model options.
  """
  flat, layout = dict(flat), 'published'
  children = {m.group(2) for m in map(_BLOCK_CHILD.match, flat) if m}
  if 'MlpBlock_0' in children:
    layout = 'Linen'
    flat = {(m.group(1) + _LINEN_BLOCK.get(m.group(2), m.group(2)) + m.group(3)
             if (m := _BLOCK_CHILD.match(k)) else k): v for k, v in flat.items()}
  for key in ('pos_embedding', 'Transformer/pos_embedding'):
    if key in flat:
      layout = 'big_vision'
      table = flat.pop(key)
      if 'cls' in flat:
        table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
      flat[POSEMB] = table
  return flat, layout


def load_vit(init_params, restored, grid, reset_head=True, source='Checkpoint'):
  """Fine-tuning a ViT: `restored` (flat .npz dict, in any layout `to_published` reads) fitted
  to a model whose fresh params are `init_params`. The position-embedding grid is resized to
  `grid` (patch rows, cols), keeping the leading class (and distillation) token rows; the head
  is kept from `init_params` when `reset_head` (new classes), `pre_logits` and the head are
  dropped when the model has none (an encoder alone); the rest as in `fit`.
  """
  init = flatten(init_params)
  restored, layout = to_published(restored)
  if layout != 'published':
    source = f'{source} (read in the {layout} layout)'
  restored = {k: v for k, v in restored.items()
              if not (k.startswith(('pre_logits/', 'head/', 'head_dist/')) and k not in init)}
  if POSEMB in restored and POSEMB in init and restored[POSEMB].shape != init[POSEMB].shape:
    prefix = sum(token in restored for token in ('cls', 'dist'))  # The file's own tokens.
    restored = dict(restored, **{POSEMB: resize_posemb(restored[POSEMB], grid, prefix)})
  return fit(init_params, restored, fresh=('head/',) if reset_head else (), source=source,
             what='the ViT')
