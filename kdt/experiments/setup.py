"""The world an experiment runs in, built once from the validated config and handed down.

A :class:`Setup` holds what every run of one experiment shares — the device mesh, this process's
dataset, the model, the trainer (and a factory for the trainers of other networks), the optimizer,
schedule and loss settings, the dense run, the prunable leaves and the mask store. It is built by
:meth:`Setup.build` (the shape of scenic's ``app.run`` → trainer) and never rebuilt by a driver:
experiments that compose (LMC and correlation call IMP's functions) pass the same Setup on, or a
``dataclasses.replace``-d copy of it (another learning rate, another dense-run directory).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdt import checkpoint as checkpoint_lib
from kdt import config_lib
from kdt import data as data_lib
from kdt import fileio
from kdt import models as models_lib
from kdt import parallel
from kdt import pruning
from kdt import report
from kdt import schema
from kdt.pruning import basis as basis_lib
from kdt.tickets import batch as batch_lib
from kdt.tickets import recipes as recipes_lib
from kdt.train import loop
from kdt.train import losses
from kdt.train import optim


class InvariantError(RuntimeError):
  """A runtime invariant failed (a pruned weight non-zero, a wrong density, hosts disagree)."""


def load_data(config: ml_collections.ConfigDict):
  """This process's view of the dataset named by ``config.data``."""
  return data_lib.load_dataset(
      config.data.name, data_dir=config.data.dir, tfds_data_dir=config.data.tfds_dir,
      val_size=config.data.val_size, process_index=jax.process_index(),
      process_count=jax.process_count(), mean=tuple(config.data.mean), std=tuple(config.data.std),
      last_batch=config.data.last_batch)


def build_model(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> nn.Module:
  """The Flax module named by ``config.model`` for the dataset's input shape and classes."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.compute_dtype]
  return models_lib.create_model(config.model.name, num_classes=info.num_classes,
                                 input_shape=info.input_shape, activation=config.model.activation,
                                 dtype=dtype, init_scheme=config.model.init_scheme)


def ones_mask(init_state_fn: Callable) -> Any:
  """All-True mask with the params' structure (dense training)."""
  shapes = jax.eval_shape(init_state_fn).params
  return jax.tree.map(lambda x: jnp.ones(x.shape, bool), shapes)


@functools.lru_cache(maxsize=None)
def _fresh_init(model: nn.Module, input_shape: tuple) -> Callable:
  """``key -> variables`` of ``model``, jitted once per (model, input shape), not once per round."""
  return jax.jit(lambda key: dict(model.init(key, jnp.zeros((1, *input_shape), jnp.float32),
                                             train=False)))


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every run of one experiment shares (see the module docstring).

  Attributes:
    config: the validated config.
    workdir: the experiment's directory (absolute, or a ``gs://`` URL).
    mesh: the device mesh (axis ``"data"``).
    dataset: this process's dataset.
    model: the network (reparametrised by ``imp.mask_basis`` where the config has one).
    trainer: the :class:`~kdt.train.loop.Trainer` of ``model``.
    make_trainer: ``(model, teacher_model) -> Trainer`` for other networks (ToST's tweaked one).
    optimizer: the optimizer direction settings.
    schedule: the dense run's learning-rate schedule.
    loss: the loss settings.
    dense: the dense :class:`~kdt.train.loop.Run` from theta_0 (its pinned steps are the
      experiment's rewind points).
    prunable: bool pytree of the prunable leaves (``imp.selector``; all kernels without one).
    num_prunable: the number of prunable weights.
    num_ignored: conv / dense weights that are not prunable (e.g. the head): open_lth counts
      them as remaining (``imp.count_convention="open_lth"``) and in its reported density.
    masks: the mask store.
  """

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  dataset: Any
  model: nn.Module
  trainer: loop.Trainer
  make_trainer: Callable[..., loop.Trainer]
  optimizer: optim.OptimizerSpec
  schedule: optim.ScheduleSpec
  loss: losses.LossConfig
  dense: loop.Run
  prunable: Any
  num_prunable: int
  num_ignored: int
  masks: checkpoint_lib.MaskStore

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, workdir: str, *,
            pinned_steps: Sequence[int] = (), dataset=None, model: nn.Module | None = None,
            progress: Callable[[loop.Progress], str | None] | None = None) -> "Setup":
    """Builds the Setup of a validated ``config`` (once per experiment).

    Args:
      config: the validated config.
      workdir: the experiment's directory.
      pinned_steps: the dense run's rewind points besides step 0 and ``train.pinned_steps``.
      dataset: use this dataset instead of loading ``config.data`` (tests, notebooks).
      model: use this network instead of ``config.model``'s (tests, notebooks).
      progress: every trainer's ``progress`` callback (:class:`kdt.progress.ExperimentProgress`).
    """
    workdir = fileio.absolute(workdir)
    mesh = parallel.make_mesh()
    dataset = load_data(config) if dataset is None else dataset
    model = build_model(config, dataset.info) if model is None else model
    imp = config.get("imp")
    if imp is not None:  # imp.mask_basis: the network parametrised by the coefficients masks prune
      model = basis_lib.wrap_model(model, imp.mask_basis, selector=imp.selector,
                                   prune_stem=imp.prune_stem, image_shape=dataset.info.input_shape)
    make_trainer = functools.partial(_make_trainer, config, workdir, dataset, mesh,
                                     progress=progress)
    optimizer = schema.spec(optim.OptimizerSpec, config.optimizer)
    schedule = schema.spec(optim.ScheduleSpec, config.schedule,
                           learning_rate=config.optimizer.learning_rate,
                           num_steps=config.train.num_steps)
    loss = schema.spec(losses.LossConfig, config.loss)
    init = loop.init_state_fn(model, dataset.info.input_shape, optimizer.make(), config.seeds.init)
    dense = loop.Run(
        name="dense", directory=os.path.join(workdir, "dense"), init_state=init,
        mask=ones_mask(init), end_step=config.train.num_steps, optimizer=optimizer,
        schedule=schedule, loss=loss,
        pinned_steps=tuple(sorted({0, *config.train.pinned_steps, *pinned_steps})),
        data_seed=config.seeds.data_order, augment_seed=config.seeds.augment)
    shapes = jax.eval_shape(init).params
    if imp is not None:
      prunable = pruning.prunable_leaves(shapes, imp.selector, prune_stem=imp.prune_stem)
    else:
      prunable = pruning.prunable_leaves(shapes, "conv_dense", prune_stem=True)
    num_prunable = sum(int(np.prod(x.shape)) for x, p in
                       zip(jax.tree.leaves(shapes), jax.tree.leaves(prunable)) if p)
    all_weights = pruning.prunable_leaves(shapes, "conv_dense", prune_head=True)  # conv + dense
    num_ignored = sum(int(np.prod(x.shape)) for x, p in zip(
        jax.tree.leaves(shapes), jax.tree.leaves(all_weights)) if p) - num_prunable
    return cls(config=config, workdir=workdir, mesh=mesh, dataset=dataset, model=model,
               trainer=make_trainer(model), make_trainer=make_trainer, optimizer=optimizer,
               schedule=schedule, loss=loss, dense=dense, prunable=prunable,
               num_prunable=num_prunable, num_ignored=num_ignored,
               masks=checkpoint_lib.MaskStore())

  # ----- derived pieces (pure reads of the Setup) -------------------------------------------------

  @property
  def title(self) -> str:
    return f"{self.config.model.name} on {self.config.data.name}"

  def with_learning_rate(self, learning_rate: float, dense_directory: str) -> "Setup":
    """This Setup with another peak learning rate, its dense run in ``dense_directory``."""
    schedule = dataclasses.replace(self.schedule, learning_rate=float(learning_rate))
    dense = dataclasses.replace(self.dense, directory=dense_directory, schedule=schedule)
    return dataclasses.replace(self, schedule=schedule, dense=dense)

  def with_dense_pins(self, pinned_steps: Sequence[int]) -> "Setup":
    """This Setup with more rewind points pinned in the dense run."""
    pins = tuple(sorted({*self.dense.pinned_steps, *pinned_steps}))
    return dataclasses.replace(self, dense=dataclasses.replace(self.dense, pinned_steps=pins))

  def for_replicate(self, replicate: int) -> "Setup":
    """Replicate ``replicate`` of this experiment (``config.replicates > 1``).

    Its seeds are :func:`kdt.config_lib.replicate_config`'s, its directory
    ``workdir/replicate_RR``, its runs named ``replicate_RR/<run>`` (logs, TensorBoard); the model,
    dataset, mesh and the trainer's compiled steps are this Setup's, shared by every replicate.
    """
    config = config_lib.replicate_config(self.config, replicate)
    name = config_lib.replicate_name(replicate)
    workdir = os.path.join(self.workdir, name)
    prefix = name + "/"
    init = loop.init_state_fn(self.model, self.dataset.info.input_shape, self.optimizer.make(),
                              config.seeds.init)
    dense = dataclasses.replace(self.dense, directory=os.path.join(workdir, "dense"),
                                init_state=init, data_seed=config.seeds.data_order,
                                augment_seed=config.seeds.augment)
    make_trainer = self.make_trainer

    def make_replicate_trainer(*args, **kwargs):
      return make_trainer(*args, **kwargs).with_name_prefix(prefix)

    return dataclasses.replace(self, config=config, workdir=workdir, dense=dense,
                               trainer=self.trainer.with_name_prefix(prefix),
                               make_trainer=make_replicate_trainer,
                               masks=checkpoint_lib.MaskStore())

  def train_jobs(self, jobs: Sequence[batch_lib.Job]) -> list[loop.RunResult]:
    """Trains ``jobs`` together as ``config.tickets`` says (:func:`kdt.tickets.batch.train_jobs`)."""
    tickets = self.config.tickets
    return batch_lib.train_jobs(jobs, strategy=tickets.strategy,
                                max_per_program=int(tickets.max_per_program))

  def fresh_weights(self, key: jax.Array) -> recipes_lib.Weights:
    """A new random initialisation of ``model`` (the random re-init control), jitted."""
    variables = _fresh_init(self.model, tuple(self.dataset.info.input_shape))(key)
    return recipes_lib.Weights(variables["params"], variables.get("batch_stats", {}))

  def abstract_state(self) -> Any:
    """Shapes and shardings of the dense run's state (restore targets)."""
    shapes = jax.eval_shape(self.dense.init_state)
    replicated = parallel.replicated(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        shapes)

  def restore(self, directory: str, step: int | None = None) -> tuple[recipes_lib.Weights, dict]:
    """The weights saved at ``step`` (None = latest) of a run with the dense run's structure.

    Raises:
      kdt.checkpoint.CheckpointCorruptError: the step does not pass the fingerprint check.
    """
    ckpt = checkpoint_lib.Checkpointer(directory)
    try:
      step = ckpt.latest_step() if step is None else step
      state, meta = ckpt.restore(step, self.abstract_state())
    finally:
      ckpt.close()
    return recipes_lib.Weights(state.params, state.batch_stats), meta

  def training_batches(self, num_batches: int) -> dict:
    """The first ``num_batches`` training batches (data order ``seeds.data_order``), stacked.

    ``{"image": [n, B, ...], "label": [n, B]}``, preprocessed and augmented like the training
    batches of steps 0..n-1 (augmentation key ``seeds.augment``), sharded over the mesh's data
    axis. For BatchNorm re-estimation (LMC) and the data-dependent pruning scores.
    """
    config, dataset, trainer = self.config, self.dataset, self.trainer
    batch_size, seed = config.train.batch_size, config.seeds.data_order
    info = dataset.info
    key = jax.random.key(config.seeds.augment)
    images, labels = [], []
    for step in range(num_batches):
      if info.streaming:
        local = dataset.train_batch(step, batch_size, seed, augment=trainer.augment,
                                    augment_seed=config.seeds.augment)
        augment = "none"
      else:
        local = dataset.train_batch(step, batch_size, seed)
        augment = trainer.augment
      batch = parallel.global_batch(local, self.mesh)
      images.append(data_lib.preprocess(batch["image"], jax.random.fold_in(key, step), info=info,
                                        train=True, augment=augment))
      labels.append(batch["label"])
    return {"image": jnp.stack(images), "label": jnp.stack(labels)}

  def load_mask(self, directory: str, compute: Callable[[], Any] | None = None) -> Any:
    """The mask saved in ``directory`` (computed and saved first when ``compute`` is given)."""
    return self.masks.load_or_compute(directory, self.dense.mask, compute)

  def reset(self, start: recipes_lib.Start, mask: Any) -> Callable[[], Any]:
    """``init_state`` of a re-training run: ``mask * start.weights`` at ``start.start_step``."""
    direction = self.optimizer.make()
    weights = start.weights

    def init_state():
      return recipes_lib.reset_state(weights.params, weights.batch_stats, mask,
                                     direction.init(weights.params), start.start_step)

    return init_state


def loop_settings(config: ml_collections.ConfigDict, num_train: int) -> loop.LoopSettings:
  """The cadence of ``config.train`` (``num_train``: training examples, for per-epoch
  evaluation, ``train.eval_every_epochs``)."""
  train = config.train
  eval_every = train.eval_every_steps or data_lib.order.every_steps(
      train.eval_every_epochs, num_train, train.batch_size, config.data.last_batch)
  return schema.spec(loop.LoopSettings, train, eval_every_steps=eval_every)


def _make_trainer(config: ml_collections.ConfigDict, workdir: str, dataset, mesh,
                  model: nn.Module, teacher_model: nn.Module | None = None, *,
                  progress: Callable[[loop.Progress], str | None] | None = None) -> loop.Trainer:
  """The :class:`loop.Trainer` for ``model`` (``teacher_model``: the KD teacher's module, if other;
  ``progress``: its progress callback)."""
  tb_root = os.path.join(workdir, "tensorboard")
  just_logging = jax.process_index() > 0
  return loop.Trainer(
      model, dataset, mesh, loop_settings(config, len(dataset.train)),
      augment=config.data.augment,
      writer_factory=lambda name, purge_step=None: report.create_writer(
          os.path.join(tb_root, name), just_logging=just_logging, purge_step=purge_step,
          hparams=dict(config_lib.to_dict(config), run=name)),
      ghost_batch_norm=bool(config.parallel.ghost_batch_norm), teacher_model=teacher_model,
      progress=progress)
