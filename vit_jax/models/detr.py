"""DETR: end-to-end object detection with Transformers (Carion et al. 2020).

ResNet features → 1x1 projection → post-LN Transformer encoder (2-D sine positions added to
queries and keys only, padded pixels masked) → decoder whose input starts at zeros and whose
learned object queries are query positions → class head (num_classes + 1, no-object last;
or num_classes sigmoid logits with the focal loss) and a 3-layer box MLP with sigmoid →
normalised (cx, cy, w, h). Every decoder layer's output goes through the shared final
LayerNorm and both heads, for the auxiliary losses (§3.2).
"""
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax.layers import kernels
from vit_jax.layers import masks
from vit_jax.layers import posemb
from vit_jax.layers import transformer
from vit_jax.models import resnet


def downsample_mask(pixel_mask, height, width):
  """Nearest-neighbour resize of [B, H, W] to [B, height, width] (like torch's default)."""
  rows = (np.arange(height) * pixel_mask.shape[1]) // height
  cols = (np.arange(width) * pixel_mask.shape[2]) // width
  return jnp.asarray(pixel_mask)[:, rows][:, :, cols]


class BoxHead(nn.Module):
  """3-layer MLP → sigmoid (cx, cy, w, h); with `logits`, the 4 values before the sigmoid,
  which Deformable DETR adds to its reference points: its last layer then starts at zero
  offsets and boxes of sigmoid(initial_size_logit) of the image (the official code's −2 for
  the first head: 0.12)."""
  hidden: int
  logits: bool = False
  initial_size_logit: float = 0.0

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.relu(nn.Dense(self.hidden, name=f'Dense_{i}')(x))
    if not self.logits:
      return nn.sigmoid(nn.Dense(4, name='Dense_2')(x))
    size = self.initial_size_logit
    return nn.Dense(4, name='Dense_2', kernel_init=nn.initializers.zeros,
                    bias_init=lambda *_: jnp.array([0.0, 0.0, size, size]))(x)


def backbone(model, **kwargs):
  """A detection model's ResNet, from its backbone_* fields."""
  return resnet.ResNet(**resnet.decode_variant(model.backbone_name), norm=model.backbone_norm,
                       frozen_stages=model.frozen_stages,
                       block_attention=model.backbone_attention,
                       attention_args=model.backbone_attention_args,
                       attention_stages=model.backbone_attention_stages,
                       dtype=model.compute.dtype, **kwargs)


class DETR(nn.Module):
  num_classes: int
  num_queries: int = 100
  backbone_name: str = 'resnet50'
  dilation: int = 0  # Last stages dilated instead of strided: 1 (True) DC5, stride 16.
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
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  posemb: str = 'sine'  # or 'learn'
  norm_first: bool = False  # Pre-LayerNorm blocks and a final encoder norm (`normalize_before`).
  # Group DETR (Chen et al. 2023): in training, this many groups of object queries, each
  # attending only within its group and matched one-to-one on its own, so that every target
  # teaches several queries; inference reads the first group, the model is plain DETR.
  query_groups: int = 1
  # Sigmoid classes (Deformable DETR's focal loss): num_classes logits, no "no object" one.
  sigmoid_classes: bool = False
  compute: kernels.Compute = kernels.Compute()

  def setup(self):
    self.backbone = backbone(self, dilation=self.dilation)
    self.input_proj = nn.Conv(self.hidden_size, (1, 1), dtype=self.compute.dtype)
    if self.posemb == 'learn':
      self.pos_embed = posemb.LearnedPosition2D(self.hidden_size // 2)
    elif self.posemb != 'sine':
      raise errors.UserError(f"Unknown posemb {self.posemb!r}; expected 'sine' or 'learn'.")
    block = transformer.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, norm_first=self.norm_first,
        activation='relu', layer_norm_eps=1e-5, compute=self.compute)
    self.encoder = transformer.Encoder(self.num_encoder_layers, block,
                                       final_norm=self.norm_first)
    self.decoder = transformer.Decoder(self.num_decoder_layers, block, final_norm=True,
                                       norm_every_output=True)
    self.query_embed = self.param('query_embed', nn.initializers.normal(1.0),
                                  (self.num_queries, self.hidden_size))
    if self.query_groups < 1:
      raise errors.UserError(f'model.query_groups={self.query_groups}; expected 1 (plain DETR) '
                             'or more (Group DETR).')
    if self.query_groups > 1:
      self.group_queries = self.param('group_queries', nn.initializers.normal(1.0),
                                      (self.query_groups - 1, self.num_queries, self.hidden_size))
    self.class_head = nn.Dense(self.num_classes + (not self.sigmoid_classes))
    self.box_head = BoxHead(self.hidden_size)

  def __call__(self, image, pixel_mask=None, *, train=False, return_attention=False):
    """image [B, H, W, 3], pixel_mask [B, H, W] (True = real pixel) →
    ({'logits': [L, B, Q, C+1], 'boxes': [L, B, Q, 4]} for every decoder layer (the last is the
    prediction), aux with the feature-map mask and, when asked for, the attention weights)."""
    stages, mask = self.backbone_stages(image, pixel_mask)
    return self.detect(stages['stage4'], mask, train=train, return_attention=return_attention)

  def backbone_stages(self, image, pixel_mask=None):
    """→ (the backbone's stages {'stage1'..'stage4': [B, h_i, w_i, C_i]}, the last stage's
    mask [B, h, w]); no pixel_mask: every pixel real."""
    if pixel_mask is None:
      pixel_mask = jnp.ones(image.shape[:3], bool)
    stages = self.backbone(image)
    return stages, downsample_mask(pixel_mask, *stages['stage4'].shape[1:3])

  def detect(self, features, mask, *, train=False, return_attention=False):
    """Backbone features [B, h, w, C] and their mask [B, h, w] → (outputs, aux); aux also
    holds what the panoptic head reads: 'projected' features [B, h, w, D], the encoder's
    'memory' [B, h, w, D] and the last decoder layer's 'hidden' [B, Q, D]."""
    b, h, w, _ = features.shape
    d = self.hidden_size
    x = projected = self.input_proj(features)
    if self.posemb == 'sine':
      pos = posemb.sine_2d(mask, d // 2)
    else:
      pos = jnp.broadcast_to(self.pos_embed(h, w), (b, h, w, d))
    x, pos = x.reshape(b, h * w, d), pos.reshape(b, h * w, d)
    key_mask = masks.key_padding_mask(mask.reshape(b, h * w))
    memory, enc_aux = self.encoder(x, mask=key_mask, pos=pos, deterministic=not train,
                                   return_attention=return_attention)
    queries, self_mask = self.query_embed, None
    if train and self.query_groups > 1:  # Training outputs then hold G·Q queries, group-major.
      queries = jnp.concatenate([queries, self.group_queries.reshape(-1, d)])
      group = jnp.repeat(jnp.arange(1, self.query_groups + 1), self.num_queries)[None]
      self_mask = masks.segment_mask(group, group)
    query_pos = jnp.broadcast_to(queries[None], (b,) + queries.shape)
    _, dec_aux = self.decoder(jnp.zeros_like(query_pos), memory, self_mask=self_mask,
                              cross_mask=key_mask, query_pos=query_pos, memory_pos=pos,
                              deterministic=not train, return_attention=return_attention)
    hidden = jnp.stack(dec_aux['layers']).astype(jnp.float32)  # [L, B, Q, D]
    outputs = {'logits': self.class_head(hidden), 'boxes': self.box_head(hidden)}
    aux = {'feature_mask': mask, 'projected': projected, 'memory': memory.reshape(b, h, w, d),
           'hidden': hidden[-1]}
    if return_attention:
      aux.update(encoder_attention=enc_aux['attention'],
                 decoder_attention=dec_aux['attention'])
    return outputs, aux
