"""Dynamic sparse training: RigL and SET mask updates, the drop-fraction schedule, sparse init.

Sparse training from scratch keeps the number of active weights of every layer fixed and, every
:math:`\\Delta T` steps, moves some of them (docs/methods.md §6; Evci et al., "Rigging the Lottery",
ICML 2020, ``google-research/rigl`` ``sparse_optimizers.py``; Mocanu et al. 2018 for SET). In each
prunable layer with :math:`n` active weights, at step :math:`t`:

1. **drop** :math:`k = \\lfloor n\\,f(t) \\rfloor` active weights with the smallest :math:`|w|`
   (RigL adds :math:`\\mathcal N(0, 10^{-5})` noise to break ties: ``noise_std`` with a ``key``);
2. **grow** :math:`k` connections that are inactive after the drop (just-dropped ones included),
   those with the largest :math:`|\\partial L / \\partial w|` of the *dense* gradient (RigL) or
   uniformly at random (SET);
3. newly grown weights start at **0** (``grow_init="zeros"``) and their optimizer state is reset;
   a weight dropped and regrown in the same update keeps its value.

The drop fraction follows TF's ``cosine_decay`` from :math:`\\alpha` = 0.3 over the update window:

.. math::  f(t) = \\frac{\\alpha}{2}\\Big(1 + \\cos\\frac{\\pi \\min(t - t_0,\\,T)}{T}\\Big),
           \\qquad T = t_{\\text{end}} - t_0,

or stays :math:`\\alpha` (``"constant"``). Everything here is pure and jit-able; ``prunable`` is the
static tree of Python bools of :mod:`kdt.pruning.selectors`. Ties are deterministic: among equal
scores the lower flat index is dropped first and the higher index is grown first (the convention of
:mod:`kdt.pruning.masks`).

Also here: the **sparsity-aware initialisation** of Evci et al. ("Gradient Flow in Sparse Neural
Networks and How Lottery Tickets Win", AAAI 2022; ``rigl/experimental/jax/pruning/init.py``), which
draws each output neuron with the variance :math:`2/n_j` its *actual* fan-in :math:`n_j` calls for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kdt import schema

__all__ = [
    "DROP_SCHEDULES",
    "DropSchedule",
    "drop_fraction",
    "is_update_step",
    "layer_counts",
    "reset_optimizer_state",
    "rigl_update",
    "set_update",
    "sparsity_aware_init",
    "update_steps",
]

DROP_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class DropSchedule:
  """When masks change and how much (RigL ``maskupdate_*`` / ``drop_fraction*`` flags).

  Attributes:
    initial: :math:`\\alpha`, the drop fraction at ``begin_step`` (RigL: 0.3).
    end_step: the last step with an update (RigL CIFAR: 75000 of 97656).
    begin_step: the first step with an update.
    every: :math:`\\Delta T`, steps between updates (RigL: 100).
    kind: ``"cosine"`` or ``"constant"``.
  """
  initial: float = schema.default("dst.drop_fraction")
  end_step: int = 75_000
  begin_step: int = 0
  every: int = schema.default("dst.update_every")
  kind: str = schema.default("dst.drop_schedule")

  def __post_init__(self):
    if self.kind not in DROP_SCHEDULES:
      raise ValueError(f"Unknown drop schedule {self.kind!r}; allowed values: "
                       f"{', '.join(DROP_SCHEDULES)}.")
    if self.end_step <= self.begin_step or self.every < 1:
      raise ValueError(f"DropSchedule needs begin_step < end_step and every >= 1, got "
                       f"begin_step={self.begin_step}, end_step={self.end_step}, every={self.every}.")


def drop_fraction(step: Any, schedule: DropSchedule) -> Any:
  """The fraction of each layer's active weights moved at ``step`` (see the module docstring).

  Args:
    step: the training step (int or traced).
    schedule: a :class:`DropSchedule`.

  Returns:
    :math:`f(t)` as float32.

  Examples:
    >>> s = DropSchedule(initial=0.3, end_step=1000)
    >>> [round(float(drop_fraction(t, s)), 4) for t in (0, 500, 1000, 2000)]
    [0.3, 0.15, 0.0, 0.0]
  """
  if schedule.kind == "constant":
    return jnp.float32(schedule.initial)
  span = schedule.end_step - schedule.begin_step
  t = jnp.clip(jnp.asarray(step, jnp.float32) - schedule.begin_step, 0.0, span)
  return jnp.float32(schedule.initial) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / span))


def is_update_step(step: int, schedule: DropSchedule) -> bool:
  """Whether the mask changes after ``step`` steps: a positive multiple of ``every`` in
  ``[begin_step, end_step]`` (host-side)."""
  return (step > 0 and step % schedule.every == 0
          and schedule.begin_step <= step <= schedule.end_step)


def update_steps(schedule: DropSchedule, num_steps: int) -> list[int]:
  """Every step ``< num_steps`` after which the mask changes (host-side)."""
  return [t for t in range(schedule.every, num_steps, schedule.every) if is_update_step(t, schedule)]


def _top(scores: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
  """Bool vector: the ``k`` highest ``scores`` among ``eligible`` (ties: higher index first)."""
  n = scores.shape[0]
  idx = lax.iota(jnp.int32, n)
  _, _, order = lax.sort((eligible, scores, idx), num_keys=3, is_stable=True)
  chosen = idx >= n - jnp.clip(k, 0, jnp.sum(eligible, dtype=jnp.int32))
  return jnp.zeros((n,), bool).at[order].set(chosen)


def _update_layer(w, m, drop_score, grow_score, fraction):
  """Drop-and-grow in one layer; returns ``(new_w, new_m)``."""
  shape = w.shape
  m = jnp.ravel(m).astype(bool)
  n_active = jnp.sum(m, dtype=jnp.int32)
  # As RigL: the count in float32, truncated.
  n_move = (n_active.astype(jnp.float32) * fraction).astype(jnp.int32)
  kept = _top(jnp.ravel(drop_score).astype(jnp.float32), m, n_active - n_move)
  grown = _top(jnp.ravel(grow_score).astype(jnp.float32), ~kept, n_move)
  new_m = kept | grown
  newly = grown & ~m
  flat_w = jnp.ravel(w)
  new_w = jnp.where(new_m & ~newly, flat_w, jnp.zeros_like(flat_w))
  return new_w.reshape(shape), new_m.reshape(shape)


def _update(params, mask, grow_scores, fraction, prunable, key, noise_std):
  p_leaves, treedef = jax.tree.flatten(params)
  m_leaves = treedef.flatten_up_to(mask)
  g_leaves = treedef.flatten_up_to(grow_scores)
  flags = treedef.flatten_up_to(prunable)
  keys = jax.random.split(key, len(p_leaves)) if key is not None else [None] * len(p_leaves)
  new_p, new_m = [], []
  for w, m, g, flag, k in zip(p_leaves, m_leaves, g_leaves, flags, keys):
    if not flag:
      new_p.append(w)
      new_m.append(m)
      continue
    score = jnp.abs(jnp.where(m, w, jnp.zeros_like(w))).astype(jnp.float32)
    if k is not None and noise_std:
      score = score + noise_std * jax.random.normal(k, score.shape, jnp.float32)
    w2, m2 = _update_layer(w, m, score, g, fraction)
    new_p.append(w2)
    new_m.append(m2)
  return treedef.unflatten(new_p), treedef.unflatten(new_m)


def rigl_update(params: Any, mask: Any, grads: Any, step: Any, *, prunable: Any,
                schedule: DropSchedule, key: jax.Array | None = None,
                noise_std: float = 0.0) -> tuple[Any, Any]:
  """One RigL mask update: drop by magnitude, grow by dense-gradient magnitude.

  Args:
    params: parameters (pruned entries 0).
    mask: bool mask with params' structure.
    grads: the *dense* gradient: :math:`\\partial L/\\partial w` at the masked weights for every
      entry, active or not (differentiate with respect to the masked parameters themselves).
    step: the training step of the update (sets :math:`f(t)`).
    prunable: static tree of Python bools; other leaves are returned unchanged.
    schedule: the :class:`DropSchedule`.
    key: PRNG key for the drop-score noise (None: no noise).
    noise_std: standard deviation of that noise (RigL: 1e-5).

  Returns:
    ``(new_params, new_mask)``: every prunable layer keeps exactly its number of active weights;
    newly grown weights are 0, dropped ones are 0.
  """
  grow = jax.tree.map(lambda g: jnp.abs(g).astype(jnp.float32), grads)
  return _update(params, mask, grow, drop_fraction(step, schedule), prunable, key, noise_std)


def set_update(params: Any, mask: Any, step: Any, key: jax.Array, *, prunable: Any,
               schedule: DropSchedule, noise_std: float = 0.0) -> tuple[Any, Any]:
  """One SET mask update: drop by magnitude, grow uniformly at random.

  Args:
    params: parameters (pruned entries 0).
    mask: bool mask with params' structure.
    step: the training step of the update.
    key: PRNG key (the random grow scores, and the drop noise).
    prunable: static tree of Python bools.
    schedule: the :class:`DropSchedule`.
    noise_std: drop-score noise (0: none).

  Returns:
    ``(new_params, new_mask)`` as :func:`rigl_update`.
  """
  grow_key, noise_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(grow_key, len(leaves))
  grow = treedef.unflatten([jax.random.uniform(k, jnp.shape(w), jnp.float32)
                            for k, w in zip(keys, leaves)])
  return _update(params, mask, grow, drop_fraction(step, schedule), prunable,
                 noise_key if noise_std else None, noise_std)


def reset_optimizer_state(opt_state: Any, params: Any, keep: Any) -> Any:
  """Zeroes the optimizer state (momentum, Adam moments) of the entries where ``keep`` is False.

  Every sub-tree of ``opt_state`` with the structure of ``params`` is masked; other leaves
  (counts) are unchanged. After a mask update pass ``keep = new_mask & old_mask`` (weights active
  before and after), so grown weights start without momentum (RigL ``reset_momentum``) and the
  state of inactive weights is exactly 0.

  Args:
    opt_state: an optax state.
    params: the parameters (only their structure is used).
    keep: bool tree with params' structure.

  Returns:
    The masked optimizer state.
  """
  treedef = jax.tree.structure(params)

  def is_params_like(x):
    return jax.tree.structure(x) == treedef if not isinstance(x, jax.Array) else False

  def fix(node):
    if is_params_like(node):
      return jax.tree.map(lambda s, k: jnp.where(k, s, jnp.zeros_like(s)), node, keep)
    return node

  return jax.tree.map(fix, opt_state, is_leaf=is_params_like)


def sparsity_aware_init(params: Any, mask: Any, prunable: Any, key: jax.Array, *,
                        scale: float = 2.0) -> Any:
  """Draws each output neuron's weights for its actual fan-in (Evci et al. 2022).

  For a prunable kernel with output axis last (Dense ``[in, out]``, conv HWIO), neuron :math:`j`
  with :math:`n_j` active incoming weights gets, at its active entries,

  .. math::  w_{ij} \\sim \\mathcal N_\\text{trunc}\\big(0,\\ \\text{scale} / n_j\\big)
             \\qquad (\\text{scale} = 2:\\ \\mathrm{Var}\\,w_{ij} = 2 / n_j),

  the He-normal draw a dense layer with fan-in :math:`n_j` would get, whatever the base
  initialisation was (fan-in or fan-out, normal or uniform): the target scale is computed from
  :math:`n_j` alone. This is the convention of ``google-research/rigl``
  ``rigl/experimental/jax/pruning/init.py``: ``sparse_init(base_init, mask)`` calls the dense
  ``base_init`` for every neuron :math:`i` with the fake shape ``(neuron_weight_count[i],
  non_zero_neurons)``, i.e. fan-in :math:`n_j`, and ``kaiming_sparse_normal`` uses Flax's
  ``kaiming_normal`` — variance :math:`2/\\text{fan-in}`, a normal truncated at :math:`\\pm 2`
  standard deviations and rescaled to keep that variance, as here. Neurons with no active input
  are 0 (rigl: "ablated neuron"); pruned entries are 0; non-prunable leaves are returned
  unchanged. The draws come from ``key`` (one ``fold_in`` per leaf), not from PyTorch's or
  rigl's random stream. (kdt's earlier version rescaled the base init by
  :math:`\\sqrt{N/n_j}`, which is right only for a fan-in base: kdt's fan-out convs got 0.17x to
  0.5x the intended variance.)

  Args:
    params: the (dense) initialisation; only shapes and dtypes of prunable leaves are read.
    mask: bool mask with params' structure.
    prunable: static tree of Python bools.
    key: a PRNG key.
    scale: the variance numerator (2: He / ReLU; 1: LeCun).

  Returns:
    The re-drawn, masked parameters.

  Examples:
    >>> import numpy as np
    >>> m = np.zeros((3, 3, 8, 4), bool); m[0, 0, :2, 0] = True     # neuron 0: n_0 = 2
    >>> out = sparsity_aware_init({"k": np.ones(m.shape, np.float32)}, {"k": m}, {"k": True},
    ...                           jax.random.key(0))["k"]
    >>> int(np.sum(out != 0)), bool(np.all(out[..., 1:] == 0))
    (2, True)
  """
  def leaf(w, m, flag, leaf_key):
    if not flag:
      return w
    m = jnp.asarray(m).astype(bool)
    active = jnp.sum(m.reshape(-1, w.shape[-1]), axis=0, dtype=jnp.float32)
    std = jnp.where(active > 0, jnp.sqrt(scale / jnp.maximum(active, 1.0)), 0.0)
    # Unit-variance truncated normal (the constant is the std of N(0, 1) truncated to [-2, 2]).
    z = jax.random.truncated_normal(leaf_key, -2.0, 2.0, w.shape, jnp.float32) / .87962566103423978
    return jnp.where(m, (z * std).astype(w.dtype), jnp.zeros_like(w))

  p_leaves, treedef = jax.tree.flatten(params)
  keys = [jax.random.fold_in(key, i) for i in range(len(p_leaves))]
  return treedef.unflatten([leaf(w, m, bool(f), k) for w, m, f, k in
                            zip(p_leaves, treedef.flatten_up_to(mask),
                                treedef.flatten_up_to(prunable), keys)])


def layer_counts(mask: Any, prunable: Any) -> list[int]:
  """Active weights of every prunable leaf, in flatten order (host-side)."""
  m_leaves, treedef = jax.tree.flatten(mask)
  flags = treedef.flatten_up_to(prunable)
  return [int(np.sum(np.asarray(m))) for m, f in zip(m_leaves, flags) if f]
