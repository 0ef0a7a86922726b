"""Machine translation with the encoder–decoder Transformer: data, loss, decoding, BLEU."""
import functools
import os
import sys

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import sacrebleu
import tqdm

from vit_jax import compiling
from vit_jax import errors
from vit_jax import losses
from vit_jax.data import pipeline
from vit_jax.data import tokenizers
from vit_jax.data import translation as data
from vit_jax.models import sizes
from vit_jax.models import transformer
from vit_jax.ops import decoding
from vit_jax.tasks import base


def make_source(c, split):
  if c.name == 'numbers':
    return data.NumberWords(split, c.source_lang, c.target_lang, c.max_value)
  if c.name == 'dates':
    return data.Dates(split, c.locale, c.num_dates)
  if c.name == 'files':
    return data.ParallelFile(c.data_dir, split)
  if c.name == 'tfds':
    return data.Tfds(c.tfds_name, split, c.data_dir, c.source_lang, c.target_lang)
  raise errors.UserError(f"Unknown data.name {c.name!r} for translation; expected 'numbers', "
                         "'dates', 'files' or 'tfds'.")


class Preprocess(data.Encode):
  """Evaluation encodes one pair a row; training does too, unless the rows come packed."""

  def __init__(self, tokenizer, max_source_length, max_target_length, too_long='error',
               packed=False):
    super().__init__(tokenizer, max_source_length, max_target_length, too_long)
    self.packed = packed

  def train(self, example, rng):
    return example if self.packed else self(example, rng)

  def eval(self, example):
    return self(example)


PACKING = ('source_segments', 'target_segments', 'source_positions', 'target_positions')


class TranslationTask(base.Task):
  artifacts = ('tokenizer.json',)  # The vocabulary decides the embedding; it travels with it.

  def build_model(self):
    return sizes.build(transformer.Transformer, transformer.decode_variant, self.config.model,
                       vocab_size=self.tokenizer.vocab_size, pad_id=tokenizers.PAD,
                       compute=base.compute_options(self.config))

  def model_dim(self):
    return self.model.hidden_size

  @functools.cached_property
  def raw_sources(self):
    """(train, eval) sentence-pair sources, generated or read on first use."""
    c = self.config.data
    return make_source(c, c.train_split), make_source(c, c.eval_split)

  @functools.cached_property
  def sources(self):
    """raw_sources without the pairs over the maximum lengths when data.too_long='drop'."""
    if self.config.data.get('too_long', 'error') != 'drop':
      return self.raw_sources
    encode = self.encoder()
    kept = []
    for split, source in zip(('train', 'eval'), self.raw_sources):
      fits = [i for i in range(len(source)) if encode.fits(source[i])]
      if len(fits) < len(source):
        logging.warning("data.too_long='drop': dropped %d of the %d %s pairs longer than "
                        'data.max_source_length / max_target_length.', len(source) - len(fits),
                        len(source), split)
      kept.append(pipeline.Subset(source, fits) if len(fits) < len(source) else source)
    return tuple(kept)

  def encoder(self, packed=False):
    c = self.config.data
    too_long = c.get('too_long', 'error')
    return Preprocess(self.tokenizer, c.max_source_length, c.max_target_length,
                      'error' if too_long == 'drop' else too_long, packed)

  @functools.cached_property
  def tokenizer(self):
    """The workdir's tokenizer.json when resuming (it must match the checkpoint); else the
    one beside config.pretrained.path when fine-tuning; else a new one trained on the
    training text. Saved in the workdir either way."""
    c = self.config.data
    path = os.path.join(self.workdir, 'tokenizer.json') if self.workdir else None
    self.tokenizer_path = path
    if path and os.path.exists(path):
      return self._checked(tokenizers.load(path), path)
    pretrained_path = self.config.pretrained.path
    beside = os.path.join(os.path.dirname(pretrained_path), 'tokenizer.json')
    if pretrained_path and os.path.exists(beside):
      tokenizer = self._checked(tokenizers.load(beside), beside)
      self.tokenizer_path = beside
    else:
      texts = data.sample_texts(self.raw_sources[0], c.tokenizer_examples)
      tokenizer = tokenizers.train(c.tokenizer, texts, c.vocab_size)
    if path and jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      tokenizers.save(tokenizer, path)
    return tokenizer

  def _checked(self, tokenizer, path):
    """A saved tokenizer, if it is the kind the config asks for. data.vocab_size bounds a
    SentencePiece vocabulary from above: a small corpus yields fewer tokens."""
    c = self.config.data
    kind = tokenizer.to_json()['type']
    if kind != c.tokenizer or (kind == 'sentencepiece' and tokenizer.vocab_size > c.vocab_size):
      raise errors.UserError(
          f'{path} is a {kind} tokenizer of {tokenizer.vocab_size} tokens, but the config '
          f'asks for data.tokenizer={c.tokenizer!r}, data.vocab_size={c.vocab_size}. The '
          'checkpoints trained with it need the same settings: use them, or a new --workdir.')
    return tokenizer

  def checkpoint_hint(self):
    """Said when a checkpoint does not fit the model: the vocabulary decides its embedding."""
    size = self.tokenizer.vocab_size
    return f'The vocabulary ({self.tokenizer_path or "a new tokenizer"}) has {size} tokens.'

  def datasets(self):
    return self._datasets

  @functools.cached_property
  def _datasets(self):
    c = self.config.data
    train, evaluation = self.sources
    preprocess = self.encoder(packed=c.pack)
    if c.pack:
      train = data.Packed(train, preprocess, seed=self.config.seed)
    return base.Datasets(train, evaluation, preprocess)

  def check_data(self, datasets):
    """Every pair of both splits encoded once (packed rows are checked as they are packed):
    an over-long pair fails here, named by its file and line, before training starts. With
    data.too_long='truncate' the number of truncated pairs is reported instead."""
    encode = self.encoder()
    threads = self.config.data.num_threads
    for what, source in (('Training', self.sources[0]), ('Evaluation', self.sources[1])):
      pipeline.check_all(source, encode.eval, what, num_threads=threads,
                         desc=f'checking {what.lower()} data')
      if encode.too_long == 'truncate':
        cut = sum(not encode.fits(source[i]) for i in range(len(source)))
        if cut:
          logging.warning("data.too_long='truncate': %d of the %d %s pairs are truncated.",
                          cut, len(source), what.lower())

  def dummy_batch(self, batch_size):
    c = self.config.data
    rows = lambda length: np.ones((batch_size, length), np.int32)
    batch = {'source': rows(c.max_source_length), 'target_in': rows(c.max_target_length),
             'target_out': rows(c.max_target_length)}
    if c.pack:
      batch.update({k: rows(c.max_source_length if k.startswith('source') else
                            c.max_target_length) for k in PACKING})
    return batch

  def init(self, rng, batch):
    return self.model.init({'params': rng}, batch['source'], batch['target_in'])['params']

  def loss_fn(self, params, batch, rng, frozen=None):
    """Label-smoothed cross-entropy over real target tokens, normalised by their number.
    Packed rows (data.pack) carry segment ids and positions, so packed pairs stay apart."""
    del frozen  # No teacher.
    packing = {k: batch[k] for k in PACKING} if self.config.data.pack else {}
    logits, _ = self.model.apply({'params': params}, batch['source'], batch['target_in'],
                                 **packing, train=True, rngs={'dropout': rng})
    tokens = batch['target_out'] != tokenizers.PAD
    loss = losses.ratio(losses.weighted_cross_entropy(
        logits, batch['target_out'], tokens, self.config.get('label_smoothing', 0.0)))
    accuracy = losses.ratio(losses.weighted_accuracy(logits, batch['target_out'], tokens))
    return loss, {'token_accuracy': accuracy}

  def translate(self, params, source, beam_size=1, alpha=0.6):
    """source [B, S] → tokens [B, T] (greedy, or the best beam)."""
    kw = dict(max_length=self.config.data.max_target_length, bos_id=tokenizers.BOS,
              eos_id=tokenizers.EOS, pad_id=tokenizers.PAD)
    if beam_size == 1:
      return decoding.greedy(self.model, params, source, return_attention=False, **kw)[0]
    return decoding.beam_search(self.model, params, source, beam_size=beam_size, alpha=alpha,
                                **kw)[0][:, 0]

  def eval_step(self, params, batch):
    """Teacher-forced loss over real target tokens, and greedy translations for exact match,
    BLEU and chrF."""
    logits, _ = self.model.apply({'params': params}, batch['source'], batch['target_in'])
    weight = batch[pipeline.WEIGHT]
    tokens = (batch['target_out'] != tokenizers.PAD) * weight[:, None]
    predicted = self.translate(params, batch['source'])
    exact = jnp.all(predicted == batch['target_out'], axis=1)
    return ({'exact_match': losses.weighted_mean(exact, weight),
             'loss': losses.weighted_cross_entropy(logits, batch['target_out'], tokens)},
            {'predicted': predicted, 'index': batch['index']})

  def eval_metrics(self, outputs, source):
    """sacreBLEU (its signature printed) and chrF of the decoded test sentences."""
    hypotheses = [self.tokenizer.decode(tokens) for tokens in outputs['predicted']]
    references = [source[int(i)]['target'] for i in outputs['index']]
    bleu_metric = sacrebleu.metrics.BLEU(tokenize=self.config.get('bleu_tokenize', '13a'))
    bleu = bleu_metric.corpus_score(hypotheses, [references])
    if jax.process_index() == 0:  # Through the progress bar, so it stays on its own line.
      tqdm.tqdm.write(f'sacreBLEU {bleu.score:.2f}, signature: {bleu_metric.get_signature()}')
    chrf = sacrebleu.metrics.CHRF().corpus_score(hypotheses, [references])
    return {'bleu': bleu.score, 'chrf': chrf.score}

  def translate_texts(self, params, texts, beam_size=1, alpha=0.6, batch_size=64):
    """Plain strings in, translations out (the --mode=translate command)."""
    length = self.config.data.max_source_length
    truncate = self.config.data.get('too_long', 'error') == 'truncate'
    rows = []
    for number, text in enumerate(texts, 1):
      unknown = self.tokenizer.unknown_characters(text)
      if unknown:
        logging.warning('Input %d: the vocabulary lacks %s; they become <unk>.', number,
                        ', '.join(repr(c) for c in unknown))
      ids = self.tokenizer.encode(text)
      if len(ids) > length and not truncate:
        raise errors.UserError(
            f'Input {number} has {len(ids)} tokens, more than data.max_source_length='
            f"{length}: {text!r}. Shorten it, or set --config.data.too_long=truncate.")
      rows.append(data.pad_tokens(ids[:length], length))
    run = jax.jit(lambda p, s: self.translate(p, s, beam_size, alpha))
    out = []
    for start in range(0, len(rows), batch_size):
      source = np.stack(rows[start:start + batch_size])
      out.extend(self.tokenizer.decode(row) for row in np.asarray(run(params, source)))
    return out

  def write_plots(self, params, workdir, num_examples=4):
    """alignment.png: where the decoder attends while translating a few eval sentences."""
    from vit_jax import plots
    encode = self.encoder()
    eval_source = self.sources[1]
    examples = [eval_source[i] for i in range(min(num_examples, len(eval_source)))]
    source = np.stack([encode.eval(e)['source'] for e in examples])
    tokens, _, attention = compiling.run_once(lambda p, s: decoding.greedy(
        self.model, p, s, max_length=self.config.data.max_target_length,
        bos_id=tokenizers.BOS, eos_id=tokenizers.EOS, pad_id=tokenizers.PAD), params, source)
    weights = np.asarray(attention)[:, :, -1].mean(axis=2)  # [B, T, S]
    panels = [(self.tokenizer.pieces(s), self.tokenizer.pieces(t), w)
              for s, t, w in zip(source, np.asarray(tokens), weights)]
    return [plots.alignments(panels, os.path.join(workdir, 'alignment.png'))]

  def commands(self):
    return {'translate': self.translate_command}

  def translate_command(self, params):
    """--mode=translate: config.translate.input (a file, one sentence a line; '-' = stdin)
    translated with beam search (config.translate.beam_size, 1 = greedy), one line each."""
    c = self.config.translate
    with (sys.stdin if c.input == '-' else open(c.input, encoding='utf-8')) as f:
      texts = [line.rstrip('\n') for line in f if line.strip()]
    for text in self.translate_texts(params, texts, c.beam_size, c.alpha):
      print(text)
