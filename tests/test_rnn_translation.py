"""The RNN encoder–decoder family through the one trainer: it learns, decodes and translates."""
import numpy as np
import pytest

from configs import rnn as rnn_config
from vit_jax import metrics
from vit_jax import train


def test_tiny_bahdanau_run_learns_and_translates(tmp_path):
  config = rnn_config.get_config('tiny')
  config.update_from_flattened_dict({'total_steps': 60, 'eval_every': 60, 'log_every': 10,
                                     'optim.learning_rate': 1e-2})
  _, result = train.train_and_evaluate(config, str(tmp_path))
  assert result['count'] == 100 and np.isfinite(result['bleu'])
  losses = [r['train/loss'] for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
            if 'train/loss' in r]
  assert losses[-1] < 0.7 * losses[0]
  assert (tmp_path / 'alignment.png').exists()  # Bahdanau's Fig. 3, for a few test numbers.
  trainer, restored, _ = train.restore_latest(config, str(tmp_path))
  out = trainer.task.translate_texts(restored['params'], ['twenty-four', 'seven'], beam_size=3)
  assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_packing_is_refused_with_the_reason(tmp_path):
  config = rnn_config.get_config('tiny,none')
  config.data.pack = True
  with pytest.raises(ValueError, match='data.pack=True: packed rows need attention that keeps '
                                       'the pairs of a row apart'):
    train.Trainer(config, str(tmp_path))
