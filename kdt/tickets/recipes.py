"""The re-training recipes as data, and the pure weight reset.

A recipe says, for the subnetwork found in a round, where its weights come from, which part of
which learning-rate schedule it re-trains with, with which loss, and whose mask it uses:

============== =================== ==================== ==== ================== ==========================
recipe         weights             schedule             loss mask               source
============== =================== ==================== ==== ================== ==========================
lth            theta_0 (init)      full, steps 0..T     CE   own lineage        Frankle & Carbin 2019
rewind         theta_k (dense)     steps k..T           CE   own lineage        Frankle et al. 2019/2020
lr_rewind      theta_T (trained)   steps k..T replayed  CE   own lineage        Renda et al. 2020
finetune       theta_T (trained)   constant small LR    CE   own lineage        Renda et al. 2020
pf_liu         theta_T (trained)   full, steps 0..T     CE   own lineage        Liu et al. 2021 (P&F)
kd             theta_0             full                 KD   own lineage        Ma et al. 2021 (KD ticket)
kd_rewind      theta_k             steps k..T           KD   own lineage        Ma et al. 2021
kd_lr_rewind   theta_T             steps k..T replayed  KD   own lineage        combination
random_reinit  fresh random init   as the control       CE   control's mask     control (open_lth
                                                                                ``randomly_reinitialize``)
random_prune   as the control      as the control       CE   random, same per-  control (open_lth
                                                              layer density      ``randomly_prune``)
tost           as the control      as the control       CE   control's mask     Jaiswal et al. 2022 (ToST)
============== =================== ==================== ==== ================== ==========================

"theta_T (trained)" is this recipe's own model from the previous round (the dense model in round 1).

``finetune`` is Renda et al.'s fine-tuning: a small constant learning rate (the schedule's last)
for ``imp.finetune_steps``. ``pf_liu`` is the "pruning & fine-tuning" Liu et al. ("Lottery Ticket
Preserves Weight Correlation", ICML 2021, first circulated as "Lottery Ticket Implies Accuracy
Degradation") compare lottery tickets with "under the same pruning algorithm and the same total
training epochs" (their abstract): the trained, pruned weights are re-trained for as many steps as
the ticket (``lth``: T) with the dense learning-rate schedule *restarted* (steps 0..T). Only the
abstract and introduction of the paper were reachable (docs/methods.md §5); its exact fine-tuning
schedule was not found, so this is the most faithful reading of "same total epochs" with the
dense schedule, not a copied recipe. With a rewind step k = 0 it coincides with ``lr_rewind``.
The *control* recipe of the two controls is ``config.imp.control_recipe`` (default ``lth``).
``tost`` re-trains the control recipe's subnetwork (same mask, weights and schedule) with the
sparse re-training tweaks of ``config.tost`` (:mod:`kdt.tickets.tweaks`): "LTH + tweaks".

What a recipe *means* is :meth:`Recipe.start`: from theta_0, theta_k, the trained weights of its
lineage and a fresh initialisation it returns the starting weights, the start and end step, the
learning-rate schedule and the loss. The IMP round, LMC's copies and every other experiment call
that one function; nothing else decides what ``rewind`` or ``finetune`` means.

Optimizer state: every re-training starts with a fresh optimizer state (zero momentum / Adam
moments), as open_lth does when it starts a new pruning level and as Renda et al. do for
rewinding and fine-tuning. BatchNorm statistics come with the weights (theta_0's, theta_k's or the
trained model's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from kdt.pruning.masks import apply_mask
from kdt.train import losses
from kdt.train.optim import ScheduleSpec
from kdt.train.state import TrainState

WEIGHT_SOURCES = ("init", "rewind", "trained", "random", "control")
SCHEDULE_STARTS = ("full", "from_rewind", "finetune", "control")
MASK_SOURCES = ("own", "control", "random_like_control")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One re-training recipe.

  Attributes:
    name: the recipe's name in configs and results.
    weights: ``init`` (theta_0), ``rewind`` (theta_k), ``trained`` (previous round's trained
      weights), ``random`` (a fresh initialisation) or ``control`` (whatever the control recipe uses).
    schedule: ``full`` (steps 0..T), ``from_rewind`` (steps k..T), ``finetune`` (constant LR for
      the fine-tuning budget) or ``control``.
    kd: whether the loss distils the teacher's soft labels.
    mask: ``own`` (prunes its own lineage), ``control`` (the control recipe's mask) or
      ``random_like_control`` (random mask with the control mask's per-layer density).
  """

  name: str
  weights: str
  schedule: str
  kd: bool = False
  mask: str = "own"

  @property
  def is_control(self) -> bool:
    return self.mask != "own"

  def lineage(self, control: "Recipe") -> str:
    """The recipe whose trained weights and masks this one follows (the control's, for controls)."""
    return control.name if self.is_control else self.name

  def start(self, *, theta_0: "Weights", theta_k: "Weights", trained: "Weights",
            fresh: Callable[[], "Weights"], schedule: ScheduleSpec, loss: losses.LossConfig,
            budget: "Budget", control: "Recipe | None" = None) -> "Start":
    """Where and how this recipe re-trains a subnetwork (pure; no I/O).

    Args:
      theta_0: the dense run's initialisation (weights and BN statistics).
      theta_k: the dense run at the rewind step k.
      trained: the trained weights of this recipe's lineage (:meth:`lineage`) from the previous
        round; the dense model in round 1.
      fresh: builds a new random initialisation (called only by ``random`` weights).
      schedule: the dense run's learning-rate schedule (steps 0..T).
      loss: the config's loss; recipes without KD get plain CE (``kd_stop_step = -1``).
      budget: T, k and the fine-tuning budget.
      control: the control recipe (``imp.control_recipe``), for recipes that copy its sources.

    Returns:
      The :class:`Start`: unmasked source weights, start and end step, schedule, loss.
    """
    effective = resolve(self, control) if control is not None else self
    if effective.schedule == "full":
      start, end = 0, budget.num_steps
    elif effective.schedule == "from_rewind":
      start, end = budget.rewind_step, budget.num_steps
    elif effective.schedule == "finetune":
      start = 0
      end = budget.finetune_steps or budget.num_steps - budget.rewind_step
      lr = budget.finetune_learning_rate or float(schedule.make()(budget.num_steps - 1))
      schedule = ScheduleSpec(name="constant", learning_rate=lr, num_steps=end)
    else:
      raise ValueError(f"recipe {self.name!r}: schedule {effective.schedule!r} needs a control")
    if effective.weights == "random" and budget.random_reinit_from_zero:
      start, end = 0, budget.num_steps
    if effective.weights == "random":
      weights = fresh()
    elif effective.weights in ("init", "rewind", "trained"):
      weights = {"init": theta_0, "rewind": theta_k, "trained": trained}[effective.weights]
    else:
      raise ValueError(f"recipe {self.name!r}: weights {effective.weights!r} need a control")
    if not self.kd:
      loss = dataclasses.replace(loss, kd_stop_step=-1)
    return Start(weights=weights, start_step=start, end_step=end, schedule=schedule, loss=loss,
                 kd=self.kd)


@dataclasses.dataclass(frozen=True)
class Weights:
  """A network's parameters and BatchNorm statistics (theta_0, theta_k, trained or fresh)."""
  params: Any
  batch_stats: Any


@dataclasses.dataclass(frozen=True)
class Budget:
  """The step budget recipes re-train within.

  Attributes:
    num_steps: T, the dense run's length.
    rewind_step: k, the rewind point of ``rewind`` / ``lr_rewind`` / ``kd_rewind``.
    finetune_steps: ``finetune``'s length; 0 = T - k (Renda et al.: rewinding's budget).
    finetune_learning_rate: ``finetune``'s constant LR; 0 = the schedule's final LR.
    random_reinit_from_zero: ``random_reinit`` trains steps 0..T whatever its control. The
      default (False) follows open_lth (``lottery/branch/randomly_reinitialize.py``): the control
      trains from the control's own start step (k for a rewound ticket), the same budget as the
      ticket it controls.
  """
  num_steps: int
  rewind_step: int = 0
  finetune_steps: int = 0
  finetune_learning_rate: float = 0.0
  random_reinit_from_zero: bool = False


@dataclasses.dataclass(frozen=True)
class Start:
  """A re-training start (see :meth:`Recipe.start`).

  Attributes:
    weights: the source weights, before masking (:func:`reset_state` masks them).
    start_step: the schedule position the run starts at.
    end_step: the step it trains to.
    schedule: its learning-rate schedule.
    loss: its loss settings.
    kd: whether it distils a teacher.
  """
  weights: Weights
  start_step: int
  end_step: int
  schedule: ScheduleSpec
  loss: losses.LossConfig
  kd: bool


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("lth", weights="init", schedule="full"),
    Recipe("rewind", weights="rewind", schedule="from_rewind"),
    Recipe("lr_rewind", weights="trained", schedule="from_rewind"),
    Recipe("finetune", weights="trained", schedule="finetune"),
    Recipe("pf_liu", weights="trained", schedule="full"),
    Recipe("kd", weights="init", schedule="full", kd=True),
    Recipe("kd_rewind", weights="rewind", schedule="from_rewind", kd=True),
    Recipe("kd_lr_rewind", weights="trained", schedule="from_rewind", kd=True),
    Recipe("random_reinit", weights="random", schedule="control", mask="control"),
    Recipe("random_prune", weights="control", schedule="control", mask="random_like_control"),
    Recipe("tost", weights="control", schedule="control", mask="control"),
)}


def resolve(recipe: Recipe, control: Recipe) -> Recipe:
  """Replaces ``control`` weight/schedule sources by the control recipe's own."""
  return dataclasses.replace(
      recipe,
      weights=control.weights if recipe.weights == "control" else recipe.weights,
      schedule=control.schedule if recipe.schedule == "control" else recipe.schedule,
  )


@jax.jit
def reset_state(params: Any, batch_stats: Any, mask: Any, opt_state: Any, step: int) -> TrainState:
  """The re-training start: ``mask * params`` with a fresh optimizer state, at schedule ``step``.

  Pure and jitted (one compile per model, not per run). Unpruned entries are bit-identical to
  ``params`` (``jnp.where`` copies them), pruned ones are exactly ``0.0``.

  Args:
    params: the source weights (theta_0, theta_k, trained or random).
    batch_stats: BatchNorm statistics that come with them.
    mask: bool pytree.
    opt_state: a freshly initialised optimizer state.
    step: the schedule position to start from (0, k, or 0 for fine-tuning).

  Returns:
    The :class:`TrainState` to re-train from.
  """
  masked = apply_mask(params, mask)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=masked, batch_stats=batch_stats,
                    opt_state=opt_state)
