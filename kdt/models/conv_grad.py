"""A convolution whose weight gradient is computed in batch chunks: a CPU speed-up, same numbers.

Why. On CPU, XLA computes a convolution's weight gradient ``dW = sum_n x_n * dy_n`` (a reduction
over the whole batch) as one operation that keeps the cores only partly busy; it runs 3-6x slower
per FLOP than the forward convolution and dominates a CNN train step. Splitting the batch into
``G`` chunks gives ``G`` independent weight-gradient convolutions, which XLA's CPU runtime runs
concurrently, and their sum is ``dW``:

.. math::
  \\frac{\\partial L}{\\partial W} = \\sum_{g=1}^{G} \\sum_{n \\in \\text{chunk}_g}
  x_n \\star \\frac{\\partial L}{\\partial y_n}

Only the order of a float sum changes (as with data parallelism). Measured on a 2-core Xeon
(``python -m kdt.bench`` reports it per machine): the weight gradient of a 3x3 conv at batch 128
ran 1.7-3.7x faster in chunks of 16 rows (smaller calls use the cores and caches better, also on
one core), a ResNet-20 train step on one device about 1.45x faster.

How. :func:`conv_general_dilated` is a drop-in for ``jax.lax.conv_general_dilated`` (kdt's
convolutions use it through :func:`kdt.models.layers.conv`). It is a ``jax.custom_jvp`` whose
tangent in the kernel is the sum of per-chunk convolutions, so reverse mode (its transpose) computes
the chunked ``dW``, while forward mode, ``vmap`` and higher derivatives all keep working. Chunk
``g`` holds the rows ``g, g + G, g + 2G, ...``, so a batch sharded over devices is chunked on every
device without moving data. The forward pass is the plain convolution.

Settings. :func:`set_weight_grad_chunks` — ``"auto"`` (default): on the CPU backend, chunks of
:data:`AUTO_CHUNK_ROWS` rows per device (see :func:`chunks_for`), none elsewhere (accelerators
have fast weight gradients); an int: up to that many chunks on every backend; 1: off. The setting
is read when a step is traced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

AUTO_CHUNK_ROWS = 16
"""``"auto"`` on CPU: chunks of at least this many rows per device, as many as divide the batch."""

MAX_AUTO_CHUNKS = 8
"""``"auto"`` never uses more chunks (each adds a convolution to compile)."""

MIN_CHUNK_ROWS = 4
"""Smallest chunk (rows per device) an explicit chunk count may produce."""

_SETTING: dict[str, int | str] = {"chunks": "auto"}


def set_weight_grad_chunks(chunks: int | str) -> None:
  """Sets how many batch chunks conv weight gradients use (``"auto"``, or an int >= 1).

  Affects steps traced afterwards (already compiled steps keep their setting).

  Raises:
    ValueError: ``chunks`` is neither ``"auto"`` nor a positive int.
  """
  if chunks != "auto" and not (isinstance(chunks, int) and chunks >= 1):
    raise ValueError(f"weight-gradient chunks must be 'auto' or an int >= 1, got {chunks!r}")
  _SETTING["chunks"] = chunks


def weight_grad_chunks_setting() -> int | str:
  """The current setting (see :func:`set_weight_grad_chunks`)."""
  return _SETTING["chunks"]


def chunks_for(batch: int, *, backend: str | None = None, devices: int | None = None,
               setting: int | str | None = None) -> int:
  """How many chunks a convolution over ``batch`` rows uses.

  ``"auto"``: on CPU, the most chunks (up to :data:`MAX_AUTO_CHUNKS`) that split each device's rows
  evenly into chunks of at least :data:`AUTO_CHUNK_ROWS` rows (measured on a 2-core Xeon, CIFAR
  shapes: the weight gradient of a 32x32x16 convolution took 26 ms for 128 rows at once, 14 ms in
  chunks of 32 and 7 ms in chunks of 16; smaller chunks gained nothing more); 1 elsewhere. An int
  ``G``: the most chunks up to ``G`` that split each device's rows evenly into chunks of at least
  :data:`MIN_CHUNK_ROWS` rows.

  Args:
    batch: the (global) batch size the convolution sees.
    backend: ``jax.default_backend()`` if None.
    devices: devices the batch is sharded over (``jax.device_count()`` if None).
    setting: ``"auto"`` or an int (the current :func:`set_weight_grad_chunks` setting if None).

  Returns:
    The chunk count; 1 means no chunking.

  Examples:
    >>> chunks_for(128, backend="cpu", devices=1, setting="auto")
    8
    >>> chunks_for(128, backend="cpu", devices=4, setting="auto")
    2
    >>> chunks_for(128, backend="gpu", devices=1, setting="auto")
    1
    >>> chunks_for(100, backend="cpu", devices=1, setting="auto")
    5
    >>> chunks_for(64, backend="cpu", devices=4, setting=8)
    4
  """
  setting = _SETTING["chunks"] if setting is None else setting
  devices = jax.device_count() if devices is None else devices
  if batch % devices:
    return 1
  rows = batch // devices
  if setting == "auto":
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
      return 1
    target, min_rows = MAX_AUTO_CHUNKS, AUTO_CHUNK_ROWS
  else:
    target, min_rows = int(setting), MIN_CHUNK_ROWS
  for chunks in range(target, 1, -1):
    if rows % chunks == 0 and rows // chunks >= min_rows:
      return chunks
  return 1


def _interleaved_chunks(x: jax.Array, axis: int, chunks: int) -> list[jax.Array]:
  """Splits ``x`` along ``axis`` into chunks of rows ``g, g + chunks, ...`` (g = 0..chunks-1)."""
  n = x.shape[axis]
  grouped = x.reshape(x.shape[:axis] + (n // chunks, chunks) + x.shape[axis + 1:])
  return [lax.index_in_dim(grouped, g, axis=axis + 1, keepdims=False) for g in range(chunks)]


def _merge_interleaved(parts: list[jax.Array], axis: int) -> jax.Array:
  """The inverse of :func:`_interleaved_chunks`."""
  stacked = jnp.stack(parts, axis=axis + 1)
  return stacked.reshape(stacked.shape[:axis] + (-1,) + stacked.shape[axis + 2:])


def _chunked_conv(conv, lhs_batch_axis: int, out_batch_axis: int, chunks: int):
  """``conv`` as a custom_jvp whose kernel tangent is a sum over interleaved batch chunks."""

  @jax.custom_jvp
  def chunked(lhs, rhs):
    return conv(lhs, rhs)

  def jvp(primals, tangents):
    lhs, rhs = primals
    lhs_dot, rhs_dot = tangents
    out = conv(lhs, rhs)
    out_dot = None
    if not isinstance(lhs_dot, jax.custom_derivatives.SymbolicZero):
      out_dot = conv(lhs_dot, rhs)
    if not isinstance(rhs_dot, jax.custom_derivatives.SymbolicZero):
      parts = [conv(part, rhs_dot) for part in _interleaved_chunks(lhs, lhs_batch_axis, chunks)]
      from_kernel = _merge_interleaved(parts, out_batch_axis)
      out_dot = from_kernel if out_dot is None else out_dot + from_kernel
    if out_dot is None:
      out_dot = jnp.zeros_like(out)
    return out, out_dot

  chunked.defjvp(jvp, symbolic_zeros=True)
  return chunked


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None) -> jax.Array:
  """``jax.lax.conv_general_dilated`` with a batch-chunked weight gradient (see module docstring).

  Same arguments and the same forward result as ``lax.conv_general_dilated``; only the
  computation of the gradient with respect to ``rhs`` (the kernel) is split over batch chunks.
  """
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lhs_batch, out_batch = numbers.lhs_spec[0], numbers.out_spec[0]
  chunks = chunks_for(lhs.shape[lhs_batch]) if batch_group_count == 1 else 1
  if chunks == 1:
    return conv(lhs, rhs)
  return _chunked_conv(conv, lhs_batch, out_batch, chunks)(lhs, rhs)
