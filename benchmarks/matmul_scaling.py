"""The ViT's float32 matmuls in XLA and in PyTorch, on one core and on all, side by side.

  XLA_FLAGS= .venv/bin/python benchmarks/matmul_scaling.py               # ViT-Ti/16, batch 8
  XLA_FLAGS= .venv/bin/python benchmarks/matmul_scaling.py --width=384   # ViT-S/16

op_profile.py --peer shows our ViT step losing to PyTorch's mostly in its matmuls. This times
the train step's matmul shapes alone (tokens x width @ width x out, forward), as a jitted
`x @ w` and as `torch.mm`, alternating, in one process per core count (pinned with
sched_setaffinity before either library starts its threads), and a 2048² matmul beside them:
if XLA's kernels do not use the second core as PyTorch's do, the gap is there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def shapes(tokens, width, mlp_ratio=4):
  """(name, M, K, N) of the ViT block's matmuls."""
  return [('query/key/value', tokens, width, 3 * width), ('attention out', tokens, width, width),
          ('MLP up', tokens, width, mlp_ratio * width), ('MLP down', tokens, mlp_ratio * width,
                                                        width), ('2048² square', 2048, 2048, 2048)]


def measure(rows, rounds):
  """In this process: {'name|library': median GFLOP/s}."""
  import jax
  import numpy as np
  import torch
  rng = np.random.default_rng(0)
  runs = {}
  for name, m, k, n in rows:
    x, w = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    jx, jw, f = jax.device_put(x), jax.device_put(w), jax.jit(lambda a, b: a @ b)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    runs[f'{name}|XLA'] = (lambda jx=jx, jw=jw, f=f: f(jx, jw).block_until_ready(), m * k * n)
    runs[f'{name}|PyTorch'] = (lambda tx=tx, tw=tw: torch.mm(tx, tw), m * k * n)
  times = {key: [] for key in runs}
  for _ in range(2):
    for fn, _ in runs.values():
      fn()
  for _ in range(rounds):
    for key, (fn, _) in runs.items():
      start = time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - start)
  return {key: 2 * mkn / statistics.median(times[key]) / 1e9 for key, (_, mkn) in runs.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--tokens', type=int, default=8 * 197)  # Batch 8 at 224x224, /16.
  parser.add_argument('--width', type=int, default=192)
  parser.add_argument('--rounds', type=int, default=20)
  parser.add_argument('--cores', default='')  # Internal: run pinned to this many cores.
  args = parser.parse_args()
  rows = shapes(args.tokens, args.width)
  if args.cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(args.cores)])
    print(json.dumps(measure(rows, args.rounds)))
    return
  counts = sorted({1, len(os.sched_getaffinity(0))})
  results = {}
  for cores in counts:
    out = subprocess.run([sys.executable, __file__, f'--tokens={args.tokens}',
                          f'--width={args.width}', f'--rounds={args.rounds}',
                          f'--cores={cores}'], check=True, capture_output=True, text=True)
    results[cores] = json.loads(out.stdout.strip().splitlines()[-1])
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from timing import cpu_name
  print(f'\n{cpu_name()}; float32 matmuls of a ViT block ({args.tokens} tokens, width '
        f'{args.width}), {args.rounds} alternating rounds; GFLOP/s of the median\n')
  head = ' | '.join(f'{lib}, {c} core{"s" * (c > 1)}' for c in counts
                    for lib in ('XLA', 'PyTorch'))
  print(f'| matmul (M x K @ K x N) | {head} | XLA / PyTorch on {counts[-1]} |')
  print('|---|' + '---|' * (2 * len(counts) + 1))
  for name, m, k, n in rows:
    cells = ' | '.join(f'{results[c][f"{name}|{lib}"]:.0f}' for c in counts
                       for lib in ('XLA', 'PyTorch'))
    ratio = results[counts[-1]][f'{name}|XLA'] / results[counts[-1]][f'{name}|PyTorch']
    print(f'| {name} ({m}x{k} @ {k}x{n}) | {cells} | {ratio:.2f}x |')


if __name__ == '__main__':
  main()
