"""Transformer speed, side by side in one run on this machine.

  .venv/bin/python benchmarks/transformer_throughput.py

1. Training: target tokens/s of our train step vs torch.nn.Transformer (+ the same embedding and
   tied output projection, AdamW) at the same size, batch and sequence lengths, float32.
2. Decoding: generated tokens/s of our cached greedy decoder vs re-running the decoder on the
   whole prefix at every step (no cache), both jit-compiled.
Timed alternately after warm-up; medians with min-max.
"""
import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import alternate, matmul_run, mfu, our_train_step, table  # noqa: E402
from configs import transformer as transformer_config  # noqa: E402
from vit_jax import train  # noqa: E402
from vit_jax.ops import decoding  # noqa: E402


def batch_of(rng, batch, src_len, tgt_len, vocab):
  source = rng.integers(4, vocab, (batch, src_len)).astype(np.int32)
  target = rng.integers(4, vocab, (batch, tgt_len + 1)).astype(np.int32)
  return {'source': source, 'target_in': target[:, :-1], 'target_out': target[:, 1:]}


def paired_setup(batch, length):
  """(our config, its model's vocabulary size, a batch) for the pair with torch: the default
  translation model with dropout off, as torch's side runs it."""
  config = transformer_config.get_config()
  config.update_from_flattened_dict({'batch_size': batch, 'model.dropout_rate': 0.0})
  vocab = train.Trainer(config).task.model.vocab_size  # As the variant and overrides resolve.
  return config, vocab, batch_of(np.random.default_rng(0), batch, length, length, vocab)


def torch_train(m, vocab, data):
  """m: our Transformer module (its sizes)."""
  import torch
  model = torch.nn.Transformer(d_model=m.hidden_size, nhead=m.num_heads,
                               num_encoder_layers=m.num_layers, num_decoder_layers=m.num_layers,
                               dim_feedforward=m.mlp_dim, dropout=m.dropout_rate,
                               batch_first=True)
  embed = torch.nn.Embedding(vocab, m.hidden_size)
  params = list(model.parameters()) + list(embed.parameters())
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  src, tgt_in, tgt_out = (torch.from_numpy(data[k]).long() for k in
                          ('source', 'target_in', 'target_out'))
  causal = torch.nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
  scale = m.hidden_size ** 0.5

  def step():
    opt.zero_grad(set_to_none=True)
    out = model(embed(src) * scale, embed(tgt_in) * scale, tgt_mask=causal)
    logits = out @ embed.weight.T
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1),
                                             label_smoothing=0.1)
    loss.backward()
    opt.step()

  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--length', type=int, default=48)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  config, vocab, data = paired_setup(args.batch, args.length)
  ours_step, trainer = our_train_step(config, data)
  m = trainer.task.model
  torch_step = torch_train(m, vocab, data)

  params = trainer.initial_state()['params']
  model = trainer.task.model
  source = jnp.asarray(data['source'])
  cached = jax.jit(lambda p, s: decoding.greedy(model, p, s, max_length=args.length, bos_id=1,
                                                eos_id=-1, return_attention=False)[0])
  uncached = jax.jit(lambda p, s: decoding.greedy_without_cache(
      model, p, s, max_length=args.length, bos_id=1, eos_id=-1)[0])
  decode = {'cached': lambda: jax.block_until_ready(cached(params, source)),
            'uncached': lambda: jax.block_until_ready(uncached(params, source))}
  matmul, matmul_flops = matmul_run()
  runs = {'ours': ours_step, 'torch': torch_step, **decode, 'matmul': matmul}
  times = alternate(runs, args.rounds)
  tokens = args.batch * args.length
  print(f'hidden_size {m.hidden_size}, {m.num_layers}+{m.num_layers} layers, mlp_dim {m.mlp_dim}, '
        f'{m.num_heads} heads, vocab {vocab}, batch {args.batch}, source and target length '
        f'{args.length}, float32, {args.rounds} alternating rounds')
  table('Training step (AdamW, forward + backward + update)', 'target tokens/s',
        [('vit_jax (JAX/Flax)', times['ours']), ('torch.nn.Transformer', times['torch'])],
        tokens)
  mfu(ours_step.flops(), statistics.median(times['ours']), times['matmul'], matmul_flops)
  table('Greedy decoding of the whole batch (EOS disabled: every step decodes)',
        'generated tokens/s',
        [('ours, key/value cache', times['cached']), ('ours, no cache', times['uncached'])],
        tokens)


if __name__ == '__main__':
  main()
