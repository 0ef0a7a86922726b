"""Deformable DETR (Zhu et al. 2021): DETR whose attention over the image is multi-scale
deformable attention (layers/deformable.py), so it reads a few sampled points per query from
four feature levels instead of every pixel of one, and converges about 10x faster.

ResNet C3-C5 (+ a stride-2 convolution of C5) → 1x1 (3x3) projections with GroupNorm → per
level: 2-D sine positions (pixel centres) + a learned level embedding, padding masks, valid
ratios → encoder of deformable self-attention around every valid pixel centre → decoder:
self-attention among the queries, deformable cross-attention around reference points
predicted from the query embeddings → per layer a sigmoid class head (focal loss, no
"no-object" class) and a box MLP that predicts offsets to the reference point in logit space
(§4.1, A.3). Optionally iterative box refinement (§4.2): each decoder layer's boxes are the
next layer's reference boxes; and two-stage (§4.2, A.4), which adds it: every encoder pixel
proposes a box (an extra head around a fixed-size box at the pixel), the best-scoring ones
become the decoder's reference boxes and, through their sine embeddings, its queries.
Parameter names follow Hugging Face's port where they can.
"""
import math
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax.layers import attention
from vit_jax.layers import deformable
from vit_jax.layers import kernels
from vit_jax.layers import posemb
from vit_jax.layers import transformer
from vit_jax.models import detr

PRIOR = 0.01  # Initial probability of every class (focal loss, Lin et al. 2017 §4.1).


def inverse_sigmoid(x, eps=1e-5):
  x = jnp.clip(x, 0.0, 1.0)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1 - x, eps))


def valid_ratios(mask):
  """[B, h, w] padding mask → [B, 2]: the valid fraction of the width and of the height."""
  h, w = mask.shape[1:]
  return jnp.stack([mask[:, 0, :].sum(1) / w, mask[:, :, 0].sum(1) / h], -1).astype(jnp.float32)


def pixel_centres(shapes, ratios):
  """Every pixel centre of every level, normalised by the valid extent of its level (0 to 1
  across the image, beyond 1 in padding) → [B, S, 2] (x, y)."""
  points = []
  for level, (h, w) in enumerate(shapes):
    y, x = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing='ij')
    x = x.reshape(-1)[None] / (ratios[:, None, level, 0] * w)
    y = y.reshape(-1)[None] / (ratios[:, None, level, 1] * h)
    points.append(jnp.stack([x, y], -1))
  return jnp.concatenate(points, 1)


def encoder_reference_points(shapes, ratios):
  """The encoder's reference points: the pixel centres seen from each level → [B, S, L, 2]."""
  return pixel_centres(shapes, ratios)[:, :, None] * ratios[:, None]


def encoder_proposals(shapes, ratios, valid):
  """Two-stage's fixed proposals: a box of side 0.05·2^level (of the valid image) centred on
  every pixel of every level → (logits [B, S, 4] (cx, cy, w, h) before the sigmoid, +inf
  where there is no proposal; keep [B, S]: real pixels (`valid`) whose box lies within
  (0.01, 0.99))."""
  centres = pixel_centres(shapes, ratios)
  sizes = np.concatenate([np.full(h * w, 0.05 * 2.0 ** level) for level, (h, w) in
                          enumerate(shapes)])
  boxes = jnp.concatenate([centres, jnp.broadcast_to(sizes[None, :, None], centres.shape)], -1)
  keep = valid & ((boxes > 0.01) & (boxes < 0.99)).all(-1)
  return jnp.where(keep[..., None], inverse_sigmoid(boxes), jnp.inf), keep


class EncoderLayer(nn.Module):
  """Deformable self-attention (positions on the queries) and an MLP, post-norm."""
  config: transformer.BlockConfig
  num_levels: int
  num_points: int

  @nn.compact
  def __call__(self, x, pos, reference, shapes, valid, deterministic=True):
    c = self.config
    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)
    y, _ = deformable.MultiScaleDeformableAttention(c.num_heads, self.num_levels,
                                                    self.num_points, name='self_attn')(
                                                        x + pos, reference, x, shapes, valid)
    x = norm('self_attn_layer_norm')(x + nn.Dropout(c.dropout_rate)(y, deterministic))
    y = transformer.MlpBlock(c, deterministic, name='mlp')(x)
    return norm('final_layer_norm')(x + y)


class DecoderLayer(nn.Module):
  """Self-attention among the queries, deformable cross-attention to the encoder's levels,
  an MLP; post-norm; query positions go to queries and keys, never to values. → (output,
  the cross-attention's (sampling locations, weights))."""
  config: transformer.BlockConfig
  num_levels: int
  num_points: int

  @nn.compact
  def __call__(self, x, query_pos, reference, memory, shapes, valid, deterministic=True):
    c = self.config
    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic)
    y, _ = attention.MultiHeadAttention(
        c.num_heads, dropout_rate=c.attention_dropout_rate, implementation=c.compute.attention_impl,
        name='self_attn')(x + query_pos, x + query_pos, x, deterministic=deterministic)
    x = norm('self_attn_layer_norm')(x + drop(y))
    y, sampling = deformable.MultiScaleDeformableAttention(
        c.num_heads, self.num_levels, self.num_points, name='encoder_attn')(
            x + query_pos, reference, memory, shapes, valid)
    x = norm('encoder_attn_layer_norm')(x + drop(y))
    y = transformer.MlpBlock(c, deterministic, name='mlp')(x)
    return norm('final_layer_norm')(x + y), sampling


class DeformableDETR(nn.Module):
  num_classes: int
  num_queries: int = 300
  backbone_name: str = 'resnet50'
  backbone_norm: str = 'frozen_bn'
  frozen_stages: int = 1
  # An attention module for CNNs in the backbone (ResNet's block_attention, attention_args,
  # attention_stages; one without BatchNorm inside: se, eca, gc, cbam, danet).
  backbone_attention: Optional[str] = None
  backbone_attention_args: Any = flax.core.FrozenDict()
  backbone_attention_stages: Optional[Sequence[int]] = None
  hidden_size: int = 256
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  num_feature_levels: int = 4
  encoder_points: int = 4
  decoder_points: int = 4
  box_refine: bool = False
  two_stage: bool = False
  compute: kernels.Compute = kernels.Compute()

  @nn.compact
  def __call__(self, image, pixel_mask=None, *, train=False, return_attention=False):
    """image [B, H, W, 3], pixel_mask [B, H, W] (True = real pixel) → ({'logits': [L, B, Q,
    C] (sigmoid scores), 'boxes': [L, B, Q, 4]} for every decoder layer, aux: 'reference'
    [L, B, Q, 2|4], each layer's reference points, 'shapes', the levels' sizes,
    'valid_ratios' [B, levels, 2] (x, y), 'sampling': the last decoder layer's sampling
    locations [B, Q, heads, levels, points, 2] (normalised over each level's padded map) and
    weights [B, Q, heads, levels, points], and with
    two-stage 'proposals': {'logits': [1, B, S, C], 'boxes': [1, B, S, 4]}, every encoder
    pixel's box, trained to find objects of any class as class 0)."""
    del return_attention  # Deformable attention has sampling points, not attention maps.
    if self.two_stage and not self.box_refine:
      raise errors.UserError('two_stage=True needs box_refine=True (§4.2: the proposals are '
                             'the decoder\'s first reference boxes, refined layer by layer).')
    if pixel_mask is None:
      pixel_mask = jnp.ones(image.shape[:3], bool)
    b, d = image.shape[0], self.hidden_size
    if d % 32:
      raise errors.UserError(f'hidden_size={d} must be a multiple of 32 (GroupNorm groups).')
    stages = detr.backbone(self, name='backbone')(image)
    from_backbone = min(self.num_feature_levels, 3)
    features = [stages[f'stage{i}'] for i in range(5 - from_backbone, 5)]  # C3-C5 (or fewer).
    group_norm = lambda name: nn.GroupNorm(num_groups=32, epsilon=1e-5, name=name)
    sources = [group_norm(f'input_proj_{i}_norm')(nn.Conv(d, (1, 1), name=f'input_proj_{i}')(f))
               for i, f in enumerate(features)]
    previous = features[-1]
    for i in range(from_backbone, self.num_feature_levels):  # Stride-2 3x3 convolutions.
      previous = group_norm(f'input_proj_{i}_norm')(
          nn.Conv(d, (3, 3), (2, 2), padding=((1, 1), (1, 1)), name=f'input_proj_{i}')(previous))
      sources.append(previous)
    level_embed = self.param('level_embed', nn.initializers.normal(1.0),
                             (self.num_feature_levels, d))
    shapes = tuple(s.shape[1:3] for s in sources)
    level_masks = [detr.downsample_mask(pixel_mask, h, w) for h, w in shapes]
    pos = [posemb.sine_2d(m, d // 2, offset=0.5).reshape(b, -1, d) + level_embed[i]
           for i, m in enumerate(level_masks)]
    x = jnp.concatenate([s.reshape(b, -1, d) for s in sources], 1)  # [B, S, D]
    pos = jnp.concatenate(pos, 1)
    valid = jnp.concatenate([m.reshape(b, -1) for m in level_masks], 1)
    ratios = jnp.stack([valid_ratios(m) for m in level_masks], 1)  # [B, L, 2]

    block = transformer.BlockConfig(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                    dropout_rate=self.dropout_rate, activation='relu',
                                    layer_norm_eps=1e-5, compute=self.compute)
    deterministic = not train
    x = nn.Dropout(self.dropout_rate)(x, deterministic)
    reference = encoder_reference_points(shapes, ratios)
    for i in range(self.num_encoder_layers):
      x = EncoderLayer(block, self.num_feature_levels, self.encoder_points,
                       name=f'encoder_layer_{i}')(x, pos, reference, shapes, valid, deterministic)
    memory = x

    heads = self.num_decoder_layers + self.two_stage if self.box_refine else 1
    class_heads = [nn.Dense(self.num_classes, name=f'class_embed_{i}' if self.box_refine else
                            'class_embed',
                            bias_init=nn.initializers.constant(-math.log((1 - PRIOR) / PRIOR)))
                   for i in range(heads)]
    box_heads = [detr.BoxHead(d, logits=True,
                              initial_size_logit=-2.0 if i == 0 and not self.two_stage else 0.0,
                              name=f'bbox_embed_{i}' if self.box_refine else 'bbox_embed')
                 for i in range(heads)]
    extras = {}
    if self.two_stage:  # The last heads score and place a box at every encoder pixel.
      if self.num_queries > memory.shape[1]:
        raise errors.UserError(f'two-stage keeps num_queries={self.num_queries} of the '
                               f'{memory.shape[1]} encoder pixels; use at most that many.')
      proposals, keep = encoder_proposals(shapes, ratios, valid)
      pixels = nn.LayerNorm(epsilon=1e-5, name='enc_output_norm')(
          nn.Dense(d, name='enc_output')(jnp.where(keep[..., None], memory, 0.0)))
      proposal_logits = class_heads[-1](pixels)
      proposal_boxes = box_heads[-1](pixels) + proposals
      extras['proposals'] = {'logits': proposal_logits[None].astype(jnp.float32),
                             'boxes': nn.sigmoid(proposal_boxes)[None].astype(jnp.float32)}
      best = jax.lax.top_k(proposal_logits[..., 0], self.num_queries)[1]
      chosen = jax.lax.stop_gradient(jnp.take_along_axis(proposal_boxes, best[..., None], 1))
      reference = nn.sigmoid(chosen)  # [B, Q, 4]
      embedding = posemb.sine_features(reference * 2 * math.pi, d // 2).reshape(b, -1, 2 * d)
      queries = nn.LayerNorm(epsilon=1e-5, name='pos_trans_norm')(
          nn.Dense(2 * d, name='pos_trans')(embedding))
      query_pos, x = queries[..., :d], queries[..., d:]
    else:
      queries = self.param('query_position_embeddings', nn.initializers.normal(1.0),
                           (self.num_queries, 2 * d))
      query_pos = jnp.broadcast_to(queries[None, :, :d], (b, self.num_queries, d))
      x = jnp.broadcast_to(queries[None, :, d:], (b, self.num_queries, d))
      reference = nn.sigmoid(nn.Dense(2, kernel_init=nn.initializers.xavier_uniform(),
                                      name='reference_points')(query_pos))  # [B, Q, 2]
    logits, boxes, references = [], [], []
    for i in range(self.num_decoder_layers):
      scale = ratios if reference.shape[-1] == 2 else jnp.concatenate([ratios, ratios], -1)
      x, sampling = DecoderLayer(block, self.num_feature_levels, self.decoder_points,
                                 name=f'decoder_layer_{i}')(
          x, query_pos, reference[:, :, None] * scale[:, None], memory, shapes, valid,
          deterministic)
      delta = box_heads[i % heads](x)
      if reference.shape[-1] == 4:
        box_logits = delta + inverse_sigmoid(reference)
      else:
        box_logits = delta.at[..., :2].add(inverse_sigmoid(reference))
      logits.append(class_heads[i % heads](x))
      boxes.append(nn.sigmoid(box_logits))
      references.append(reference)
      if self.box_refine:  # §4.2: the next layer starts from these boxes (no gradient back).
        reference = jax.lax.stop_gradient(nn.sigmoid(box_logits))
    outputs = {'logits': jnp.stack(logits).astype(jnp.float32),
               'boxes': jnp.stack(boxes).astype(jnp.float32)}
    return outputs, {'reference': references, 'shapes': shapes, 'valid_ratios': ratios,
                     'sampling': sampling, 'feature_mask': level_masks[-1], **extras}
