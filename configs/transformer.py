"""Transformer translation ("Attention Is All You Need").

Default (no argument): English → German number words (0..9,999, generated with num2words,
split by value), character tokens, a small post-LN Transformer.
  python main.py --config=configs/transformer.py --workdir=/tmp/numbers
  Expected: see README.md (exact match, BLEU and chrF on the 1,000 held-out test numbers).

Arguments (comma-separated): 'tiny' for tests and smoke runs; 'dates' for the babel date task
(Spanish dates → ISO 8601); 'pack' to pack several pairs into each training row; 'spm' for a
SentencePiece tokenizer; a size ('base', 'big'). Real data: data.name='files' (TSV/JSONL in
data.data_dir) or data.name='tfds' with data.tfds_name='wmt14_translate/de-en',
data.source_lang='en', data.target_lang='de', data.tokenizer='sentencepiece'.
"""
import ml_collections

from configs import common


def get_config(arg=''):
  args = [a for a in arg.split(',') if a]
  c = common.trainer_config()
  c.task = 'translation'
  c.label_smoothing = 0.1
  c.model = ml_collections.ConfigDict(dict(
      size='small', num_layers=3, d_model=128, d_ff=512, num_heads=4, dropout_rate=0.1,
      attention_dropout_rate=0.0, norm_first=False, share_embeddings=True,
      learned_positions=False, max_length=64))
  c.data = ml_collections.ConfigDict(dict(
      name='numbers', data_dir='', tfds_name='', source_lang='en', target_lang='de',
      max_value=9999, locale='es', num_dates=20000, train_split='train', eval_split='test',
      max_source_length=48, max_target_length=44, pack=False, tokenizer='char',
      vocab_size=8000, tokenizer_examples=100_000, num_threads=2))
  c.bleu_tokenize = 'char'  # sacreBLEU tokenizer: German number words are single words.
  c.total_steps = 1000
  c.batch_size = 64
  c.eval_batch_size = 256
  c.eval_every = 500
  c.checkpoint_every = 500
  c.optim.update(name='adamw', learning_rate=1.0, schedule='rsqrt', warmup_steps=400, b1=0.9,
                 b2=0.98, eps=1e-9, weight_decay=0.0, model_dim=128)

  if 'dates' in args:
    c.data.update(name='dates', max_target_length=12)
    c.bleu_tokenize = 'char'
  if 'pack' in args:
    c.data.pack = True
  if 'spm' in args:
    c.data.update(tokenizer='sentencepiece', vocab_size=1000)
  if 'tiny' in args:
    c.model.update(num_layers=1, d_model=32, d_ff=64, num_heads=2)
    c.optim.model_dim = 32
    c.data.update(max_value=999, num_dates=1000, vocab_size=200)
    c.total_steps, c.batch_size, c.eval_batch_size = 20, 32, 64
    c.log_every, c.eval_every, c.checkpoint_every = 5, 10, 10
    c.optim.warmup_steps = 10
  for size in ('base', 'big'):
    if size in args:
      c.model.update(size=size, num_layers=None, d_model=None, d_ff=None, num_heads=None,
                     dropout_rate=None)
      c.optim.model_dim = 512 if size == 'base' else 1024
  return c
