"""How a program compiles, by how often it runs. XLA's optimisations pay for a train step run
thousands of times; a program run once, initialisation above all (every parameter drawn
through unrolled threefry hashes: 30,000 instructions for DETR), spends more in LLVM's
expensive passes than they save: DETR's initialisation compiles in 5.7 s instead of 11.2 s
and runs in 171 ms instead of 33 ms (benchmarks/compile_once.py, AMD EPYC Zen 3)."""
import jax

ONCE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def run_once(fn, *args, **jit_kwargs):
  """fn(*args), jitted (jit_kwargs: shardings) and compiled without the expensive passes."""
  return jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options=ONCE)(*args)
