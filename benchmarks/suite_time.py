"""Where the test suite's time goes: per test, the seconds JAX spends tracing, lowering and
compiling, against the test's wall time. A pytest plugin that records them, and a script that
prints the table of the last run.

  PYTHONPATH=benchmarks .venv/bin/python -m pytest -n 2 --dist worksteal -p suite_time tests
  .venv/bin/python benchmarks/suite_time.py            # the table (--top: how many tests)

Compiles are split by size: under 0.1 s they are nearly all eager operations (one small
program each per shape), above it the jitted steps, initialisations and evaluations. Only the
test processes' own work is seen: notebooks and main.py subprocesses count in wall time alone.
"""
import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

import pytest

# Fixed when pytest loads the plugin, before tests/conftest.py gives the run a private TMPDIR,
# and passed to the xdist workers through their environment.
OUT = os.environ.setdefault('VIT_JAX_SUITE_TIME_DIR',
                            os.path.join(tempfile.gettempdir(), 'vit_jax_suite_time'))
EVENTS = {'/jax/core/compile/backend_compile_duration': 'compile',
          '/jax/core/compile/jaxpr_trace_duration': 'trace',
          '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
          '/jax/compilation_cache/compile_time_saved_sec': 'cache saved'}
SMALL = 0.1  # Seconds: compiles below it are counted as small programs.
KINDS = ('compile', 'compile, small', 'trace', 'lower')

class Recorder:
  """Per test, the seconds of JAX's compile events, appended to <out>/<pid>.jsonl. The plugin
  keeps one; a unit test can keep its own without touching the run's records."""

  def __init__(self, out):
    self.out = out
    self.seconds = collections.Counter()
    self.started = None

  def listen(self, event, duration, **_):
    kind = EVENTS.get(event)
    if kind == 'compile' and duration < SMALL:
      kind = 'compile, small'
      self.seconds['small compiles'] += 1
    if kind:
      self.seconds[kind] += duration

  def start(self):
    self.seconds.clear()
    self.started = time.perf_counter()

  def finish(self, test):
    record = {'test': test, 'wall': time.perf_counter() - self.started, **self.seconds}
    with open(os.path.join(self.out, f'{os.getpid()}.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')


_recorder = Recorder(OUT)


def pytest_configure(config):
  del config
  import jax.monitoring
  jax.monitoring.register_event_duration_secs_listener(_recorder.listen)
  os.makedirs(OUT, exist_ok=True)


def pytest_sessionstart(session):
  if not hasattr(session.config, 'workerinput'):  # The controller (or a run without xdist).
    for path in glob.glob(os.path.join(OUT, '*.jsonl')):
      os.remove(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Wraps each test (setup, call, teardown) and appends its record."""
  del nextitem
  _recorder.start()
  yield
  _recorder.finish(item.nodeid)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--top', type=int, default=20)
  args = parser.parse_args()
  records = [json.loads(line) for path in glob.glob(os.path.join(OUT, '*.jsonl'))
             for line in open(path)]
  if not records:
    sys.exit(f'No records in {OUT}: run pytest with -p suite_time first (see --help).')
  wall = sum(r['wall'] for r in records)
  totals = {k: sum(r.get(k, 0.0) for r in records) for k in KINDS + ('cache saved',)}
  print(f'{len(records)} tests, {wall:.0f} s of test time in all (summed over workers); '
        f"{sum(r.get('small compiles', 0) for r in records):.0f} small compiles\n")
  print('| part | seconds | share |')
  print('|---|---|---|')
  for kind in KINDS:
    print(f'| {kind} | {totals[kind]:.0f} | {totals[kind] / wall:.0%} |')
  rest = wall - sum(totals[k] for k in KINDS)
  print(f'| the rest: running, data, checkpoints, Python, subprocesses | {rest:.0f} | '
        f'{rest / wall:.0%} |')
  print(f"| (compile time the persistent cache saved) | {totals['cache saved']:.0f} | |\n")
  print('| test | wall s | ' + ' | '.join(f'{k} s' for k in KINDS) + ' |')
  print('|---|---|' + '---|' * len(KINDS))
  for r in sorted(records, key=lambda r: -r['wall'])[:args.top]:
    print(f"| {r['test']} | {r['wall']:.1f} | "
          + ' | '.join(f'{r.get(k, 0.0):.1f}' for k in KINDS) + ' |')


if __name__ == '__main__':
  main()
