"""Where a train step's time goes, by kind of operation, in float32 and bfloat16 side by side.

  XLA_FLAGS= .venv/bin/python benchmarks/op_profile.py                  # ViT-Ti/16, batch 8
  XLA_FLAGS= .venv/bin/python benchmarks/op_profile.py --variant=S/16 --top=15
  XLA_FLAGS= .venv/bin/python benchmarks/op_profile.py --peer     # + Hugging Face's, float32
  XLA_FLAGS= .venv/bin/python benchmarks/op_profile.py --family=detr  # float32, with its peer
  XLA_FLAGS= .venv/bin/python benchmarks/op_profile.py --family=deformable
  XLA_FLAGS= .venv/bin/python benchmarks/op_profile.py --family=transformer

Runs the ViT train step under jax.profiler, reads the per-operation times from its trace and
sorts each compiled operation into a kind by what its HLO computes: matmuls (YNNPACK's or
XLA's own), reductions, transposes and copies, pure dtype conversions, slices/pads/concats,
other elementwise work. Times are CPU milliseconds per step summed over the operations; XLA
runs independent operations at once on several cores, so the sum exceeds the step's wall
time, which is printed too. XLA's own matmuls and convolutions run on threads the trace does
not see; the step's time with no traced operation running stands in for them. --top lists
the costliest single operations of each setting, --groups the costliest groups of like ones
(XLA names a fusion by what it computes: 50 'wrapped_broadcast' of one shape, say).

--peer profiles Hugging Face's PyTorch ViT of the same size (benchmarks/vit_throughput.py's
float32 step) under torch.profiler too, sorts its ATen operations (self time: the op's own
kernel, its children apart) into the same kinds, and prints both float32 steps side by side:
the account of where PyTorch gains its lead. PyTorch runs one op at a time, each on both
cores, so its sum is about its wall time. --family=detr, deformable and transformer do the same
for the pairs of benchmarks/detr_throughput.py and transformer_throughput.py (float32 only;
the peer always).
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import precision  # noqa: E402
from timing import cpu_name  # noqa: E402

# XLA's own matmuls and convolutions run on Eigen's threads, which the trace does not see: its
# event ends when the work is handed over (6 weight-gradient dots, 3.9 ms each alone, traced
# as 0.3-0.7 ms). The step's time with no traced operation running is their lower bound.
UNTRACED = 'no traced operation running (XLA\'s own matmuls, convolutions)'
KINDS = ('matmul (YNNPACK)', 'matmul (XLA)', UNTRACED, 'reduction', 'transpose or copy',
         'dtype conversion only', 'slice, pad, concatenate', 'other elementwise', 'other')
# Opcodes that move or relabel data without computing.
_LAYOUT = {'parameter', 'constant', 'bitcast', 'broadcast', 'reshape', 'tuple',
           'get-tuple-element', 'iota'}


def hlo_instructions(text):
  """{instruction name: (shape, opcode, opcodes inside the computation it calls or ())}."""
  bodies, current = {}, None
  for line in text.splitlines():
    head = re.match(r'(?:ENTRY )?%([\w.\-]+) .*\{$', line)
    if head:
      current = bodies.setdefault(head.group(1), [])
    elif current is not None and line.strip() and line.strip() != '}':
      current.append(line)
  op = re.compile(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(')
  found = {}
  for lines in bodies.values():
    for line in lines:
      m = op.match(line)
      if not m:
        continue
      called = re.search(r'calls=%([\w.\-]+)', line)
      inner = tuple(op.match(l).group(3) for l in bodies.get(called.group(1), ())
                    if op.match(l)) if called else ()
      found[m.group(1)] = (m.group(2), m.group(3), inner, '__ynn_fusion' in line)
  return found


def kind(opcode, inner, ynn):
  ops = set(inner or (opcode,)) - _LAYOUT
  if 'dot' in ops or 'convolution' in ops:
    return 'matmul (YNNPACK)' if ynn else 'matmul (XLA)'
  if ops & {'reduce', 'reduce-window'}:
    return 'reduction'
  if ops & {'transpose', 'copy'}:
    return 'transpose or copy'
  if ops == {'convert'}:
    return 'dtype conversion only'
  if ops & {'slice', 'pad', 'concatenate', 'dynamic-slice', 'dynamic-update-slice'}:
    return 'slice, pad, concatenate'
  if opcode == 'fusion' or ops & {'add', 'multiply', 'subtract', 'divide', 'exponential',
                                   'select', 'compare', 'convert', 'maximum', 'rsqrt', 'tanh'}:
    return 'other elementwise'
  return 'other'


# ATen operations by kind (names without 'aten::'); the rest is 'other elementwise' or 'other'.
_TORCH_KINDS = (
    ('matmul, convolution', r'(add|b|baddb)?mm|matmul|linear|(mkldnn_|_)?convolution'
                            r'(_backward)?'),
    ('fused attention (matmuls + softmax)', r'_?scaled_dot_product\w*|_flash_attention\w*'),
    ('LayerNorm, softmax (one kernel each)', r'native_layer_norm(_backward)?|_?(log_)?softmax'
                                             r'(_backward_data)?'),
    ('reduction', r'sum|mean|amax|max|_foreach_norm|linalg_vector_norm|norm'),
    ('transpose or copy', r'copy_|clone|contiguous|_to_copy|to'),
    ('slice, pad, concatenate', r'cat|slice_backward|select_backward|constant_pad_nd|index\w*'),
    ('other', r'empty\w*|zeros?\w*|as_strided|view|reshape|t|transpose|permute|expand|'
              r'unsqueeze|squeeze|flatten|detach|set_|resize_|item|_local_scalar_dense'))
_TORCH_ELEMENTWISE = r'add_?|sub_?|mul_?|div_?|gelu(_backward)?|_foreach_\w+|addc(mul|div)_?|' \
                     r'lerp_?|sqrt|rsqrt|pow|neg|fill_|zero_|where|clamp\w*|nll_loss\w*|' \
                     r'threshold_backward|relu_?'


def torch_kind(name):
  """The kind of one ATen operation, e.g. 'aten::addmm' → 'matmul, convolution'."""
  op = name.removeprefix('aten::')
  for kind_name, pattern in _TORCH_KINDS:
    if re.fullmatch(pattern, op):
      return kind_name
  if re.fullmatch(_TORCH_ELEMENTWISE, op):
    return 'other elementwise'
  return 'other'


def profile_torch(step, steps):
  """profile()'s answer for a PyTorch step: ATen ops' self CPU time by kind."""
  import torch
  step()
  step()
  walls = []
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      start = time.perf_counter()
      step()
      walls.append(time.perf_counter() - start)
  by_kind, rows = collections.Counter(), []
  for e in prof.key_averages():
    if not e.key.startswith('aten::'):
      continue  # Autograd nodes and profiler labels: their ATen children are counted.
    ms = e.self_cpu_time_total / 1e3 / steps
    kind_name = torch_kind(e.key)
    by_kind[kind_name] += ms
    rows.append((ms, e.key, f'{e.count // steps} calls', kind_name))
  return by_kind, sorted(rows, reverse=True), 1e3 * statistics.median(walls)


def profile(step, compiled, steps):
  """({kind: CPU ms per step}, [(ms per step, name, shape, kind)], wall ms per step)."""
  step()
  step()  # Warm: initial state and compilation out of the way.
  ops = hlo_instructions(compiled.as_text())
  with tempfile.TemporaryDirectory() as logdir:
    walls = []
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(steps):
        start = time.perf_counter()
        step()
        walls.append(time.perf_counter() - start)
    trace, = glob.glob(os.path.join(logdir, '**', '*.trace.json.gz'), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  per_op, spans = collections.Counter(), []
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in ops:
      per_op[e['name']] += e['dur'] / 1e3 / steps
      spans.append((e['ts'], e['ts'] + e['dur']))
  by_kind = collections.Counter()
  by_kind[UNTRACED] = max(0.0, statistics.mean(walls) * 1e3 - covered(spans) / 1e3 / steps)
  rows = []
  for name, ms in per_op.items():
    shape, opcode, inner, ynn = ops[name]
    k = kind(opcode, inner, ynn)
    by_kind[k] += ms
    rows.append((ms, name, shape, k))
  return by_kind, sorted(rows, reverse=True), 1e3 * statistics.median(walls)


def covered(spans):
  """Length of the union of [start, end) spans: how long at least one of them ran."""
  total, reach = 0, float('-inf')
  for start, end in sorted(spans):
    total += max(0, end - max(start, reach))
    reach = max(reach, end)
  return total


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--variant', default='Ti/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--top', type=int, default=0)
  parser.add_argument('--groups', type=int, default=0,
                      help='list the costliest groups of like operations: one name, one result')
  parser.add_argument('--peer', action='store_true')
  parser.add_argument('--family', default='vit', choices=('vit',) + tuple(PAIRS))
  args = parser.parse_args()
  if args.family == 'vit':
    settings = {'float32': {}, 'bfloat16': {'dtype': 'bfloat16'}}
    results = {}
    for name, overrides in settings.items():
      step, (compiled, _) = precision.setup(args, jax.devices()[:1], **overrides)
      results[name] = profile(step, compiled, args.steps)
    if args.peer:
      import vit_throughput
      results['PyTorch float32'] = profile_torch(
          vit_throughput.pytorch(args.variant, args.image_size, args.batch, 1000), args.steps)
    what = f'ViT-{args.variant} train step, {args.image_size}x{args.image_size}, batch {args.batch}'
  else:  # The peer always: a single float32 column would compare nothing.
    step, compiled, peer, what = PAIRS[args.family]()
    results = {'float32': profile(step, compiled, args.steps),
               'PyTorch float32': profile_torch(peer, args.steps)}

  print(f'\n{cpu_name()}; {what}, 1 device, {args.steps} profiled steps; CPU ms per step by '
        'kind of operation\n')
  if args.family == 'vit':
    kind_table(results, list(settings), KINDS)
  if 'PyTorch float32' in results:
    print('\nOurs against PyTorch, both float32 (PyTorch: ATen self times)\n')
    by_kind, _, wall = results['float32']
    ours = collections.Counter()
    for k, ms in by_kind.items():  # YNNPACK's and XLA's matmuls in one row.
      ours['matmul, convolution' if k.startswith('matmul') else k] += ms
    kinds = tuple(dict.fromkeys([k for k, _ in _TORCH_KINDS] + list(KINDS[2:])))
    kind_table({'ours': (ours, None, wall), 'PyTorch': results['PyTorch float32']},
               ['ours', 'PyTorch'], kinds)
  for name in results if args.top else ():
    print(f'\nCostliest operations, {name} (CPU ms per step)\n')
    print('| ms | operation | result | kind |')
    print('|---|---|---|---|')
    for ms, op, shape, k in results[name][1][:args.top]:
      print(f'| {ms:.1f} | {op} | {shape.split("{")[0]} | {k} |')
  for name in results if args.groups else ():
    print(f'\nCostliest groups of operations, {name}: the same name less its number, the same '
          'result (CPU ms per step)\n')
    print('| ms | operations | count | result | kind |')
    print('|---|---|---|---|---|')
    groups = collections.defaultdict(list)
    for ms, op, shape, k in results[name][1]:
      groups[re.sub(r'\.\d+$', '', op), shape.split('{')[0], k].append(ms)
    for (op, shape, k), times in sorted(groups.items(), key=lambda g: -sum(g[1]))[:args.groups]:
      print(f'| {sum(times):.1f} | {op} | {len(times)} | {shape} | {k} |')


def our_step(config, data):
  """(our train step on data, its compiled program, the trainer)."""
  from timing import our_train_step
  from vit_jax import sharding
  step, trainer = our_train_step(config, data)
  batch = sharding.global_batch(data, trainer.mesh)
  return step, trainer.lower_train_step(trainer.abstract_state, batch, trainer.rng).compile(
      ), trainer


def detr_pair(family='detr'):
  """(our step, its compiled program, Hugging Face's step, a title) as detr_throughput.py
  pairs them: ResNet-10 with frozen BatchNorm, batch 32 of 128x128; DETR at stride 32 with
  2+6 layers, or Deformable DETR (family='deformable')."""
  import numpy as np
  import detr_throughput
  config = detr_throughput.paired_config(family, 32, 128)
  data = detr_throughput.synthetic_batch(np.random.default_rng(0), 32, 128,
                                         config.data.max_boxes, 3)
  step, compiled, trainer = our_step(config, data)
  peer = detr_throughput.torch_train(trainer.task.model, 3, data, config.optim.learning_rate)
  name = {'detr': 'DETR', 'deformable': 'Deformable DETR'}[family]
  return step, compiled, peer, f"detr_throughput.py's {name} train step, 128x128, batch 32"


def transformer_pair():
  """detr_pair() for transformer_throughput.py's pair: the default translation model against
  torch.nn.Transformer, batch 64, lengths 48, dropout off."""
  import transformer_throughput
  config, vocab, data = transformer_throughput.paired_setup(64, 48)
  step, compiled, trainer = our_step(config, data)
  peer = transformer_throughput.torch_train(trainer.task.model, vocab, data)
  return step, compiled, peer, "transformer_throughput.py's train step, batch 64, lengths 48"


PAIRS = {'detr': detr_pair, 'deformable': lambda: detr_pair('deformable'),
         'transformer': transformer_pair}


def kind_table(results, names, kinds):
  """One row per kind of operation: each setting's CPU ms per step, and the first over the last."""
  print('| kind of operation | ' + ' | '.join(names) + f' | {names[0]} / {names[-1]} |')
  print('|---|' + '---|' * (len(names) + 1))
  for k in kinds + ('all operations', 'step wall time'):
    if k == 'all operations':
      ms = [sum(results[n][0].values()) for n in names]
    elif k == 'step wall time':
      ms = [results[n][2] for n in names]
    else:
      ms = [results[n][0][k] for n in names]
    if not any(ms):
      continue
    ratio = f'{ms[0] / ms[-1]:.2f}x' if ms[0] and ms[-1] else '-'
    print(f'| {k} | ' + ' | '.join(f'{m:.1f}' for m in ms) + f' | {ratio} |')


if __name__ == '__main__':
  main()
