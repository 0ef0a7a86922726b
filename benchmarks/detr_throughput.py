"""DETR speed, side by side in one run on this machine.

  .venv/bin/python benchmarks/detr_throughput.py

1. Training: images/s of our train step (set loss with auxiliary losses, scipy matcher, AdamW)
   vs Hugging Face `DetrForObjectDetection` (PyTorch, same ResNet-10 backbone, sizes, queries,
   batch and image size, auxiliary loss on), float32.
2. Matching one batch of 64 images x 100 queries x {10, 50, 100} targets: our scipy host
   callback and our on-device Hungarian solver (both jit-compiled) vs a plain scipy loop.
Timed alternately after warm-up; medians with min-max.
"""
import argparse
import os
import sys

import jax
import numpy as np
import scipy.optimize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import alternate, our_train_step, table  # noqa: E402
from configs import detr as detr_config  # noqa: E402
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


def torch_train(m, num_classes, data, lr):
  """m: our DETR module (its sizes)."""
  import torch
  from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
  backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type='basic', out_features=['stage4'])
  config = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                      use_pretrained_backbone=False, num_queries=m.num_queries,
                      d_model=m.hidden_size, encoder_layers=m.num_encoder_layers,
                      decoder_layers=m.num_decoder_layers, encoder_attention_heads=m.num_heads,
                      decoder_attention_heads=m.num_heads, encoder_ffn_dim=m.mlp_dim,
                      decoder_ffn_dim=m.mlp_dim, num_labels=num_classes, auxiliary_loss=True,
                      dropout=m.dropout_rate)
  model = DetrForObjectDetection(config).train()
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


def scipy_loop(cost):
  for c in cost:
    scipy.optimize.linear_sum_assignment(c)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--canvas', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  config = detr_config.get_config()
  # Hugging Face's ResNet has no dilation: compare both at stride 32.
  config.update_from_flattened_dict({'batch_size': args.batch, 'model.dilation': False,
                                     'data.canvas': args.canvas})
  rng = np.random.default_rng(0)
  data = synthetic_batch(rng, args.batch, args.canvas, config.data.max_boxes, 3)
  ours_step, trainer = our_train_step(config, data)
  m = trainer.task.model
  torch_step = torch_train(m, 3, data, config.optim.learning_rate)
  runs = {'ours': ours_step, 'torch': torch_step}

  valid = {t: np.ones((64, t), bool) for t in (10, 50, 100)}
  cost = {t: rng.normal(size=(64, 100, t)).astype(np.float32) for t in valid}
  solvers = {name: jax.jit(lambda c, v, name=name: matching.hungarian(c, v, name))
             for name in ('scipy', 'device')}
  for t in valid:
    for name, solve in solvers.items():
      runs[f'{name}-{t}'] = (lambda s=solve, t=t: jax.block_until_ready(s(cost[t], valid[t])))
    runs[f'loop-{t}'] = lambda t=t: scipy_loop(cost[t])
  times = alternate(runs, args.rounds)
  print(f'DETR: {m.backbone_name} backbone, hidden_size {m.hidden_size}, {m.num_encoder_layers}+'
        f'{m.num_decoder_layers} layers, {m.num_queries} queries, batch {args.batch}, '
        f'{args.canvas}x{args.canvas} images, float32, {args.rounds} alternating rounds')
  table('Training step (set loss + auxiliary losses, AdamW, gradient clipping)', 'images/s',
        [('vit_jax (JAX/Flax, scipy matcher)', times['ours']),
         ('Hugging Face DetrForObjectDetection (PyTorch)', times['torch'])], args.batch)
  for t in valid:
    table(f'Hungarian matching, 64 images x 100 queries x {t} targets', '', [
        ('ours: scipy via host callback (jit)', times[f'scipy-{t}']),
        ('ours: on-device solver (optax, jit + vmap)', times[f'device-{t}']),
        ('plain scipy loop (reference)', times[f'loop-{t}'])], 0)


if __name__ == '__main__':
  main()
