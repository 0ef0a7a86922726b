"""Every family's speed table in one run: each train step against its PyTorch peer at the same
size, batch and dtype (alternating rounds, medians with min-max, our MFU against a matmul timed
among the same rounds), headed by the machine and the versions that made it.

  .venv/bin/python benchmarks/speed.py                        # all of them, ~10 min on 2 cores
  .venv/bin/python benchmarks/speed.py --only=vit_s,detr --rounds=7
  .venv/bin/python benchmarks/speed.py --jemalloc --out=benchmarks/results/throughput_jemalloc.md
  .venv/bin/python benchmarks/speed.py --cpu_devices=2 --out=benchmarks/results/throughput_two_devices.md

Each benchmark runs in a process of its own, so no thread pool or memory carries over from
the one before; on one device (XLA_FLAGS cleared: no simulated devices), or with
--cpu_devices=N on N CPU devices (JAX_NUM_CPU_DEVICES=N), our step then splitting its batch
across them, as on N accelerators; PyTorch's step runs on every core either way. With --jemalloc
those processes run under jemalloc told to keep freed memory (benchmarks/allocator.py), both
sides of every table alike. The report goes to stdout and, section by section as each ends,
to --out.
"""
import argparse
import datetime
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from allocator import JEMALLOC, KEEP  # noqa: E402
from timing import cpu_name  # noqa: E402

BENCHMARKS = {  # name: (script and its arguments, what it compares)
    'vit_ti': (['vit_throughput.py', '--variant=Ti/16', '--batch=16'],
               'ViT-Ti/16 vs Hugging Face ViT'),
    'vit_s': (['vit_throughput.py', '--variant=S/16', '--batch=8'],
              'ViT-S/16 vs Hugging Face ViT'),
    'transformer': (['transformer_throughput.py'],
                    'Transformer vs torch.nn.Transformer; cached vs uncached decoding'),
    'detr': (['detr_throughput.py'],
             'DETR and Deformable DETR vs Hugging Face; deformable sampling; matching'),
}
CPU_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')


def cpu_fields():
  """/proc/cpuinfo's first processor as {field: value} (empty where there is none)."""
  fields = {}
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        fields.setdefault(key.strip(), value.strip())
  return fields


def machine(allocator):
  """The header: date, CPU (model, family, the flags that decide matmul speed, cores),
  versions, the allocator both sides ran under."""
  import jax
  import torch
  fields = cpu_fields()
  flags = [f for f in CPU_FLAGS if f in fields.get('flags', '').split()]
  return (f'{datetime.date.today().isoformat()}; {cpu_name()}, flags: '
          f'{", ".join(flags) or "none of " + ", ".join(CPU_FLAGS)}; '
          f'jax {jax.__version__}, torch {torch.__version__}; {allocator}')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--only', default=','.join(BENCHMARKS),
                      help=f'comma-separated, of {", ".join(BENCHMARKS)}')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--out', default=os.path.join(HERE, 'results', 'throughput.md'))
  parser.add_argument('--jemalloc', action='store_true',
                      help=f'run every benchmark under {JEMALLOC}, keeping freed memory')
  parser.add_argument('--cpu_devices', type=int, default=1,
                      help='our step on this many CPU devices, its batch split across them')
  args = parser.parse_args()
  names = args.only.split(',')
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown:
    parser.error(f'unknown benchmark(s) {unknown}; expected some of {list(BENCHMARKS)}')
  if args.jemalloc and not os.path.exists(JEMALLOC):
    parser.error(f'--jemalloc: no {JEMALLOC} (Debian: apt-get install libjemalloc2)')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  env = dict(os.environ, XLA_FLAGS='', JAX_NUM_CPU_DEVICES=str(args.cpu_devices))
  allocator = 'glibc malloc'
  if args.jemalloc:
    env.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF=KEEP)
    allocator = f'jemalloc (LD_PRELOAD={JEMALLOC} MALLOC_CONF={KEEP})'
  with open(args.out, 'w') as out:
    def write(text):
      print(text, flush=True)
      out.write(text + '\n')
      out.flush()
    devices = (f'ours on {args.cpu_devices} CPU devices, the batch split across them'
               if args.cpu_devices > 1 else 'ours on one device')
    write(f'# Speed, side by side\n\n{machine(allocator)}; {devices}\n')
    for name in names:
      script, what = BENCHMARKS[name]
      command = [sys.executable, os.path.join(HERE, script[0]), *script[1:],
                 f'--rounds={args.rounds}']
      write(f'## {name}: {what}\n\n`{" ".join(["benchmarks/" + script[0], *command[2:]])}`\n')
      result = subprocess.run(command, env=env, capture_output=True, text=True)
      if result.returncode:
        write(f'failed (exit {result.returncode}):\n```\n{result.stderr[-3000:]}\n```\n')
      else:
        write(result.stdout.strip() + '\n')


if __name__ == '__main__':
  main()
