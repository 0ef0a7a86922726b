"""benchmarks/attention_zoo.py: the module comparison's table from its recorded runs."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import attention_zoo  # noqa: E402


def test_zoo_table_adds_costs_to_the_recorded_accuracies(tmp_path, capsys):
  # Runs already recorded (training is tested in test_cnn_classification.py) are not repeated.
  rows = [{'module': m, 'seed': s, 'steps': 3, 'tiny': True, 'accuracy': a, 'seconds': 1.0}
          for m, s, a in [('plain', 0, 0.5), ('plain', 1, 0.7), ('eca', 0, 0.6),
                          ('eca', 1, 0.6)]]
  with open(tmp_path / 'results.jsonl', 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  attention_zoo.main(['--tiny', '--modules=eca', '--seeds=0,1', '--steps=3', '--rounds=1',
                      '--batch=8', f'--out={tmp_path}'])
  out = capsys.readouterr().out
  assert '===' not in out
  # ECA adds k weights per block: C = 16, 32, 64, 128 → k = 3, 3, 3, 5.
  assert '| eca | 308,552 (+14) |' in out and '| 60.0 ± 0.0% | 2 |' in out
  assert '| plain | 308,538 (+0) |' in out and '| 1.00x | 60.0 ± 14.1% | 2 |' in out
