"""kdt: lottery tickets, rewinding and knowledge-distillation tickets in JAX/Flax.

The public surface, for notebooks and scripts (``python -m kdt.main`` calls the same functions)::

  import kdt
  config = kdt.config_lib.base_config("imp")          # or a file from configs/
  rows = kdt.run(config, "/tmp/workdir")             # validate, prepare the workdir, run
  rows = kdt.load_results("/tmp/workdir")
  ticket = kdt.export.load_ticket("/tmp/workdir", round_index=3, recipe="lth")  # mask, θ₀, θ_k, trained
  model = kdt.models.create_model("resnet20", num_classes=10, input_shape=(32, 32, 3))
  mask = kdt.pruning.prune_global(kdt.pruning.magnitude(params), mask, prunable, 0.2)
  state, metrics = kdt.train_step(state, mask, batch, None, model=..., direction=..., ...)

Importing kdt does no JAX work: submodules load on first attribute access.
"""

import importlib

_LAZY = {
    # experiments
    "run": ("kdt.experiments", "run"),
    "load_results": ("kdt.workdir", "load_results"),
    "load_config": ("kdt.workdir", "load_config"),
    # pure pieces
    "train_step": ("kdt.train.steps", "train_step"),
    "eval_step": ("kdt.train.steps", "eval_step"),
    "TrainState": ("kdt.train.state", "TrainState"),
    "RECIPES": ("kdt.tickets.recipes", "RECIPES"),
}
_SUBMODULES = ("analysis", "checkpoint", "config_lib", "data", "experiments", "export", "models",
               "names", "parallel", "pruning", "report", "summary", "tickets", "train", "workdir")

__all__ = tuple(_LAZY) + _SUBMODULES


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  if name in _SUBMODULES:
    return importlib.import_module(f"kdt.{name}")
  raise AttributeError(f"module 'kdt' has no attribute {name!r}")


def __dir__():
  return sorted(__all__)
