"""benchmarks/attention_history.py: the RNN vs Transformer comparison runs, resumes and plots."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import attention_history  # noqa: E402


def test_exact_match_by_length_bins_pool_seeds():
  rows = [{'task': 'numbers', 'model': 'none', 'lengths': [3, 4, 10, 11], 'exact': [1, 1, 0, 1]},
          {'task': 'numbers', 'model': 'none', 'lengths': [3, 11], 'exact': [0, 0]}]
  (key, (centres, exact, counts)), = attention_history.by_length(rows, num_bins=2).items()
  assert key == ('numbers', 'RNN, no attention')
  assert counts == [3, 3]  # Edges 3, 7.5, 12: lengths 3, 4, 3 | 10, 11, 11.
  assert exact == [2 / 3, 1 / 3]
  assert centres == [4.75, 9.25]


def test_tiny_comparison_runs_and_resumes(tmp_path, capsys):
  argv = ['--tiny', '--tasks=numbers', '--models=none', '--steps=numbers=4',
          f'--out={tmp_path}']
  attention_history.main(argv)
  rows = [json.loads(line) for line in open(tmp_path / 'results.jsonl')]
  assert [r['model'] for r in rows] == ['none']
  assert all(len(r['lengths']) == len(r['exact']) == 100 for r in rows)
  assert (tmp_path / 'exact_match_by_length.png').exists()
  capsys.readouterr()
  attention_history.main(argv)  # The run is in results.jsonl: nothing trains again.
  out = capsys.readouterr().out
  assert '===' not in out and '| numbers | RNN, no attention | 16,126 | 4 | 1 |' in out
  assert len(open(tmp_path / 'results.jsonl').readlines()) == 1
