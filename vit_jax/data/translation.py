"""Parallel text sources, and fixed-length token rows (one pair a row, or several packed).

Sources are random-access: `len`, `[i]` → {'source': str, 'target': str, 'index': i}.
- 'numbers': integers 0..max_value written out by `num2words` in two languages, e.g.
  English → German "twenty-four" → "vierundzwanzig" (reordering and compounding).
- 'dates': dates written by `babel` in a locale's full/long/medium style → ISO 8601, e.g.
  "23 de junio de 2083" → "2083-06-23".
- 'files': `data_dir/<split>.tsv` or `.jsonl`;  'tfds': a translation dataset prepared in
  `data_dir` (e.g. 'wmt14_translate/de-en').
The embedded tasks are generated offline with a fixed seed and split 80/10/10 by value, so no
number or date is in two splits.
"""
import datetime

import numpy as np

from vit_jax import errors
from vit_jax.data import pipeline
from vit_jax.data import tfds_source
from vit_jax.data import tokenizers

SPLITS = {'train': (0.0, 0.8), 'validation': (0.8, 0.9), 'test': (0.9, 1.0)}


def _split_values(values, split, name, seed):
  if split not in SPLITS:
    raise errors.UserError(f'Unknown split {split!r} for {name!r}; expected one of {list(SPLITS)}.')
  values = np.random.default_rng(seed).permutation(values)
  lo, hi = (int(round(f * len(values))) for f in SPLITS[split])
  return values[lo:hi]


class Pairs:
  """A list of (source, target) strings as a random-access source."""
  pairs = ()

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    source, target = self.pairs[i]
    return {'source': source, 'target': target, 'index': i}


class NumberWords(Pairs):

  def __init__(self, split, source_lang='en', target_lang='de', max_value=9999, seed=0):
    from num2words import num2words
    self.values = _split_values(np.arange(max_value + 1), split, 'numbers', seed)
    self.pairs = [(num2words(int(v), lang=source_lang), num2words(int(v), lang=target_lang))
                  for v in self.values]


class Dates(Pairs):
  """`num_dates` distinct days between `first_year` and `last_year`; each written in one of
  the locale's styles (chosen with the seed) → 'YYYY-MM-DD'."""
  STYLES = ('full', 'long', 'medium')

  def __init__(self, split, locale='es', num_dates=20000, first_year=1900, last_year=2099,
               seed=0):
    from babel import dates
    first = datetime.date(first_year, 1, 1).toordinal()
    days = datetime.date(last_year, 12, 31).toordinal() - first + 1
    if not 10 <= num_dates <= days:
      raise errors.UserError(
          f'data.num_dates={num_dates} must be between 10 and the {days} days of '
          f'{first_year}..{last_year}.')
    rng = np.random.default_rng(seed)
    chosen = rng.choice(days, num_dates, replace=False) + first
    styles = dict(zip(chosen.tolist(), rng.choice(self.STYLES, num_dates).tolist()))
    self.values = _split_values(chosen, split, 'dates', seed)
    self.pairs = []
    for ordinal in self.values.tolist():
      day = datetime.date.fromordinal(ordinal)
      text = dates.format_date(day, format=styles[ordinal], locale=locale)
      self.pairs.append((text, day.isoformat()))


class Tfds:
  """A TFDS translation dataset in `data_dir` whose examples hold one text per language."""

  def __init__(self, name, split, data_dir, source_lang, target_lang):
    self.source, info = tfds_source.open_split(name, split, data_dir)
    languages = sorted(info.features.keys())
    for lang in (source_lang, target_lang):
      if lang not in languages:
        raise errors.UserError(
            f'TFDS dataset {name!r} has no language {lang!r}; it has {languages}.')
    self.source_lang, self.target_lang = source_lang, target_lang

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    text = lambda v: v.decode('utf-8') if isinstance(v, bytes) else str(v)
    return {'source': text(example[self.source_lang]),
            'target': text(example[self.target_lang]), 'index': i}


class ParallelFile(Pairs):
  """`data_dir/<split>.tsv` (source<TAB>target a line) or `data_dir/<split>.jsonl`
  ({"source": ..., "target": ...} a line)."""

  def __init__(self, data_dir, split):
    import json
    import pathlib
    paths = [pathlib.Path(data_dir) / f'{split}.{ext}' for ext in ('tsv', 'jsonl')]
    path = next((p for p in paths if p.exists()), None)
    if path is None:
      raise errors.UserError(f'No parallel file for split {split!r}: expected {paths[0]} or '
                             f'{paths[1]}.')
    expected = ('source<TAB>target' if path.suffix == '.tsv' else
                'a JSON object with "source" and "target"')
    self.path, self.pairs, self.lines = path, [], []
    with open(path, encoding='utf-8') as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          if path.suffix == '.tsv':
            source, target = line.rstrip('\n').split('\t')
          else:
            row = json.loads(line)
            source, target = row['source'], row['target']
        except (ValueError, KeyError, TypeError) as e:
          raise errors.UserError(f'{path}:{number}: expected {expected}, got {line.strip()[:80]!r} '
                                 f'({e!r})') from None
        self.pairs.append((source, target))
        self.lines.append(number)
    if not self.pairs:
      raise errors.UserError(f'{path} holds no sentence pairs.')

  def describe(self, i):
    return f'pair {self.path}:{self.lines[i]}'  # The file's 1-based line number.


def sample_texts(source, limit):
  """Source and target texts of up to `limit` evenly spaced pairs (tokenizer training)."""
  indices = np.linspace(0, len(source) - 1, min(limit, len(source))).astype(int)
  for i in dict.fromkeys(indices.tolist()):
    example = source[i]
    yield example['source']
    yield example['target']


TOO_LONG = ('error', 'drop', 'truncate')


def pad_tokens(ids, length):
  return np.asarray(ids + [tokenizers.PAD] * (length - len(ids)), np.int32)


class Encode:
  """Text pair → fixed-length int32 arrays: source, target_in (BOS + y), target_out (y + EOS).

  too_long: what a pair longer than max_source_length / max_target_length tokens gets:
  'error' (naming it), or 'truncate' (cut to the maximum; the target then has no EOS).
  'drop' is decided on the whole split (TranslationTask), so here it is an error too.
  """

  def __init__(self, tokenizer, max_source_length, max_target_length, too_long='error'):
    if too_long not in TOO_LONG:
      raise errors.UserError(f'Unknown data.too_long={too_long!r}; expected one of {TOO_LONG}.')
    self.tokenizer = tokenizer
    self.max_source_length, self.max_target_length = max_source_length, max_target_length
    self.too_long = too_long

  def fits(self, example):
    """Whether the pair's source and target (+ EOS) are within the maximum lengths."""
    return (len(self.tokenizer.encode(example['source'])) <= self.max_source_length and
            len(self.tokenizer.encode(example['target'])) + 1 <= self.max_target_length)

  def tokens(self, example):
    """→ (source ids, target ids + EOS), unpadded, within the maximum lengths."""
    src = self.tokenizer.encode(example['source'])
    tgt = self.tokenizer.encode(example['target']) + [tokenizers.EOS]
    if self.too_long == 'truncate':
      return src[:self.max_source_length], tgt[:self.max_target_length]
    for side, ids, length in (('source', src, self.max_source_length),
                              ('target', tgt, self.max_target_length)):
      if len(ids) > length:
        raise errors.UserError(
            f'the {side} has {len(ids)} tokens, more than data.max_{side}_length={length}: '
            f'{example[side]!r}. Raise data.max_{side}_length, or set data.too_long to '
            "'drop' or 'truncate'.")
    return src, tgt

  def __call__(self, example, rng=None):
    src, tgt = self.tokens(example)
    return {
        'source': pad_tokens(src, self.max_source_length),
        'target_in': pad_tokens([tokenizers.BOS] + tgt[:-1], self.max_target_length),
        'target_out': pad_tokens(tgt, self.max_target_length),
        'index': np.int32(example['index']),
    }


class Packed:
  """Training pairs packed into rows of max_source_length / max_target_length tokens, with
  segment ids (1, 2, … per pair; 0 on padding) and positions restarting at 0 for each pair.

  Packed once, first-fit over up to `open_rows` partly filled rows, in an order shuffled with
  `seed`; the trainer then shuffles the rows every epoch. Each row is one training "example".
  Not grain's FirstFitPackIterDataset: that packs a stream (an IterDataset, so resuming needs
  iterator state in the checkpoint instead of batch s = f(seed, s)), and it emits all its bins
  whenever a pair fits none of them, so its rows are not these.
  """

  def __init__(self, source, encode, seed=0, open_rows=16):
    self.encode = encode
    self.tokens = [pipeline.call_naming(source, i, 'Training', encode.tokens, source[i])
                   for i in range(len(source))]
    self.rows, partial = [], []  # partial: [source used, target used, members]
    for i in np.random.default_rng(seed).permutation(len(self.tokens)).tolist():
      s, t = (len(x) for x in self.tokens[i])
      row = next((r for r in partial if r[0] + s <= encode.max_source_length and
                  r[1] + t <= encode.max_target_length), None)
      if row is None:
        row = [0, 0, []]
        partial.append(row)
        if len(partial) > open_rows:
          self.rows.append(partial.pop(0)[2])
      row[0], row[1] = row[0] + s, row[1] + t
      row[2].append(i)
    self.rows.extend(r[2] for r in partial)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, r):
    parts = {k: [] for k in ('source', 'source_segments', 'source_positions', 'target_in',
                             'target_out', 'target_segments', 'target_positions')}
    for segment, i in enumerate(self.rows[r], 1):
      src, tgt = self.tokens[i]
      parts['source'] += src
      parts['source_segments'] += [segment] * len(src)
      parts['source_positions'] += list(range(len(src)))
      parts['target_in'] += [tokenizers.BOS] + tgt[:-1]
      parts['target_out'] += tgt
      parts['target_segments'] += [segment] * len(tgt)
      parts['target_positions'] += list(range(len(tgt)))
    length = lambda k: (self.encode.max_source_length if k.startswith('source') else
                        self.encode.max_target_length)
    return {k: np.asarray(v + [0] * (length(k) - len(v)), np.int32) for k, v in parts.items()}
