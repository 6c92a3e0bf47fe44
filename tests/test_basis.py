"""Tickets in another basis: DCT round trips, the coefficient model, IMP on coefficients."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import workdir as workdir_lib
from kdt import models
from kdt import pruning
from kdt.pruning import basis
from kdt import checkpoint as checkpoint_lib
from kdt.experiments import imp as imp_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dct_matrix_is_the_orthonormal_dct_ii():
  for n in (1, 2, 3, 8, 64):
    d = basis.dct_matrix(n)
    np.testing.assert_allclose(d @ d.T, np.eye(n), atol=1e-12)
  x = np.random.default_rng(0).normal(size=7)
  n = len(x)
  direct = [math.sqrt((1 if k == 0 else 2) / n) *
            sum(x[i] * math.cos(math.pi * (2 * i + 1) * k / (2 * n)) for i in range(n))
            for k in range(n)]
  np.testing.assert_allclose(basis.dct_matrix(n) @ x, direct, atol=1e-12)
  assert basis.basis_matrix("identity", 5) is None
  with pytest.raises(ValueError, match="identity, dct"):
    basis.basis_matrix("haar", 4)


def test_dct_round_trip_is_exact_to_float_tolerance():
  rng = np.random.default_rng(1)
  params = {"stem": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 16)), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=(16,)), jnp.float32)},
            "fc": {"kernel": jnp.asarray(rng.normal(size=(300, 100)), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(100, 10)), jnp.float32)}}
  prunable = {"stem": {"kernel": True, "bias": False}, "fc": {"kernel": True},
              "head": {"kernel": False}}
  c = jax.jit(functools.partial(basis.to_coefficients, prunable=prunable, name="dct"))(params)
  w = jax.jit(functools.partial(basis.to_weights, prunable=prunable, name="dct"))(c)
  for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
  # Coefficients are the DCT of every input column; non-prunable leaves are untouched.
  d = basis.dct_matrix(300)
  np.testing.assert_allclose(c["fc"]["kernel"], d @ np.asarray(params["fc"]["kernel"], np.float64),
                             atol=1e-4)
  np.testing.assert_allclose(c["stem"]["kernel"][1, 2],
                             basis.dct_matrix(3) @ np.asarray(params["stem"]["kernel"][1, 2]),
                             atol=1e-5)
  np.testing.assert_array_equal(c["head"]["kernel"], params["head"]["kernel"])
  np.testing.assert_array_equal(c["stem"]["bias"], params["stem"]["bias"])
  # Orthonormal: norms are kept.
  np.testing.assert_allclose(jnp.linalg.norm(c["fc"]["kernel"]),
                             jnp.linalg.norm(params["fc"]["kernel"]), rtol=1e-5)
  # The identity basis returns the very same arrays.
  same = basis.to_weights(params, prunable, "identity")
  assert all(a is b for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)))


def test_basis_model_computes_the_same_function():
  model = models.create_model("resnet20", num_classes=10, input_shape=(8, 8, 1))
  wrapped = basis.wrap_model(model, "dct", selector="conv_dense", prune_stem=True)
  assert basis.wrap_model(model, "identity", selector="conv_dense", prune_stem=True) is model
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  variables = model.init(jax.random.key(1), x, train=False)
  coefficients = wrapped.init(jax.random.key(1), x, train=False)
  prunable = pruning.prunable_leaves(variables["params"], "conv_dense")
  expected = basis.to_coefficients(variables["params"], prunable, "dct")
  for a, b in zip(jax.tree.leaves(coefficients["params"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(wrapped.apply(coefficients, x, train=False),
                             model.apply(variables, x, train=False), atol=1e-4, rtol=1e-4)
  # Pruning a coefficient changes the weights of a whole input column, not one weight.
  c = coefficients["params"]["layer1_0"]["conv1"]["kernel"]
  pruned = {**coefficients["params"], "layer1_0": {
      **coefficients["params"]["layer1_0"],
      "conv1": {"kernel": c.at[0, 0, 0, 0].set(0.0)}}}
  delta = (wrapped.weights(pruned)["layer1_0"]["conv1"]["kernel"] -
           wrapped.weights(coefficients["params"])["layer1_0"]["conv1"]["kernel"])
  assert int(jnp.sum(jnp.abs(delta) > 1e-9)) == c.shape[2]


def _config():
  config = config_lib.load_file(os.path.join(REPO, "configs", "quickstart.py"))
  config.train.num_steps = 16
  config.train.batch_size = 32
  config.train.eval_every_steps = 0
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 8
  config.schedule.milestones = (12,)
  config.imp.recipes = ("lth", "rewind", "random_reinit")
  config.imp.num_rounds = 2
  config.imp.rewind_step = 4
  return config


def _run(config, workdir):
  workdir_lib.prepare_workdir(config, workdir)
  driver = imp_lib.IMPRounds(experiments.build_setup(config, workdir), config.imp, workdir)
  return driver, driver.run()


def _masks(driver, recipes=("lth", "rewind", "random_reinit")):
  return [driver.masks.load_or_compute(imp_lib.round_dir(driver.workdir, r, name),
                                       driver.dense.mask, None)
          for r in (1, 2) for name in recipes]


def test_identity_basis_reproduces_ordinary_imp_exactly(tmp_path, monkeypatch):
  config = _config()
  plain, plain_rows = _run(config, str(tmp_path / "plain"))
  assert plain.model is not None and not isinstance(plain.model, basis.BasisModel)
  # The same experiment with the network reparametrised by identity coefficients.
  monkeypatch.setattr(basis, "wrap_model", functools.partial(basis.wrap_model, always=True))
  wrapped, wrapped_rows = _run(config, str(tmp_path / "wrapped"))
  assert isinstance(wrapped.model, basis.BasisModel) and wrapped.model.basis == "identity"
  strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]
  assert strip(wrapped_rows) == strip(plain_rows)
  for a, b in zip(_masks(plain), _masks(wrapped)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)


def test_dct_imp_prunes_coefficients(tmp_path):
  config = _config()
  config.imp.mask_basis = "dct"
  config.imp.recipes = ("lth",)
  config_lib.validate(config, device_count=1)
  driver, rows = _run(config, str(tmp_path / "dct"))
  assert isinstance(driver.model, basis.BasisModel) and driver.model.basis == "dct"
  total = rows[0]["weights_prunable"]
  # The reported density counts kept coefficients, with IMP's exact schedule.
  assert [r["weights_kept"] for r in rows] == [total, *pruning.iterative_counts(total, 0.2, 2)]
  assert all(r["test_accuracy"] > 0.5 for r in rows)
  # The saved mask is a mask of coefficients: its zero coefficients are zero in the trained
  # state, while the corresponding weights w = B c are generally not.
  mask = driver.masks.load_or_compute(imp_lib.round_dir(driver.workdir, 2, "lth"),
                                      driver.dense.mask, None)
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(imp_lib.round_dir(driver.workdir, 2, "lth"), "train"))
  try:
    state, _ = ckpt.restore(16, driver.setup.abstract_state())
  finally:
    ckpt.close()
  c = state.params["fc2"]["kernel"]
  m = mask["fc2"]["kernel"]
  assert float(jnp.max(jnp.abs(jnp.where(m, 0.0, c)))) == 0.0
  w = driver.model.weights(state.params)["fc2"]["kernel"]
  assert int(jnp.sum(w == 0.0)) < int(jnp.sum(~m))


def test_bad_basis_names_the_field():
  config = _config()
  config.imp.mask_basis = "wavelet"
  with pytest.raises(config_lib.ConfigError, match="imp.mask_basis"):
    config_lib.validate(config, device_count=1)
