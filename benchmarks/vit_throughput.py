"""Train-step throughput of our ViT vs Hugging Face's PyTorch ViT, side by side in one run.

  .venv/bin/python benchmarks/vit_throughput.py                  # ViT-Ti/16, 224x224, batch 16
  .venv/bin/python benchmarks/vit_throughput.py --variant=S/16 --batch=8

Both sides: same size, batch, image size, float32, AdamW, forward + backward + update.
Timed alternately (ours, theirs, ours, ...) after warm-up (and after compilation for JAX);
prints medians with min-max, the speed ratio to PyTorch, and our MFU = XLA's FLOPs per step
/ median step time / the fp32 matmul peak measured in the same run (a 2048² matmul timed
among the rounds).
"""
import argparse
import os
import statistics
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import alternate, matmul_run, mfu, our_train_step, table  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax.models import vit  # noqa: E402


def ours(variant, image_size, batch, num_classes):
  config = vit_config.get_config(variant)
  config.update_from_flattened_dict({'batch_size': batch, 'data.image_size': image_size,
                                     'model.num_classes': num_classes, 'optim.warmup_steps': 1})
  rng = np.random.default_rng(0)
  data = {'image': rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32),
          'label': rng.integers(0, num_classes, batch).astype(np.int32)}
  return our_train_step(config, data)[0]


def pytorch(variant, image_size, batch, num_classes):
  import torch
  import transformers
  size = vit.decode_variant(variant)
  cfg = transformers.ViTConfig(hidden_size=size['hidden_size'], num_hidden_layers=size[
      'num_layers'], num_attention_heads=size['num_heads'], intermediate_size=size['mlp_dim'],
      image_size=image_size, patch_size=size['patch_size'], num_labels=num_classes,
      layer_norm_eps=1e-6, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.ViTForImageClassification(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  images = torch.randn(batch, 3, image_size, image_size)
  labels = torch.randint(0, num_classes, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(pixel_values=images).logits, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--variant', default='Ti/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  shape = (args.variant, args.image_size, args.batch, args.num_classes)
  ours_step = ours(*shape)
  matmul, matmul_flops = matmul_run()
  times = alternate({'ours': ours_step, 'pytorch': pytorch(*shape), 'matmul': matmul},
                    args.rounds)
  print(f'ViT-{args.variant}, {args.image_size}x{args.image_size}, batch {args.batch}, '
        f'float32, {jax.devices()[0].platform} x{jax.device_count()}, {args.rounds} '
        'alternating rounds')
  table(f'ViT-{args.variant} training step (AdamW, forward + backward + update)', 'images/s',
        [('vit_jax (JAX/Flax)', times['ours']),
         ('Hugging Face ViTForImageClassification (PyTorch)', times['pytorch'])], args.batch)
  mfu(ours_step.flops(), statistics.median(times['ours']), times['matmul'], matmul_flops)


if __name__ == '__main__':
  main()
