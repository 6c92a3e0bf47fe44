"""Pruners by name: the one place a config string becomes a pruning behaviour.

A pruner is a *score* (which weights matter) and an *allocation* (how many weights each layer
keeps). ``imp.score`` names the score and ``imp.allocation`` the allocation:

=========== =========================================================================== ========
score       what it is                                                                  data
=========== =========================================================================== ========
magnitude   :math:`|\\theta|` (Frankle & Carbin; open_lth ``sparse_global``)            no
random      i.i.d. uniform scores (random pruning)                                      no
snip        :math:`|g\\odot\\theta|` normalised (Lee et al. 2019)                         yes
grasp       :math:`\\theta\\odot Hg` (Wang et al. 2020), lowest removed                   yes
synflow     iterative synaptic flow, 100 rounds (Tanaka et al. 2020)                    no
taylor      :math:`|\\theta\\odot\\sum_b g_b|` (Taylor-1, ToST)                           yes
=========== =========================================================================== ========

=========== ===========================================================================
allocation  per-layer counts (:func:`kdt.pruning.masks.mask_for_density`)
=========== ===========================================================================
global      one threshold over all prunable layers
layerwise   the same fraction of every layer
uniform     like layerwise, the stem kept dense (RigL's "uniform")
erk         Erdős–Rényi-Kernel densities (RigL)
=========== ===========================================================================

Iterative IMP with ``global`` / ``layerwise`` removes :math:`\\lceil p R\\rceil` of the :math:`R`
remaining weights per round (:func:`~kdt.pruning.masks.prune_global`); every other combination,
and every one-shot mask, keeps :math:`\\lceil dN\\rceil` of the :math:`N` prunable weights at the
round's density :math:`d`. SynFlow is a procedure, not a score: it prunes from the given mask to
the density in ``synflow_iterations`` exponentially spaced steps, data-free (all-ones input,
absolute weights), with global allocation as in Synaptic-Flow's ``prune_loop``.

The data-dependent scores take ``loss_fn(params, batch[, temperature])`` and stacked ``batches``
(leading axis = batch index); SNIP and GraSP use the first batch (one large batch, as their papers),
Taylor sums over all of them. All functions here are pure; ``prunable``, ``loss_fn`` and
``apply_fn`` are closed over, so a pruner jits once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from kdt import schema
from kdt.pruning import masks
from kdt.pruning import scores as scores_lib

SCORES: tuple[str, ...] = ("magnitude", "random", "snip", "grasp", "synflow", "taylor")
"""The allowed values of ``imp.score``."""

DATA_SCORES: tuple[str, ...] = ("snip", "grasp", "taylor")
"""Scores that need training batches."""

ALLOCATIONS: tuple[str, ...] = masks.ALLOCATIONS
"""The allowed values of ``imp.allocation`` (those of :func:`kdt.pruning.masks.mask_for_density`)."""


def _first(batches: Any) -> Any:
  return jax.tree.map(lambda x: x[0], batches)


_SCORE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "magnitude": lambda p, params, mask, key, batches: scores_lib.magnitude(params),
    "random": lambda p, params, mask, key, batches: scores_lib.random_scores(key, params),
    "snip": lambda p, params, mask, key, batches: scores_lib.snip(
        p.loss_fn, params, mask, _first(batches), prunable=p.prunable),
    "grasp": lambda p, params, mask, key, batches: scores_lib.grasp(
        p.loss_fn, params, mask, _first(batches), temperature=p.grasp_temperature,
        prunable=p.prunable),
    "taylor": lambda p, params, mask, key, batches: scores_lib.taylor(
        p.loss_fn, params, mask, batches, prunable=p.prunable),
}


@dataclasses.dataclass(frozen=True)
class Pruner:
  """A named score and allocation, bound to a network (pure; see the module docstring).

  Attributes:
    score: one of :data:`SCORES`.
    allocation: one of :data:`ALLOCATIONS`.
    prunable: static tree of Python bools (which leaves may be pruned).
    loss_fn: ``loss_fn(params, batch[, temperature]) -> scalar`` for the data scores.
    apply_fn: ``apply_fn(params, x) -> logits`` (eval-mode BatchNorm) for SynFlow.
    input_shape: SynFlow's all-ones input shape, batch axis included, e.g. ``(1, 32, 32, 3)``.
    erk_power_scale: ERK's exponent (1: ERK, 0: uniform).
    synflow_iterations: SynFlow's pruning rounds (100 in the paper).
    grasp_temperature: GraSP's softmax temperature (200 in the reference code).
    count_convention: iterative global rounds count by ``"exact"`` or ``"open_lth"``
      (:func:`kdt.pruning.masks.iterative_kept_count`).
    ignored: the non-prunable conv / dense weights open_lth's convention counts.
  """

  score: str
  allocation: str
  prunable: Any
  loss_fn: Callable[..., Any] | None = None
  apply_fn: Callable[..., Any] | None = None
  input_shape: tuple[int, ...] = ()
  erk_power_scale: float = schema.default("imp.erk_power_scale")
  synflow_iterations: int = schema.default("imp.synflow_iterations")
  grasp_temperature: float = 200.0
  count_convention: str = schema.default("imp.count_convention")
  ignored: int = 0

  def __post_init__(self):
    if self.score not in SCORES:
      raise ValueError(f"unknown score {self.score!r}; allowed: {', '.join(SCORES)}")
    if self.allocation not in ALLOCATIONS:
      raise ValueError(f"unknown allocation {self.allocation!r}; allowed: {', '.join(ALLOCATIONS)}")
    if self.score == "synflow" and self.allocation != "global":
      raise ValueError("score 'synflow' prunes globally (Synaptic-Flow's prune_loop); "
                       f"allocation {self.allocation!r} is not defined for it")
    if self.score in DATA_SCORES and self.loss_fn is None:
      raise ValueError(f"score {self.score!r} needs a loss_fn")
    if self.score == "synflow" and (self.apply_fn is None or not self.input_shape):
      raise ValueError("score 'synflow' needs apply_fn and input_shape")

  @property
  def needs_data(self) -> bool:
    return self.score in DATA_SCORES

  def scores(self, params: Any, mask: Any, key: jax.Array | None = None,
             batches: Any = None) -> Any:
    """The score pytree of ``params`` under ``mask`` (lowest is removed first)."""
    if self.score == "synflow":
      return scores_lib.synflow_scores(self.apply_fn, params, mask, self.input_shape)
    return _SCORE_FUNCTIONS[self.score](self, params, mask, key, batches)

  def to_density(self, params: Any, mask: Any, density: float, key: jax.Array | None = None,
                 batches: Any = None) -> Any:
    """The mask keeping :math:`\\lceil dN\\rceil` prunable weights (already-pruned stay pruned).

    Args:
      params: the weights the mask is taken at (theta_0, theta_k or trained).
      mask: the current mask (all True for a mask from the dense network).
      density: the target density ``d`` over the prunable weights (a Python float).
      key: PRNG key (``random`` scores).
      batches: stacked training batches (data scores).
    """
    if self.score == "synflow":
      return scores_lib.synflow(self.apply_fn, params, mask, self.prunable, self.input_shape,
                                float(density), self.synflow_iterations)
    return masks.mask_for_density(self.scores(params, mask, key, batches), self.prunable,
                                  float(density), allocation=self.allocation, mask=mask,
                                  erk_power_scale=self.erk_power_scale)

  def round(self, params: Any, mask: Any, rate: float, density: float,
            key: jax.Array | None = None, batches: Any = None) -> Any:
    """One iterative IMP round: remove the fraction ``rate`` of the remaining weights.

    ``global`` and ``layerwise`` remove :math:`\\lceil pR\\rceil` of the :math:`R` remaining
    weights (of the model, of each layer; open_lth's rule); the other allocations prune to the
    round's ``density`` with their own per-layer counts.
    """
    if self.score != "synflow" and self.allocation == "global":
      return masks.prune_global(self.scores(params, mask, key, batches), mask, self.prunable,
                                float(rate), convention=self.count_convention,
                                ignored=self.ignored)
    if self.score != "synflow" and self.allocation == "layerwise":
      return masks.prune_layerwise(self.scores(params, mask, key, batches), mask, self.prunable,
                                   float(rate))
    return self.to_density(params, mask, density, key, batches)
