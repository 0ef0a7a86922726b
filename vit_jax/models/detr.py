"""DETR: end-to-end object detection with Transformers (Carion et al. 2020).

ResNet features → 1x1 projection → post-LN Transformer encoder (2-D sine positions added to
queries and keys only, padded pixels masked) → decoder whose input starts at zeros and whose
learned object queries are query positions → class head (num_classes + 1, no-object last)
and a 3-layer box MLP with sigmoid → normalised (cx, cy, w, h). Every decoder layer's output
goes through the shared final LayerNorm and both heads, for the auxiliary losses (§3.2).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

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
  """3-layer MLP → sigmoid (cx, cy, w, h)."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.relu(nn.Dense(self.hidden, name=f'Dense_{i}')(x))
    return nn.sigmoid(nn.Dense(4, name='Dense_2')(x))


class DETR(nn.Module):
  num_classes: int
  num_queries: int = 100
  backbone_name: str = 'resnet50'
  dilation: bool = False
  backbone_norm: str = 'frozen_bn'
  frozen_stages: int = 1
  d_model: int = 256
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  d_ff: int = 2048
  dropout_rate: float = 0.1
  position_embedding: str = 'sine'  # or 'learned'
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Of the transformer blocks.
  scan_layers: bool = False  # Each stack as one nn.scan (parameters stacked [L, ...]).

  def setup(self):
    self.backbone = resnet.ResNet(**resnet.decode_variant(self.backbone_name),
                                  dilation=self.dilation, norm=self.backbone_norm,
                                  frozen_stages=self.frozen_stages,
                                  dtype=self.dtype)
    self.input_proj = nn.Conv(self.d_model, (1, 1), dtype=self.dtype)
    if self.position_embedding == 'learned':
      self.pos_embed = posemb.LearnedPosition2D(self.d_model // 2)
    elif self.position_embedding != 'sine':
      raise ValueError(f"Unknown position_embedding {self.position_embedding!r}; expected "
                       "'sine' or 'learned'.")
    stack = dict(num_heads=self.num_heads, mlp_dim=self.d_ff, dropout_rate=self.dropout_rate,
                 norm_first=False, activation='relu', layer_norm_eps=1e-5, dtype=self.dtype,
                 remat=self.remat, scan=self.scan_layers)
    self.encoder = transformer.Encoder(self.num_encoder_layers, final_norm=False, **stack)
    self.decoder = transformer.Decoder(self.num_decoder_layers, final_norm=True,
                                       norm_every_output=True, **stack)
    self.query_embed = self.param('query_embed', nn.initializers.normal(1.0),
                                  (self.num_queries, self.d_model))
    self.class_head = nn.Dense(self.num_classes + 1)
    self.box_head = BoxHead(self.d_model)

  def __call__(self, image, pixel_mask=None, *, train=False):
    """image [B, H, W, 3], pixel_mask [B, H, W] (True = real pixel) →
    ({'logits': [L, B, Q, C+1], 'boxes': [L, B, Q, 4]} for every decoder layer (the last is the
    prediction), aux with attention weights and the feature-map mask)."""
    if pixel_mask is None:
      pixel_mask = jnp.ones(image.shape[:3], bool)
    features = self.backbone(image)['stage4']
    mask = downsample_mask(pixel_mask, *features.shape[1:3])
    return self.detect(features, mask, train=train)

  def detect(self, features, mask, *, train=False):
    """Backbone features [B, h, w, C] and their mask [B, h, w] → (outputs, aux)."""
    b, h, w, _ = features.shape
    x = self.input_proj(features)
    if self.position_embedding == 'sine':
      pos = posemb.sine_2d(mask, self.d_model // 2)
    else:
      pos = jnp.broadcast_to(self.pos_embed(h, w), (b, h, w, self.d_model))
    x, pos = x.reshape(b, h * w, self.d_model), pos.reshape(b, h * w, self.d_model)
    key_mask = masks.key_padding_mask(mask.reshape(b, h * w))
    memory, enc_aux = self.encoder(x, mask=key_mask, pos=pos, deterministic=not train)
    query_pos = jnp.broadcast_to(self.query_embed[None], (b,) + self.query_embed.shape)
    _, dec_aux = self.decoder(jnp.zeros_like(query_pos), memory, cross_mask=key_mask,
                              query_pos=query_pos, memory_pos=pos, deterministic=not train)
    hidden = jnp.stack(dec_aux['layers']).astype(jnp.float32)  # [L, B, Q, D]
    outputs = {'logits': self.class_head(hidden), 'boxes': self.box_head(hidden)}
    aux = {'encoder_attention': enc_aux['attention'], 'decoder_attention': dec_aux['attention'],
           'feature_mask': mask}
    return outputs, aux
