"""DeiT's distillation through the one trainer: a teacher exported by this codebase, loaded
frozen; the losses against their equations; the settings' errors; linear probes."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet as resnet_config
from configs import vit as vit_config
from helpers import params_of
from vit_jax import errors
from vit_jax import losses
from vit_jax import metrics
from vit_jax import pretrained
from vit_jax import tasks
from vit_jax import train
from vit_jax.tasks import distillation

FAVOURITE = 3  # The class the test teacher always predicts.


def export_teacher(directory, family=resnet_config, **overrides):
  """A teacher in its exported form (params.npz + its run's config.json) whose head says
  FAVOURITE for every image."""
  config = family.get_config('tiny')
  config.update_from_flattened_dict(overrides)
  task = tasks.get_task(config.task)(config)
  params = jax.device_get(task.init(jax.random.key(0), task.dummy_batch(2)))
  params['head']['bias'] = 100.0 * np.eye(10, dtype=np.float32)[FAVOURITE]
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort())
  return pretrained.save_npz(params, os.path.join(directory, 'params.npz'))


def deit(teacher, **overrides):
  config = vit_config.get_config('tiny,deit')
  config.update_from_flattened_dict({'distillation.teacher': teacher, **overrides})
  return config


def test_hard_distillation_learns_the_frozen_teachers_answers(tmp_path):
  teacher = export_teacher(str(tmp_path / 'teacher'))
  # alpha 1: only the distillation head learns, from the teacher alone.
  config = deit(teacher, total_steps=30, eval_every=30, **{'distillation.alpha': 1.0})
  initial = params_of(train.Trainer(config).initial_state())
  state, result = train.train_and_evaluate(config, str(tmp_path / 'student'))
  labels = np.array([e['label'] for e in tasks.get_task('classification')(config).datasets().eval])
  assert result['accuracy_distillation_head'] == pytest.approx(np.mean(labels == FAVOURITE))
  params = params_of(state)
  np.testing.assert_array_equal(params['head']['kernel'], 0.0)  # Zero-initialised, untaught.
  assert not np.allclose(params['head_dist']['bias'], initial['head_dist']['bias'])
  rows = metrics.read_jsonl(str(tmp_path / 'student' / 'metrics.jsonl'))
  distill = [r['train/distillation_loss'] for r in rows if 'train/distillation_loss' in r]
  assert distill[-1] < 0.5 * distill[0]
  # Frozen: no optimizer state for the teacher (AdamW's two moments of the student's own
  # parameters only), and nothing of it in the checkpoint or the export.
  student_size = sum(np.size(p) for p in jax.tree.leaves(params))
  moments = sum(np.size(x) for x in jax.tree.leaves(state['opt_state']) if np.ndim(x))
  assert moments == 2 * student_size
  exported = pretrained.load_npz(train.export(config, str(tmp_path / 'student')))
  assert set(exported) == set(pretrained.flatten(params))


def test_a_vit_teaches_too(tmp_path):
  teacher = distillation.Teacher(deit(export_teacher(str(tmp_path), vit_config)))
  images = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
  assert (teacher.logits(teacher.params, images).argmax(-1) == FAVOURITE).all()


def test_soft_distillation_is_tau_squared_kl_with_the_tau_scaled_gradient():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 4, 5)) * 3
  for tau in (1.0, 3.0):
    p = np.exp(teacher / tau) / np.exp(teacher / tau).sum(-1, keepdims=True)
    q = np.exp(student / tau) / np.exp(student / tau).sum(-1, keepdims=True)
    want = tau ** 2 * (p * np.log(p / q)).sum(-1)  # Float64, from the definition.
    got = losses.soft_distillation(jnp.asarray(student), jnp.asarray(teacher), tau)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # d/ds τ²·KL = τ·(softmax(s/τ) − softmax(t/τ)): the gradient's scale is τ, not 1/τ.
    grad = jax.grad(lambda s: losses.soft_distillation(s, jnp.asarray(teacher), tau).sum())(
        jnp.asarray(student, jnp.float32))
    np.testing.assert_allclose(grad, tau * (q - p), atol=1e-5)
  assert float(losses.soft_distillation(jnp.asarray(student), jnp.asarray(student), 3.0).max()
               ) == pytest.approx(0.0, abs=1e-6)


def test_soft_distillation_trains_both_heads(tmp_path):
  teacher = export_teacher(str(tmp_path / 'teacher'))
  config = deit(teacher, total_steps=10, eval_every=10, **{'distillation.type': 'soft'})
  state, result = train.train_and_evaluate(config, str(tmp_path / 'student'))
  params = params_of(state)
  assert np.abs(params['head']['kernel']).max() > 0 and 'accuracy_cls_head' in result


@pytest.mark.parametrize('overrides, message', [
    ({'distillation.type': 'kd'}, "Unknown distillation.type='kd'; expected one of "
                                  "('none', 'hard', 'soft')."),
    ({'model.distillation': False}, "distillation.type='hard' needs the distillation token: "
                                    'set --config.model.distillation=True'),
    ({'distillation.type': 'none'}, 'model.distillation=True trains a distillation head, which '
                                    'needs a teacher'),
    ({'distillation.teacher': ''}, "distillation.type='hard' needs a teacher: set "
                                   '--config.distillation.teacher=PATH.npz'),
    ({'distillation.alpha': 1.5}, 'distillation.alpha=1.5 must lie in [0, 1]'),
])
def test_settings_that_cannot_work_are_named(overrides, message):
  config = deit('/nowhere/params.npz', **overrides)
  with pytest.raises(errors.UserError) as e:
    tasks.get_task('classification')(config).model
  assert message in str(e.value)


def test_a_teacher_that_does_not_fit_is_named(tmp_path):
  teacher = export_teacher(str(tmp_path / 'big'), **{'data.image_size': 16})
  with pytest.raises(errors.UserError) as e:
    distillation.Teacher(deit(teacher))
  assert str(e.value) == (f"The teacher ('{tmp_path}/big/config.json') has data.image_size=16, "
                          'the student 8; a teacher must see the same images and classes.')
  alone = str(tmp_path / 'alone.npz')
  os.replace(teacher, alone)
  with pytest.raises(errors.NotFound, match=r"The teacher '.*alone.npz' comes without its "
                                            r"config: no '.*config.json'"):
    distillation.Teacher(deit(alone))
  with open(tmp_path / 'big' / 'config.json') as f:
    detector = dict(json.load(f), task='detection')
  with open(tmp_path / 'detector.json', 'w') as f:
    json.dump(detector, f)
  with pytest.raises(errors.UserError, match="is a 'detection' model; a classifier can learn "
                                             r"from one of \('classification'"):
    distillation.Teacher(deit(alone, **{'distillation.teacher_config':
                                        str(tmp_path / 'detector.json')}))


def test_linear_probe_differentiates_only_the_head(tmp_path):
  probe = vit_config.get_config('tiny,probe')
  probe.update_from_flattened_dict({'total_steps': 5, 'eval_every': 5})
  initial = params_of(train.Trainer(probe).initial_state())
  state, _ = train.train_and_evaluate(probe, str(tmp_path))
  params = params_of(state)
  for path, value in pretrained.flatten(params).items():
    same = np.array_equal(value, pretrained.flatten(initial)[path])
    assert same != path.startswith('head/'), path
  moments = sum(np.size(x) for x in jax.tree.leaves(state['opt_state']) if np.ndim(x))
  assert moments == 2 * np.size(params['head']['kernel']) + 2 * np.size(params['head']['bias'])

  def step_flops(config):  # No backward pass through the frozen body: far less work.
    trainer = train.Trainer(config)
    state = trainer.initial_state()
    batch = trainer.task.dummy_batch(config.batch_size)
    compiled = trainer.lower_train_step(state, batch, trainer.rng).compile()
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)['flops']

  full = vit_config.get_config('tiny')
  assert step_flops(probe) < 0.6 * step_flops(full)
