"""Eight simulated CPU devices for every test (set before JAX starts), and a private temp dir
(tfds leaves tmp*tfds folders behind)."""
import os
import sys
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ['TMPDIR'] = tempfile.mkdtemp(prefix='vit_jax_tests_')
tempfile.tempdir = None
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
