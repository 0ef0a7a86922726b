"""Mixed precision, rematerialisation, scan over layers and FSDP: speed, compile time and
per-device memory, side by side.

  .venv/bin/python benchmarks/precision.py                    # ViT-Ti/16, 224x224, batch 8
  .venv/bin/python benchmarks/precision.py --variant=S/16 --batch=4
  .venv/bin/python benchmarks/precision.py --memory_only      # FSDP memory table only (fast)

Speed: the same ViT train step (AdamW, forward + backward + update) in float32, bfloat16
compute (float32 parameters, float32 matmul accumulation), each with remat, and float32 with
the encoder as one nn.scan, alternated after compilation; the ratio is to float32. Compile time
(lowering + XLA) and memory (XLA's memory analysis of the compiled step, bytes per device) of
each, including FSDP over 8 simulated devices (compiled, not run).
"""
import argparse
import os
import sys
import time

# 8 simulated CPU devices for the FSDP table; the speed runs use a 1-device mesh.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import alternate, table  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax import sharding  # noqa: E402
from vit_jax import train  # noqa: E402


def setup(args, devices, **overrides):
  """(step function, (compiled step, compile seconds)) for one setting of the ViT train step."""
  config = vit_config.get_config(args.variant)
  config.update_from_flattened_dict({'batch_size': args.batch, 'data.image_size': args.image_size,
                                     'model.num_classes': 1000, 'optim.warmup_steps': 1,
                                     **overrides})
  trainer = train.Trainer(config, devices=devices)
  rng = np.random.default_rng(0)
  batch = sharding.global_batch({
      'image': rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(
          np.float32),
      'label': rng.integers(0, 1000, args.batch).astype(np.int32)}, trainer.mesh)
  start = time.perf_counter()
  compiled = trainer.lower_train_step(trainer.abstract_state, batch, trainer.rng).compile()
  seconds = time.perf_counter() - start
  box = {}

  def step():
    if 'state' not in box:
      box['state'] = trainer.initial_state()
    box['state'], metrics, _ = trainer.train_step(box['state'], batch, trainer.rng)
    jax.block_until_ready(metrics)

  return step, (compiled, seconds)


def mib(n):
  return f'{n / 2**20:.0f}'


def memory_row(label, compiled, seconds):
  m = compiled.memory_analysis()
  print(f'| {label} | {seconds:.1f} | {mib(m.argument_size_in_bytes)} | '
        f'{mib(m.temp_size_in_bytes)} | {mib(m.argument_size_in_bytes + m.temp_size_in_bytes)} |')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--variant', default='Ti/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--memory_only', action='store_true')
  args = parser.parse_args()
  one = jax.devices()[:1]
  settings = {'float32': {}, 'bfloat16': {'dtype': 'bfloat16'},
              'float32 + remat': {'remat': True},
              'bfloat16 + remat': {'dtype': 'bfloat16', 'remat': True},
              'float32 + scan': {'scan_layers': True}}
  built = {name: setup(args, one, **o) for name, o in settings.items()}

  if not args.memory_only:
    times = alternate({name: step for name, (step, _) in built.items()}, args.rounds)
    table(f'ViT-{args.variant} train step, {args.image_size}x{args.image_size}, batch '
          f'{args.batch}, 1 CPU device, {args.rounds} alternating rounds (ratio: float32 time '
          '/ this time)', 'images/s', [(n, times[n]) for n in list(settings)[1:]] +
          [('float32', times['float32'])], args.batch)

  print(f'\nCompile time (s) and per-device memory of the compiled step (XLA memory analysis, '
        f'MiB), ViT-{args.variant}, batch {args.batch}\n')
  print('| setting | compile s | arguments (state + batch) | temporaries | total |')
  print('|---|---|---|---|---|')
  for name, (_, (compiled, seconds)) in built.items():
    memory_row(f'{name}, 1 device', compiled, seconds)
  if jax.device_count() >= 8:
    batch8 = dict(vars(args), batch=max(args.batch, 8))
    batch8 = argparse.Namespace(**batch8)
    for fsdp in (1, 8):
      _, built8 = setup(batch8, jax.devices()[:8], **{'mesh.fsdp': fsdp,
                                                       'mesh.fsdp_min_size': 2**14})
      label = 'replicated' if fsdp == 1 else 'FSDP over 8'
      memory_row(f'float32, 8 devices, {label} (batch {batch8.batch})', *built8)


if __name__ == '__main__':
  main()
