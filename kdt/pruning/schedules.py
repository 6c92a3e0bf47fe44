"""Sparsity schedules: IMP rounds, one-shot lists, SynFlow and gradual pruning.

Densities are fractions of the prunable weights that are *kept*; sparsity is
``1 - density``. Iterative magnitude pruning (IMP) at rate :math:`p` keeps
:math:`(1-p)^r` after round :math:`r` in exact arithmetic; the weight counts
actually reached follow the count rule of :func:`kdt.pruning.masks.prune_global`
(``"exact"`` or open_lth's) and are given exactly by :func:`iterative_counts`.

All functions here are plain Python on Python numbers except
:func:`polynomial_sparsity`, which also accepts traced steps.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from kdt.pruning import masks

__all__ = [
    "iterative_counts",
    "iterative_densities",
    "iterative_density",
    "kd_ticket_imagenet_sparsities",
    "kd_ticket_sparsities",
    "oneshot_densities",
    "polynomial_sparsity",
    "synflow_schedule",
]


def _check_rate(rate: float) -> None:
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must lie in [0, 1], got {rate!r}.")


def iterative_density(round_index: Any, rate: float) -> Any:
  """Density after ``round_index`` IMP rounds: :math:`(1 - p)^{r}`.

  Args:
    round_index: number of pruning rounds done (0 = dense).
    rate: fraction :math:`p` of the remaining weights pruned per round.

  Returns:
    :math:`(1-p)^r` (a float for Python inputs; works on arrays too).

  Examples:
    >>> iterative_density(2, 0.2)
    0.6400000000000001
  """
  return (1.0 - rate) ** round_index


def iterative_densities(rate: float, num_rounds: int) -> tuple[float, ...]:
  """Densities after rounds :math:`r = 1..R`: :math:`(1-p)^r`.

  Args:
    rate: per-round pruning rate :math:`p`.
    num_rounds: number of rounds :math:`R`.

  Returns:
    A tuple of ``num_rounds`` densities (round 0, the dense network, excluded).

  Examples:
    >>> [round(d, 4) for d in iterative_densities(0.2, 3)]
    [0.8, 0.64, 0.512]
  """
  _check_rate(rate)
  return tuple((1.0 - rate) ** r for r in range(1, num_rounds + 1))


def iterative_counts(total: int, rate: float, num_rounds: int, *,
                     convention: str = "exact", ignored: int = 0) -> tuple[int, ...]:
  """Exact remaining prunable-weight counts of IMP.

  .. math::  R_0 = N,\\qquad R_{r} = K(R_{r-1})

  with :math:`K` the :func:`kdt.pruning.masks.iterative_kept_count` of the
  ``convention`` (``"exact"``: :math:`R - \\lceil p R\\rceil`; ``"open_lth"``:
  :math:`R - \\lceil p (R + I)\\rceil - 1`), which is what repeated
  :func:`kdt.pruning.masks.prune_global` reaches.

  Args:
    total: number :math:`N` of prunable weights.
    rate: per-round rate :math:`p`.
    num_rounds: number of rounds.
    convention: ``"exact"`` or ``"open_lth"``.
    ignored: weight-matrix entries never pruned (:math:`I`, ``"open_lth"`` only).

  Returns:
    ``(R_1, ..., R_num_rounds)``.

  Examples:
    >>> iterative_counts(10, 0.2, 4)
    (8, 6, 4, 3)
    >>> iterative_counts(265_200, 0.2, 2, convention="open_lth", ignored=1_000)
    (211959, 169366)
  """
  _check_rate(rate)
  out, remaining = [], int(total)
  for _ in range(num_rounds):
    remaining = masks.iterative_kept_count(rate, remaining, convention=convention,
                                           ignored=int(ignored))
    out.append(remaining)
  return tuple(out)


def oneshot_densities(rate: float, num_levels: int) -> tuple[float, ...]:
  """One-shot density levels :math:`(1-p)^k`, :math:`k = 1..K`.

  The same levels as IMP, but each mask is cut in one shot from the same dense
  weights (KD-ticket: :math:`p = 0.2`, :math:`K = 16`).

  Args:
    rate: :math:`p`.
    num_levels: :math:`K`.

  Returns:
    A tuple of densities.

  Examples:
    >>> [round(1 - d, 4) for d in oneshot_densities(0.2, 3)]
    [0.2, 0.36, 0.488]
  """
  return iterative_densities(rate, num_levels)


def kd_ticket_sparsities() -> tuple[float, ...]:
  """KD-ticket CIFAR sparsity list :math:`1 - 0.8^k`, :math:`k = 1..16`.

  20, 36, 48.8, 59.04, 67.23, 73.79, 79.03, 83.22, 86.58, 89.26, 91.41,
  93.13, 94.50, 95.60, 96.48, 97.19 % (docs/methods.md §1.4). The released scripts'
  "95 %" directory really uses 94.502 % (:math:`k = 13`), which this list
  already contains.

  Returns:
    16 sparsities (fractions pruned).

  Examples:
    >>> [round(100 * s, 2) for s in kd_ticket_sparsities()][:4]
    [20.0, 36.0, 48.8, 59.04]
  """
  return tuple(1.0 - 0.8**k for k in range(1, 17))


def kd_ticket_imagenet_sparsities() -> tuple[float, ...]:
  """KD-ticket ImageNet ResNet-50 sparsities :math:`1 - 0.8^k`, k = 2, 4, .., 10.

  Returns:
    (36, 59.04, 73.79, 83.22, 89.26 %) as fractions.

  Examples:
    >>> [round(100 * s, 2) for s in kd_ticket_imagenet_sparsities()]
    [36.0, 59.04, 73.79, 83.22, 89.26]
  """
  return tuple(1.0 - 0.8**k for k in range(2, 11, 2))


def synflow_schedule(target_density: float, iterations: int) -> tuple[float, ...]:
  """SynFlow's exponential schedule :math:`d_k = d^{k/n}`, :math:`k = 1..n`.

  The last entry is exactly ``target_density``.

  Args:
    target_density: final density :math:`d` in ``(0, 1]``.
    iterations: :math:`n \\ge 1`.

  Returns:
    A tuple of ``iterations`` densities, decreasing to :math:`d`.

  Examples:
    >>> synflow_schedule(0.01, 2)
    (0.1, 0.01)
  """
  if not 0.0 < target_density <= 1.0:
    raise ValueError(f"target_density must lie in (0, 1], got {target_density!r}.")
  if int(iterations) < 1:
    raise ValueError(f"iterations must be >= 1, got {iterations!r}.")
  n = int(iterations)
  return tuple(target_density if k == n else target_density ** (k / n)
               for k in range(1, n + 1))


def polynomial_sparsity(step: Any, *, final_sparsity: float, begin_step: int,
                        end_step: int, initial_sparsity: float = 0.0,
                        power: float = 3.0) -> Any:
  """Gradual pruning schedule of Zhu & Gupta (2017).

  .. math::  s_t = s_f + (s_i - s_f)\\Big(1 - \\frac{t - t_0}{t_1 - t_0}
             \\Big)^{\\kappa}, \\quad t \\text{ clipped to } [t_0, t_1]

  Args:
    step: current step :math:`t` (int or array; jit-able).
    final_sparsity: :math:`s_f`.
    begin_step: :math:`t_0`.
    end_step: :math:`t_1 > t_0`.
    initial_sparsity: :math:`s_i`.
    power: :math:`\\kappa` (3 in the paper).

  Returns:
    The sparsity at ``step`` (float32 array).

  Examples:
    >>> float(polynomial_sparsity(50, final_sparsity=0.8, begin_step=0, end_step=100))
    0.699999988079071
  """
  if end_step <= begin_step:
    raise ValueError(f"end_step ({end_step}) must exceed begin_step ({begin_step}).")
  t = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / (end_step - begin_step),
               0.0, 1.0)
  return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t) ** power
