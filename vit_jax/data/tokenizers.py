"""Tokenizers that are saved next to the checkpoint, so a model is never paired with a vocab
it was not trained with."""
import json

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ['<pad>', '<s>', '</s>', '<unk>']


class CharTokenizer:
  """One token per character, learned from the training text (for small tasks)."""

  def __init__(self, chars):
    self.chars = list(chars)
    self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

  @classmethod
  def train(cls, texts):
    return cls(sorted(set(''.join(texts))))

  @property
  def vocab_size(self):
    return len(SPECIALS) + len(self.chars)

  def encode(self, text):
    return [self.index.get(c, UNK) for c in text]

  def decode(self, ids):
    """Stops at EOS; drops padding and BOS."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS:
        break
      if i >= len(SPECIALS):
        out.append(self.chars[i - len(SPECIALS)])
      elif i == UNK:
        out.append('?')
    return ''.join(out)

  def save(self, path):
    with open(path, 'w') as f:
      json.dump({'type': 'char', 'chars': self.chars}, f, ensure_ascii=False)

  @classmethod
  def load(cls, path):
    with open(path) as f:
      spec = json.load(f)
    if spec.get('type') != 'char':
      raise ValueError(f'{path} is not a character tokenizer (type={spec.get("type")!r}).')
    return cls(spec['chars'])
