import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import transformer as transformer_config
from helpers import with_devices
from vit_jax import checkpoint
from vit_jax import compiling
from vit_jax import train
from vit_jax.data import tokenizers
from vit_jax.data import translation
from vit_jax.tasks import translation as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_number_words_are_real_language_and_split_by_value():
  splits = {s: translation.NumberWords(s, max_value=999) for s in ('train', 'validation', 'test')}
  assert [len(d) for d in splits.values()] == [800, 100, 100]
  values = [set(d.values.tolist()) for d in splits.values()]
  assert not (values[0] & values[1]) and not (values[0] & values[2])
  pairs = dict(zip(splits['train'].values.tolist(), splits['train'].pairs))
  pairs.update(zip(splits['test'].values.tolist(), splits['test'].pairs))
  assert pairs.get(24, ('twenty-four', 'vierundzwanzig')) == ('twenty-four', 'vierundzwanzig')
  assert pairs.get(107, ('one hundred and seven', 'einhundertsieben')) == (
      'one hundred and seven', 'einhundertsieben')


def test_char_tokenizer_roundtrip(tmp_path):
  tok = tokenizers.CharTokenizer.train(['abc', 'cab!'])
  ids = tok.encode('cab?')
  assert ids[-1] == tokenizers.UNK and tok.vocab_size == 4 + 4
  assert tok.decode(tok.encode('abc') + [tokenizers.EOS, 5, 6]) == 'abc'
  tokenizers.save(tok, str(tmp_path / 't.json'))
  assert tokenizers.load(str(tmp_path / 't.json')).chars == tok.chars


def test_sentencepiece_is_trained_offline_and_saved_with_its_model(tmp_path):
  texts = [t for pair in translation.NumberWords('train', max_value=299).pairs for t in pair]
  tok = tokenizers.train('sentencepiece', texts, vocab_size=120)
  ids = tok.encode('two hundred and forty-one')
  assert len(ids) < len('two hundred and forty-one')  # Sub-words, not characters.
  assert min(ids) > tokenizers.UNK and tok.vocab_size <= 120
  assert tok.decode([tokenizers.BOS] + ids + [tokenizers.EOS, 9, 9]) == (
      'two hundred and forty-one')
  tokenizers.save(tok, str(tmp_path / 'tokenizer.json'))
  loaded = tokenizers.load(str(tmp_path / 'tokenizer.json'))
  assert loaded.encode('zweihundertvierzig') == tok.encode('zweihundertvierzig')
  with pytest.raises(ValueError, match="Unknown tokenizer 'bpe'; expected one of"):
    tokenizers.train('bpe', texts)


def test_dates_are_real_locale_text_and_split_by_value():
  splits = {s: translation.Dates(s, num_dates=500) for s in ('train', 'validation', 'test')}
  assert [len(d) for d in splits.values()] == [400, 50, 50]
  assert not set(splits['train'].values.tolist()) & set(splits['test'].values.tolist())
  import datetime
  from babel import dates
  for source, target in splits['test'].pairs:
    day = datetime.date.fromisoformat(target)
    assert source in [dates.format_date(day, format=f, locale='es') for f in
                      ('full', 'long', 'medium')]
  assert any(' de ' in s for s, _ in splits['train'].pairs)  # e.g. '23 de junio de 2083'


def make_tfds_translation(data_dir):
  """A tiny TFDS translation dataset, built here (no download, no TensorFlow)."""
  import tensorflow_datasets as tfds

  class TinyTranslate(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.Translation(
          languages=('de', 'en')))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(6),
              'validation': self._generate_examples(3)}

    def _generate_examples(self, n):
      for i, (de, en) in enumerate(zip(['null', 'eins', 'zwei', 'drei', 'vier', 'fünf'][:n],
                                       ['zero', 'one', 'two', 'three', 'four', 'five'])):
        yield i, {'de': de, 'en': en}

  TinyTranslate(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return 'tiny_translate'


def test_tfds_translation_source_with_sentencepiece(tmp_path):
  name = make_tfds_translation(str(tmp_path / 'tfds'))
  source = translation.Tfds(name, 'train', str(tmp_path / 'tfds'), 'en', 'de')
  assert len(source) == 6 and {source[i]['target'] for i in range(6)} >= {'fünf', 'null'}
  with pytest.raises(ValueError, match=r"TFDS dataset 'tiny_translate' has no language 'fr'; "
                                       r"it has \['de', 'en'\]"):
    translation.Tfds(name, 'train', str(tmp_path / 'tfds'), 'en', 'fr')
  config = transformer_config.get_config('tiny')
  config.update_from_flattened_dict({
      'data.name': 'tfds', 'data.tfds_name': name, 'data.data_dir': str(tmp_path / 'tfds'),
      'data.eval_split': 'validation', 'data.tokenizer': 'sentencepiece', 'data.vocab_size': 40})
  task = task_lib.TranslationTask(config, str(tmp_path / 'work'))
  _, eval_source, preprocess = task.datasets()
  assert len(eval_source) == 3
  german = dict(zero='null', one='eins', two='zwei')
  for i in range(3):
    example = preprocess.eval(eval_source[i])
    english = task.tokenizer.decode(example['source'])
    assert task.tokenizer.decode(example['target_out']) == german[english]
  assert tokenizers.load(str(tmp_path / 'work' / 'tokenizer.json')).vocab_size < 40
  # Resuming reuses the saved vocabulary, smaller than data.vocab_size (an upper bound).
  resumed = task_lib.TranslationTask(config, str(tmp_path / 'work'))
  assert resumed.tokenizer.to_json() == task.tokenizer.to_json()


def test_encode_shifts_targets_and_names_overlong_examples():
  tok = tokenizers.CharTokenizer.train(['ab'])
  encode = translation.Encode(tok, 4, 4)
  out = encode({'source': 'ab', 'target': 'ba', 'index': 7})
  b, a = tok.encode('ba')
  np.testing.assert_array_equal(out['target_in'], [tokenizers.BOS, b, a, 0])
  np.testing.assert_array_equal(out['target_out'], [b, a, tokenizers.EOS, 0])
  with pytest.raises(ValueError, match=r"the target has 6 tokens, more than "
                                       r"data.max_target_length=4: 'ababa'\. Raise "
                                       r"data.max_target_length, or set data.too_long to 'drop' "
                                       r"or 'truncate'"):
    encode({'source': 'ab', 'target': 'ababa', 'index': 7})
  truncate = translation.Encode(tok, 4, 4, too_long='truncate')
  out = truncate({'source': 'ababab', 'target': 'ababa', 'index': 7})
  np.testing.assert_array_equal(out['source'], tok.encode('abab'))
  np.testing.assert_array_equal(out['target_out'], tok.encode('abab'))  # Cut: no EOS.


def test_overlong_pairs_fail_at_start_up_by_file_line_or_are_dropped(tmp_path):
  data = tmp_path / 'data'
  data.mkdir()
  (data / 'train.tsv').write_text('eins\tone\n\nzwei\ttwo\n' + 'drei ' * 20 + '\tthree\n')
  (data / 'test.tsv').write_text('eins\tone\n')
  config = transformer_config.get_config('tiny')
  config.update_from_flattened_dict({'data.name': 'files', 'data.data_dir': str(data),
                                     'total_steps': 2, 'eval_every': 2})
  with pytest.raises(ValueError, match=r"Training pair .*train.tsv:4 is malformed: UserError: "
                                       r"the source has 100 tokens, more than "
                                       r"data.max_source_length=48"):
    train.train_and_evaluate(config, str(tmp_path / 'error'))
  assert not (tmp_path / 'error' / 'checkpoints').exists()  # Before any training.
  config.data.too_long = 'drop'
  _, result = train.train_and_evaluate(config, str(tmp_path / 'drop'))
  task = task_lib.TranslationTask(config, str(tmp_path / 'drop'))
  assert len(task.sources[0]) == 2 and result['count'] == 1


def test_loss_is_normalised_by_real_target_tokens():
  config = transformer_config.get_config('tiny')
  config.update_from_flattened_dict({'label_smoothing': 0.0, 'model.dropout_rate': 0.0})
  task = task_lib.TranslationTask(config)  # Deterministic, to compare by hand.
  batch = {'source': np.array([[5, 6, 0], [5, 0, 0]]),
           'target_in': np.array([[1, 7, 8], [1, 0, 0]]),
           'target_out': np.array([[7, 8, 2], [2, 0, 0]])}
  params = compiling.run_once(task.init, jax.random.key(0), batch)
  logits, _ = jax.jit(task.model.apply)({'params': params}, batch['source'], batch['target_in'])
  logp = jax.nn.log_softmax(logits)
  real = [(0, 0, 7), (0, 1, 8), (0, 2, 2), (1, 0, 2)]
  expected = -np.mean([logp[b, t, y] for b, t, y in real])
  loss, _ = compiling.run_once(task.loss_fn, params, batch, jax.random.key(1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_tiny_translation_run_learns_and_keeps_its_tokenizer(tmp_path):
  config = transformer_config.get_config('tiny')
  config.update_from_flattened_dict({'total_steps': 60, 'eval_every': 60, 'log_every': 10})
  state, result = train.train_and_evaluate(config, str(tmp_path))
  assert result['count'] == 100 and result['chrf'] > 10.0
  from vit_jax import metrics
  losses = [r['train/loss'] for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
            if 'train/loss' in r]
  assert losses[-1] < 0.7 * losses[0]
  assert (tmp_path / 'tokenizer.json').exists() and (tmp_path / 'alignment.png').exists()
  saved = tokenizers.load(str(tmp_path / 'tokenizer.json'))
  trainer, restored, step = train.restore_latest(config, str(tmp_path))
  assert step == 60 and trainer.task.tokenizer.chars == saved.chars
  for beam_size in (1, 3):
    out = trainer.task.translate_texts(restored['params'], ['twenty-four', 'seven'], beam_size)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
  # The same through main.py with the workdir alone (its config.json), settings overridden;
  # a character the vocabulary lacks is named.
  (tmp_path / 'input.txt').write_text('twenty-four\n\nseven\n#%\n')
  command = subprocess.run(
      [sys.executable, 'main.py', f'--workdir={tmp_path}', '--mode=translate',
       f'--config.translate.input={tmp_path / "input.txt"}', '--config.translate.beam_size=3'],
      cwd=ROOT, env=with_devices(1), capture_output=True, text=True, timeout=300)
  assert command.returncode == 0, command.stderr[-2000:]
  assert command.stdout.splitlines()[:2] == out
  assert "Input 3: the vocabulary lacks '#', '%'; they become <unk>." in command.stderr

  # A tokenizer that does not belong to the checkpoint, and a config that contradicts it.
  path = tmp_path / 'tokenizer.json'
  tokenizers.save(tokenizers.CharTokenizer.train(['abc']), str(path))
  with pytest.raises(checkpoint.CheckpointMismatch,
                     match=r"does not match the model: params/.*\[\d+, 32\] in the checkpoint "
                           r"but float32\[7, 32\] in the model\..* The vocabulary "
                           f"\\({path}\\) has 7 tokens"):
    train.restore_latest(config, str(tmp_path))
  config.data.tokenizer = 'sentencepiece'
  with pytest.raises(ValueError, match=r"tokenizer.json is a char tokenizer of 7 tokens, but the "
                                       r"config asks for data.tokenizer='sentencepiece'"):
    train.restore_latest(config, str(tmp_path))


def test_parallel_files_tsv_and_jsonl(tmp_path):
  (tmp_path / 'train.tsv').write_text('eins\tone\nzwei\ttwo\n\n', encoding='utf-8')
  (tmp_path / 'test.jsonl').write_text('{"source": "drei", "target": "three"}\n',
                                       encoding='utf-8')
  train_pairs = translation.ParallelFile(str(tmp_path), 'train')
  assert train_pairs.pairs == [('eins', 'one'), ('zwei', 'two')]
  assert translation.ParallelFile(str(tmp_path), 'test')[0] == {
      'source': 'drei', 'target': 'three', 'index': 0}
  with pytest.raises(ValueError, match="No parallel file for split 'valid'"):
    translation.ParallelFile(str(tmp_path), 'valid')
  (tmp_path / 'bad.tsv').write_text('eins\tone\nzwei two\n', encoding='utf-8')
  with pytest.raises(ValueError, match=r"bad.tsv:2: expected source<TAB>target, got 'zwei two'"):
    translation.ParallelFile(str(tmp_path), 'bad')


def test_training_on_packed_parallel_files(tmp_path):
  data = tmp_path / 'data'
  data.mkdir()
  words = ['null', 'eins', 'zwei', 'drei', 'vier', 'fünf', 'sechs', 'sieben']
  english = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven']
  (data / 'train.tsv').write_text(''.join(f'{d}\t{e}\n' for d, e in zip(words, english)))
  (data / 'test.tsv').write_text(''.join(f'{d}\t{e}\n' for d, e in zip(words[:3], english)))
  config = transformer_config.get_config('tiny')
  config.update_from_flattened_dict({'data.name': 'files', 'data.data_dir': str(data),
                                     'data.pack': True, 'total_steps': 2, 'eval_every': 2})
  _, result = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert result['count'] == 3


def test_packed_rows_give_the_same_loss_as_one_pair_a_row():
  config = transformer_config.get_config('tiny')
  config.update_from_flattened_dict({'data.max_value': 99, 'label_smoothing': 0.1,
                                     'model.dropout_rate': 0.0})
  task = task_lib.TranslationTask(config)
  config = config.copy_and_resolve_references()
  config.data.pack = True
  packed_task = task_lib.TranslationTask(config)  # Reads packed rows' segments and positions.
  encode = task_lib.Preprocess(task.tokenizer, 48, 44)
  pairs = translation.Pairs()
  pairs.pairs = task.sources[0].pairs[:12]
  packed = translation.Packed(pairs, encode, seed=3)
  assert len(packed) < 12 and sorted(i for row in packed.rows for i in row) == list(range(12))
  rows = [packed[r] for r in range(len(packed))]
  # No token lost or duplicated, and segments restart their positions.
  assert sum((r['target_segments'] > 0).sum() for r in rows) == sum(
      (encode(pairs[i])['target_out'] > 0).sum() for i in range(12))
  packed_batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  plain_batch = {k: np.stack([encode(pairs[i])[k] for i in range(12)])
                 for k in ('source', 'target_in', 'target_out')}
  params = compiling.run_once(task.init, jax.random.key(0), plain_batch)
  plain, _ = compiling.run_once(task.loss_fn, params, plain_batch, jax.random.key(1))
  packed_loss, _ = compiling.run_once(packed_task.loss_fn, params, packed_batch,
                                      jax.random.key(1))
  np.testing.assert_allclose(packed_loss, plain, rtol=1e-5)
