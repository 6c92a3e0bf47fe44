"""ToST's sparse re-training tweaks: smooth activations, ghost skips, label smoothing, LRsI.

"Training Your Sparse Neural Network Better with Any Mask" (Jaiswal et al., ICML 2022; first
circulated as "Spending Your Winning Lottery Better After Drawing It", docs/methods.md §2) re-trains a
pruned network with a recipe of its own instead of the dense network's:

* **smooth activation** — every ReLU becomes swish, pswish (x·σ(2x)), mish, gelu, elu, softplus
  or lisht (``config.tost.activation``); optionally annealed back to the model's own activation
  over ``activation_anneal_steps`` steps from ``activation_anneal_start``:

  .. math::  a_t(x) = (1 - t)\\,a_{\\text{smooth}}(x) + t\\,a_{\\text{model}}(x),\\qquad
             t = \\mathrm{clip}\\Big(\\frac{\\text{step} - \\text{start}}{\\text{steps}}, 0, 1\\Big);

* **ghost skip connections** — two extra 1x1 conv + BN branches per residual block (see
  :class:`kdt.models.BasicBlock`), kernels initialised to the constant 0.0001, never pruned;
  optionally faded out, the branches scaled by :math:`1 - t` with ``ghost_fade_*``'s ramp;
* **label smoothing** α = 0.1 with the off-target mass α/(C−1) (``label_smoothing_convention=
  "off_target"``);
* **LRsI** — layer-wise re-scaled initialisation by GradInit (:mod:`kdt.train.gradinit`), on
  the dense initialisation before masking or on the masked network.

The dense run never has tweaks. :class:`RetrainTweaks` turns an IMP re-training
:class:`~kdt.train.loop.Run` of the plain model into the tweaked one: the mask and the source
weights are *lifted* to the re-training network's parameter tree (ghost leaves added with their
initial values, never masked), the loss gets label smoothing, the weights get the GradInit scales.
Trained tweaked weights are *lowered* back (ghost leaves dropped) before the next round prunes them.

A model whose forward pass depends on the step (anneal, fade) is a :class:`ScheduledModel`: it has
``conditioned_on_step = True``, so :func:`kdt.train.steps.apply_model` hands it the schedule
position, and it binds the blend weights into a clone of the Flax module at trace time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt import fileio
from kdt import models as models_lib
from kdt import schema
from kdt.pruning import basis as basis_lib
from kdt.train import losses

log = logging.getLogger(__name__)


def ramp(step: Any, start: int, steps: int) -> Any:
  """:math:`\\mathrm{clip}((\\text{step} - \\text{start}) / \\text{steps}, 0, 1)`; 0 if ``steps`` is 0.

  ``step`` may be traced; ``None`` means the end of the schedule (1, or 0 without a ramp).

  Examples:
    >>> float(ramp(150, 100, 100)), float(ramp(0, 100, 100)), float(ramp(500, 100, 100))
    (0.5, 0.0, 1.0)
  """
  if not steps:
    return 0.0
  if step is None:
    return 1.0
  return jnp.clip((jnp.asarray(step, jnp.float32) - start) / steps, 0.0, 1.0)


def blend(x: jax.Array, t: Any, *, smooth: str, target: str) -> jax.Array:
  """:math:`(1 - t)\\,a_{\\text{smooth}}(x) + t\\,a_{\\text{target}}(x)` (ACTIVATIONS keys)."""
  a, b = models_lib.get_activation(smooth), models_lib.get_activation(target)
  return (1.0 - t) * a(x) + t * b(x)


@dataclasses.dataclass(frozen=True, eq=False)
class ScheduledModel:
  """A re-training network whose activation and ghost branches follow the schedule position.

  Behaves like the Flax module for ``init`` and ``apply``; ``apply(..., step=s)`` runs the module
  with the activation blend :math:`a_t` at :math:`t` = ``ramp(s, anneal_start, anneal_steps)`` and
  the ghost branches scaled by :math:`1 -` ``ramp(s, fade_start, fade_steps)``. ``step=None`` is
  the end of the schedule (fully annealed, fully faded).

  Attributes:
    module: the re-training Flax module (smooth activation, ghost skips).
    smooth: its activation (ACTIVATIONS key), the one annealed from.
    target: the activation annealed to (the dense model's).
    anneal_start: schedule step where the activation blend starts.
    anneal_steps: blend length (0 = no anneal).
    fade_start: schedule step where the ghost fade starts.
    fade_steps: fade length (0 = no fade).
  """

  module: nn.Module
  smooth: str
  target: str
  anneal_start: int = 0
  anneal_steps: int = 0
  fade_start: int = 0
  fade_steps: int = 0
  conditioned_on_step: ClassVar[bool] = True

  def at_step(self, step: Any) -> nn.Module:
    """The Flax module at schedule position ``step`` (traced, or None for the end)."""
    changes = {}
    if self.anneal_steps:
      t = ramp(step, self.anneal_start, self.anneal_steps)
      changes["activation"] = functools.partial(blend, t=t, smooth=self.smooth, target=self.target)
    if self.fade_steps:
      changes["ghost_scale"] = 1.0 - ramp(step, self.fade_start, self.fade_steps)
    return self.module.clone(**changes) if changes else self.module

  def init(self, *args, **kwargs):
    return self.module.init(*args, **kwargs)

  def apply(self, variables, *args, step: Any = None, **kwargs):
    return self.at_step(step).apply(variables, *args, **kwargs)


# ----- lifting between the dense and the re-training parameter trees ------------------------------

def lift(tree: Any, template: Any) -> Any:
  """``template``'s structure with ``tree``'s leaves wherever ``tree`` has the same path.

  Lifts a dense-model tree (params, batch stats, mask) to the re-training model's tree: leaves the
  dense model lacks (the ghost branches) come from ``template``.
  """
  if isinstance(template, dict):
    tree = tree if isinstance(tree, dict) else {}
    return {k: lift(tree[k], v) if k in tree else v for k, v in template.items()}
  return tree


def lower(tree: Any, like: Any) -> Any:
  """``tree`` restricted to the paths of ``like`` (drops the ghost leaves)."""
  if isinstance(like, dict):
    return {k: lower(tree[k], v) for k, v in like.items()}
  return tree


def _ones_like_shapes(shapes: Any) -> Any:
  return jax.tree.map(lambda x: jnp.ones(x.shape, bool), shapes)


@dataclasses.dataclass(frozen=True)
class TweakSettings:
  """The ``config.tost`` group as hashable data (fields: :data:`kdt.schema.OPTIONAL_GROUPS`; its
  ``gradinit_*`` fields are :class:`kdt.train.gradinit.GradInitSettings`)."""
  recipes: tuple[str, ...] = schema.default("tost.recipes")
  activation: str = schema.default("tost.activation")
  activation_anneal_steps: int = schema.default("tost.activation_anneal_steps")
  activation_anneal_start: int = schema.default("tost.activation_anneal_start")
  ghost_skips: bool = schema.default("tost.ghost_skips")
  ghost_init: float = schema.default("tost.ghost_init")
  ghost_fade_steps: int = schema.default("tost.ghost_fade_steps")
  ghost_fade_start: int = schema.default("tost.ghost_fade_start")
  label_smoothing: float = schema.default("tost.label_smoothing")
  lrsi: str = schema.default("tost.lrsi")

  @property
  def enabled(self) -> bool:
    return bool(self.activation or self.ghost_skips or self.label_smoothing > 0
                or self.lrsi != "none")

  @property
  def changes_model(self) -> bool:
    return bool(self.activation or self.ghost_skips)


def retraining_model(dense_model: nn.Module, settings: TweakSettings) -> Any:
  """The re-training network for ``dense_model`` under ``settings`` (the dense model if unchanged).

  Returns the Flax module with the smooth activation and ghost skips, wrapped in a
  :class:`ScheduledModel` when an anneal or a fade makes it depend on the step. A network
  reparametrised in another basis (:class:`kdt.pruning.basis.BasisModel`) stays so.
  """
  if not settings.changes_model:
    return dense_model
  if isinstance(dense_model, basis_lib.BasisModel):
    return dataclasses.replace(dense_model,
                               module=retraining_model(dense_model.module, settings))
  changes = {}
  if settings.activation:
    changes["activation"] = settings.activation
  if settings.ghost_skips:
    changes.update(ghost_skips=True, ghost_init=settings.ghost_init)
  module = dense_model.clone(**changes)
  if settings.activation_anneal_steps or settings.ghost_fade_steps:
    return ScheduledModel(module, smooth=settings.activation or dense_model.activation,
                          target=dense_model.activation,
                          anneal_start=settings.activation_anneal_start,
                          anneal_steps=settings.activation_anneal_steps,
                          fade_start=settings.ghost_fade_start,
                          fade_steps=settings.ghost_fade_steps)
  return module


class RetrainTweaks:
  """Applies ``config.tost`` to the IMP driver's re-training runs.

  Args:
    config: the experiment config (``config.tost`` absent = no tweaks).
    dense_model: the dense network (the IMP driver's model).
    input_shape: one example's shape.
  """

  def __init__(self, config, dense_model, input_shape):
    self.config = config
    self.settings = (schema.spec(TweakSettings, config.tost) if "tost" in config
                     else TweakSettings())
    self.dense_model = dense_model
    self.model = retraining_model(dense_model, self.settings)
    self.input_shape = tuple(input_shape)
    self._dense_shapes = None
    self._template_shapes = None

  # ----- which runs ---------------------------------------------------------------------------

  def applies_to(self, recipe_name: str) -> bool:
    """Whether ``recipe_name``'s re-training uses the tweaks."""
    return self.settings.enabled and (recipe_name == "tost" or recipe_name in self.settings.recipes)

  # ----- parameter trees ----------------------------------------------------------------------

  def _init_variables(self, model) -> dict:
    return dict(model.init(jax.random.key(0), jnp.zeros((1, *self.input_shape), jnp.float32),
                           train=False))

  def template_shapes(self) -> dict:
    """Abstract variables of the re-training network."""
    if self._template_shapes is None:
      self._template_shapes = jax.eval_shape(lambda: self._init_variables(self.model))
    return self._template_shapes

  def dense_shapes(self) -> dict:
    """Abstract variables of the dense network."""
    if self._dense_shapes is None:
      self._dense_shapes = jax.eval_shape(lambda: self._init_variables(self.dense_model))
    return self._dense_shapes

  def lift_mask(self, mask: Any) -> Any:
    """The dense mask on the re-training tree; the ghost leaves are all True (never pruned)."""
    if not self.settings.ghost_skips:
      return mask
    return lift(mask, _ones_like_shapes(self.template_shapes()["params"]))

  def lift_variables(self, params: Any, batch_stats: Any) -> tuple[Any, Any]:
    """Dense params / BN statistics on the re-training tree, ghost leaves at their initial values.

    Pure (jit-able): the ghost values (constant kernels, BN scale 1 and bias 0, running mean 0 and
    variance 1) come from the re-training model's ``init`` and do not depend on the key.
    """
    if not self.settings.ghost_skips:
      return params, batch_stats
    fresh = self._init_variables(self.model)
    return lift(params, fresh["params"]), lift(batch_stats, fresh.get("batch_stats", {}))

  def lower_variables(self, params: Any, batch_stats: Any) -> tuple[Any, Any]:
    """Re-training params / BN statistics restricted to the dense tree (ghost leaves dropped)."""
    if not self.settings.ghost_skips:
      return params, batch_stats
    shapes = self.dense_shapes()
    return lower(params, shapes["params"]), lower(batch_stats, shapes.get("batch_stats", {}))

  # ----- the run ------------------------------------------------------------------------------

  def loss(self, loss: losses.LossConfig) -> losses.LossConfig:
    """``loss`` with the re-training label smoothing (alpha/(C-1) off target), if any."""
    if self.settings.label_smoothing <= 0:
      return loss
    return dataclasses.replace(loss, label_smoothing=self.settings.label_smoothing,
                               label_smoothing_convention="off_target")

  def adapt_run(self, run, *, params: Any, batch_stats: Any, mask: Any, start: int, direction,
                dataset):
    """The tweaked version of an IMP re-training ``run``.

    Args:
      run: the plain re-training :class:`~kdt.train.loop.Run`.
      params: the source weights (theta_0, theta_k, trained or random) on the dense tree.
      batch_stats: their BN statistics.
      mask: the round's mask on the dense tree.
      start: the schedule step the run starts at.
      direction: the optimizer direction (for a fresh optimizer state).
      dataset: the training data (for GradInit's batches).

    Returns:
      A :class:`~kdt.train.loop.Run` with the lifted mask, the tweaked loss and an
      ``init_state`` that lifts, rescales (LRsI) and masks the source weights. GradInit's scales
      are searched once, next to ``run.directory``, and loaded afterwards.
    """
    from kdt.tickets import recipes as recipes_lib

    lifted_mask = self.lift_mask(mask)
    scales = self.gradinit_scales(os.path.dirname(run.directory), params, batch_stats, mask,
                                  dataset)

    def init_state():
      p, b = self.lift_variables(params, batch_stats)
      if scales is not None:
        p = jax.tree.map(lambda x, s: x * s, p, scales)
      return recipes_lib.reset_state(p, b, lifted_mask, direction.init(p), start)

    return dataclasses.replace(run, init_state=init_state, mask=lifted_mask,
                               loss=self.loss(run.loss))

  def gradinit_scales(self, directory: str, params: Any, batch_stats: Any, mask: Any,
                      dataset) -> Any:
    """LRsI: GradInit's per-leaf scales for this run, computed once and saved in ``directory``.

    ``tost.lrsi="dense"`` searches the scales of the unmasked network (the dense initialisation
    before masking), ``"masked"`` those of the masked network. Returns None without LRsI.
    """
    if self.settings.lrsi == "none":
      return None
    from kdt.train import gradinit
    path = os.path.join(directory, "gradinit_scales.json")
    p, b = self.lift_variables(params, batch_stats)
    names = _leaf_names(p)
    if fileio.exists(path):
      with fileio.open(path, encoding="utf-8") as f:
        stored = json.load(f)
      return jax.tree.unflatten(jax.tree.structure(p),
                                [jnp.asarray(stored["scales"][n], jnp.float32) for n in names])
    search_mask = (jax.tree.map(lambda x: jnp.ones(x.shape, bool), p)
                   if self.settings.lrsi == "dense" else self.lift_mask(mask))
    config = self.config
    settings = schema.spec(gradinit.GradInitSettings, config.tost, prefix="gradinit_")
    augment = dataset.info.augment if config.data.augment == "default" else config.data.augment
    result = gradinit.search(self.model, p, b, search_mask, dataset, settings,
                             batch_size=(int(config.tost.gradinit_batch_size)
                                         or int(config.train.batch_size)),
                             augment=augment, seed=int(config.seeds.data_order))
    scales = jax.tree.map(float, jax.device_get(result.scales))
    if jax.process_index() == 0:
      fileio.makedirs(directory)
      fileio.write_json(path, {
          "lrsi": self.settings.lrsi, "settings": dataclasses.asdict(settings),
          "scales": dict(zip(names, jax.tree.leaves(scales))), "history": result.history})
    log.info("GradInit (%s): %d iterations, scales in [%.3g, %.3g]", self.settings.lrsi,
             settings.iters, min(jax.tree.leaves(scales)), max(jax.tree.leaves(scales)))
    return jax.tree.map(lambda s: jnp.asarray(s, jnp.float32), scales)


def _leaf_names(tree: Any) -> list[str]:
  from kdt.pruning import selectors
  return selectors.leaf_names(tree)
