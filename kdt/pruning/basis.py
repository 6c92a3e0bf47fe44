"""Tickets in another basis: prune the coefficients of a weight in an orthonormal basis.

The "generalized lottery ticket hypothesis" (Alabdulmohsin et al., arXiv 2107.06825; docs/methods.md
§6) takes sparsity in an arbitrary basis of parameter space. Here each prunable kernel is written
as :math:`w = B\\,c` along its **input** dimension — for a Dense kernel ``[in, out]`` and a conv
kernel ``[h, w, in, out]``,

.. math::  w_{\\ldots i o} = \\sum_k B_{ik}\\, c_{\\ldots k o},

with :math:`B` orthonormal (:math:`B^\\top B = I`), and the mask is put on the coefficients
:math:`c`. Bases: ``"identity"`` (:math:`B = I`: ordinary weight pruning) and ``"dct"`` (the
orthonormal DCT-II: :math:`B = D^\\top` with
:math:`D_{ki} = \\sqrt{2/n}\\,s_k \\cos(\\pi (2i + 1) k / 2n)`, :math:`s_0 = 1/\\sqrt 2`,
:math:`s_{k>0} = 1`, so :math:`c = D\\,w` is the DCT of each input column).

:class:`BasisModel` reparametrises a network by its coefficients: ``init`` returns :math:`c`
where the network has :math:`w`, and ``apply`` maps :math:`c \\mapsto w` before the forward pass.
Training, magnitude pruning, masks, resets and reports then all work on :math:`c` unchanged; the
reported density counts kept coefficients. Because :math:`B` is orthonormal, dense SGD in
:math:`c` is SGD in :math:`w` (:math:`\\nabla_c L = B^\\top \\nabla_w L`, so
:math:`\\Delta w = B \\Delta c = -\\eta \\nabla_w L`) and weight decay is unchanged
(:math:`\\|c\\| = \\|w\\|`). Only prunable kernels (``selector``) are reparametrised; everything
else, ghost branches included, stays as it is.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdt.pruning import selectors

__all__ = ["BASES", "BasisModel", "basis_matrix", "dct_matrix", "to_coefficients", "to_weights",
           "wrap_model"]

BASES = ("identity", "dct")
"""The allowed bases (``config.imp.mask_basis``)."""


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int) -> np.ndarray:
  """The orthonormal DCT-II matrix :math:`D` (``n x n``, float64): rows are frequencies.

  Examples:
    >>> d = dct_matrix(4)
    >>> bool(np.allclose(d @ d.T, np.eye(4)))
    True
    >>> bool(np.allclose(d[0], 0.5))
    True
  """
  k = np.arange(n)[:, None]
  i = np.arange(n)[None, :]
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
  d[0] /= np.sqrt(2.0)
  return d


def basis_matrix(name: str, n: int) -> np.ndarray | None:
  """:math:`B` of basis ``name`` in dimension ``n`` (float64); None for the identity."""
  if name not in BASES:
    raise ValueError(f"Unknown basis {name!r}; allowed values: {', '.join(BASES)}.")
  if name == "identity":
    return None
  return dct_matrix(n).T


def _along_input(matrix: np.ndarray, x: jax.Array) -> jax.Array:
  """:math:`\\sum_k M_{ik} x_{\\ldots k o}`: ``matrix`` applied along axis -2 of ``x``."""
  m = jnp.asarray(matrix, x.dtype)
  y = jnp.tensordot(m, x, axes=([1], [x.ndim - 2]), precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(y, 0, x.ndim - 2)


def _transform(tree: Any, prunable: Any, name: str, inverse: bool) -> Any:
  leaves, treedef = jax.tree.flatten(tree)
  flags = treedef.flatten_up_to(prunable)
  out = []
  for x, flag in zip(leaves, flags):
    b = basis_matrix(name, x.shape[-2]) if flag and x.ndim >= 2 else None
    out.append(x if b is None else _along_input(b.T if inverse else b, x))
  return treedef.unflatten(out)


def to_weights(coefficients: Any, prunable: Any, name: str) -> Any:
  """:math:`w = B c` for every prunable kernel (pure; other leaves returned as they are)."""
  return _transform(coefficients, prunable, name, inverse=False)


def to_coefficients(params: Any, prunable: Any, name: str) -> Any:
  """:math:`c = B^\\top w` for every prunable kernel (pure; the inverse of :func:`to_weights`)."""
  return _transform(params, prunable, name, inverse=True)


@dataclasses.dataclass(frozen=True, eq=False)
class BasisModel:
  """A network parametrised by the coefficients of its prunable kernels in basis ``basis``.

  Attributes:
    module: the network (a Flax module, or a step-conditioned model from
      :mod:`kdt.tickets.tweaks`).
    basis: a name from :data:`BASES`.
    selector: which kernels are reparametrised (a :data:`kdt.pruning.PRESETS` name, as the
      pruning selector, so the masked coefficients are exactly the prunable ones).
    prune_stem: whether the stem counts as prunable.
  """

  module: Any
  basis: str = "identity"
  selector: str = "conv_dense"
  prune_stem: bool = True

  @property
  def conditioned_on_step(self) -> bool:
    return bool(getattr(self.module, "conditioned_on_step", False))

  def prunable(self, params: Any) -> Any:
    return selectors.prunable_leaves(params, self.selector, prune_stem=self.prune_stem)

  def init(self, *args, **kwargs) -> dict:
    variables = dict(self.module.init(*args, **kwargs))
    params = variables["params"]
    variables["params"] = to_coefficients(params, self.prunable(params), self.basis)
    return variables

  def apply(self, variables, *args, **kwargs):
    coefficients = variables["params"]
    weights = to_weights(coefficients, self.prunable(coefficients), self.basis)
    return self.module.apply({**variables, "params": weights}, *args, **kwargs)

  def weights(self, coefficients: Any) -> Any:
    """The network's weights :math:`w = B c` (e.g. to inspect a trained ticket)."""
    return to_weights(coefficients, self.prunable(coefficients), self.basis)


def wrap_model(model: Any, basis: str, *, selector: str, prune_stem: bool,
               always: bool = False) -> Any:
  """``model`` reparametrised in ``basis`` — or ``model`` itself for the identity basis.

  Args:
    model: the network.
    basis: a name from :data:`BASES`.
    selector: the pruning selector preset.
    prune_stem: whether the stem is prunable.
    always: wrap even for the identity basis (:math:`B = I`, a no-op reparametrisation; tests
      use it to check that the coefficient path reproduces ordinary pruning exactly).

  Returns:
    A :class:`BasisModel`, or ``model``.
  """
  basis_matrix(basis, 1)  # checks the name
  if basis == "identity" and not always:
    return model
  return BasisModel(model, basis=basis, selector=selector, prune_stem=prune_stem)
