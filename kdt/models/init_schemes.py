"""Initialisation schemes: the reference code's initial weights for kdt's models.

kdt's own initialisation (scheme ``"kdt"``, the default) is written into each model: convolutions
He normal *fan-out* (``layers.CONV_INIT``), dense kernels per model, biases zero, BatchNorm
:math:`\\gamma = 1, \\beta = 0`. The lottery-ticket references initialise differently, and linear
mode connectivity, rewinding onsets and tickets at initialisation are sensitive to it. A scheme here
is a pure map ``variables -> variables`` applied after the model's own ``init`` (so scheme
``"kdt"`` is bit-identical to the models' init); :func:`with_init_scheme` builds a model class whose
``init`` applies it, which is what ``create_model(..., init_scheme=...)`` returns.

Fan-in and fan-out of a kernel with shape :math:`(k_1, \\ldots, k_d, C_\\text{in}, C_\\text{out})`
(Flax HWIO; a grouped conv stores :math:`C_\\text{in}/g`) are PyTorch's:
:math:`\\text{fan}_\\text{in} = C_\\text{in} \\prod k_i` and
:math:`\\text{fan}_\\text{out} = C_\\text{out} \\prod k_i`; a dense kernel ``[in, out]`` has
:math:`\\text{fan}_\\text{in} = \\text{in}`.

Schemes:

* ``"open_lth"`` (facebookresearch/open_lth, every model's ``default_hparams``:
  ``model_init='kaiming_normal'``, ``batchnorm_init='uniform'``; ``models/initializers.py``,
  ``models/bn_initializers.py``, ``models/registry.py``): every conv and linear weight
  ``torch.nn.init.kaiming_normal_(w.weight)`` with PyTorch's defaults (fan-in, gain
  :math:`\\sqrt 2`), i.e. :math:`w \\sim \\mathcal N(0, 2/\\text{fan}_\\text{in})` — a plain, not
  truncated, normal — the output layer included; biases keep PyTorch's layer default
  :math:`b \\sim U(\\pm 1/\\sqrt{\\text{fan}_\\text{in}})` (open_lth's initializer does not touch
  them); BatchNorm :math:`\\gamma \\sim U[0, 1)` (``torch.rand``), :math:`\\beta = 0`.
* ``"kd_ticket"`` (VITA-Group/KD-ticket, ``CIFAR10/models/cifar/*.py`` and torchvision for
  ImageNet), by model family:

  - ``oresnet*`` (``oresnet.py``) and the ImageNet-stem ResNets (torchvision ``resnet.py``):
    convs :math:`\\mathcal N(0, 2/\\text{fan}_\\text{out})` (``normal_(0, sqrt(2/(k*k*out)))``;
    torchvision ``kaiming_normal_(mode='fan_out')``), BN :math:`\\gamma = 1, \\beta = 0`, the
    ``nn.Linear`` head at PyTorch's default: weight and bias
    :math:`U(\\pm 1/\\sqrt{\\text{fan}_\\text{in}})`;
  - CIFAR-stem ``resnet18`` / ``resnet34`` (``resnet.py``, kuangliu's, no init code): PyTorch's
    defaults everywhere, convs and head :math:`U(\\pm 1/\\sqrt{\\text{fan}_\\text{in}})`
    (``kaiming_uniform_(a=sqrt(5))``), head bias likewise, BN 1 / 0;
  - ``vgg*`` (``vgg.py`` ``_initialize_weights``): convs
    :math:`\\mathcal N(0, 2/\\text{fan}_\\text{in})` with zero bias, BN 1 / 0, linear
    :math:`\\mathcal N(0, 0.01^2)` with zero bias.

  The KD-ticket code has no other model kdt builds; :func:`init_scheme_problem` says so.

Departures: ToST's ghost branches (``ghost`` in the module path) keep their constant
initialisation under every scheme; PyTorch's random stream is not reproduced (the draws come from
``jax.random`` with one key per leaf).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.pruning import selectors

__all__ = ["INIT_SCHEMES", "apply_init_scheme", "init_scheme_problem", "with_init_scheme"]

INIT_SCHEMES: tuple[str, ...] = ("kdt", "open_lth", "kd_ticket")
"""The allowed values of ``config.model.init_scheme``."""

_GHOST_RE = re.compile(r"ghost", re.IGNORECASE)
# A salt folded into the init key, so the scheme's draws are not the model's own.
_SALT = 0x1417


def _kd_ticket_family(model_name: str, cifar_stem: bool) -> str | None:
  """Which KD-ticket model file ``model_name`` corresponds to (None: no such model there)."""
  if model_name.startswith("oresnet") or (model_name in ("resnet18", "resnet34", "resnet50")
                                          and not cifar_stem):
    return "oresnet"  # oresnet.py and torchvision's ResNets share the conv / BN / head init
  if model_name in ("resnet18", "resnet34", "resnet50"):
    return "kuangliu"
  if model_name.startswith("vgg"):
    return "vgg"
  return None


def init_scheme_problem(model_name: str, scheme: str, *, cifar_stem: bool = True) -> str | None:
  """Why ``scheme`` cannot initialise ``model_name``, or None when it can.

  Args:
    model_name: a registered model name.
    scheme: one of :data:`INIT_SCHEMES`.
    cifar_stem: whether the model is built with its CIFAR stem (ResNet-18/34/50).

  Returns:
    None, or a message naming the schemes and models allowed.

  Examples:
    >>> init_scheme_problem("resnet20", "open_lth") is None
    True
    >>> print(init_scheme_problem("lenet_300_100", "kd_ticket"))  # doctest: +ELLIPSIS
    'kd_ticket' initialises the KD-ticket code's models (oresnet*, ...), not 'lenet_300_100'
  """
  if scheme not in INIT_SCHEMES:
    return f"unknown init scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}"
  if scheme == "kd_ticket" and _kd_ticket_family(model_name, cifar_stem) is None:
    return ("'kd_ticket' initialises the KD-ticket code's models (oresnet*, resnet18/34/50, "
            f"vgg*), not {model_name!r}")
  return None


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
  receptive = math.prod(shape[:-2])
  return receptive * shape[-2], receptive * shape[-1]


def _normal(key, shape, std):
  return std * jax.random.normal(key, shape, jnp.float32)


def _uniform(key, shape, bound):
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _draw(rule: str, key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int):
  """One named draw; ``fan_in``/``fan_out`` are the (sibling) kernel's."""
  if rule == "he_normal_fan_in":
    return _normal(key, shape, math.sqrt(2.0 / fan_in))
  if rule == "he_normal_fan_out":
    return _normal(key, shape, math.sqrt(2.0 / fan_out))
  if rule == "torch_default":  # kaiming_uniform_(a=sqrt(5)) weights and the bias bound
    return _uniform(key, shape, 1.0 / math.sqrt(fan_in))
  if rule == "normal_0.01":
    return _normal(key, shape, 0.01)
  if rule == "zeros":
    return jnp.zeros(shape, jnp.float32)
  if rule == "ones":
    return jnp.ones(shape, jnp.float32)
  if rule == "uniform_0_1":
    return jax.random.uniform(key, shape, jnp.float32)
  raise ValueError(f"unknown init rule {rule!r}")


def _rules(scheme: str, family: str | None) -> dict[str, str]:
  """Rules for (conv kernel, conv bias, dense kernel, dense bias, bn scale, bn bias)."""
  if scheme == "open_lth":
    return {"conv_kernel": "he_normal_fan_in", "conv_bias": "torch_default",
            "dense_kernel": "he_normal_fan_in", "dense_bias": "torch_default",
            "bn_scale": "uniform_0_1", "bn_bias": "zeros"}
  bn = {"bn_scale": "ones", "bn_bias": "zeros"}
  if family == "oresnet":
    return {"conv_kernel": "he_normal_fan_out", "conv_bias": "zeros",
            "dense_kernel": "torch_default", "dense_bias": "torch_default", **bn}
  if family == "kuangliu":
    return {"conv_kernel": "torch_default", "conv_bias": "torch_default",
            "dense_kernel": "torch_default", "dense_bias": "torch_default", **bn}
  return {"conv_kernel": "he_normal_fan_in", "conv_bias": "zeros",  # vgg
          "dense_kernel": "normal_0.01", "dense_bias": "zeros", **bn}


def apply_init_scheme(variables: Any, key: jax.Array, scheme: str, *, model_name: str = "",
                      cifar_stem: bool = True) -> Any:
  """Re-draws a model's parameters under an initialisation scheme (pure, jit-able).

  Leaves are classified by their module: a module with a ``kernel`` is a conv (``ndim >= 3``) or
  dense layer, whose ``bias`` draws with the kernel's fan-in; a module with a ``scale`` is a
  BatchNorm (``scale`` = :math:`\\gamma`, ``bias`` = :math:`\\beta`). Other leaves, other
  collections (``batch_stats``) and ghost branches are returned unchanged.

  Args:
    variables: ``model.init(...)``'s output (a dict with ``"params"``).
    key: a PRNG key; leaf :math:`i` (flatten order of ``params``) draws with
      ``fold_in(key, i)``.
    scheme: one of :data:`INIT_SCHEMES`; ``"kdt"`` returns ``variables`` unchanged.
    model_name: the registered model name (``"kd_ticket"`` picks its rules by model family).
    cifar_stem: whether the model uses its CIFAR stem (ResNet-18/34/50 under ``"kd_ticket"``).

  Returns:
    The variables with re-drawn ``params``.

  Raises:
    ValueError: when :func:`init_scheme_problem` objects.

  Examples:
    >>> import numpy as np
    >>> v = {"params": {"fc": {"kernel": np.zeros((400, 3)), "bias": np.zeros(3)}}}
    >>> w = apply_init_scheme(v, jax.random.key(0), "open_lth")["params"]["fc"]
    >>> bool(np.all(np.abs(w["bias"]) <= 1 / 20)) and bool(np.any(w["bias"] != 0))
    True
  """
  problem = init_scheme_problem(model_name, scheme, cifar_stem=cifar_stem)
  if problem:
    raise ValueError(problem)
  if scheme == "kdt":
    return variables
  rules = _rules(scheme, _kd_ticket_family(model_name, cifar_stem))
  params = variables["params"]
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [selectors.path_to_str(path) for path, _ in flat]
  by_name = dict(zip(names, (leaf for _, leaf in flat)))
  out = []
  for index, (name, (_, leaf)) in enumerate(zip(names, flat)):
    module, _, leaf_name = name.rpartition("/")
    prefix = f"{module}/" if module else ""
    kernel = by_name.get(prefix + "kernel")
    shape = tuple(jnp.shape(leaf))
    rule = None
    if _GHOST_RE.search(name):
      rule = None
    elif kernel is not None and leaf_name in ("kernel", "bias"):
      kind = "conv" if jnp.ndim(kernel) >= 3 else "dense"
      rule = rules[f"{kind}_{leaf_name}"]
    elif prefix + "scale" in by_name and leaf_name in ("scale", "bias"):
      rule = rules[f"bn_{leaf_name}"]
    if rule is None:
      out.append(leaf)
      continue
    fan_in, fan_out = _fans(tuple(jnp.shape(kernel))) if kernel is not None else (1, 1)
    value = _draw(rule, jax.random.fold_in(key, index), shape, fan_in, fan_out)
    out.append(value.astype(jnp.asarray(leaf).dtype))
  return {**variables, "params": jax.tree_util.tree_unflatten(treedef, out)}


def _params_key(rngs: Any) -> jax.Array:
  key = rngs["params"] if isinstance(rngs, dict) else rngs
  return jax.random.fold_in(key, _SALT)


@functools.lru_cache(maxsize=None)
def with_init_scheme(cls: type[nn.Module], scheme: str, model_name: str,
                     cifar_stem: bool = True) -> type[nn.Module]:
  """A subclass of the Linen model ``cls`` whose ``init`` applies ``scheme``.

  The subclass has the same fields, parameter names and forward pass; ``init(rngs, ...)``
  returns :func:`apply_init_scheme` of the parent's variables with a key derived from the
  ``params`` key. One class per ``(cls, scheme, model_name, cifar_stem)``, so equal models stay
  equal (and hash alike) across calls.

  Args:
    cls: a Linen model class.
    scheme: one of :data:`INIT_SCHEMES`.
    model_name: the registered model name.
    cifar_stem: whether the model uses its CIFAR stem.

  Returns:
    ``cls`` itself for ``"kdt"``, else the subclass.
  """
  problem = init_scheme_problem(model_name, scheme, cifar_stem=cifar_stem)
  if problem:
    raise ValueError(problem)
  if scheme == "kdt":
    return cls

  def init(self, rngs, *args, **kwargs):
    variables = super(subclass, self).init(rngs, *args, **kwargs)
    return apply_init_scheme(dict(variables), _params_key(rngs), scheme, model_name=model_name,
                             cifar_stem=cifar_stem)

  subclass = type(cls.__name__, (cls,), {"init": init, "__module__": cls.__module__,
                                         "__qualname__": f"{cls.__qualname__}[{scheme}]",
                                         "init_scheme_name": scheme})
  return subclass
