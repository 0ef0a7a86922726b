"""The ViT's float32 matmuls in XLA and in PyTorch, on one core and on all, side by side.

  XLA_FLAGS= .venv/bin/python benchmarks/matmul_scaling.py               # ViT-Ti/16, batch 8
  XLA_FLAGS= .venv/bin/python benchmarks/matmul_scaling.py --width=384   # ViT-S/16

op_profile.py --peer shows our ViT step losing to PyTorch's mostly in its matmuls. This times
the train step's matmul shapes alone, forward: the projections (tokens x width @ width x out)
as a jitted `x @ w` and as `torch.mm`, the attention's per-head products (batch x heads of
length x head_dim @ head_dim x length, and back) as a jitted batched `dot_general` in the
[batch, M, K] @ [batch, K, N] layout XLA:CPU's fast kernels take and as `torch.bmm`,
alternating, in one process per core count (pinned with sched_setaffinity before either
library starts its threads), and a 2048² matmul beside them: if XLA's kernels do not use the
second core as PyTorch's do, or are slower at some shape, the gap is there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def shapes(batch, length, width, head_dim=64, mlp_ratio=4):
  """(name, batch of products or 0 for one 2-D matmul, M, K, N) of the ViT block's matmuls."""
  tokens, heads = batch * length, batch * width // head_dim
  return [('query/key/value', 0, tokens, width, 3 * width),
          ('attention scores, per head', heads, length, head_dim, length),
          ('attention-weighted values, per head', heads, length, length, head_dim),
          ('attention out', 0, tokens, width, width),
          ('MLP up', 0, tokens, width, mlp_ratio * width),
          ('MLP down', 0, tokens, mlp_ratio * width, width),
          ('2048² square', 0, 2048, 2048, 2048)]


def measure(rows, rounds):
  """In this process: {'name|library': median GFLOP/s}."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  rng = np.random.default_rng(0)
  runs = {}
  batched = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,)))))
  for name, b, m, k, n in rows:
    lead = (b,) if b else ()
    x = rng.normal(size=lead + (m, k)).astype(np.float32)
    w = rng.normal(size=lead + (k, n)).astype(np.float32)
    jx, jw, f = jax.device_put(x), jax.device_put(w), batched if b else jax.jit(jnp.matmul)
    tx, tw, g = torch.from_numpy(x), torch.from_numpy(w), torch.bmm if b else torch.mm
    flops = max(b, 1) * m * k * n
    runs[f'{name}|XLA'] = (lambda jx=jx, jw=jw, f=f: f(jx, jw).block_until_ready(), flops)
    runs[f'{name}|PyTorch'] = (lambda tx=tx, tw=tw, g=g: g(tx, tw), flops)
  times = {key: [] for key in runs}
  for _ in range(2):
    for fn, _ in runs.values():
      fn()
  for _ in range(rounds):
    for key, (fn, _) in runs.items():
      start = time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - start)
  return {key: 2 * flops / statistics.median(times[key]) / 1e9 for key, (_, flops) in runs.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--length', type=int, default=197)  # 224x224 in 16x16 patches + class.
  parser.add_argument('--width', type=int, default=192)
  parser.add_argument('--rounds', type=int, default=20)
  parser.add_argument('--cores', default='')  # Internal: run pinned to this many cores.
  args = parser.parse_args()
  rows = shapes(args.batch, args.length, args.width)
  if args.cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(args.cores)])
    print(json.dumps(measure(rows, args.rounds)))
    return
  counts = sorted({1, len(os.sched_getaffinity(0))})
  results = {}
  for cores in counts:
    out = subprocess.run([sys.executable, __file__, f'--batch={args.batch}',
                          f'--length={args.length}', f'--width={args.width}',
                          f'--rounds={args.rounds}', f'--cores={cores}'],
                         check=True, capture_output=True, text=True)
    results[cores] = json.loads(out.stdout.strip().splitlines()[-1])
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from timing import cpu_name
  print(f'\n{cpu_name()}; float32 matmuls of a ViT block (batch {args.batch}, length '
        f'{args.length}, width {args.width}, heads of 64), {args.rounds} alternating rounds; '
        'GFLOP/s of the median\n')
  head = ' | '.join(f'{lib}, {c} core{"s" * (c > 1)}' for c in counts
                    for lib in ('XLA', 'PyTorch'))
  print(f'| matmul ([batch x] M x K @ K x N) | {head} | XLA / PyTorch on {counts[-1]} |')
  print('|---|' + '---|' * (2 * len(counts) + 1))
  for name, b, m, k, n in rows:
    cells = ' | '.join(f'{results[c][f"{name}|{lib}"]:.0f}' for c in counts
                       for lib in ('XLA', 'PyTorch'))
    ratio = results[counts[-1]][f'{name}|XLA'] / results[counts[-1]][f'{name}|PyTorch']
    print(f'| {name} ({f"{b} x " if b else ""}{m}x{k} @ {k}x{n}) | {cells} | {ratio:.2f}x |')


if __name__ == '__main__':
  main()
