"""benchmarks/op_profile.py: compiled operations sorted into kinds by what their HLO computes."""
import os
import sys

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
