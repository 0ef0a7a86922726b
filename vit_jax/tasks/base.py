"""The written contract between the one trainer and a model family.

A family is a model file (vit_jax/models/), a task file (a `Task` subclass here) and a config
file (configs/). The trainer (vit_jax/train.py) calls only what this class declares: the
abstract methods every family writes, and the hooks below them, whose defaults fit a family
that has nothing to add. Shapes use B for the batch (the global batch inside jitted code).

Conventions every family follows:
- Constructing a task does no I/O. Data, vocabularies and the model are prepared on first
  use (`datasets()`, `model`), so `--mode=export` reads nothing but the checkpoint.
- Batches are dicts of fixed-shape arrays. The trainer relies on one key of its own,
  `pipeline.WEIGHT` (eval batches only); the rest are the task's.
- A model's state that is not trained but updated as it trains (BatchNorm's running
  statistics, Flax collection 'batch_stats') travels inside the parameters under that
  collection's name (`with_state`, `split_state`), so checkpoints, export, sharding and
  fine-tuning carry it unchanged; `loss_fn` returns the new state in its extras under `STATE`
  and the trainer writes it in after the optimizer's update (its gradient is zero, being
  1-D it gets no weight decay, so the optimizer never moves it).
- Evaluation sums, never averages, per batch: `eval_step` returns {name: (Σ w · value, Σ w)}
  pairs that the trainer adds up over the whole split and divides once (metrics.average),
  with `losses.weighted_*` computing the pairs. The trainer adds 'count', the number of real
  examples, and its own training scalars (grad_norm, skipped steps) outside the task's dicts.
"""
import abc
import functools
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple

from vit_jax import errors
from vit_jax import pretrained
from vit_jax.data import pipeline
from vit_jax.layers import kernels

Batch = Dict[str, Any]
Params = Any
Pairs = Dict[str, Tuple[Any, Any]]  # {name: (Σ w · value, Σ w)}
STATE = 'model_state'  # loss_fn's extras: {collection: its new value}, e.g. batch statistics.
STATE_COLLECTIONS = ('batch_stats',)


def with_state(variables):
  """Flax variables {'params': p, 'batch_stats': s} → the trainer's parameters {**p,
  'batch_stats': s}."""
  return {**variables['params'], **{k: v for k, v in variables.items() if k != 'params'}}


def split_state(params):
  """The trainer's parameters → Flax variables for `model.apply` (inverse of with_state)."""
  variables = {'params': {k: v for k, v in params.items() if k not in STATE_COLLECTIONS}}
  variables.update({k: params[k] for k in STATE_COLLECTIONS if k in params})
  return variables


class Preprocess(Protocol):
  """Turns one source example into one fixed-shape batch row."""

  def train(self, example: dict, rng) -> dict:
    """Random augmentation; `rng` is a numpy Generator seeded by (seed, example position)."""

  def eval(self, example: dict) -> dict:
    """Deterministic."""


class Datasets(NamedTuple):
  """Random-access sources (`len(s)`, `s[i]` → example dict) and their preprocessing."""
  train: Any
  eval: Any
  preprocess: Preprocess


def compute_options(config):
  """The `Compute` every model gets from the trainer config (dtype, attention_impl, remat,
  scan_layers), checked here so a bad value is named before anything is built."""
  return kernels.Compute(dtype=config.dtype, attention_impl=config.attention_impl,
                         remat=config.remat, scan_layers=config.scan_layers)


class Task(abc.ABC):
  """Everything the trainer asks of a model family."""

  # Files in the workdir that belong with the parameters (a tokenizer): export copies them
  # beside the .npz, and fine-tuning from that .npz reads them from there.
  artifacts: Tuple[str, ...] = ()
  # Parameter path prefixes of the output head, re-initialised when fine-tuning with
  # config.pretrained.reset_head (new classes).
  head: Tuple[str, ...] = ()

  def __init__(self, config, workdir: Optional[str] = None):
    """Keeps the config and workdir; does no I/O."""
    self.config = config
    self.workdir = workdir

  @functools.cached_property
  def model(self):
    """The Flax module, built once on first use (it may need the data: a vocabulary size,
    the number of classes)."""
    return self.build_model()

  # Required -----------------------------------------------------------------------------------
  @abc.abstractmethod
  def build_model(self):
    """→ the family's Flax module from config.model and `compute_options(config)`."""

  @abc.abstractmethod
  def datasets(self) -> Datasets:
    """→ Datasets(train, eval, preprocess) for config.data, prepared (generated, downloaded
    from nowhere, cached) on first call."""

  @abc.abstractmethod
  def dummy_batch(self, batch_size: int) -> Batch:
    """→ zeros with the shapes and dtypes of a training batch of `batch_size` rows (what
    `init` and `loss_fn` read), for shape inference and initialisation."""

  @abc.abstractmethod
  def init(self, rng, batch: Batch) -> Params:
    """→ freshly initialised parameters (a nested dict) for a batch like `dummy_batch`'s."""

  @abc.abstractmethod
  def loss_fn(self, params: Params, batch: Batch, rng, frozen: Optional[Params] = None
              ) -> Tuple[Any, Dict[str, Any]]:
    """Training loss of one batch. rng: the step's dropout key; frozen: `frozen_params()`'s
    parameters (a teacher), placed on the devices, or None.

    → (loss scalar to minimise, {name: scalar} more to log, e.g. accuracy; not the loss; and
    for a model with state, STATE: {collection: new value}, e.g. updated batch statistics).
    """

  @abc.abstractmethod
  def eval_step(self, params: Params, batch: Batch) -> Tuple[Pairs, Dict[str, Any]]:
    """Evaluation of one batch whose rows carry `pipeline.WEIGHT` (0 on padding).

    → (pairs {name: (Σ w · value, Σ w)} for metrics averaged over the split, outputs
    {name: [B, ...]} for host-side metrics (decoded tokens, boxes); {} if none).
    """

  # Hooks with defaults --------------------------------------------------------------------
  def host_outputs(self, outputs: Dict[str, Any]) -> Dict[str, Any]:
    """One eval batch's outputs on the host (numpy [B, ...], real examples only), before
    they are kept for `eval_metrics`: a task with large per-example outputs shrinks them
    here (e.g. crops padded maps, then an object array of per-example arrays)."""
    return outputs

  def eval_metrics(self, outputs: Dict[str, Any], source) -> Dict[str, float]:
    """Host-side metrics over the whole split (BLEU, COCO AP). outputs: `eval_step`'s
    outputs (through `host_outputs`) concatenated over the split, numpy [N, ...], real
    examples only, in order."""
    del outputs, source
    return {}

  def check_data(self, datasets: Datasets) -> None:
    """Called once at start-up: reads and preprocesses (eval preprocessing) every example of
    both splits, so bad data (an unreadable file, a wrong image size or channel count, an
    over-long sentence) stops the run before training, with an error naming the example,
    instead of crashing it hours later (config.check_data=False skips this)."""
    threads = self.config.data.get('num_threads', 2)
    for what, source in (('Training', datasets.train), ('Evaluation', datasets.eval)):
      pipeline.check_all(source, datasets.preprocess.eval, what, num_threads=threads,
                         desc=f'checking {what.lower()} data')

  def load_pretrained(self, params: Params, path: str) -> Params:
    """Fine-tuning: `params` (freshly initialised) with the values of the .npz at `path`,
    as written by `--mode=export` from a model of this family. The head is kept fresh when
    config.pretrained.reset_head; anything else that does not fit is an error naming it."""
    return self.fit_export(params, pretrained.load_npz(path), path)

  def fit_export(self, params: Params, restored: Dict[str, Any], path: str) -> Params:
    """`load_pretrained` of a file already read (`restored`: its flat arrays)."""
    fresh = self.head if self.config.pretrained.reset_head else ()
    return pretrained.fit(params, restored, fresh=fresh, source=f'Checkpoint {path!r}',
                          what=f'the {self.config.task} model')

  def representation(self, params: Params, batch: Batch) -> Tuple[Any, Any]:
    """(features [B, D], integer labels [B]) of an eval batch, for few-shot linear evaluation
    of frozen features (evaluators/fewshot.py, config.fewshot); classifiers define it."""
    raise errors.UserError(f'Few-shot evaluation needs features and labels, which task '
                           f'{self.config.task!r} does not give; set fewshot.every=0.')

  def frozen_params(self) -> Optional[Params]:
    """Parameters the loss reads but never trains (a distillation teacher), or None. Called
    once when training starts; the trainer places them on the mesh and passes them to every
    step as `loss_fn`'s `frozen` (an argument, not constants compiled into the step): no
    gradient, no optimizer state, not checkpointed or exported."""
    return None

  def checkpoint_hint(self) -> str:
    """Said when a checkpoint does not fit the model (e.g. which vocabulary sized it)."""
    return ''

  def model_dim(self) -> Optional[int]:
    """The model width that scales the Transformer's 'rsqrt' learning-rate schedule (§5.3);
    None for a family without one."""
    return None

  def write_plots(self, params: Params, workdir: str) -> List[str]:
    """Family pictures written at the end of training (attention maps); → their paths."""
    del params, workdir
    return []

  def commands(self) -> Dict[str, Callable[[Params], None]]:
    """Family modes for `main.py --mode=NAME` beyond train and export (e.g. 'translate'),
    each run with the newest checkpoint's parameters; settings come from the config."""
    return {}
