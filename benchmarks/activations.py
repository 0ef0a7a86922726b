"""Exact GELU written with erf (the model's 'gelu', whose derivative is its own custom JVP), the
same formula differentiated as written, and jax.nn.gelu's erfc form, side by side: alone
(forward + backward of one ViT-Ti/16 MLP activation, with PyTorch's as a yardstick) and inside
the ViT train step, with the step's temporary memory (XLA's memory analysis).

  XLA_FLAGS= .venv/bin/python benchmarks/activations.py                  # ViT-Ti/16, batch 16
  XLA_FLAGS= .venv/bin/python benchmarks/activations.py --variant=S/16 --batch=8

One process, one device; alternating rounds, medians with min-max.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_throughput  # noqa: E402
from timing import alternate, cpu_name, table  # noqa: E402

from vit_jax.layers import transformer  # noqa: E402
from vit_jax.models import vit  # noqa: E402

FORMS = {'erf (the model\'s gelu)': transformer.gelu,
         'erf, differentiated as written': lambda x: 0.5 * x * (1 + jax.lax.erf(x * 0.5**0.5)),
         'erfc (jax.nn.gelu, approximate=False)': lambda x: jax.nn.gelu(x, approximate=False)}


def alone(fn, x):
  """One forward + backward of fn on x, jitted."""
  step = jax.jit(lambda x: jax.vjp(fn, x)[1](jnp.ones_like(x))[0])
  return lambda: step(x).block_until_ready()


def torch_alone(x):
  import torch
  t = torch.tensor(np.asarray(x), requires_grad=True)
  return lambda: torch.autograd.grad(torch.nn.functional.gelu(t).sum(), t)


def in_step(variant, batch, form):
  """Our ViT train step with 'gelu' computed by `form` (traced and compiled here)."""
  saved = transformer.ACTIVATIONS['gelu']
  transformer.ACTIVATIONS['gelu'] = FORMS[form]
  try:
    step = vit_throughput.ours(variant, 224, batch, 1000)
    step()  # Traces with this form, before the next one replaces it.
    step.temporaries = step.temporaries()  # Compiled while this form is in place.
  finally:
    transformer.ACTIVATIONS['gelu'] = saved
  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--variant', default='Ti/16')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--rounds', type=int, default=7)
  args = parser.parse_args()
  width = vit.decode_variant(args.variant)['mlp_dim']
  x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch * 197, width)), jnp.float32)
  times = alternate({**{f: alone(fn, x) for f, fn in FORMS.items()},
                     'PyTorch gelu': torch_alone(x)}, args.rounds * 3)
  print(f'{cpu_name()}; float32, {jax.device_count()} device')
  table(f'GELU forward + backward alone, [{x.shape[0]}, {width}]', '',
        [(f, times[f]) for f in (*FORMS, 'PyTorch gelu')], 0)
  steps = {f: in_step(args.variant, args.batch, f) for f in FORMS}
  times = alternate(steps, args.rounds)
  table(f'ViT-{args.variant} train step, batch {args.batch}, 224x224', 'images/s',
        [(f, times[f]) for f in FORMS], args.batch)
  print('\n| GELU | train step\'s temporaries, MiB |\n|---|---|')
  for f, step in steps.items():
    print(f'| {f} | {step.temporaries / 2**20:.0f} |')


if __name__ == '__main__':
  main()
