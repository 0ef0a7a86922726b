"""Eight simulated CPU devices (set before JAX starts) of which a test's meshes use one unless
it is marked `multi_device` (a mesh over eight costs each training test twice the time on
two cores: 86 s against 35 s for the Bahdanau run; sharding is what the marked tests check),
XLA's expensive optimisations off (the tests compile far more than they run: test_train.py and
test_cnn_classification.py take 232 s instead of 374 s on an AMD EPYC Zen 3), one compilation
cache per run, CPython's garbage collector run less often, and a private temp dir (tfds
leaves tmp*tfds folders behind). Subprocesses and notebook kernels inherit all of them but the
collector's (main.py sets that itself)."""
import os
import shutil
import sys
import tempfile

import pytest

# XLA's older loop emitters compile a tiny model's step in half the time of its fusion
# emitters (DETR 6 s against 10 s, ViT 1.3 s against 2.8 s; compiling is most of the suite).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                                   '--xla_cpu_use_fusion_emitters=false')
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
# One compilation cache for the whole run (pytest-xdist's workers inherit the controller's
# environment, subprocesses too): the many tiny runs of one config compile once. Every program
# is kept, however quick to compile: the notebooks' and subprocesses' many small ones add up
# (suite 783 s with a 0.5 s threshold, 681 s with none, Intel Xeon Emerald Rapids).
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='vit_jax_xla_cache_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ['TMPDIR'] = tempfile.mkdtemp(prefix='vit_jax_tests_')
tempfile.tempdir = None
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from vit_jax import compiling  # noqa: E402

compiling.collect_garbage_less_often()  # As main.py does: tracing's collections, less often.


def pytest_collection_modifyitems(items):
  """Tests marked `long` first (stably; every xdist worker sorts alike): each worker takes a
  contiguous share and idle ones steal from the tails, so a long test left at a tail would
  keep one worker busy while the others wait."""
  items.sort(key=lambda item: item.get_closest_marker('long') is None)


@pytest.fixture(autouse=True)
def one_device_unless_marked(request, monkeypatch):
  """Meshes made without explicit devices take the first device, unless the test is marked
  `multi_device`; explicit devices are kept either way."""
  if request.node.get_closest_marker('multi_device') is None:
    import jax
    from vit_jax import sharding
    make_mesh = sharding.make_mesh
    monkeypatch.setattr(sharding, 'make_mesh', lambda fsdp=1, devices=None: make_mesh(
        fsdp, jax.devices()[:1] if devices is None else devices))


@pytest.fixture
def optimized_xla():
  """XLA's full optimisations for the programs this test compiles."""
  import jax
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations',
                    os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] == '1')


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:  # The process that made the cache (the controller, or a run without xdist).
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
