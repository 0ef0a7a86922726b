"""Seconds JAX spends tracing and lowering each family's tiny train step, and initialising it,
under CPython's default garbage collection and under the settings of
vit_jax.compiling.collect_garbage_less_often, in alternating fresh processes.

  PYTHONPATH=.:tests .venv/bin/python benchmarks/gc_tracing.py --rounds=5

Tracing a model allocates millions of short-lived Python objects; with the default thresholds
(700, 10, 10) the collector runs every 700 allocations and, now and then, scans every object
the imported modules hold. Printed per setting: median seconds (min-max) over processes, and
the speed ratio to the default.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FAMILIES = ('vit', 'transformer', 'detr', 'rnn')
SETTINGS = {
    'default (700, 10, 10)': [],
    'collect_garbage_less_often': ['--less_often'],
}


def child(args):
  """{family: {'init': s, 'trace': s, 'lower': s}} in this process."""
  os.environ.setdefault('XLA_FLAGS', '--xla_cpu_use_fusion_emitters=false')
  os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  import jax
  import helpers  # tests/helpers.py: tiny configs and batches.
  from vit_jax import compiling
  from vit_jax import sharding
  from vit_jax import train
  if args.less_often:
    compiling.collect_garbage_less_often()
  out = {}
  for family in FAMILIES:
    start = time.perf_counter()
    config = helpers.tiny(family)
    trainer = train.Trainer(config, devices=jax.devices()[:1])
    state = trainer.initial_state()
    batch = sharding.global_batch(helpers.training_batch(trainer.task, config.batch_size),
                                  trainer.mesh)
    traced_at = time.perf_counter()
    traced = trainer._train_step.trace(state, batch, trainer.rng, trainer.frozen)
    lowered_at = time.perf_counter()
    traced.lower()
    out[family] = {'init': traced_at - start, 'trace': lowered_at - traced_at,
                   'lower': time.perf_counter() - lowered_at}
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=3, help='processes per setting')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--less_often', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args)))
    return
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from timing import cpu_name
  runs = {name: [] for name in SETTINGS}
  for _ in range(args.rounds):
    for name, flags in SETTINGS.items():
      out = subprocess.run([sys.executable, __file__, '--child', *flags], check=True,
                           capture_output=True, text=True)
      runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(f'{cpu_name()}; tiny configs (tests/helpers.py), one device, the tests\' XLA '
        f'settings; {args.rounds} processes per setting, alternating; seconds, median '
        '(min-max)\n')
  names = list(SETTINGS)
  print('| family | part | ' + ' | '.join(names) + ' | speed ratio |')
  print('|---|---|' + '---|' * (len(names) + 1))
  for family in (*FAMILIES, 'all'):
    for part in ('init', 'trace', 'lower', 'trace + lower'):
      cells, medians = [], []
      for name in names:
        values = [sum(run[f][p] for f in (FAMILIES if family == 'all' else (family,))
                      for p in (('trace', 'lower') if part == 'trace + lower' else (part,)))
                  for run in runs[name]]
        medians.append(statistics.median(values))
        cells.append(f'{medians[-1]:.2f} ({min(values):.2f}-{max(values):.2f})')
      print(f'| {family} | {part} | ' + ' | '.join(cells) +
            f' | {medians[0] / medians[-1]:.2f}x |')


if __name__ == '__main__':
  main()
