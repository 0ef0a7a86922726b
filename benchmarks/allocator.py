"""Our train step under glibc's malloc, glibc with transparent huge pages, glibc keeping freed
memory, and jemalloc, in alternating processes.

  .venv/bin/python benchmarks/allocator.py                   # ViT-Ti/16, batch 16
  .venv/bin/python benchmarks/allocator.py --variant=S/16 --batch=8 --rounds=3
  .venv/bin/python benchmarks/allocator.py --family=transformer   # or detr (speed.py's pairs)

XLA:CPU allocates a step's temporaries as one block (1 GiB for ViT-Ti/16 at batch 16). glibc
serves a block that size with a fresh mmap and unmaps it when freed, so every step faults in
its pages again and the kernel zeroes them. glibc's `glibc.malloc.hugetlb=1` tunable (glibc
2.35+) asks the kernel for 2 MiB transparent huge pages on those blocks: 512 times fewer
faults, the zeroing remains. glibc's tunables can also keep the block (GLIBC_KEEP below), and
jemalloc told to keep freed memory (MALLOC_CONF below) hands the same pages back. All are
chosen when a process starts (GLIBC_TUNABLES, LD_PRELOAD), so each setting runs in processes
of its own, alternating. Each process times back-to-back steps after warm-up and reports the
median step, the system CPU time and the page faults per step and its peak resident memory
(getrusage). Huge pages need the kernel's transparent huge pages on ('always' or 'madvise' in
/sys/kernel/mm/transparent_hugepage/enabled); jemalloc needs Debian's libjemalloc2 (apt-get
install libjemalloc2). A setting whose prerequisite is missing is left out.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'
# oversize_threshold:0: large blocks stay in the ordinary arenas (by default jemalloc purges
# them at once); the decays keep freed pages a minute before returning them to the kernel.
KEEP = 'oversize_threshold:0,dirty_decay_ms:60000,muzzy_decay_ms:60000'
THP = '/sys/kernel/mm/transparent_hugepage/enabled'
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
# One arena: glibc's other arenas mmap a block this size whatever mmap_max says; mmap_max=0
# serves it from the main heap, and the trim threshold (1 TiB) keeps it there once freed.
GLIBC_KEEP = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
              'glibc.malloc.trim_threshold=1099511627776')
SETTINGS = {'glibc malloc': {},
            'glibc malloc, transparent huge pages': {'GLIBC_TUNABLES': HUGE_PAGES},
            'glibc malloc, one arena, freed memory kept': {'GLIBC_TUNABLES': GLIBC_KEEP},
            'jemalloc, freed memory kept': {'LD_PRELOAD': JEMALLOC, 'MALLOC_CONF': KEEP}}


def missing(env):
  """What this machine lacks for a setting ('' if nothing)."""
  if 'LD_PRELOAD' in env and not os.path.exists(JEMALLOC):
    return f'no {JEMALLOC}'
  if HUGE_PAGES in env.get('GLIBC_TUNABLES', '') and (not os.path.exists(THP)
                                                       or '[never]' in open(THP).read()):
    return f'transparent huge pages off ({THP})'
  return ''


def our_step(family, variant, batch):
  """Our train step as the family's throughput benchmark builds it (ViT: variant and batch;
  the Transformer and DETR: their default pairs)."""
  sys.path.insert(0, HERE)
  if family == 'vit':
    import vit_throughput
    return vit_throughput.ours(variant, 224, batch, 1000)
  import numpy as np
  import timing
  if family == 'transformer':
    import transformer_throughput
    config, _, data = transformer_throughput.paired_setup(64, 48)
  else:
    import detr_throughput
    config = detr_throughput.paired_config('detr', 32, 128)
    data = detr_throughput.synthetic_batch(np.random.default_rng(0), 32, 128,
                                           config.data.max_boxes, 3)
  return timing.our_train_step(config, data)[0]


def measure(family, variant, batch, steps):
  """In this process: {'ms': median step, 'sys_ms', 'faults': per step, 'peak_mib'}."""
  step = our_step(family, variant, batch)
  for _ in range(3):
    step()
  times = []
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {'ms': 1e3 * statistics.median(times),
          'sys_ms': 1e3 * (after.ru_stime - before.ru_stime) / steps,
          'faults': (after.ru_minflt - before.ru_minflt) / steps,
          'peak_mib': after.ru_maxrss / 1024}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--family', default='vit', choices=('vit', 'transformer', 'detr'))
  parser.add_argument('--variant', default='Ti/16')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--steps', type=int, default=6, help='timed steps per process')
  parser.add_argument('--rounds', type=int, default=3, help='processes per setting')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.family, args.variant, args.batch, args.steps)))
    return
  settings = {k: v for k, v in SETTINGS.items() if not missing(v)}
  results = {k: [] for k in settings}
  for _ in range(args.rounds):
    for name, env in settings.items():
      out = subprocess.run([sys.executable, __file__, '--child', *sys.argv[1:]], check=True,
                           env=dict(os.environ, XLA_FLAGS='', **env), capture_output=True,
                           text=True)
      results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
  what = {'vit': f'ViT-{args.variant}, 224x224, batch {args.batch}',
          'transformer': "transformer_throughput.py's Transformer, batch 64, lengths 48",
          'detr': "detr_throughput.py's DETR, batch 32, 128x128"}[args.family]
  print(f'{what}, float32, our train step; {args.rounds} processes per setting, alternating, '
        f'{args.steps} timed steps each\n')
  print('| allocator | step ms (median of processes, min-max) | system CPU ms per step | '
        'page faults per step | peak resident MiB | speed ratio |')
  print('|---|---|---|---|---|---|')
  base = statistics.median(r['ms'] for r in results['glibc malloc'])
  for name, runs in results.items():
    ms = [r['ms'] for r in runs]
    print(f'| {name} | {statistics.median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f}) | '
          f'{statistics.median(r["sys_ms"] for r in runs):.0f} | '
          f'{statistics.median(r["faults"] for r in runs):,.0f} | '
          f'{statistics.median(r["peak_mib"] for r in runs):,.0f} | '
          f'{base / statistics.median(ms):.2f}x |')
  for name, env in SETTINGS.items():
    if missing(env):
      print(f'\n({name}: not measured, {missing(env)})')


if __name__ == '__main__':
  main()
