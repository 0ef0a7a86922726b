"""RNN encoder–decoders, without and with attention, on the Transformer's translation tasks.

Default (no argument): English → German number words (the data, tokenizer, label smoothing
and metrics of configs/transformer.py), a bidirectional GRU encoder and a GRU decoder with
Bahdanau's additive attention, width 256, 1,000 steps of 64 pairs (2,000 on dates) with
AdamW.
  python main.py --config=configs/rnn.py --workdir=/tmp/rnn_numbers
  Expected: 99.9% exact match on the 1,000 held-out numbers (sacreBLEU 99.98): 6.5 minutes to
  step 1,000 on a 2-core AMD EPYC (Zen 4) CPU, 11.6 minutes on one of its cores
  (benchmarks/attention_history.py).

Arguments (comma-separated): the attention, 'none' (the encoder's final state only),
'bahdanau' (the default) or 'luong' (Luong's 'general' score with input feeding; set
model.attention='luong_dot' or 'luong_concat' for the others); 'lstm' for LSTM cells;
'dates' for Spanish dates → ISO 8601; 'tiny' for tests and smoke runs. Your own parallel text:
--config.data.name=files --config.data.data_dir=DIR (DIR/train.tsv, DIR/test.tsv).
"""
import ml_collections

from configs import common
from configs import transformer


def get_config(arg=''):
  args = common.parse_args(arg, ['none', 'bahdanau', 'luong', 'lstm', 'dates', 'tiny'])
  # The same task as the Transformer's: its data, tokenizer, metrics and translate settings.
  c = transformer.get_config(','.join(a for a in args if a in ('dates', 'tiny')))
  c.task = 'rnn_seq2seq'
  c.model = ml_collections.ConfigDict(dict(
      cell='gru', attention='bahdanau', hidden_size=256, embedding_size=128,
      bidirectional=True, num_layers=1, dropout_rate=0.1))
  c.optim = common.trainer_config().optim
  c.optim.update(learning_rate=1e-3, warmup_steps=100, weight_decay=1e-4, clip_norm=1.0)
  if 'dates' in args and 'tiny' not in args:
    c.total_steps = 2000  # As measured (README); the pre-LN Transformer needs 1,000.
  if 'tiny' in args:  # The steps are the Transformer's.
    c.model.update(hidden_size=32, embedding_size=16)
    c.optim.warmup_steps = 5
  if 'none' in args:
    c.model.attention = 'none'
  if 'luong' in args:
    c.model.attention = 'luong_general'
  if 'lstm' in args:
    c.model.cell = 'lstm'
  return c
