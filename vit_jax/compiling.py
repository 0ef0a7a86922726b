"""How a program compiles, by how often it runs and where. XLA's optimisations pay for a train
step run thousands of times; a program run once, initialisation above all (every parameter
drawn through unrolled threefry hashes: 30,000 instructions for DETR), spends more in LLVM's
expensive passes than they save: DETR's initialisation compiles in 5.7 s instead of 11.2 s
and runs in 171 ms instead of 33 ms (benchmarks/compile_once.py, AMD EPYC Zen 3)."""
import gc

import jax

ONCE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}

# XLA:CPU's default library fusions (jax 0.10) less LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION:
# convolutions run on XLA's own kernels instead of YNNPACK's, whose weight gradients are slow
# (DETR's 7x7 stem: 19 ms against 9). The CNN families' train steps ran 1.09-1.16x faster, the
# ViT's and Deformable DETR's as before (benchmarks/conv_kernels.py).
CPU_STEP = {'xla_cpu_experimental_ynn_fusion_type':
            'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def step_options(mesh):
  """Compiler options for the steps a run repeats (train, eval) on this mesh's platform."""
  return CPU_STEP if mesh.devices.flat[0].platform == 'cpu' else {}


def run_once(fn, *args, **jit_kwargs):
  """fn(*args), jitted (jit_kwargs: shardings) and compiled without the expensive passes."""
  return jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options=ONCE)(*args)


def collect_garbage_less_often():
  """CPython's cyclic collector every 50,000 allocations instead of 700, its older generations
  every 20 collections of the younger instead of 10: tracing a model allocates millions of
  short-lived objects, and the default collections took about a third of the tiny families'
  tracing time (benchmarks/gc_tracing.py). Reference counting frees all but cycles at once,
  as before."""
  gc.set_threshold(50_000, 20, 20)
