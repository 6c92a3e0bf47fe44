"""GradInit: learned per-layer scales of an initialisation (ToST's LRsI tweak).

GradInit (Zhu et al., "GradInit: Learning to Initialize Neural Networks for Stable and Efficient
Training", NeurIPS 2021) multiplies every parameter tensor :math:`\\theta_\\ell^0` by a learned
scalar :math:`\\alpha_\\ell` (initially 1) chosen so that one optimizer step from
:math:`\\theta = \\alpha \\odot \\theta^0` reduces the loss as much as possible. ToST's "layer-wise
re-scaled initialisation" (LRsI, ``LRsI/gradinit_utils.py``, docs/methods.md §2.2) runs it on the
ticket before sparse re-training. One iteration, as the reference code:

1. draw three training batches :math:`S_0, S_1, S_2`; compute the gradient
   :math:`g = \\nabla_\\theta L(\\theta; S_0 \\cup S_1)` (BN in training mode, running statistics
   untouched) and its norm :math:`\\|g\\|_2` (``alg="sgd"``) or :math:`\\|g\\|_1` (``"adam"``);
2. if :math:`\\|g\\| > \\gamma`: take a *constraint* step that decreases :math:`\\|g\\|`;
3. else take one step of the target optimizer, :math:`\\theta' = \\theta - \\eta\\,g`
   (``"sgd"``, optionally :math:`g/\\|g\\|` with ``normalize_grad``) or
   :math:`\\theta - \\eta\\,\\mathrm{sign}(g)` (``"adam"``), and minimise
   :math:`L(\\theta'; S_0 \\cup S_2) / \\eta` over :math:`\\alpha`. As in the reference code
   (``updated_weight = weight - gstep.data``) the step :math:`\\eta\\,g` is a constant there, so
   :math:`\\partial/\\partial\\alpha_\\ell = \\langle \\nabla_{\\theta_\\ell} L(\\theta'),
   \\theta^0_\\ell\\rangle / \\eta`; only the constraint step differentiates through :math:`g`;
4. update each :math:`\\alpha_\\ell` with ``RescaleAdam``: Adam on the scalar gradient clipped to
   :math:`\\pm` ``grad_clip``, constraint steps with their own first moment, and
   :math:`\\alpha_\\ell \\ge` ``min_scale`` (0.01 for weights, 0 for biases).

Defaults are the ToST code's: 390 iterations, lr 1e-3, ``sgd``, η = 0.1, ``min_scale`` 0.01,
``grad_clip`` 1, γ = ∞ (``gamma=0`` here), no gradient normalisation. Parameters that are all
zero (zero-initialised biases) are skipped, as in the reference.

Two variants of the search on a pruned network (``GradInitSettings.variant``):

* ``"tost_unmasked"`` is ToST's type-2 script (``LRsI/train_ticket_type2.py``, read in its copy
  ``LRsI/.ipynb_checkpoints/train_ticket_type2-checkpoint.py`` at commit 91b8329, zeroes the pruned
  conv weights, then calls ``gradinit`` of ``LRsI/gradinit_utils.py`` on the plain network): the
  pruned entries of :math:`\\theta^0` are 0, but nothing masks the search itself, so the gradient
  :math:`g`, its norm :math:`\\|g\\|` and the look-ahead step
  :math:`\\theta' = \\alpha\\odot\\theta^0 - \\eta g` include the pruned coordinates (in
  :math:`\\theta'` they move off 0 to :math:`-\\eta g`). The learned scales multiply zeros there,
  so the re-trained network is still the masked one.
* ``"masked"`` masks the forward pass as well, so :math:`g`, :math:`\\|g\\|` and :math:`\\theta'`
  live on the kept coordinates only: GradInit of the sparse network as the network re-training
  trains. The two differ whenever the pruned coordinates' gradient is non-zero (always, in
  practice): they are *not* equivalent.

A step-conditioned re-training network (activation anneal, ghost fade; see
:mod:`kdt.tickets.tweaks`) is evaluated at the schedule position re-training starts from
(``step``), the network whose initialisation is being scaled. The step is pure and jit-able;
:func:`search` is the small host loop around it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdt import data as data_lib
from kdt import parallel
from kdt import pruning
from kdt import schema
from kdt.pruning import selectors
from kdt.train import losses
from kdt.train import steps

GRADINIT_ALGS = ("sgd", "adam")
GRADINIT_VARIANTS = ("tost_unmasked", "masked")


@dataclasses.dataclass(frozen=True)
class GradInitSettings:
  """GradInit hyper-parameters (ToST code defaults; ``config.tost.gradinit_<attribute>``).

  Attributes:
    iters: number of iterations.
    lr: Adam learning rate of the scales.
    alg: the target optimizer of the inner step, ``"sgd"`` or ``"adam"``.
    eta: the inner step's learning rate.
    min_scale: lower bound of the weight scales (biases: 0).
    grad_clip: clip of each scale's gradient (0 = none).
    gamma: gradient-norm constraint (0 = none, the reference's ``inf``).
    normalize_grad: ``sgd`` inner step along :math:`g / \\|g\\|`.
    b1: Adam beta1.
    b2: Adam beta2.
    eps: Adam epsilon.
    variant: on a pruned network, ``"tost_unmasked"`` (ToST's type-2 script: the search sees the
      pruned coordinates) or ``"masked"`` (the search sees only the kept ones); see the module
      docstring.
  """
  iters: int = schema.default("tost.gradinit_iters")
  lr: float = schema.default("tost.gradinit_lr")
  alg: str = schema.default("tost.gradinit_alg")
  eta: float = schema.default("tost.gradinit_eta")
  min_scale: float = schema.default("tost.gradinit_min_scale")
  grad_clip: float = schema.default("tost.gradinit_grad_clip")
  gamma: float = schema.default("tost.gradinit_gamma")
  normalize_grad: bool = schema.default("tost.gradinit_normalize_grad")
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  variant: str = schema.default("tost.gradinit_variant")


class ScaleState(NamedTuple):
  """RescaleAdam's state: one scalar per parameter leaf, plus the two step counters."""
  alpha: Any
  exp_avg: Any
  exp_avg_sq: Any
  cons_exp_avg: Any
  step: jax.Array
  cons_step: jax.Array


class GradInitResult(NamedTuple):
  """The learned scales (a pytree of scalars with the params' structure) and a log."""
  scales: Any
  history: list


def init_scale_state(params: Any) -> ScaleState:
  """All scales 1, moments 0."""
  zeros = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)
  return ScaleState(alpha=jax.tree.map(lambda _: jnp.ones((), jnp.float32), params),
                    exp_avg=zeros, exp_avg_sq=zeros, cons_exp_avg=zeros,
                    step=jnp.zeros((), jnp.int32), cons_step=jnp.zeros((), jnp.int32))


def min_scales(params: Any, min_scale: float) -> Any:
  """``min_scale`` for every leaf, 0 for biases (leaves named ``bias``), as a pytree of floats."""
  names = selectors.leaf_names(params)
  return jax.tree.unflatten(jax.tree.structure(params),
                            [0.0 if n.split("/")[-1] == "bias" else float(min_scale)
                             for n in names])


def rescale_adam(state: ScaleState, grads: Any, active: Any, floors: Any, *, constraint: Any,
                 settings: GradInitSettings) -> ScaleState:
  """One ``RescaleAdam`` step of the scales (pure).

  Args:
    state: the current :class:`ScaleState`.
    grads: :math:`\\partial\\,\\text{objective} / \\partial\\alpha_\\ell` per leaf.
    active: per leaf, whether its initial norm is non-zero (zero leaves are skipped).
    floors: per leaf, the lower bound of the scale.
    constraint: (traced) bool, a gradient-norm constraint step.
    settings: hyper-parameters.

  Returns:
    The new state.
  """
  b1, b2 = settings.b1, settings.b2
  constraint = jnp.asarray(constraint)
  step = state.step + jnp.where(constraint, 0, 1)
  cons_step = state.cons_step + jnp.where(constraint, 1, 0)
  steps_taken = jnp.where(constraint, cons_step, step).astype(jnp.float32)
  total = (step + cons_step).astype(jnp.float32)

  def leaf(alpha, m, v, cm, g, on, floor):
    if settings.grad_clip > 0:
      g = jnp.clip(g, -settings.grad_clip, settings.grad_clip)
    new_m = jnp.where(constraint, m, b1 * m + (1 - b1) * g)
    new_cm = jnp.where(constraint, b1 * cm + (1 - b1) * g, cm)
    new_v = b2 * v + (1 - b2) * g * g
    first = jnp.where(constraint, new_cm, new_m)
    denom = jnp.sqrt(new_v / (1 - b2**total)) + settings.eps
    new_alpha = jnp.maximum(alpha - settings.lr / (1 - b1**steps_taken) * first / denom, floor)
    keep = lambda new, old: jnp.where(on, new, old)
    return keep(new_alpha, alpha), keep(new_m, m), keep(new_v, v), keep(new_cm, cm)

  out = jax.tree.map(leaf, state.alpha, state.exp_avg, state.exp_avg_sq, state.cons_exp_avg,
                     grads, active, floors)
  alpha, m, v, cm = jax.tree.transpose(jax.tree.structure(state.alpha),
                                       jax.tree.structure((0, 0, 0, 0)), out)
  return ScaleState(alpha=alpha, exp_avg=m, exp_avg_sq=v, cons_exp_avg=cm, step=step,
                    cons_step=cons_step)


def _loss(model, params, batch_stats, mask, images, labels, step=None, weight=None) -> jax.Array:
  """CE of the network (masked unless ``mask`` is None) at schedule position ``step``, BN in
  training mode without touching the running statistics (``weight``: a kept partial batch's)."""
  variables = {"params": params if mask is None else pruning.apply_mask(params, mask)}
  if batch_stats:
    variables["batch_stats"] = batch_stats
    logits, _ = steps.apply_model(model, variables, images, train=True, step=step,
                                  mutable=["batch_stats"])
  else:
    logits = steps.apply_model(model, variables, images, train=True, step=step)
  return losses.cross_entropy(logits.astype(jnp.float32), labels, weight=weight)


def scale_gradients(alpha: Any, params0: Any, batch_stats: Any, mask: Any, batch_a: dict,
                    batch_b: dict, step: Any = None, *, model,
                    settings: GradInitSettings) -> tuple:
  """The gradient of GradInit's objective with respect to the scales (pure).

  Args:
    alpha: per-leaf scales; the network is :math:`m \\odot \\alpha \\odot \\theta^0`.
    params0: the initial parameters :math:`\\theta^0` (their pruned entries are zeroed here).
    batch_stats: BN statistics (only their structure matters: BN runs in training mode).
    mask: bool pytree.
    batch_a: ``{"image", "label"}`` of :math:`S_0 \\cup S_1` (gradient of the inner step).
    batch_b: ``{"image", "label"}`` of :math:`S_0 \\cup S_2` (loss after the inner step).
    step: the schedule position of a step-conditioned model (the run's start step; None = the
      end of the schedule). Other models ignore it.
    model: the network.
    settings: hyper-parameters.

  Returns:
    ``(grads, metrics)``: :math:`\\partial\\|g\\| / \\partial\\alpha` on a constraint step
    (:math:`\\|g\\| > \\gamma`), else :math:`\\partial (L(\\theta')/\\eta) / \\partial\\alpha` with the
    inner step held constant; metrics ``loss0``, ``loss1`` (NaN on constraint steps), ``gnorm``
    and ``constraint``.
  """
  params0 = pruning.apply_mask(params0, mask)
  forward_mask = mask if settings.variant == "masked" else None

  def params_at(a):
    return jax.tree.map(lambda s, p: s * p, a, params0)

  def inner(a):
    loss0, g = jax.value_and_grad(_loss, argnums=1)(model, params_at(a), batch_stats, forward_mask,
                                                    batch_a["image"], batch_a["label"], step,
                                                    batch_a.get("weight"))
    leaves = jax.tree.leaves(g)
    if settings.alg == "adam":
      gnorm = sum(jnp.sum(jnp.abs(x)) for x in leaves)
    else:
      gnorm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))
    return loss0, g, gnorm

  def objective(a):
    _, g, gnorm = inner(a)
    if settings.alg == "adam":
      update = jax.tree.map(lambda x: settings.eta * jnp.sign(x), g)
    else:
      scale = settings.eta / gnorm if settings.normalize_grad else settings.eta
      update = jax.tree.map(lambda x: scale * x, g)
    # The reference detaches the step (``gstep.data``): no gradient through g here.
    moved = jax.tree.map(jnp.subtract, params_at(a), jax.lax.stop_gradient(update))
    loss1 = _loss(model, moved, batch_stats, forward_mask, batch_b["image"], batch_b["label"],
                  step, batch_b.get("weight"))
    return loss1 / settings.eta, loss1

  def constraint_branch(a):
    return jax.grad(lambda x: inner(x)[2])(a), jnp.float32(jnp.nan)

  def objective_branch(a):
    return jax.grad(objective, has_aux=True)(a)

  loss0, _, gnorm = inner(alpha)
  if settings.gamma > 0:
    constraint = gnorm > settings.gamma
    grads, loss1 = jax.lax.cond(constraint, constraint_branch, objective_branch, alpha)
  else:
    constraint = jnp.asarray(False)
    grads, loss1 = objective_branch(alpha)
  return grads, {"loss0": loss0, "loss1": loss1, "gnorm": gnorm, "constraint": constraint}


def gradinit_step(state: ScaleState, params0: Any, batch_stats: Any, mask: Any, floors: Any,
                  batch_a: dict, batch_b: dict, step: Any = None, *, model,
                  settings: GradInitSettings) -> tuple:
  """One GradInit iteration: :func:`scale_gradients`, then :func:`rescale_adam` (pure).

  Args:
    state: the scales' :class:`ScaleState`.
    params0: the initial parameters :math:`\\theta^0`.
    batch_stats: BN statistics.
    mask: bool pytree.
    floors: per-leaf lower bounds of the scales (:func:`min_scales`).
    batch_a: the inner step's batch :math:`S_0 \\cup S_1`.
    batch_b: the objective's batch :math:`S_0 \\cup S_2`.
    step: the schedule position of a step-conditioned model (see :func:`scale_gradients`).
    model: the network (static).
    settings: hyper-parameters (static).

  Returns:
    ``(new_state, metrics)`` (metrics of :func:`scale_gradients`).
  """
  active = jax.tree.map(lambda p: jnp.any(p != 0), pruning.apply_mask(params0, mask))
  grads, metrics = scale_gradients(state.alpha, params0, batch_stats, mask, batch_a, batch_b, step,
                                   model=model, settings=settings)
  new_state = rescale_adam(state, grads, active, floors, constraint=metrics["constraint"],
                           settings=settings)
  return new_state, metrics


# Compiled once per (model, settings): re-training runs of every round reuse it.
_jitted_step = jax.jit(gradinit_step, static_argnames=("model", "settings"))


def search(model, params: Any, batch_stats: Any, mask: Any, dataset, settings: GradInitSettings,
           *, batch_size: int, augment: str, seed: int, start_step: int = 0,
           mesh=None) -> GradInitResult:
  """Runs GradInit for ``settings.iters`` iterations on training batches of ``dataset``.

  Iteration ``i`` draws the training batches of steps ``3i, 3i+1, 3i+2`` of data-order ``seed``
  (each ``batch_size`` examples, augmented with keys derived from ``seed``), so the search is
  deterministic.

  Args:
    model: the network (a Flax module or a step-conditioned model).
    params: the initial parameters :math:`\\theta^0`.
    batch_stats: their BN statistics.
    mask: bool pytree (all True for the search on the dense network).
    dataset: a :class:`kdt.data.Dataset` (or streaming dataset).
    settings: hyper-parameters.
    batch_size: examples per batch (the step sees two batches at a time).
    augment: the augmentation of the training data (``dataset.info.augment`` if "default").
    seed: data-order and augmentation seed.
    start_step: the schedule position the re-training starts from; a step-conditioned model
      (activation anneal, ghost fade) is searched in its form at that step.
    mesh: device mesh (default: all devices).

  Returns:
    :class:`GradInitResult`: the scales (multiply each leaf by its scale) and a log every 10
    iterations.
  """
  mesh = mesh or parallel.make_mesh()
  info = dataset.info
  device_augment = "none" if augment == "inception_crop_flip" else augment
  floors = jax.tree.map(jnp.float32, min_scales(params, settings.min_scale))
  key = jax.random.key(seed)

  def batch(index: int) -> dict:
    if info.streaming:
      local = dataset.train_batch(index, batch_size, seed, augment=augment, augment_seed=seed)
    else:
      local = dataset.train_batch(index, batch_size, seed)
    raw = parallel.global_batch(local, mesh)
    images = data_lib.preprocess(raw["image"], jax.random.fold_in(key, index), info=info,
                                 train=True, augment=device_augment)
    return {"image": images, "label": raw["label"],
            **{k: raw[k] for k in ("weight",) if k in raw}}

  def cat(a, b):
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)

  state = init_scale_state(params)
  step = jnp.asarray(start_step, jnp.int32)
  history = []
  for i in range(settings.iters):
    s0, s1, s2 = batch(3 * i), batch(3 * i + 1), batch(3 * i + 2)
    state, metrics = _jitted_step(state, params, batch_stats, mask, floors, cat(s0, s1),
                                  cat(s0, s2), step, model=model, settings=settings)
    if (i + 1) % 10 == 0 or i + 1 == settings.iters:
      m = jax.device_get(metrics)
      alphas = np.asarray(jax.device_get(jax.tree.leaves(state.alpha)))
      history.append({"iter": i + 1, "loss0": float(m["loss0"]), "loss1": float(m["loss1"]),
                      "gnorm": float(m["gnorm"]), "constraint": bool(m["constraint"]),
                      "scale_min": float(alphas.min()), "scale_max": float(alphas.max())})
  return GradInitResult(scales=state.alpha, history=history)
