"""Why attention, and then the Transformer, won: RNN encoder–decoders without attention, with
Bahdanau's and with Luong's, and the Transformer, trained side by side on the embedded
translation tasks.

  .venv/bin/python benchmarks/attention_history.py                       # both tasks, 1 seed
  .venv/bin/python benchmarks/attention_history.py --tasks=numbers --seeds=0,1,2

Every model trains through main.py's trainer with its own config (configs/rnn.py:none,
configs/rnn.py (Bahdanau), configs/rnn.py:luong, configs/transformer.py; each family keeps its
own optimizer and schedule) and the same data, batch (64 pairs) and number of steps per task
(--steps). Printed: a Markdown table (parameters, wall time of the training run including its
data check, compilation and final evaluation, exact match, sacreBLEU, chrF on the whole test
split; mean ± std over seeds), and exact_match_by_length.png: greedy exact match against the
source length in tokens (Bahdanau et al. 2015, Fig. 2's question: does a fixed-length summary
of the source fail on long sentences?). Results go to --out/results.jsonl as each run ends; a
run already there is not repeated, so an interrupted comparison resumes.
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
from configs import rnn as rnn_config  # noqa: E402
from configs import transformer as transformer_config  # noqa: E402
from vit_jax import plots  # noqa: E402
from vit_jax import train  # noqa: E402

MODELS = {
    'none': ('RNN, no attention', rnn_config.get_config, 'none'),
    'bahdanau': ('RNN + Bahdanau attention', rnn_config.get_config, ''),
    'luong': ('RNN + Luong attention (general)', rnn_config.get_config, 'luong'),
    'transformer': ('Transformer', transformer_config.get_config, ''),
}
TASK_ARGS = {'numbers': '', 'dates': 'dates'}


def config_for(model, task, steps, seed, tiny=False):
  _, get_config, arg = MODELS[model]
  c = get_config(','.join(a for a in (arg, TASK_ARGS[task], 'tiny' if tiny else '') if a))
  c.update(total_steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed)
  return c


def run(model, task, steps, seed, workdir, tiny=False):
  """Trains (timed), then decodes the test split greedily: the result row with per-example
  source lengths and exact matches."""
  config = config_for(model, task, steps, seed, tiny)
  start = time.perf_counter()
  _, metrics = train.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  trainer, state, _ = train.restore_latest(config, workdir)
  task_obj, params = trainer.task, state['params']
  test = task_obj.sources[1]
  pairs = [test[i] for i in range(len(test))]
  predicted = task_obj.translate_texts(params, [p['source'] for p in pairs], beam_size=1)
  exact = [p == pair['target'] for p, pair in zip(predicted, pairs)]
  if abs(np.mean(exact) - metrics['exact_match']) > 1e-9:  # Both decode greedily.
    print(f"Warning: decoding the test split gave {np.mean(exact):.4f} exact match, the "
          f"trainer's evaluation {metrics['exact_match']:.4f}.")
  lengths = [len(task_obj.tokenizer.encode(pair['source'])) for pair in pairs]
  return {'model': model, 'task': task, 'seed': seed, 'steps': steps, 'tiny': tiny,
          'seconds': seconds,
          'parameters': int(sum(x.size for x in jax.tree.leaves(params))),
          'exact_match': metrics['exact_match'], 'bleu': metrics['bleu'],
          'chrf': metrics['chrf'],
          'lengths': lengths, 'exact': exact}


def print_table(rows, tasks, models):
  print('\n| task | model | parameters | steps | seeds | train time | exact match | sacreBLEU '
        '| chrF |')
  print('|---|---|---|---|---|---|---|---|---|')
  for task in tasks:
    for model in models:
      mine = [r for r in rows if r['task'] == task and r['model'] == model]
      if not mine:
        continue
      minutes = [r['seconds'] / 60 for r in mine]
      print(f"| {task} | {MODELS[model][0]} | {mine[0]['parameters']:,} | {mine[0]['steps']:,} | "
            f"{len(mine)} | {mean_std(minutes, '{:.1f}')} min | "
            f"{mean_std([100 * r['exact_match'] for r in mine], '{:.1f}')}% | "
            f"{mean_std([r['bleu'] for r in mine], '{:.2f}')} | "
            f"{mean_std([r['chrf'] for r in mine], '{:.2f}')} |")


def by_length(rows, num_bins=8):
  """{(task, model label): (bin centres, exact match per bin, examples per bin)}, pooled over
  seeds, equal-width bins over the task's source lengths."""
  curves = {}
  for task in dict.fromkeys(r['task'] for r in rows):
    lengths = np.concatenate([r['lengths'] for r in rows if r['task'] == task])
    edges = np.linspace(lengths.min(), lengths.max() + 1, num_bins + 1)
    for model in dict.fromkeys(r['model'] for r in rows if r['task'] == task):
      mine = [r for r in rows if r['task'] == task and r['model'] == model]
      length = np.concatenate([r['lengths'] for r in mine])
      exact = np.concatenate([r['exact'] for r in mine]).astype(float)
      bins = np.digitize(length, edges[1:-1])
      kept = [b for b in range(num_bins) if (bins == b).any()]
      curves[task, MODELS[model][0]] = (
          [(edges[b] + edges[b + 1] - 1) / 2 for b in kept],
          [exact[bins == b].mean() for b in kept], [int((bins == b).sum()) for b in kept])
  return curves


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='/tmp/attention_history')
  p.add_argument('--tasks', default='numbers,dates')
  p.add_argument('--models', default=','.join(MODELS))
  p.add_argument('--steps', default='numbers=1000,dates=2000',
                 help='training steps per task, the same for every model')
  p.add_argument('--seeds', default='0')
  p.add_argument('--tiny', action='store_true', help="the configs' tiny models (a smoke run)")
  args = p.parse_args(argv)
  tasks, models = args.tasks.split(','), args.models.split(',')
  steps = {k: int(v) for k, v in (s.split('=') for s in args.steps.split(','))}
  for name, known in (('--tasks', TASK_ARGS), ('--models', MODELS)):
    for value in (tasks if name == '--tasks' else models):
      if value not in known:
        sys.exit(f'Unknown {name} value {value!r}; expected {sorted(known)}.')
  results, rows = recorded_runs(args.out)
  for seed in (int(s) for s in args.seeds.split(',')):
    for task in tasks:
      for model in models:
        key = (model, task, seed, steps[task], args.tiny)
        if any((r['model'], r['task'], r['seed'], r['steps'], r['tiny']) == key for r in rows):
          continue
        print(f'\n=== {MODELS[model][0]} on {task}, seed {seed}, {steps[task]} steps ===')
        workdir = os.path.join(args.out, '_'.join(
            [task, model, f'seed{seed}', f'steps{steps[task]}'] + ['tiny'] * args.tiny))
        row = run(model, task, steps[task], seed, workdir, args.tiny)
        rows.append(row)
        record(results, row)
  rows = [r for r in rows if r['task'] in tasks and r['model'] in models
          and r['steps'] == steps[r['task']] and r['tiny'] == args.tiny]
  print(f'\n{cpu_name()}, {os.cpu_count()} cores, {datetime.date.today()}; results in {results}')
  print_table(rows, tasks, models)
  png = plots.exact_match_by_length(by_length(rows),
                                    os.path.join(args.out, 'exact_match_by_length.png'))
  print(f'\nPlot: {png}')


if __name__ == '__main__':
  main()
