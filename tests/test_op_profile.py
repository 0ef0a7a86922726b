"""benchmarks/op_profile.py: compiled operations sorted into kinds by what their HLO computes;
benchmarks/suite_time.py: where the test suite's time goes; benchmarks/timing.py's timer."""
import os
import sys
import time
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import op_profile  # noqa: E402

HLO = """HloModule jit_step, entry_computation_layout={(f32[4,8]{1,0})->f32[8,4]{1,0}}

%fused_dot (p0: bf16[4,8], p1: bf16[8,8]) -> f32[4,8] {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %p1 = bf16[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_transpose (p0.1: f32[4,8]) -> bf16[8,4] {
  %p0.1 = f32[4,8]{1,0} parameter(0)
  %transpose.2 = f32[8,4]{0,1} transpose(%p0.1), dimensions={1,0}
  %copy.3 = f32[8,4]{1,0} copy(%transpose.2)
  ROOT %convert.4 = bf16[8,4]{1,0} convert(%copy.3)
}

%fused_convert (p0.2: f32[4,8]) -> bf16[4,8] {
  %p0.2 = f32[4,8]{1,0} parameter(0)
  ROOT %convert.5 = bf16[4,8]{1,0} convert(%p0.2)
}

%fused_gelu (p0.3: f32[4,8]) -> f32[4,8] {
  %p0.3 = f32[4,8]{1,0} parameter(0)
  %constant.6 = f32[] constant(0.5)
  %broadcast.7 = f32[4,8]{1,0} broadcast(%constant.6), dimensions={}
  ROOT %multiply.8 = f32[4,8]{1,0} multiply(%p0.3, %broadcast.7)
}

ENTRY %main (x: f32[4,8]) -> f32[8,4] {
  %x = f32[4,8]{1,0} parameter(0)
  %wrapped_convert = bf16[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_convert
  %ynn_fusion.1 = f32[4,8]{1,0} fusion(%wrapped_convert, %wrapped_convert), kind=kCustom, calls=%fused_dot, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %multiply_fusion = f32[4,8]{1,0} fusion(%ynn_fusion.1), kind=kLoop, calls=%fused_gelu
  %dot.9 = f32[4,4]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={1}
  ROOT %transpose_fusion = bf16[8,4]{1,0} fusion(%multiply_fusion), kind=kLoop, calls=%fused_transpose
}
"""


def test_operations_are_sorted_into_kinds_by_their_hlo():
  ops = op_profile.hlo_instructions(HLO)
  kinds = {name: op_profile.kind(opcode, inner, ynn)
           for name, (_, opcode, inner, ynn) in ops.items()}
  assert kinds['ynn_fusion.1'] == 'matmul (YNNPACK)'
  assert kinds['dot.9'] == 'matmul (XLA)'
  assert kinds['wrapped_convert'] == 'dtype conversion only'
  assert kinds['transpose_fusion'] == 'transpose or copy'
  assert kinds['multiply_fusion'] == 'other elementwise'
  assert ops['ynn_fusion.1'][0] == 'f32[4,8]{1,0}'


def test_time_with_no_traced_operation_is_the_step_less_the_union_of_their_spans():
  assert op_profile.covered([(5, 6), (0, 2), (1, 3), (0, 1)]) == 4  # Overlaps count once.
  assert op_profile.covered([(0, 10), (2, 3)]) == 10
  assert op_profile.covered([]) == 0


def test_pytorch_operations_are_sorted_into_the_same_kinds():
  """--peer's side: ATen names (as torch.profiler reports them) into the same kinds."""
  kinds = {name: op_profile.torch_kind(f'aten::{name}') for name in (
      'addmm', 'mm', 'bmm', 'convolution_backward', '_scaled_dot_product_flash_attention_for_cpu',
      'native_layer_norm_backward', '_softmax', 'sum', '_foreach_norm', 'copy_', 'cat',
      'gelu_backward', '_foreach_addcdiv_', 'empty_strided', 'transpose', 'some_new_op')}
  assert kinds == {
      'addmm': 'matmul, convolution', 'mm': 'matmul, convolution',
      'bmm': 'matmul, convolution', 'convolution_backward': 'matmul, convolution',
      '_scaled_dot_product_flash_attention_for_cpu': 'fused attention (matmuls + softmax)',
      'native_layer_norm_backward': 'LayerNorm, softmax (one kernel each)',
      '_softmax': 'LayerNorm, softmax (one kernel each)', 'sum': 'reduction',
      '_foreach_norm': 'reduction', 'copy_': 'transpose or copy',
      'cat': 'slice, pad, concatenate', 'gelu_backward': 'other elementwise',
      '_foreach_addcdiv_': 'other elementwise', 'empty_strided': 'other',
      'transpose': 'other', 'some_new_op': 'other'}


def test_suite_time_sorts_compiles_by_size_and_prints_where_the_time_went(tmp_path, monkeypatch,
                                                                          capsys):
  """benchmarks/suite_time.py: JAX's duration events, summed per test into kinds."""
  import suite_time
  monkeypatch.setattr(suite_time, 'OUT', str(tmp_path))
  monkeypatch.setattr(sys, 'argv', ['suite_time.py'])
  # A recorder of its own: with the plugin loaded, the run's records stay untouched.
  recorder = suite_time.Recorder(str(tmp_path))
  monkeypatch.setattr(suite_time, '_recorder', recorder)
  for name, events in (('tests/a.py::test_big', [('backend_compile_duration', 6.0),
                                                 ('jaxpr_trace_duration', 1.0),
                                                 ('jaxpr_to_mlir_module_duration', 0.5)]),
                       ('tests/b.py::test_eager', [('backend_compile_duration', 0.05)] * 2)):
    wrapper = suite_time.pytest_runtest_protocol(types.SimpleNamespace(nodeid=name), None)
    next(wrapper)  # The test runs here.
    for event, seconds in events:
      recorder.listen(f'/jax/core/compile/{event}', seconds, fun_name='f')
    recorder.listen('/jax/orbax/write/total_duration_secs', 9.0)  # Not a compile: ignored.
    with pytest.raises(StopIteration):
      next(wrapper)
  suite_time.main()
  out = capsys.readouterr().out
  assert '2 tests' in out and '2 small compiles' in out
  assert '| compile | 6 |' in out and '| compile, small | 0 |' in out and '| trace | 1 |' in out
  assert '| tests/a.py::test_big |' in out.split('| test |')[1].splitlines()[2]
  assert out.split('| test |')[1].splitlines()[3].startswith(
      '| tests/b.py::test_eager | 0.0 | 0.0 | 0.1 | 0.0 | 0.0 |')


def test_timed_waits_for_the_work_a_call_leaves_running():
  """benchmarks/timing.py: a call's background threads are charged to it, not to the next."""
  import threading
  import timing

  def burn():
    start = time.thread_time()
    while time.thread_time() - start < 0.2:
      pass

  worker = threading.Thread(target=burn)
  seconds = timing.timed(worker.start)  # Returns at once; the thread burns 0.2 s of CPU.
  assert not worker.is_alive()
  assert seconds >= 0.2


def test_allocator_settings_name_what_the_machine_lacks(tmp_path, monkeypatch):
  import allocator
  thp = tmp_path / 'enabled'
  thp.write_text('always madvise [never]\n')
  monkeypatch.setattr(allocator, 'THP', str(thp))
  monkeypatch.setattr(allocator, 'JEMALLOC', str(tmp_path / 'libjemalloc.so.2'))
  missing = {name: allocator.missing(env) for name, env in allocator.SETTINGS.items()}
  assert missing == {
      'glibc malloc': '',
      'glibc malloc, transparent huge pages': f'transparent huge pages off ({thp})',
      'glibc malloc, one arena, freed memory kept': '',
      'jemalloc, freed memory kept': f'no {tmp_path}/libjemalloc.so.2'}
  thp.write_text('always [madvise] never\n')
  (tmp_path / 'libjemalloc.so.2').write_bytes(b'')
  assert not any(allocator.missing(env) for env in allocator.SETTINGS.values())
