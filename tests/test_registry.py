"""Pruners by name (kdt.pruning.registry): each score against an independent small computation,
the allocations, and masks taken at theta_0 by the ``prune_at_init`` experiment."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import pruning
from kdt.experiments import imp as imp_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _two_layer():
  """A 2-layer linear net 3 -> 2 -> 1 and one batch; loss = 0.5 * sum((x W1 W2 - y)^2)."""
  params = {"w1": jnp.array([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]]),
            "w2": jnp.array([[2.0], [-0.5]])}
  batch = {"image": jnp.array([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0]]), "label": jnp.array([[1.0], [0.0]])}
  loss_fn = lambda p, b, temperature=1.0: 0.5 * jnp.sum(
      (b["image"] @ p["w1"] @ p["w2"] / temperature - b["label"]) ** 2)
  return params, batch, loss_fn


def _by_hand_snip(params, batch):
  """|g * w| / sum |g * w| with g from the chain rule written out in NumPy."""
  w1, w2 = np.asarray(params["w1"]), np.asarray(params["w2"])
  x, y = np.asarray(batch["image"]), np.asarray(batch["label"])
  r = x @ w1 @ w2 - y                     # residual, [B, 1]
  g2 = (x @ w1).T @ r                     # dL/dW2
  g1 = x.T @ (r @ w2.T)                   # dL/dW1
  s1, s2 = np.abs(g1 * w1), np.abs(g2 * w2)
  total = s1.sum() + s2.sum()
  return s1 / total, s2 / total


def test_snip_by_name_is_the_hand_computed_connection_sensitivity():
  params, batch, loss_fn = _two_layer()
  prunable = {"w1": True, "w2": True}
  pruner = pruning.Pruner(score="snip", allocation="global", prunable=prunable, loss_fn=loss_fn)
  ones = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
  batches = jax.tree.map(lambda x: x[None], batch)
  scores = pruner.scores(params, ones, batches=batches)
  want1, want2 = _by_hand_snip(params, batch)
  np.testing.assert_allclose(scores["w1"], want1, rtol=1e-5)
  np.testing.assert_allclose(scores["w2"], want2, rtol=1e-5)
  # to_density keeps the ceil(d N) = 4 of 8 highest hand-computed scores
  mask = pruner.to_density(params, ones, 0.5, batches=batches)
  flat = np.concatenate([want1.ravel(), want2.ravel()])
  kept = np.concatenate([np.asarray(mask["w1"]).ravel(), np.asarray(mask["w2"]).ravel()])
  assert kept.sum() == 4 and set(np.flatnonzero(kept)) == set(np.argsort(flat)[-4:])


def test_synflow_by_name_on_a_linear_chain_has_the_closed_form():
  """For f(x) = x W1 W2 (no biases) R = 1^T |W1| |W2| 1, so dR/dW1_ij = (|W2| 1)_j and the
  score of W1_ij is |W1_ij| (|W2| 1)_j; of W2_jk it is (1^T |W1|)_j |W2_jk|."""
  w1 = jnp.array([[1.0, -3.0], [2.0, 0.5]])
  w2 = jnp.array([[0.5, 1.0], [-2.0, 4.0]])
  params = {"w1": w1, "w2": w2}
  apply_fn = lambda p, x: x @ p["w1"] @ p["w2"]
  pruner = pruning.Pruner(score="synflow", allocation="global", prunable={"w1": True, "w2": True},
                          apply_fn=apply_fn, input_shape=(1, 2), synflow_iterations=1)
  ones = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
  scores = pruner.scores(params, ones)
  a1, a2 = np.abs(np.asarray(w1)), np.abs(np.asarray(w2))
  np.testing.assert_allclose(scores["w1"], a1 * a2.sum(axis=1)[None, :], rtol=1e-6)
  np.testing.assert_allclose(scores["w2"], a1.sum(axis=0)[:, None] * a2, rtol=1e-6)
  mask = pruner.to_density(params, ones, 0.25)            # one iteration: the top 2 of 8 scores
  assert int(sum(np.sum(m) for m in jax.tree.leaves(mask))) == 2
  with pytest.raises(ValueError, match="prunes globally"):
    pruning.Pruner(score="synflow", allocation="erk", prunable={"w1": True, "w2": True},
                   apply_fn=apply_fn, input_shape=(1, 2))


def test_every_score_and_allocation_by_name_gives_exact_counts():
  key = jax.random.key(0)
  k1, k2, k3 = jax.random.split(key, 3)
  params = {"a": jax.random.normal(k1, (8, 16)), "b": jax.random.normal(k2, (16, 4))}
  prunable = {"a": True, "b": True}
  x = jax.random.normal(k3, (2, 6, 8))
  batches = {"image": x, "label": jnp.zeros((2, 6), jnp.int32)}
  apply_fn = lambda p, x: jax.nn.relu(x @ p["a"]) @ p["b"]
  loss_fn = pruning.classification_loss(apply_fn)
  ones = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
  for score in pruning.SCORES:
    for allocation in pruning.ALLOCATIONS:
      if score == "synflow" and allocation != "global":
        continue
      pruner = pruning.Pruner(score=score, allocation=allocation, prunable=prunable,
                              loss_fn=loss_fn, apply_fn=apply_fn, input_shape=(1, 8),
                              synflow_iterations=5)
      mask = pruner.to_density(params, ones, 0.25, key=key, batches=batches)
      kept = {k: int(np.sum(v)) for k, v in mask.items()}
      if allocation in ("global", "erk"):
        assert sum(kept.values()) == 48, (score, allocation, kept)     # ceil(0.25 * 192)
      else:
        assert kept == {"a": 32, "b": 16}, (score, allocation, kept)   # ceil(0.25 * each)
  with pytest.raises(ValueError, match="allowed: magnitude"):
    pruning.Pruner(score="hessian", allocation="global", prunable=prunable)


def _pai_config():
  config = config_lib.load_file(os.path.join(REPO, "configs", "quickstart_prune_at_init.py"))
  config.train.num_steps = 12
  config.train.batch_size = 32
  config.train.eval_every_steps = 0
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.schedule.milestones = (8,)
  config.imp.num_rounds = 2
  config.prune_at_init.scores = ("snip", "synflow")
  config.imp.synflow_iterations = 10
  return config


def test_prune_at_init_masks_are_taken_at_theta_0_and_retrained_alike(tmp_path):
  config = _pai_config()
  config_lib.validate(config, device_count=1)
  workdir = str(tmp_path / "pai")
  rows = experiments.run(config, workdir)
  labels = [(r["round"], r["recipe"]) for r in rows]
  assert labels == [(0, "dense"), (1, "lth"), (2, "lth"), (1, "snip"), (2, "snip"),
                    (1, "synflow"), (2, "synflow")]
  by = {(r["round"], r["recipe"]): r for r in rows}
  for r in (1, 2):   # the same densities, the same re-training budget
    assert by[r, "snip"]["weights_kept"] == by[r, "lth"]["weights_kept"] == by[r, "synflow"][
        "weights_kept"]
    assert by[r, "snip"]["start_step"] == 0 and by[r, "snip"]["end_step"] == 12
    assert by[r, "snip"]["retrained_as"] == "lth"
  assert os.path.getsize(os.path.join(workdir, "plots", "accuracy_vs_weights.png")) > 10_000
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert [r["recipe"] for r in json.load(f)] == [r for _, r in labels]
  # The round-2 SNIP mask is SNIP of theta_0 on the first training batch, to round 2's density.
  setup = experiments.build_setup(config, workdir)
  theta_0, _ = setup.restore(setup.dense.directory, 0)
  group = experiments.experiment_module("prune_at_init").score_group(config, "snip")
  rounds = imp_lib.IMPRounds(setup, group, os.path.join(workdir, "snip"))
  density = rounds.densities[1]
  batches = setup.training_batches(1)
  want = jax.jit(lambda p: rounds.pruner(theta_0.batch_stats).to_density(
      p, setup.dense.mask, density, None, batches))(theta_0.params)
  got = setup.load_mask(imp_lib.round_dir(os.path.join(workdir, "snip"), 2, "lth"))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prune_at_init_sources_and_replicates_retrain_as_one_batch(tmp_path, caplog):
  """Round r's re-trainings of IMP's and the scores' masks, of every replicate, are one batch of
  tickets; the workdir's plot and results hold every replicate."""
  config = _pai_config()
  config.imp.num_rounds = 1
  config.prune_at_init.scores = ("snip",)
  config.replicates = 2
  config.tickets.strategy = "vmap"
  workdir = str(tmp_path / "pai")
  batch_log = logging.getLogger("kdt.tickets.batch")  # "kdt" does not propagate to the root
  batch_log.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.INFO, logger="kdt.tickets.batch"):
      rows = experiments.run(config, workdir)
  finally:
    batch_log.removeHandler(caplog.handler)
  # 2 replicates x (IMP's lth ticket + the SNIP mask's), all from theta_0 over the same steps.
  assert "4 runs together with strategy vmap" in caplog.text
  assert [(r["replicate"], r["round"], r["recipe"]) for r in rows] == [
      (0, 0, "dense"), (0, 1, "lth"), (0, 1, "snip"), (1, 0, "dense"), (1, 1, "lth"),
      (1, 1, "snip")]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert len(json.load(f)) == 6
  assert os.path.getsize(os.path.join(workdir, "plots", "accuracy_vs_weights.png")) > 10_000
  for name in ("replicate_00", "replicate_01"):
    assert os.path.exists(os.path.join(workdir, name, "results.json"))
