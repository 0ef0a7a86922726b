"""XLA's CPU compile time of each family's tiny loss-and-gradient program under the compiler
options that might compile faster, side by side in one run, with the tests' settings
(tests/conftest.py: expensive optimisations off, loop emitters) as the baseline.

  PYTHONPATH=.:tests .venv/bin/python benchmarks/compile_flags.py --rounds=3

Each compile starts from a fresh lowering (a lowered program compiles once per process);
options alternate in order round by round. Printed: median seconds (min-max) and the ratio
to the baseline.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('XLA_FLAGS', '--xla_cpu_use_fusion_emitters=false')
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name  # noqa: E402
import helpers  # noqa: E402  (tests/helpers.py: tiny configs and batches)
from configs import resnet as resnet_config  # noqa: E402
from vit_jax import compiling  # noqa: E402
from vit_jax import tasks  # noqa: E402

OPTIONS = {
    'tests\' settings': {},
    'codegen split 1': {'xla_cpu_parallel_codegen_split_count': 1},
    'codegen split 4': {'xla_cpu_parallel_codegen_split_count': 4},
    'fast math': {'xla_cpu_enable_fast_math': True},
    'XNNPACK off': {'xla_cpu_use_xnnpack': False},
    'fusion emitters': {'xla_cpu_use_fusion_emitters': True},
}


def lowerer(config):
  """A function giving a fresh lowering of the task's loss-and-gradient on 4 examples."""
  task = tasks.get_task(config.task)(config, None)
  batch = helpers.training_batch(task, 4)
  params = compiling.run_once(task.init, jax.random.key(0), batch)
  loss = lambda p, b, r: task.loss_fn(p, b, r)[0]
  return lambda: jax.jit(jax.value_and_grad(loss)).lower(params, batch, jax.random.key(1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  print(f'{cpu_name()}; compile seconds, median (min-max) of {args.rounds} rounds\n')
  print('| family | ' + ' | '.join(OPTIONS) + ' |')
  print('|---|' + '---|' * len(OPTIONS))
  configs = {'vit': helpers.tiny('vit'), 'transformer': helpers.tiny('transformer'),
             'detr': helpers.tiny('detr'), 'resnet': resnet_config.get_config('tiny')}
  for family, config in configs.items():
    lower = lowerer(config)
    seconds = {name: [] for name in OPTIONS}
    for round_ in range(args.rounds):
      names = list(OPTIONS)[::1 if round_ % 2 == 0 else -1]
      for name in names:
        lowered = lower()
        start = time.perf_counter()
        lowered.compile(compiler_options=OPTIONS[name])
        seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["tests' settings"])
    cells = [f'{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f}) '
             f'{statistics.median(s) / base:.2f}x' for s in seconds.values()]
    print(f'| {family} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main()
