"""Tokenizers that are saved next to the checkpoint, so a model is never paired with a vocab
it was not trained with. Both share the special ids below."""
import base64
import io
import json

from vit_jax import errors

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ['<pad>', '<s>', '</s>', '<unk>']


def _strip(ids):
  """Ids up to EOS, without padding or BOS."""
  out = []
  for i in ids:
    i = int(i)
    if i == EOS:
      break
    if i not in (PAD, BOS):
      out.append(i)
  return out


class CharTokenizer:
  """One token per character, learned from the training text (for small tasks)."""

  def __init__(self, chars):
    self.chars = list(chars)
    self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

  @classmethod
  def train(cls, texts, vocab_size=None):
    del vocab_size  # The vocabulary is every character seen.
    return cls(sorted(set(''.join(texts))))

  @property
  def vocab_size(self):
    return len(SPECIALS) + len(self.chars)

  def encode(self, text):
    return [self.index.get(c, UNK) for c in text]

  def unknown_characters(self, text):
    """The characters of `text` that encode to <unk>, sorted, each once."""
    return sorted(set(text) - set(self.index))

  def decode(self, ids):
    """Stops at EOS; drops padding and BOS; UNK shows as '?'."""
    return ''.join(self.pieces(ids))

  def pieces(self, ids):
    """The text of each token up to EOS (for plots)."""
    return ['?' if i == UNK else self.chars[i - len(SPECIALS)] for i in _strip(ids)]

  def to_json(self):
    return {'type': 'char', 'chars': self.chars}


class SentencePieceTokenizer:
  """SentencePiece (unigram) trained offline on the training text; the model proto is stored
  inside tokenizer.json."""

  def __init__(self, model_proto):
    import sentencepiece
    self.model_proto = model_proto
    self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

  @classmethod
  def train(cls, texts, vocab_size=8000):
    import sentencepiece
    model = io.BytesIO()
    # hard_vocab_limit=False: a small corpus yields a smaller vocabulary instead of an error.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type='unigram', character_coverage=1.0, hard_vocab_limit=False,
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK, minloglevel=2)
    return cls(model.getvalue())

  @property
  def vocab_size(self):
    return self.processor.vocab_size()

  def encode(self, text):
    return self.processor.encode(text)

  def unknown_characters(self, text):
    """The characters of `text` that encode to <unk>, sorted, each once."""
    return sorted(c for c in set(text) - {' '} if UNK in self.processor.encode(c))

  def decode(self, ids):
    return self.processor.decode(_strip(ids))

  def pieces(self, ids):
    return [self.processor.id_to_piece(i) for i in _strip(ids)]

  def to_json(self):
    return {'type': 'sentencepiece', 'model': base64.b64encode(self.model_proto).decode()}


TOKENIZERS = {'char': CharTokenizer, 'sentencepiece': SentencePieceTokenizer}


def train(kind, texts, vocab_size=None):
  if kind not in TOKENIZERS:
    raise errors.UserError(f'Unknown tokenizer {kind!r}; expected one of {sorted(TOKENIZERS)}.')
  return TOKENIZERS[kind].train(texts, vocab_size)


def save(tokenizer, path):
  with open(path, 'w') as f:
    json.dump(tokenizer.to_json(), f, ensure_ascii=False)


def load(path):
  with open(path) as f:
    spec = json.load(f)
  kind = spec.get('type')
  if kind == 'char':
    return CharTokenizer(spec['chars'])
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(base64.b64decode(spec['model']))
  raise errors.UserError(f'{path}: unknown tokenizer type {kind!r}; expected one of '
                         f'{sorted(TOKENIZERS)}.')
