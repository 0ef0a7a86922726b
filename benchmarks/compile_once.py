"""Compile time of initialisation with XLA's full optimisations and with compiling.run_once's
settings, side by side in one run, and the run time of each program.

  PYTHONPATH=. .venv/bin/python benchmarks/compile_once.py
"""
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name  # noqa: E402
from configs import detr as detr_config  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax import compiling  # noqa: E402
from vit_jax import tasks  # noqa: E402

MODELS = (('ViT (configs/vit.py)', vit_config, ''), ('DETR (configs/detr.py)', detr_config, ''),
          ('DETR panoptic (configs/detr.py:tiny,panoptic)', detr_config, 'tiny,panoptic'))


def seconds(fn):
  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t, out


def main():
  print(f'{cpu_name()}; each program compiled once (a second compile of the same program '
        'is served from memory)\n')
  jax.jit(lambda x: x + 1)(1.0)  # XLA's one-time start-up, outside the table.
  print('| initialisation | compile s, full | compile s, run_once | run ms, full | '
        'run ms, run_once |')
  print('|---|---|---|---|---|')
  for name, config_lib, arg in MODELS:
    config = config_lib.get_config(arg)
    task = tasks.get_task(config.task)(config, None)
    args = (jax.random.key(0), task.dummy_batch(8))
    lowered = jax.jit(task.init).lower(*args)
    row = {}
    for setting, options in (('full', {}), ('once', compiling.ONCE)):
      compile_s, program = seconds(lambda: lowered.compile(compiler_options=options))
      program(*args)  # Warm.
      row[setting] = (compile_s, seconds(lambda: program(*args))[0])
    print(f'| {name} | {row["full"][0]:.1f} | {row["once"][0]:.1f} | {1e3 * row["full"][1]:.0f} '
          f'| {1e3 * row["once"][1]:.0f} |')


if __name__ == '__main__':
  main()
