import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import vit as vit_config
from helpers import with_devices
from helpers import assert_trees_close
from helpers import params_of
from helpers import tiny
from vit_jax import checkpoint
from vit_jax import metrics
from vit_jax import pretrained
from vit_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_lowers_the_loss_and_learns_digits(tmp_path):
  config = tiny(total_steps=150, batch_size=64, eval_every=150, log_every=10,
                **{'optim.learning_rate': 3e-3, 'data.augment': 'none'})
  _, result = train.train_and_evaluate(config, str(tmp_path))
  rows = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses[-1] < 0.85 * losses[0]
  assert result['count'] == 360  # Every test example, the last partial batch included.
  assert result['accuracy'] > 0.25  # Chance is 0.1.
  for f in ('training_curves.png', 'attention_rollout.png', 'config.json', 'tensorboard',
            'checkpoints/150'):
    assert (tmp_path / f).exists(), f


@pytest.mark.multi_device
def test_sharded_step_equals_single_device(tmp_path):
  assert jax.device_count() == 8
  config = tiny(total_steps=3, eval_every=100)
  one, _ = train.train_and_evaluate(config, str(tmp_path / 'one'), devices=jax.devices()[:1])
  eight, _ = train.train_and_evaluate(config, str(tmp_path / 'eight'))
  assert_trees_close(params_of(one), params_of(eight), atol=1e-5)


@pytest.mark.multi_device
def test_resume_continues_exactly_and_restores_onto_another_device_count(tmp_path):
  config = tiny(total_steps=8, eval_every=100, checkpoint_every=4, **{'model.droppath_rate': 0.2})
  full, _ = train.train_and_evaluate(config, str(tmp_path / 'full'))
  stopped, _ = train.train_and_evaluate(config, str(tmp_path / 'split'), stop_at_step=4)
  assert sorted(os.listdir(tmp_path / 'split' / 'checkpoints')) == ['4']
  resumed, _ = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert int(resumed['step']) == 8
  jax.tree.map(np.testing.assert_array_equal, params_of(full), params_of(resumed))

  # The step-4 checkpoint (written from 8 devices) restored onto 2 devices.
  trainer = train.Trainer(config, devices=jax.devices()[:2])
  checkpoints = checkpoint.Checkpointer(str(tmp_path / 'split'), keep=3)
  state = checkpoints.restore(4, checkpoint.abstract_with_shardings(trainer.abstract_state,
                                                                    trainer.state_shardings))
  checkpoints.close()
  leaf = jax.tree.leaves(state['params'])[0]
  assert len(leaf.sharding.device_set) == 2
  jax.tree.map(np.testing.assert_array_equal, params_of(stopped), params_of(state))


@pytest.mark.multi_device
def test_a_replicated_state_saves_without_a_program_per_small_array(tmp_path):
  """Orbax cuts each array held by several devices into a slice per device, one small
  compiled program each; arrays under a MiB are written whole, and every array comes back."""
  replicated = jax.sharding.NamedSharding(jax.make_mesh((8,), ('data',)),
                                          jax.sharding.PartitionSpec())
  state = {f'bias_{i}': jax.device_put(np.arange(8 * i + 8, dtype=np.float32), replicated)
           for i in range(30)}
  state['kernel'] = jax.device_put(np.ones((2048, 1024), np.float32), replicated)  # 8 MiB.
  compiles = []
  listener = lambda event, *_, **__: compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    checkpoints = checkpoint.Checkpointer(str(tmp_path), keep=1)
    checkpoints.save(1, state)
    checkpoints.wait()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # At most one per slice of the kernel (1 MiB each), none for the small arrays.
  assert compiles.count('/jax/core/compile/backend_compile_duration') <= 8
  restored = checkpoints.restore(1)
  checkpoints.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
  config = tiny(total_steps=2, eval_every=100)
  full, _ = train.train_and_evaluate(config, str(tmp_path / 'full'))
  config.accum_steps = 2
  accumulated, _ = train.train_and_evaluate(config, str(tmp_path / 'accum'))
  assert_trees_close(params_of(full), params_of(accumulated), atol=1e-5)


def test_export_then_finetune_at_a_new_resolution(tmp_path):
  config = tiny(total_steps=4, eval_every=100)
  state, _ = train.train_and_evaluate(config, str(tmp_path / 'pre'))
  path = train.export(config, str(tmp_path / 'pre'))
  flat = pretrained.load_npz(path)
  assert flat['Transformer/posembed_input/pos_embedding'].shape == (1, 17, 32)

  finetune = vit_config.get_config('tiny,finetune')
  finetune.update_from_flattened_dict({'pretrained.path': path, 'total_steps': 2,
                                       'eval_every': 2})
  trainer = train.Trainer(finetune)
  start = jax.device_get(trainer.initial_state()['params'])
  assert start['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 32)
  np.testing.assert_array_equal(start['embedding']['kernel'],
                                params_of(state)['embedding']['kernel'])
  _, result = train.train_and_evaluate(finetune, str(tmp_path / 'fine'))
  assert result['count'] == 360


def run_main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, env=with_devices(1),
                        capture_output=True, text=True, timeout=300)


def test_config_mistakes_are_one_line_errors(tmp_path):
  """A typo in a config argument or key, a wrong type, bad data: one line, status 2."""
  cases = {
      ('--config=configs/vit.py:tinyy',):
          "Error: Unknown config argument 'tinyy'; expected a comma-separated list of tiny, "
          'finetune, probe, folder, mnist5k, deit, cifar10, cifar100, fashion_mnist, '
          'imagenet2012, mnist, oxford_iiit_pet or a variant WIDTH/PATCH (e.g. B/16, or a '
          'hybrid R50+B/16).',
      ('--config=configs/vit.py:tiny', '--config.model.hiden_size=3'):
          "Error: Unknown config key 'model.hiden_size' (did you mean 'hidden_size'?); "
          '--mode=config lists them all.',
      ('--config.total_steps=ten',):
          "Error: flag --config.total_steps=ten: invalid literal for int() with base 10: 'ten'",
      ('--config=configs/vit.py:tiny', '--config.data.name=folder',
       f'--config.data.data_dir={tmp_path}/photos'):
          f"Error: Image folder split '{tmp_path}/photos/train' does not exist; expected "
          f'{tmp_path}/photos/train/<class_name>/*.jpg.',
  }
  for args, message in cases.items():
    out = run_main(*args, f'--workdir={tmp_path}/run')
    assert (out.returncode, out.stderr.strip()) == (2, message)
  out = run_main('--config=configs/vit.py:tinyy', '--verbose')
  assert 'Traceback' in out.stderr  # The whole story, on request.
  config = tiny()
  config.lock()  # As main.py does.
  with pytest.raises(AttributeError, match='hiden_size'):
    config.model.hiden_size = 3


def test_main_trains_exports_and_reruns_from_the_workdir_alone(tmp_path):
  common = ['--config=configs/vit.py:tiny', f'--workdir={tmp_path}', '--config.total_steps=3',
            '--config.model.num_layers=1']
  out = run_main(*common)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Final eval' in out.stdout and 'training_curves.png' in out.stdout
  assert 'Running on 1 cpu device (cpu) in 1 process, mesh data=1 x fsdp=1.' in out.stdout
  assert json.loads((tmp_path / 'config.json').read_text())['model']['num_layers'] == 1
  # Export reads the run's own config.json: no --config needed, even for another folder,
  # and even from a workdir older than a key (here export_path): it takes its default.
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['export_path']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  out = run_main(f'--workdir={tmp_path}', '--mode=export',
                 f'--config.export_path={tmp_path}/new/params.npz')
  assert out.returncode == 0, out.stderr[-2000:]
  assert (f'{tmp_path}/config.json has no export_path (added to the code after this run was '
          'trained): taking the defaults of configs/vit.py.') in out.stderr
  assert f'Creating {tmp_path}/new' in out.stdout
  assert (tmp_path / 'new' / 'params.npz').exists()
  # A finished run, run again, says so and prints its final metrics.
  out = run_main(*common)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Already trained to step 3 (config.total_steps=3); its final evaluation: step 3: ' \
         'eval accuracy' in out.stdout
  out = run_main(f'--workdir={tmp_path}', '--mode=translate')
  assert (out.returncode, out.stderr.strip()) == (
      2, "Error: Unknown --mode='translate' for task 'classification'; expected one of "
      "['train', 'export', 'config'].")


def test_a_saved_config_gains_the_keys_added_since_from_its_family(tmp_path, capsys):
  from configs import workdir
  from vit_jax import tasks
  for task, family in workdir.FAMILY_CONFIGS.items():
    module, _, arg = family.partition(':')
    assert __import__(f'configs.{module}', fromlist=['_']).get_config(arg).task == task
  assert sorted(workdir.FAMILY_CONFIGS) == sorted(tasks.TASKS)
  saved = vit_config.get_config('tiny').to_dict()
  del saved['distillation'], saved['optim']['clip_norm']
  saved['optim']['learning_rate'] = 0.5
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = workdir.get_config(str(tmp_path))
  assert config.optim.learning_rate == 0.5  # Saved values win.
  assert config.optim.clip_norm == vit_config.get_config().optim.clip_norm
  assert config.distillation == vit_config.get_config().distillation
  assert capsys.readouterr().err == (
      f'{tmp_path}/config.json has no distillation, optim.clip_norm (added to the code after '
      'this run was trained): taking the defaults of configs/vit.py.\n')


def test_config_mode_prints_the_docstring_and_every_key():
  # The attention modules' hyperparameters are keys too, settable on a locked config.
  out = run_main('--config=configs/detr.py:tiny', '--mode=config',
                 '--config.model.backbone_attention=cbam',
                 '--config.model.backbone_attention_args.kernel_size=3')
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith('DETR object detection')
  assert "  optim.learning_rate = 0.0005\n" in out.stdout
  assert '  data.crop_scales = (48, 56)\n' in out.stdout
  assert "  model.backbone_attention = 'cbam'\n" in out.stdout
  assert '  model.backbone_attention_args.kernel_size = 3\n' in out.stdout
  assert '  model.backbone_attention_args.reduction = None\n' in out.stdout


def test_default_workdir_is_one_per_config(monkeypatch):
  import main
  monkeypatch.setattr(main.tempfile, 'gettempdir', lambda: '/tmp')
  assert main.default_workdir('configs/vit.py') == '/tmp/vit_jax/vit'
  assert main.default_workdir('/x/configs/detr.py:tiny,r50') == '/tmp/vit_jax/detr_tiny-r50'


def test_unknown_variant_is_a_clear_error():
  config = tiny(**{'model.variant': 'Q/16'})
  with pytest.raises(ValueError, match="Unknown ViT variant 'Q/16'"):
    train.Trainer(config)
