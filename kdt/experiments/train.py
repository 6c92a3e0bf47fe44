"""Experiment ``train``: one dense training run; ``results.json`` holds its final evaluation."""

from __future__ import annotations

import os

import jax
import ml_collections

from kdt import evaluation
from kdt import fileio
from kdt.experiments.setup import Setup


def pinned_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dense run's rewind points besides step 0 and ``train.pinned_steps``: none."""
  del config
  return ()


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the dense run (resuming it) and writes ``results.json``; returns the summary."""
  result = setup.trainer.train(setup.dense)
  history = result.meta["history"]
  summary = {"experiment": "train", "model": config.model.name, "dataset": config.data.name,
             "steps": int(result.state.step), **{k: v for k, v in result.final.items() if k != "step"},
             **evaluation.accuracies(history, start_step=result.meta["start_step"],
                                     **evaluation.settings(config)),
             "wall_time": result.meta["wall_time"], "history": history}
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "results.json"), summary)
  print(f"{config.model.name} on {config.data.name}: test accuracy {summary['test_accuracy']:.4f} "
        f"after {summary['steps']} steps  (workdir: {workdir})", flush=True)
  return summary
