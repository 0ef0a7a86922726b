"""DETR and Deformable DETR speed, side by side in one run on this machine.

  .venv/bin/python benchmarks/detr_throughput.py

1. Training: images/s of our train steps (set loss with auxiliary losses, scipy matcher,
   AdamW, gradient clipping) vs Hugging Face's `DetrForObjectDetection` and
   `DeformableDetrForObjectDetection` (PyTorch), each pair with the same ResNet-10 backbone
   (frozen BatchNorm), sizes, queries, batch and image size, float32; and the two models
   against each other.
2. Deformable attention's two samplings (layers/deformable.py), forward and backward, on
   Deformable DETR's encoder (every pixel of four levels a query) at growing image sizes.
3. Matching one batch of 64 images x 100 queries x {10, 50, 100} targets: our scipy host
   callback and our on-device Hungarian solver (both jit-compiled) vs a plain scipy loop.
Timed alternately after warm-up; medians with min-max.
"""
import argparse
import os
import statistics
import sys

import jax
import numpy as np
import scipy.optimize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import alternate, matmul_run, mfu, our_train_step, table  # noqa: E402
from configs import deformable_detr as deformable_config  # noqa: E402
from configs import detr as detr_config  # noqa: E402
from vit_jax.layers import deformable  # noqa: E402
from vit_jax.ops import matching  # noqa: E402


def synthetic_batch(rng, batch, canvas, max_boxes, num_classes):
  n = rng.integers(1, max_boxes + 1, batch)
  valid = np.arange(max_boxes)[None] < n[:, None]
  centre = rng.uniform(0.2, 0.8, (batch, max_boxes, 2))
  size = rng.uniform(0.05, 0.3, (batch, max_boxes, 2))
  return {'image': rng.normal(size=(batch, canvas, canvas, 3)).astype(np.float32),
          'pixel_mask': np.ones((batch, canvas, canvas), bool),
          'boxes': np.concatenate([centre, size], -1).astype(np.float32),
          'labels': rng.integers(0, num_classes, (batch, max_boxes)).astype(np.int32),
          'valid': valid}


def torch_train(m, num_classes, data, lr, train_backbone=True):
  """m: our DETR or DeformableDETR module (its sizes) → the same model in PyTorch.
  train_backbone: Hugging Face's detectors freeze backbone parameters by name ('stage.1', …),
  which matches none of their own ResNet's ('stages.1', …), so its whole backbone would stay
  frozen and its step skip the backbone's backward; ours trains every backbone weight
  (frozen_stages=-1, as the shapes configs), so theirs does too unless this is False."""
  import torch
  import transformers as hf
  deformable = hasattr(m, 'num_feature_levels')
  stages = ['stage2', 'stage3', 'stage4'] if deformable else ['stage4']
  backbone = hf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                             depths=[1, 1, 1, 1], layer_type='basic', out_features=stages)
  sizes = dict(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
               num_queries=m.num_queries, d_model=m.hidden_size,
               encoder_layers=m.num_encoder_layers, decoder_layers=m.num_decoder_layers,
               encoder_attention_heads=m.num_heads, decoder_attention_heads=m.num_heads,
               encoder_ffn_dim=m.mlp_dim, decoder_ffn_dim=m.mlp_dim, num_labels=num_classes,
               auxiliary_loss=True, dropout=m.dropout_rate)
  if deformable:
    config = hf.DeformableDetrConfig(**sizes, num_feature_levels=m.num_feature_levels,
                                     encoder_n_points=m.encoder_points,
                                     decoder_n_points=m.decoder_points,
                                     with_box_refine=m.box_refine, two_stage=m.two_stage)
    model = hf.DeformableDetrForObjectDetection(config).train()
  else:
    model = hf.DetrForObjectDetection(hf.DetrConfig(**sizes)).train()
  model.model.backbone.requires_grad_(train_backbone)
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                          weight_decay=1e-4)
  pixels = torch.from_numpy(data['image'].transpose(0, 3, 1, 2).copy())
  mask = torch.from_numpy(data['pixel_mask']).long()
  labels = [{'class_labels': torch.from_numpy(l[v]).long(), 'boxes': torch.from_numpy(b[v])}
            for l, b, v in zip(data['labels'], data['boxes'], data['valid'])]

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    opt.step()

  return step


def paired_config(family, batch, canvas):
  """Our config for the pair with Hugging Face's: their ResNet has no dilation (DETR at
  stride 32) and their detectors freeze BatchNorm, so ours too, and both sides do the same
  work; DETR with the paper's six decoder layers (the shapes default has three)."""
  config = {'detr': detr_config, 'deformable': deformable_config}[family].get_config()
  config.update_from_flattened_dict({'batch_size': batch, 'data.canvas': canvas,
                                     'model.backbone_norm': 'frozen_bn', 'loss.matcher': 'scipy'})
  if family == 'detr':
    config.model.update(dilation=0, num_decoder_layers=6)
  return config


def scipy_loop(cost):
  for c in cost:
    scipy.optimize.linear_sum_assignment(c)


def sampling_runs(rng, sizes, batch=8, heads=4, head_dim=32, points=4):
  """{(size, sampling): a jitted forward and backward of deformable attention over the four
  levels (strides 8-64) of a size x size image, every pixel a query}."""
  runs = {}
  for size in sizes:
    shapes = tuple((-(-size // s), -(-size // s)) for s in (8, 16, 32, 64))
    positions = sum(h * w for h, w in shapes)
    value = rng.normal(size=(batch, positions, heads, head_dim)).astype(np.float32)
    locations = rng.uniform(0, 1, (batch, positions, heads, 4, points, 2)).astype(np.float32)
    weights = rng.dirichlet(np.ones(4 * points), (batch, positions, heads)).reshape(
        batch, positions, heads, 4, points).astype(np.float32)
    for sampling in ('dense', 'gather'):
      grad = jax.jit(jax.grad(lambda v, loc, w, s=sampling, sh=shapes: (
          deformable.multi_scale_deformable_attention(v, sh, loc, w, s) ** 2).sum(),
          argnums=(0, 1, 2)))
      runs[(size, sampling)] = lambda g=grad, a=(value, locations, weights): (
          jax.block_until_ready(g(*a)))
  return runs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--canvas', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--sampling_sizes', default='64,128,256')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  runs, models, flops = {}, {}, {}
  for family in ('detr', 'deformable'):
    config = paired_config(family, args.batch, args.canvas)
    data = synthetic_batch(rng, args.batch, args.canvas, config.data.max_boxes, 3)
    runs[family], trainer = our_train_step(config, data)
    flops[family] = runs[family].flops
    models[family] = m = trainer.task.model
    runs[f'torch-{family}'] = torch_train(m, 3, data, config.optim.learning_rate)
  sizes = [int(s) for s in args.sampling_sizes.split(',')]
  sampling = sampling_runs(rng, sizes)
  runs.update(sampling)

  valid = {t: np.ones((64, t), bool) for t in (10, 50, 100)}
  cost = {t: rng.normal(size=(64, 100, t)).astype(np.float32) for t in valid}
  solvers = {name: jax.jit(lambda c, v, name=name: matching.hungarian(c, v, name))
             for name in ('scipy', 'device')}
  for t in valid:
    for name, solve in solvers.items():
      runs[f'{name}-{t}'] = (lambda s=solve, t=t: jax.block_until_ready(s(cost[t], valid[t])))
    runs[f'loop-{t}'] = lambda t=t: scipy_loop(cost[t])
  runs['matmul'], matmul_flops = matmul_run()
  times = alternate(runs, args.rounds)
  print(f'batch {args.batch}, {args.canvas}x{args.canvas} images, float32, {args.rounds} '
        f'alternating rounds')
  for family, name in (('detr', 'DetrForObjectDetection'),
                       ('deformable', 'DeformableDetrForObjectDetection')):
    m = models[family]
    table(f'{type(m).__name__} training step ({m.backbone_name}, hidden_size {m.hidden_size}, '
          f'{m.num_encoder_layers}+{m.num_decoder_layers} layers, {m.num_queries} queries; set '
          f'loss + auxiliary losses, AdamW, gradient clipping)', 'images/s',
          [('vit_jax (JAX/Flax, scipy matcher)', times[family]),
           (f'Hugging Face {name} (PyTorch)', times[f'torch-{family}'])], args.batch)
    mfu(flops[family](), statistics.median(times[family]), times['matmul'], matmul_flops)
  table('The two models, ours (speed ratio: Deformable DETR over DETR)', 'images/s',
        [('Deformable DETR', times['deformable']), ('DETR', times['detr'])], args.batch)
  for size in sizes:
    table(f'Deformable attention, forward + backward, batch 8, a {size}x{size} image\'s four '
          f'levels', '', [(f'{s} sampling', times[(size, s)]) for s in ('dense', 'gather')], 0)
  for t in valid:
    table(f'Hungarian matching, 64 images x 100 queries x {t} targets', '', [
        ('ours: scipy via host callback (jit)', times[f'scipy-{t}']),
        ('ours: on-device solver (optax, jit + vmap)', times[f'device-{t}']),
        ('plain scipy loop (reference)', times[f'loop-{t}'])], 0)


if __name__ == '__main__':
  main()
