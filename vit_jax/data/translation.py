"""Parallel text: the embedded number-words task, TSV/JSONL files, fixed-length token batches.

'numbers': integers 0..max_value written out by `num2words` in two languages, e.g.
English → German "twenty-four" → "vierundzwanzig" (reordering and compounding). The values are
shuffled with a fixed seed and split 80/10/10 into train/validation/test: no number is in two
splits. Real language, generated offline.
"""
import numpy as np

from vit_jax.data import tokenizers

SPLITS = {'train': (0.0, 0.8), 'validation': (0.8, 0.9), 'test': (0.9, 1.0)}


class NumberWords:

  def __init__(self, split, source_lang='en', target_lang='de', max_value=9999, seed=0):
    from num2words import num2words
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r} for 'numbers'; expected one of {list(SPLITS)}.")
    values = np.random.default_rng(seed).permutation(max_value + 1)
    lo, hi = (int(round(f * len(values))) for f in SPLITS[split])
    self.values = values[lo:hi]
    self.pairs = [(num2words(int(v), lang=source_lang), num2words(int(v), lang=target_lang))
                  for v in self.values]

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    source, target = self.pairs[i]
    return {'source': source, 'target': target, 'index': i}


def pad_tokens(ids, length, side, example):
  """ids padded to `length`; an over-long example is an error naming it."""
  if len(ids) > length:
    raise ValueError(f'Example {example.get("index")}: the {side} has {len(ids)} tokens, more '
                     f'than data.max_{side}_length={length}: {example[side]!r}')
  return np.asarray(ids + [tokenizers.PAD] * (length - len(ids)), np.int32)


class ParallelFile:
  """`data_dir/<split>.tsv` (source<TAB>target a line) or `data_dir/<split>.jsonl`
  ({"source": ..., "target": ...} a line)."""

  def __init__(self, data_dir, split):
    import json
    import pathlib
    paths = [pathlib.Path(data_dir) / f'{split}.{ext}' for ext in ('tsv', 'jsonl')]
    path = next((p for p in paths if p.exists()), None)
    if path is None:
      raise ValueError(f'No parallel file for split {split!r}: expected {paths[0]} or '
                       f'{paths[1]}.')
    expected = ('source<TAB>target' if path.suffix == '.tsv' else
                'a JSON object with "source" and "target"')
    self.pairs = []
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
          raise ValueError(f'{path}:{number}: expected {expected}, got {line.strip()[:80]!r} '
                           f'({e!r})') from None
        self.pairs.append((source, target))
    if not self.pairs:
      raise ValueError(f'{path} holds no sentence pairs.')

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    source, target = self.pairs[i]
    return {'source': source, 'target': target, 'index': i}


class Encode:
  """Text pair → fixed-length int32 arrays: source, target_in (BOS + y), target_out (y + EOS)."""

  def __init__(self, tokenizer, max_source_length, max_target_length):
    self.tokenizer = tokenizer
    self.max_source_length, self.max_target_length = max_source_length, max_target_length

  def __call__(self, example, rng=None):
    src = self.tokenizer.encode(example['source'])
    tgt = self.tokenizer.encode(example['target'])
    return {
        'source': pad_tokens(src, self.max_source_length, 'source', example),
        'target_in': pad_tokens([tokenizers.BOS] + tgt, self.max_target_length, 'target', example),
        'target_out': pad_tokens(tgt + [tokenizers.EOS], self.max_target_length, 'target',
                                example),
        'index': np.int32(example['index']),
    }
