"""Which parameters are prunable: regex rules over '/'-joined parameter paths.

A *prunable tree* is a pytree with exactly the structure of ``params`` whose
leaves are plain Python ``bool`` values. Because the leaves are static Python
values (not arrays), the tree can be closed over by a jitted function and the
pruning code can branch on it at trace time.

Paths are built from the pytree keys and joined with ``'/'``, for example
``'stage1/block0/conv1/kernel'`` for a Flax Linen parameter tree. The rules use
the model-zoo naming contract:

* weight matrices and convolution filters are leaves named ``kernel``;
  convolution kernels have ``ndim >= 3`` (4-D, HWIO, for 2-D convs), dense
  kernels are 2-D;
* the first layer module is named ``stem`` and the output classifier is a Dense
  module named ``head``;
* biases are ``bias``, BatchNorm parameters ``scale`` / ``bias``: never prunable;
* "ghost" branches (ToST ghost skips) have ``ghost`` in their module name and are
  never prunable.

Presets (see ``docs/methods.md`` §1.4, §3.4 and §9):

========================  =====================================================
preset                    prunable kernels
========================  =====================================================
``"conv"``                convolution kernels only, including 1x1 shortcut
                          convs (KD-ticket / ToST); the head is never pruned.
``"conv_dense"``          all convolution and dense kernels, including the head
                          and 1x1 shortcuts (open_lth ResNet-20/50).
``"conv_dense_no_head"``  convolution and dense kernels except the head
                          (open_lth LeNet-300-100 / VGG-16).
========================  =====================================================
"""

from __future__ import annotations

import re
from typing import Any

import jax

__all__ = ["PRESETS", "leaf_names", "path_to_str", "prunable_leaves"]

PRESETS: tuple[str, ...] = ("conv", "conv_dense", "conv_dense_no_head")
"""The allowed values of ``prunable_leaves(..., preset=...)``."""

_STEM_RE = re.compile(r"(^|/)stem(/|$)")
_HEAD_RE = re.compile(r"(^|/)head(/|$)")
_GHOST_RE = re.compile(r"ghost", re.IGNORECASE)

# Whether the head is prunable when ``prune_head`` is None.
_HEAD_DEFAULT = {"conv": False, "conv_dense": True, "conv_dense_no_head": False}


def _key_to_str(key: Any) -> str:
  """Turns one pytree path entry (DictKey, GetAttrKey, ...) into a string."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_to_str(path: tuple[Any, ...]) -> str:
  """Joins a pytree key path (from ``jax.tree_util``) with ``'/'``.

  Args:
    path: a key path as given by ``jax.tree_util.tree_flatten_with_path`` or
      ``jax.tree_util.tree_map_with_path``.

  Returns:
    The '/'-joined path, e.g. ``'head/kernel'``.

  Examples:
    >>> import jax
    >>> [path_to_str(p) for p, _ in
    ...  jax.tree_util.tree_flatten_with_path({'a': {'b': 1, 'c': [2]}})[0]]
    ['a/b', 'a/c/0']
  """
  return "/".join(_key_to_str(k) for k in path)


def leaf_names(tree: Any) -> list[str]:
  """The '/'-joined path of every leaf, in ``jax.tree.flatten`` order.

  Args:
    tree: any pytree (params, mask, scores, prunable tree).

  Returns:
    A list with one name per leaf, in the same order as ``jax.tree.leaves``.

  Examples:
    >>> leaf_names({'head': {'kernel': 0, 'bias': 0}, 'stem': {'kernel': 0}})
    ['head/bias', 'head/kernel', 'stem/kernel']
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_to_str(path) for path, _ in flat]


def prunable_leaves(
    params: Any,
    preset: str = "conv_dense",
    *,
    prune_stem: bool = True,
    prune_head: bool | None = None,
    exclude: tuple[str, ...] = (),
) -> Any:
  """Marks the prunable leaves of ``params`` with Python booleans.

  A leaf is prunable when all of these hold:

  1. its name (last path entry) is ``kernel``;
  2. it is a convolution kernel (``ndim >= 3``), or a dense kernel
     (``ndim == 2``) and the preset prunes dense kernels;
  3. it is not in a module named ``head``, unless the head is pruned
     (``prune_head``; by default only ``"conv_dense"`` prunes it);
  4. it is not in a module named ``stem`` when ``prune_stem=False``;
  5. no path component contains ``ghost``;
  6. no regex in ``exclude`` matches the path (``re.search``).

  Args:
    params: a parameter pytree (arrays or ``jax.ShapeDtypeStruct`` leaves; only
      ``.ndim``/``.shape`` is read), e.g. ``model.init(...)["params"]``.
    preset: one of :data:`PRESETS`.
    prune_stem: whether the ``stem`` kernel may be pruned (RigL "uniform" and
      some papers keep the first layer dense).
    prune_head: whether the ``head`` kernel may be pruned. ``None`` uses the
      preset default (``True`` for ``"conv_dense"``, else ``False``).
      ``True`` with ``"conv"`` adds the head kernel to the conv kernels.
    exclude: extra regexes over '/'-joined paths; matching leaves are not
      prunable.

  Returns:
    A pytree with the structure of ``params`` whose leaves are Python bools.

  Raises:
    ValueError: for an unknown preset (the message lists the allowed values).

  Examples:
    >>> import numpy as np
    >>> params = {'stem': {'kernel': np.zeros((3, 3, 3, 8)), 'bias': np.zeros(8)},
    ...           'head': {'kernel': np.zeros((8, 10)), 'bias': np.zeros(10)}}
    >>> prunable_leaves(params, 'conv')
    {'head': {'bias': False, 'kernel': False}, 'stem': {'bias': False, 'kernel': True}}
    >>> prunable_leaves(params, 'conv_dense')['head']['kernel']
    True
  """
  if preset not in PRESETS:
    raise ValueError(
        f"Unknown pruning preset {preset!r}; allowed values: {', '.join(PRESETS)}."
    )
  if prune_head is None:
    prune_head = _HEAD_DEFAULT[preset]
  prune_dense = preset in ("conv_dense", "conv_dense_no_head")
  excludes = tuple(re.compile(rx) for rx in exclude)

  def rule(path, leaf) -> bool:
    name = path_to_str(path)
    if not path or _key_to_str(path[-1]) != "kernel":
      return False
    if _GHOST_RE.search(name):
      return False
    if any(rx.search(name) for rx in excludes):
      return False
    if _STEM_RE.search(name) and not prune_stem:
      return False
    ndim = len(leaf.shape)
    if _HEAD_RE.search(name):
      return bool(prune_head) and ndim >= 2
    if ndim >= 3:
      return True
    return ndim == 2 and prune_dense

  return jax.tree_util.tree_map_with_path(rule, params)
