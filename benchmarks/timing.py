"""Side-by-side timing shared by the benchmarks: alternate the contenders after a warm-up,
report medians with min-max and speed ratios in a Markdown table."""
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from vit_jax import sharding
from vit_jax import train


def timed(fn):
  """Seconds from the call until this process is idle again: XLA and PyTorch keep their
  threads working after a call returns (80 ms of CPU after our ViT-Ti/16 step, 60-120 ms
  after the 256x256 deformable sampling on a 2-core AMD EPYC Zen 3), work that belongs to
  this call and would otherwise slow the next contender's."""
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t + busy_tail()


def busy_tail(poll=0.005, limit=2.0):
  """Waits until the process uses no CPU for `poll` seconds (the main thread sleeps: any use
  is other threads'); → seconds it was still busy (at most `limit`)."""
  start = busy_until = time.perf_counter()
  cpu = time.process_time()
  while busy_until - start < limit:
    time.sleep(poll)
    now = time.process_time()
    if now - cpu < poll / 10:
      break
    cpu, busy_until = now, time.perf_counter()
  return busy_until - start


def alternate(runs, rounds, warmup=2):
  """runs: {name: fn}. Each fn runs `warmup` times (compilation), then once per round, in
  turn, so drifts in machine speed hit every contender alike; each timing includes the
  call's busy tail (`timed`). → {name: [seconds]}."""
  for fn in list(runs.values()) * warmup:
    fn()
  busy_tail()  # Each timed call starts on an idle process.
  times = {k: [] for k in runs}
  for _ in range(rounds):
    for k, fn in runs.items():
      times[k].append(timed(fn))
  return times


def pair_row(what, first, second):
  """A Markdown row comparing two settings: each one's median (min-max) ms, and the second's
  speed ratio over the first."""
  cells = [f'{1e3 * statistics.median(t):.1f} ({1e3 * min(t):.1f}-{1e3 * max(t):.1f})'
           for t in (first, second)]
  ratio = statistics.median(first) / statistics.median(second)
  print(f'| {what} | {cells[0]} | {cells[1]} | {ratio:.2f}x |', flush=True)


def table(title, unit, rows, work):
  """rows: [(label, times)]; the last row is the baseline of the speed ratio. `work` (items
  per call) gives the rate column; 0 leaves it out."""
  print(f'\n{title}\n')
  print(f'| implementation | time ms (median, min-max) | {unit or "-"} | speed ratio |')
  print('|---|---|---|---|')
  base = statistics.median(rows[-1][1])
  for name, times in rows:
    med = statistics.median(times)
    rate = f'{work / med:.0f}' if work else '-'
    print(f'| {name} | {1e3 * med:.1f} ({1e3 * min(times):.1f}-{1e3 * max(times):.1f}) | '
          f'{rate} | {base / med:.2f}x |')


def our_train_step(config, data, devices=None):
  """(a no-argument function running one of our jitted train steps on `data`, the trainer),
  on a mesh over `devices` (default: all)."""
  trainer = train.Trainer(config, devices=devices)
  box = {'state': trainer.initial_state()}
  batch = sharding.global_batch(data, trainer.mesh)

  def step():
    box['state'], metrics, _ = trainer.train_step(box['state'], batch, trainer.rng)
    jax.block_until_ready(metrics)

  compiled = lambda: trainer.lower_train_step(box['state'], batch, trainer.rng).compile()
  # XLA's count for one step: per device, each running its share of the batch.
  step.flops = lambda: trainer.mesh.devices.size * compiled().cost_analysis()['flops']
  step.temporaries = lambda: compiled().memory_analysis().temp_size_in_bytes  # Per device.
  return step, trainer


def matmul_run(n=2048):
  """(a no-argument function multiplying two n x n float32 matrices, jitted; its FLOPs): the
  machine's matmul peak, timed among the contenders so it sees the same machine they do."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return (lambda: f(a).block_until_ready()), 2 * n ** 3


def mfu(flops, seconds, matmul_times, matmul_flops):
  """One line: FLOPs per step / median step time / the fastest matmul of the same run."""
  peak = matmul_flops / min(matmul_times)
  print(f'\nOur MFU: {flops / 1e9:.1f} GFLOP/step (XLA cost analysis) / '
        f'{1e3 * seconds:.0f} ms / {peak / 1e9:.0f} GFLOP/s fp32 matmul peak (measured in '
        f'this run) = {100 * flops / seconds / peak:.1f}%')


def recorded_runs(out):
  """(out/results.jsonl, the runs recorded in it). Benchmarks that train append each run as it
  ends (`record`) and skip the ones recorded, so an interrupted comparison resumes."""
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, 'results.jsonl')
  if not os.path.exists(path):
    return path, []
  with open(path) as f:
    return path, [json.loads(line) for line in f]


def record(path, row):
  with open(path, 'a') as f:
    f.write(json.dumps(row) + '\n')


def cpu_name():
  """'AMD EPYC (family 25 model 1, 2 cores)': the model name alone is ambiguous on clouds."""
  try:
    with open('/proc/cpuinfo') as f:
      fields = dict(line.split(':', 1) for line in f if ':' in line)  # The last CPU's.
  except OSError:
    return platform.processor() or platform.machine()
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family')} "
          f"model {fields.get('model')}, {os.cpu_count()} cores)")


def mean_std(values, fmt='{:.1f}'):
  """'m ± s' over seeds (sample std), or the one value."""
  if len(values) == 1:
    return fmt.format(values[0])
  return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'
