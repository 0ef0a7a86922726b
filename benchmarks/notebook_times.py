"""Each notebook's wall time on the quick setting (as tests/test_notebooks.py runs it: one
device, the tests' XLA flags, a fresh compilation cache per run) with XLA's expensive
optimisations off, on, and LLVM's at level 1 without its expensive passes, alternating, per
cell and in total.

  .venv/bin/python benchmarks/notebook_times.py                  # every notebook, 1 round
  .venv/bin/python benchmarks/notebook_times.py --notebooks=detr --rounds=3

The tests keep the setting that is faster here per notebook: compiling its programs against
running its few hundred tiny steps.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import nbclient
import nbformat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = '--xla_force_host_platform_device_count=1 --xla_cpu_use_fusion_emitters=false'
SETTINGS = {'off': {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1', 'XLA_FLAGS': FLAGS},
            'on': {'JAX_DISABLE_MOST_OPTIMIZATIONS': '0', 'XLA_FLAGS': FLAGS},
            'level 1': {'JAX_DISABLE_MOST_OPTIMIZATIONS': '0', 'XLA_FLAGS': (
                FLAGS + ' --xla_backend_optimization_level=1'
                ' --xla_llvm_disable_expensive_passes=true')}}


def run(name, env):
  """Seconds for the kernel's start and for each code cell, in a fresh kernel."""
  os.environ.update(env, VIT_JAX_QUICK='1', VIT_JAX_WORKDIR=tempfile.mkdtemp(),
                    JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  notebook = nbformat.read(os.path.join(ROOT, 'notebooks', f'{name}.ipynb'), as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=1200, kernel_name='python3', resources={
      'metadata': {'path': os.path.join(ROOT, 'notebooks')}})
  start = time.perf_counter()
  times = {}
  with client.setup_kernel():
    times['kernel start'] = time.perf_counter() - start
    for index, cell in enumerate(notebook.cells):
      if cell.cell_type == 'code':
        begin = time.perf_counter()
        client.execute_cell(cell, index)
        times[f'cell {index}: {cell.source.splitlines()[0][:50]}'] = time.perf_counter() - begin
  times['total'] = time.perf_counter() - start
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--notebooks', default='detr,transformer,vit')
  parser.add_argument('--rounds', type=int, default=1)
  args = parser.parse_args()
  print(f'{cpu_name()}; median of {args.rounds} round(s), the settings alternating\n')
  print('| notebook | part | s, optimisations off | s, on | s, level 1 | on / off | '
        'level 1 / off |')
  print('|---|---|---|---|---|---|---|')
  for name in args.notebooks.split(','):
    runs = {setting: [] for setting in SETTINGS}
    for round_ in range(args.rounds):
      order = list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]
      for setting in order:
        runs[setting].append(run(name, SETTINGS[setting]))
    for part in runs['off'][0]:
      off, on, one = (statistics.median(r[part] for r in runs[s]) for s in SETTINGS)
      print(f'| {name} | {part} | {off:.1f} | {on:.1f} | {one:.1f} | {on / off:.2f} | '
            f'{one / off:.2f} |', flush=True)


if __name__ == '__main__':
  main()
