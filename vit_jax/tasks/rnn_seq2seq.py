"""Translation with the RNN encoder–decoders of models/rnn.py: the translation task's data,
tokenizer, loss, cached greedy and beam decoding, BLEU, alignment plot and translate mode,
with another model."""
from vit_jax import errors
from vit_jax.data import tokenizers
from vit_jax.models import rnn
from vit_jax.tasks import base
from vit_jax.tasks import translation


class RnnSeq2SeqTask(translation.TranslationTask):

  def build_model(self):
    if self.config.data.pack:
      raise errors.UserError('data.pack=True: packed rows need attention that keeps the pairs '
                             'of a row apart, which the RNN encoder–decoder has not; set '
                             'data.pack=False.')
    return rnn.Seq2Seq(**dict(self.config.model), vocab_size=self.tokenizer.vocab_size,
                       pad_id=tokenizers.PAD, compute=base.compute_options(self.config))
