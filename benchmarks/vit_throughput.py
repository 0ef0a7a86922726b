"""Train-step throughput of our ViT vs Hugging Face's PyTorch ViT, side by side in one run.

  .venv/bin/python benchmarks/vit_throughput.py                  # ViT-Ti/16, 224x224, batch 16
  .venv/bin/python benchmarks/vit_throughput.py --variant=S/16 --batch=8

Both sides: same size, batch, image size, float32, AdamW, forward + backward + update.
Timed alternately (ours, theirs, ours, ...) after warm-up (and after compilation for JAX);
prints medians with min-max, the ratio ours/PyTorch, and our MFU = XLA's FLOPs per step /
median step time / the fp32 matmul peak measured in the same run.
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import timed  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax import sharding  # noqa: E402
from vit_jax import train  # noqa: E402
from vit_jax.models import vit  # noqa: E402


def matmul_peak(n=2048, repeats=10):
  """FLOP/s of a large fp32 jnp.dot on this machine, now."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(times)


def ours(variant, image_size, batch, num_classes):
  config = vit_config.get_config(variant)
  config.update_from_flattened_dict({'batch_size': batch, 'data.image_size': image_size,
                                     'model.num_classes': num_classes, 'optim.warmup_steps': 1})
  trainer = train.Trainer(config)
  state = trainer.initial_state()
  rng = np.random.default_rng(0)
  batch_data = sharding.global_batch({
      'image': rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32),
      'label': rng.integers(0, num_classes, batch).astype(np.int32)}, trainer.mesh)
  compiled = trainer.lower_train_step(state, batch_data, trainer.rng).compile()
  flops = compiled.cost_analysis()['flops']
  box = {'state': state}

  def step():
    box['state'], metrics, _ = trainer.train_step(box['state'], batch_data, trainer.rng)
    jax.block_until_ready(metrics)

  return step, flops


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

  ours_step, flops = ours(args.variant, args.image_size, args.batch, args.num_classes)
  torch_step = pytorch(args.variant, args.image_size, args.batch, args.num_classes)
  for fn in (ours_step, torch_step, ours_step, torch_step):  # Warm-up.
    fn()
  times = {'ours': [], 'pytorch': []}
  peaks = []
  for _ in range(args.rounds):
    times['ours'].append(timed(ours_step))
    times['pytorch'].append(timed(torch_step))
    peaks.append(matmul_peak(repeats=3))
  med = {k: statistics.median(v) for k, v in times.items()}
  peak = statistics.median(peaks)
  print(f'\nViT-{args.variant}, {args.image_size}x{args.image_size}, batch {args.batch}, float32, '
        f'AdamW train step, {jax.devices()[0].platform} x{jax.device_count()}, '
        f'{args.rounds} alternating rounds\n')
  print('| implementation | step time ms (median, min-max) | images/s | ours / PyTorch |')
  print('|---|---|---|---|')
  for name, label in (('ours', 'vit_jax (JAX/Flax)'), ('pytorch', 'Hugging Face ViT (PyTorch)')):
    t = times[name]
    print(f'| {label} | {1e3 * med[name]:.0f} ({1e3 * min(t):.0f}-{1e3 * max(t):.0f}) | '
          f'{args.batch / med[name]:.1f} | '
          f'{med["pytorch"] / med[name]:.2f}x |' if name == 'ours' else
          f'| {label} | {1e3 * med[name]:.0f} ({1e3 * min(t):.0f}-{1e3 * max(t):.0f}) | '
          f'{args.batch / med[name]:.1f} | 1.00x |')
  print(f'\nOur MFU: {flops / 1e9:.1f} GFLOP/step (XLA cost analysis) / {1e3 * med["ours"]:.0f} ms'
        f' / {peak / 1e9:.0f} GFLOP/s fp32 matmul peak (measured in this run) = '
        f'{100 * flops / med["ours"] / peak:.1f}%')


if __name__ == '__main__':
  main()
