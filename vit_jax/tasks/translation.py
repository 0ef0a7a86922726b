"""Machine translation with the encoder–decoder Transformer: data, loss, decoding, BLEU."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import sacrebleu

from vit_jax import tasks
from vit_jax.data import tokenizers
from vit_jax.data import translation as data
from vit_jax.models import transformer
from vit_jax.ops import decoding
from vit_jax.tasks import classification


def make_source(c, split):
  if c.name == 'numbers':
    return data.NumberWords(split, c.source_lang, c.target_lang, c.max_value)
  if c.name == 'dates':
    return data.Dates(split, c.locale, c.num_dates)
  if c.name == 'files':
    return data.ParallelFile(c.data_dir, split)
  if c.name == 'tfds':
    return data.Tfds(c.tfds_name, split, c.data_dir, c.source_lang, c.target_lang)
  raise ValueError(f"Unknown data.name {c.name!r} for translation; expected 'numbers', "
                   "'dates', 'files' or 'tfds'.")


class Preprocess(data.Encode):
  """Evaluation encodes one pair a row; training does too, unless the rows come packed."""

  def __init__(self, tokenizer, max_source_length, max_target_length, packed=False):
    super().__init__(tokenizer, max_source_length, max_target_length)
    self.packed = packed

  def train(self, example, rng):
    return example if self.packed else self(example, rng)

  def eval(self, example):
    return self(example)


PACKING = ('source_segments', 'target_segments', 'source_positions', 'target_positions')


class TranslationTask:

  def __init__(self, config, workdir=None):
    self.config = config
    c = config.data
    self.train_source = make_source(c, c.train_split)
    self.eval_source = make_source(c, c.eval_split)
    self.tokenizer = self._tokenizer(workdir)
    kwargs = transformer.decode_size(config.model.size)
    kwargs.update({k: v for k, v in config.model.items() if v is not None and k != 'size'})
    self.model = transformer.Transformer(vocab_size=self.tokenizer.vocab_size,
                                         pad_id=tokenizers.PAD, **kwargs,
                                         **tasks.compute_options(config))
    self.label_smoothing = config.get('label_smoothing', 0.0)
    self.bleu = sacrebleu.metrics.BLEU(tokenize=config.get('bleu_tokenize', '13a'))

  def _tokenizer(self, workdir):
    """The workdir's tokenizer when resuming (it must match the checkpoint), else a new one
    trained on the training text and saved there."""
    path = os.path.join(workdir, 'tokenizer.json') if workdir else None
    self.tokenizer_path = path
    c = self.config.data
    if path and os.path.exists(path):
      tokenizer = tokenizers.load(path)
      kind = tokenizer.to_json()['type']
      if kind != c.tokenizer or (kind == 'sentencepiece' and
                                 tokenizer.vocab_size != c.vocab_size):
        raise ValueError(
            f'{path} is a {kind} tokenizer of {tokenizer.vocab_size} tokens, but the config '
            f'asks for data.tokenizer={c.tokenizer!r}, data.vocab_size={c.vocab_size}. The '
            'checkpoints in this workdir were trained with the file: use its settings, or a '
            'new --workdir.')
      return tokenizer
    texts = data.sample_texts(self.train_source, c.tokenizer_examples)
    tokenizer = tokenizers.train(c.tokenizer, texts, c.vocab_size)
    if path and jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      tokenizers.save(tokenizer, path)
    return tokenizer

  def checkpoint_hint(self):
    """Said when a checkpoint does not fit the model: the vocabulary decides its embedding."""
    return (f'The vocabulary ({self.tokenizer_path or "a new tokenizer"}) has '
            f'{self.tokenizer.vocab_size} tokens.')

  def datasets(self):
    c = self.config.data
    preprocess = Preprocess(self.tokenizer, c.max_source_length, c.max_target_length,
                            packed=c.pack)
    train = (data.Packed(self.train_source, preprocess, seed=self.config.seed) if c.pack else
             self.train_source)
    return train, self.eval_source, preprocess

  def dummy_batch(self, batch_size):
    c = self.config.data
    return {'source': np.ones((batch_size, c.max_source_length), np.int32),
            'target_in': np.ones((batch_size, c.max_target_length), np.int32)}

  def init(self, rng, batch):
    return self.model.init({'params': rng}, batch['source'], batch['target_in'])['params']

  def loss_fn(self, params, batch, rng):
    """Label-smoothed cross-entropy over real target tokens, normalised by their number."""
    packing = {k: batch[k] for k in PACKING if k in batch}
    logits, _ = self.model.apply({'params': params}, batch['source'], batch['target_in'],
                                 **packing, train=True, rngs={'dropout': rng})
    weights = (batch['target_out'] != tokenizers.PAD).astype(jnp.float32)
    losses = classification.softmax_cross_entropy(logits, batch['target_out'],
                                                  self.label_smoothing)
    tokens = jnp.maximum(weights.sum(), 1.0)
    loss = (losses * weights).sum() / tokens
    accuracy = ((logits.argmax(-1) == batch['target_out']) * weights).sum() / tokens
    return loss, {'loss': loss, 'token_accuracy': accuracy}

  def translate(self, params, source, beam_size=1, alpha=0.6):
    """source [B, S] → tokens [B, T] (greedy, or the best beam)."""
    kw = dict(max_length=self.config.data.max_target_length, bos_id=tokenizers.BOS,
              eos_id=tokenizers.EOS, pad_id=tokenizers.PAD)
    if beam_size == 1:
      return decoding.greedy(self.model, params, source, return_attention=False, **kw)[0]
    return decoding.beam_search(self.model, params, source, beam_size=beam_size, alpha=alpha,
                                **kw)[0][:, 0]

  def eval_step(self, params, batch):
    """Teacher-forced loss sums, and greedy translations for exact match, BLEU and chrF."""
    logits, _ = self.model.apply({'params': params}, batch['source'], batch['target_in'])
    weights = (batch['target_out'] != tokenizers.PAD) * batch['mask'][:, None]
    nll = classification.softmax_cross_entropy(logits, batch['target_out'])
    predicted = self.translate(params, batch['source'])
    exact = jnp.all(predicted == batch['target_out'], axis=1)
    sums = {'loss': (nll * weights).sum(), 'tokens': weights.sum(),
            'exact': (exact * batch['mask']).sum(), 'count': batch['mask'].sum()}
    return sums, {'predicted': predicted, 'index': batch['index'], 'mask': batch['mask']}

  def summarize(self, sums, outputs, source):
    hypotheses, references = [], []
    for out in outputs:
      for tokens, index, mask in zip(out['predicted'], out['index'], out['mask']):
        if mask:
          hypotheses.append(self.tokenizer.decode(tokens))
          references.append(source[int(index)]['target'])
    bleu = self.bleu.corpus_score(hypotheses, [references])
    if jax.process_index() == 0:
      print(f'sacreBLEU {bleu.score:.2f}, signature: {self.bleu.get_signature()}')
    chrf = sacrebleu.metrics.CHRF().corpus_score(hypotheses, [references])
    return {'exact_match': sums['exact'] / sums['count'], 'loss': sums['loss'] / sums['tokens'],
            'bleu': bleu.score, 'chrf': chrf.score, 'count': sums['count']}

  def translate_texts(self, params, texts, beam_size=1, alpha=0.6, batch_size=64):
    """Plain strings in, translations out (the --mode=translate command)."""
    length = self.config.data.max_source_length
    run = jax.jit(lambda p, s: self.translate(p, s, beam_size, alpha))
    out = []
    for start in range(0, len(texts), batch_size):
      chunk = texts[start:start + batch_size]
      source = np.stack([data.pad_tokens(self.tokenizer.encode(t), length, 'source',
                                         {'index': start + i, 'source': t})
                         for i, t in enumerate(chunk)])
      out.extend(self.tokenizer.decode(row) for row in np.asarray(run(params, source)))
    return out

  def write_plots(self, params, workdir, num_examples=4):
    """alignment.png: where the decoder attends while translating a few eval sentences."""
    from vit_jax import plots
    encode = Preprocess(self.tokenizer, self.config.data.max_source_length,
                        self.config.data.max_target_length)
    examples = [self.eval_source[i] for i in range(min(num_examples, len(self.eval_source)))]
    source = np.stack([encode.eval(e)['source'] for e in examples])
    tokens, _, attention = decoding.greedy(
        self.model, params, source, max_length=self.config.data.max_target_length,
        bos_id=tokenizers.BOS, eos_id=tokenizers.EOS, pad_id=tokenizers.PAD)
    weights = np.asarray(attention)[:, :, -1].mean(axis=2)  # [B, T, S]
    panels = [(self.tokenizer.pieces(s), self.tokenizer.pieces(t), w)
              for s, t, w in zip(source, np.asarray(tokens), weights)]
    return plots.alignments(panels, os.path.join(workdir, 'alignment.png'))
