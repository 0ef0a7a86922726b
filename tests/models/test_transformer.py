import jax
import numpy as np
import pytest

from vit_jax.models import transformer

PAD = 0


def tiny_model(**kw):
  args = dict(vocab_size=23, num_layers=2, hidden_size=32, mlp_dim=64, num_heads=4,
              dropout_rate=0.0, max_length=16)
  args.update(kw)
  return transformer.Transformer(**args)


def tokens(seed, shape, lengths):
  x = np.random.default_rng(seed).integers(1, 23, shape)
  for row, n in enumerate(lengths):
    x[row, n:] = PAD
  return x


def test_masked_future_and_padding_change_nothing():
  model = tiny_model()
  src, tgt = tokens(0, (2, 7), [7, 4]), tokens(1, (2, 6), [6, 6])
  params = jax.jit(model.init)(jax.random.key(0), src, tgt)
  apply = jax.jit(model.apply)  # Op by op compiles far more.
  logits, _ = apply(params, src, tgt)
  future = tgt.copy()
  future[:, 3:] = 5
  padded = src.copy()
  padded[1, 4:] = PAD  # Already padding; extend the source with more padding columns.
  padded = np.concatenate([padded, np.zeros((2, 3), int)], axis=1)
  logits2, _ = apply(params, src, future)
  np.testing.assert_allclose(np.asarray(logits)[:, :3], np.asarray(logits2)[:, :3], atol=1e-5)
  logits3, _ = apply(params, padded, tgt)
  np.testing.assert_allclose(np.asarray(logits)[1], np.asarray(logits3)[1], atol=1e-5)


def test_unknown_variant():
  with pytest.raises(ValueError, match="Unknown Transformer variant 'huge'; expected one of "
                                       r"\['tiny', 'small', 'base', 'big'\]"):
    transformer.decode_variant('huge')


def port_from_torch(t, num_layers, heads):
  """torch.nn.Transformer state dict → our encoder/decoder parameter trees."""
  t = {k: v.detach().numpy() for k, v in t.items()}
  d = t['encoder.norm.weight'].shape[0]
  norm = lambda p: {'scale': t[f'{p}.weight'], 'bias': t[f'{p}.bias']}
  dense = lambda p: {'kernel': t[f'{p}.weight'].T, 'bias': t[f'{p}.bias']}

  def mha(p):
    w, b = t[f'{p}.in_proj_weight'], t[f'{p}.in_proj_bias']
    split = lambda i: {'kernel': w[i * d:(i + 1) * d].T.reshape(d, heads, -1),
                       'bias': b[i * d:(i + 1) * d].reshape(heads, -1)}
    return {'query': split(0), 'key': split(1), 'value': split(2),
            'out': {'kernel': t[f'{p}.out_proj.weight'].T.reshape(heads, -1, d),
                    'bias': t[f'{p}.out_proj.bias']}}

  encoder = {'encoder_norm': norm('encoder.norm')}
  decoder = {'decoder_norm': norm('decoder.norm')}
  for i in range(num_layers):
    e, dd = f'encoder.layers.{i}', f'decoder.layers.{i}'
    encoder[f'encoderblock_{i}'] = {
        'MultiHeadDotProductAttention_1': mha(f'{e}.self_attn'), 'LayerNorm_0': norm(f'{e}.norm1'),
        'LayerNorm_2': norm(f'{e}.norm2'),
        'MlpBlock_3': {'Dense_0': dense(f'{e}.linear1'), 'Dense_1': dense(f'{e}.linear2')}}
    decoder[f'decoderblock_{i}'] = {
        'SelfAttention': mha(f'{dd}.self_attn'), 'CrossAttention': mha(f'{dd}.multihead_attn'),
        'LayerNorm_0': norm(f'{dd}.norm1'), 'LayerNorm_1': norm(f'{dd}.norm2'),
        'LayerNorm_2': norm(f'{dd}.norm3'),
        'MlpBlock': {'Dense_0': dense(f'{dd}.linear1'), 'Dense_1': dense(f'{dd}.linear2')}}
  return encoder, decoder


@pytest.mark.parametrize('norm_first', [False, True])
def test_parity_with_torch_nn_transformer(norm_first):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  reference = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2,
                                   num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
                                   batch_first=True, norm_first=norm_first).eval()
  with torch.no_grad():
    for p in reference.parameters():
      p.normal_(0.0, 0.3)
  model = tiny_model(norm_first=norm_first, final_norm=True)
  src, tgt = tokens(2, (3, 9), [9, 5, 2]), tokens(3, (3, 7), [7, 7, 3])
  params = jax.device_get(jax.jit(model.init)(jax.random.key(0), src, tgt))['params']
  encoder, decoder = port_from_torch(reference.state_dict(), 2, 4)
  assert jax.tree.map(np.shape, encoder) == jax.tree.map(np.shape, params['encoder'])
  assert jax.tree.map(np.shape, decoder) == jax.tree.map(np.shape, params['decoder'])
  params = dict(params, encoder=encoder, decoder=decoder)
  logits, _ = jax.jit(model.apply)({'params': params}, src, tgt)

  # The reference gets the same embedded inputs (√d-scaled shared table + sinusoids).
  table = params['embedding']['embedding']
  pe = np.asarray(transformer.posemb.sinusoidal_1d(16, 32))
  embed = lambda x: torch.from_numpy((table[x] * np.sqrt(32) + pe[:x.shape[1]]).astype(np.float32))
  with torch.no_grad():
    out = reference(embed(src), embed(tgt),
                    tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(7).bool(),
                    src_key_padding_mask=torch.from_numpy(src == PAD),
                    tgt_key_padding_mask=torch.from_numpy(tgt == PAD),
                    memory_key_padding_mask=torch.from_numpy(src == PAD))
  expected = out.numpy() @ table.T
  real = tgt != PAD  # torch leaves padded query rows unspecified; compare the real ones.
  assert np.abs(np.asarray(logits)[real] - expected[real]).max() < 1e-4
