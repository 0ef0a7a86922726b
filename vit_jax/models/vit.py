"""Vision Transformer ("An Image is Worth 16x16 Words", Dosovitskiy et al. 2021).

Parameter names and shapes match the published google-research/vision_transformer `.npz`
checkpoints, so those load as they are (see `vit_jax.pretrained`).
"""
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import kernels
from vit_jax.models import bit
from vit_jax.layers import posemb
from vit_jax.layers import transformer

# Table 1 of the paper (+ Ti/S from DeiT), and small widths for tests ('mu') and CPU runs
# ('XS': the default digits model).
WIDTHS = {
    'mu': dict(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=2),
    'XS': dict(hidden_size=128, num_layers=4, mlp_dim=256, num_heads=4),
    'Ti': dict(hidden_size=192, num_layers=12, mlp_dim=768, num_heads=3),
    'S': dict(hidden_size=384, num_layers=12, mlp_dim=1536, num_heads=6),
    'B': dict(hidden_size=768, num_layers=12, mlp_dim=3072, num_heads=12),
    'L': dict(hidden_size=1024, num_layers=24, mlp_dim=4096, num_heads=16),
    'H': dict(hidden_size=1280, num_layers=32, mlp_dim=5120, num_heads=16),
}


# Hybrids (§3.1): the ResNet's units per stage, by (ResNet, overall stride) as published
# (R50+B/16 keeps three stages, the third one longer; the /32 models have four).
HYBRIDS = {('R50', 16): (3, 4, 9), ('R50', 32): (3, 4, 6, 3), ('R26', 32): (2, 2, 2, 2)}


def decode_variant(variant):
  """'B/16' → dict(hidden_size=768, ..., patch_size=16); a hybrid 'R50+B/16' → the ResNet's
  stages and the patch size on its feature map that makes the overall stride 16 (1)."""
  resnet, _, plain = variant.rpartition('+')
  width, _, patch = plain.partition('/')
  if width not in WIDTHS or not patch.isdigit() or (resnet and
                                                    (resnet, int(patch)) not in HYBRIDS):
    raise errors.UserError(
        f'Unknown ViT variant {variant!r}; expected WIDTH/PATCH with WIDTH one of '
        f'{list(WIDTHS)} and PATCH an integer, e.g. "B/16", or a hybrid RESNET+WIDTH/STRIDE '
        f'with RESNET/STRIDE one of {[f"{r}/{s}" for r, s in HYBRIDS]}, e.g. "R50+B/16".')
  if not resnet:
    return dict(WIDTHS[width], patch_size=int(patch))
  layers = HYBRIDS[resnet, int(patch)]
  return dict(WIDTHS[width], patch_size=int(patch) // bit.stride_of(layers),
              resnet_layers=layers)


class VisionTransformer(nn.Module):
  """Patch embedding → [class token] → learned positions → pre-LN encoder → head.

  distillation=True: DeiT (Touvron et al. 2021, §4): a distillation token after the class
  token, with its own position slot and its own head ('head_dist'), trained to match a
  teacher; the prediction averages the two heads' softmaxes."""
  num_classes: int
  patch_size: Union[int, Sequence[int]] = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  classifier: str = 'token'  # 'token', 'gap' (mean of the tokens) or 'map' (attention pooling).
  posemb: str = 'learn'  # 'learn' (a table for every token) or 'sincos2d' (fixed, patches only).
  representation_size: Optional[int] = None
  activation: str = 'gelu'
  head_bias_init: float = 0.0
  distillation: bool = False
  # Hybrid (§3.1): a BiT ResNet's units per stage (models/bit.py) before the patch embedding,
  # which then cuts its feature map into patches (of 1x1 in the published hybrids).
  resnet_layers: Optional[Sequence[int]] = None
  resnet_width_factor: float = 1.0
  compute: kernels.Compute = kernels.Compute()

  def token_grid(self, height, width):
    """(rows, cols) of patch tokens for images of height x width."""
    ph, pw = (self.patch_size,) * 2 if isinstance(self.patch_size, int) else self.patch_size
    shrink = bit.stride_of(self.resnet_layers) if self.resnet_layers else 1
    return height // (shrink * ph), width // (shrink * pw)

  @nn.compact
  def __call__(self, images, *, train=False, return_attention=False):
    """images [B, H, W, C] → (logits [B, num_classes], aux); num_classes=0: (None, aux),
    the encoder alone.

    aux: 'pre_logits' [B, D or R], 'tokens' [B, N(+1), D] (encoder output), 'layers',
    'grid' (patch rows, cols) and, when asked for, 'attention' (each layer's weights
    [B, heads, N(+1), N(+1)]). With `distillation` the logits are log((softmax(c) +
    softmax(d)) / 2) of the class head's c and the distillation head's d, which aux holds as
    'cls_logits' and 'distillation_logits' (the tokens then number N+2).
    """
    if self.classifier not in ('token', 'gap', 'map'):
      raise errors.UserError(f"classifier must be 'token', 'gap' or 'map', got "
                             f'{self.classifier!r}.')
    if self.posemb not in ('learn', 'sincos2d'):
      raise errors.UserError(f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}.")
    if self.distillation and self.classifier != 'token':
      raise errors.UserError("model.distillation=True needs model.classifier='token': the "
                             'distillation token sits beside the class token.')
    ph, pw = (self.patch_size,) * 2 if isinstance(self.patch_size, int) else self.patch_size
    h, w = images.shape[1:3]
    shrink = bit.stride_of(self.resnet_layers) if self.resnet_layers else 1
    if h % (shrink * ph) or w % (shrink * pw):
      where = f' on a ResNet feature map 1/{shrink} of the image' if shrink > 1 else ''
      raise errors.UserError(f'Image size {h}x{w} is not divisible by the patch size {ph}x{pw}'
                             f'{where}.')
    gh, gw = self.token_grid(h, w)
    if self.resnet_layers:
      images = bit.stem_and_stages(images, self.resnet_layers, self.resnet_width_factor,
                                   self.compute.dtype)  # Names as in the published hybrids.
    b = images.shape[0]

    # Patch embedding (§3.1): the conv of the published model, computed as one 2-D matmul of
    # flattened patches with the conv kernel [ph, pw, C, D] reshaped to [ph*pw*C, D].
    x = PatchEmbedding(self.hidden_size, (ph, pw), self.compute.dtype, name='embedding')(images)
    x = x.reshape(b, gh * gw, self.hidden_size)  # [B, N, D]
    if self.posemb == 'sincos2d':  # big_vision's fixed alternative, on the patches alone.
      x = x + posemb.sincos_2d(gh, gw, self.hidden_size).astype(x.dtype)[None]
      x = nn.Dropout(self.dropout_rate)(x, not train)

    if self.classifier == 'token':
      names = ('cls', 'dist') if self.distillation else ('cls',)
      tokens = [jnp.broadcast_to(self.param(n, nn.initializers.zeros, (1, 1, self.hidden_size)),
                                 (b, 1, self.hidden_size)).astype(x.dtype) for n in names]
      x = jnp.concatenate(tokens + [x], axis=1)  # [B, N+1 (+1), D]

    block = transformer.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, droppath_rate=self.droppath_rate,
        norm_first=True, activation=self.activation, layer_norm_eps=1e-6, compute=self.compute)
    learned = 'learn' if self.posemb == 'learn' else None
    x, aux = transformer.Encoder(self.num_layers, block, final_norm=True, posemb=learned,
                                 name='Transformer')(x, deterministic=not train,
                                                     return_attention=return_attention)
    aux = dict(aux, tokens=x, grid=(gh, gw))
    if not self.num_classes:  # An encoder for another family's head (SETR): no pooling, head.
      return None, aux

    if self.classifier == 'map':
      x = transformer.MAPHead(block, name='MAPHead_0')(x)  # [B, D]
    else:
      x = x[:, 0] if self.classifier == 'token' else x.mean(axis=1)  # [B, D]
    if self.representation_size is not None:
      x = jnp.tanh(nn.Dense(self.representation_size, name='pre_logits')(x))
    aux['pre_logits'] = x
    head = lambda name: nn.Dense(self.num_classes, name=name, kernel_init=nn.initializers.zeros,
                                 bias_init=nn.initializers.constant(self.head_bias_init))
    logits = head('head')(x).astype(jnp.float32)
    if self.distillation:
      distilled = head('head_dist')(aux['tokens'][:, 1]).astype(jnp.float32)
      aux.update(cls_logits=logits, distillation_logits=distilled)
      logits = jnp.logaddexp(jax.nn.log_softmax(logits), jax.nn.log_softmax(distilled)) - jnp.log(2)
    return logits, aux


class PatchEmbedding(nn.Module):
  """Non-overlapping patches → D features; params 'kernel' [ph, pw, C, D], 'bias' [D]."""
  features: int
  patch: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    ph, pw = self.patch
    b, h, w, c = images.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (ph, pw, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    patches = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(-1, ph * pw * c)  # [B*N, ph*pw*C]
    x = kernels.matmul(patches, kernel.reshape(-1, self.features), self.dtype, bias)
    return x.reshape(b, h // ph, w // pw, self.features)
