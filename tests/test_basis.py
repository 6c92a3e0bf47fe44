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
  image = (28, 28, 1)
  params = {"stem": {"kernel": jnp.asarray(rng.normal(size=(784, 30)), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=(30,)), jnp.float32)},
            "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)},
            "short": {"kernel": jnp.asarray(rng.normal(size=(1, 1, 4, 6)), jnp.float32)},
            "fc": {"kernel": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(20, 10)), jnp.float32)}}
  prunable = {"stem": {"kernel": True, "bias": False}, "conv": {"kernel": True},
              "short": {"kernel": True}, "fc": {"kernel": True}, "head": {"kernel": False}}
  to_c = jax.jit(functools.partial(basis.to_coefficients, prunable=prunable, name="dct",
                                   image_shape=image))
  to_w = jax.jit(functools.partial(basis.to_weights, prunable=prunable, name="dct",
                                   image_shape=image))
  c = to_c(params)
  for a, b in zip(jax.tree.leaves(to_w(c)), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
  # Conv: the 2-D DCT of every (in, out) 3x5 spatial filter.
  d3, d5 = basis.dct_matrix(3), basis.dct_matrix(5)
  w = np.asarray(params["conv"]["kernel"], np.float64)
  np.testing.assert_allclose(c["conv"]["kernel"][..., 2, 1], d3 @ w[..., 2, 1] @ d5.T, atol=1e-5)
  # MLP stem: the 2-D DCT of each neuron's incoming weights laid out as the 28x28 image.
  d28 = basis.dct_matrix(28)
  column = np.asarray(params["stem"]["kernel"][:, 7], np.float64).reshape(28, 28)
  np.testing.assert_allclose(np.asarray(c["stem"]["kernel"][:, 7]).reshape(28, 28),
                             d28 @ column @ d28.T, atol=1e-4)
  # Nothing spatial: 1x1 convs, hidden dense layers, non-prunable leaves stay as they are.
  for name in ("short", "fc", "head"):
    np.testing.assert_array_equal(c[name]["kernel"], params[name]["kernel"])
  np.testing.assert_array_equal(c["stem"]["bias"], params["stem"]["bias"])
  # Orthonormal: norms are kept; B^T B = I on the full 784-dimensional stem basis.
  np.testing.assert_allclose(jnp.linalg.norm(c["stem"]["kernel"]),
                             jnp.linalg.norm(params["stem"]["kernel"]), rtol=1e-5)
  eye = {"stem": {"kernel": jnp.eye(784, dtype=jnp.float32), "bias": jnp.zeros(784)},
         **{k: v for k, v in params.items() if k != "stem"}}
  b = np.asarray(jax.jit(functools.partial(basis.to_weights, prunable=prunable, name="dct",
                                           image_shape=image))(eye)["stem"]["kernel"], np.float64)
  np.testing.assert_allclose(b.T @ b, np.eye(784), atol=1e-5)
  # Without an image shape the stem has no 2-D layout and stays in the canonical basis.
  plain = basis.to_coefficients(params, prunable, "dct")
  np.testing.assert_array_equal(plain["stem"]["kernel"], params["stem"]["kernel"])
  # The identity basis returns the very same arrays.
  same = basis.to_weights(params, prunable, "identity", image_shape=image)
  assert all(a is b for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)))


def _energy_in_top(x, fraction):
  """Share of sum(x^2) held by the largest ``fraction`` of the entries."""
  e = np.sort(np.asarray(x, np.float64).ravel() ** 2)[::-1]
  return e[:max(1, int(fraction * e.size))].sum() / e.sum()


def test_dct_compresses_spatially_smooth_kernels():
  """Smooth spatial filters (random across channels) live in few 2-D DCT coefficients."""
  rng = np.random.default_rng(3)
  # MLP stem: each neuron's 28x28 input filter a random smooth blob.
  yy, xx = np.mgrid[0:28, 0:28]
  blobs = []
  for _ in range(50):
    cy, cx, s = rng.uniform(8, 20), rng.uniform(8, 20), rng.uniform(4, 8)
    blobs.append(rng.normal() * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)))
  stem = jnp.asarray(np.stack(blobs, -1).reshape(784, 50), jnp.float32)
  # Conv: a smooth 5x5 bump times a random channel mixing.
  bump = np.outer(np.hanning(7)[1:-1], np.hanning(7)[1:-1])
  conv = jnp.asarray(bump[:, :, None, None] * rng.normal(size=(1, 1, 16, 32)), jnp.float32)
  params = {"stem": {"kernel": stem}, "conv": {"kernel": conv}}
  prunable = {"stem": {"kernel": True}, "conv": {"kernel": True}}
  c = basis.to_coefficients(params, prunable, "dct", image_shape=(28, 28, 1))
  # 1 % of the stem coefficients hold > 98 % of the energy; 1 % of its weights hold < 30 %.
  assert _energy_in_top(c["stem"]["kernel"], 0.01) > 0.98
  assert _energy_in_top(stem, 0.01) < 0.3
  # The 5x5 bump: 2 / 25 of the coefficients hold > 95 %; 2 / 25 of the weights < 70 %, and so
  # do 2 / 25 of the coefficients of a DCT across the input channels (kdt's earlier basis).
  assert _energy_in_top(c["conv"]["kernel"], 2 / 25) > 0.95
  assert _energy_in_top(conv, 2 / 25) < 0.7
  across_channels = np.einsum("ki,abio->abko", basis.dct_matrix(16), np.asarray(conv, np.float64))
  assert _energy_in_top(across_channels, 2 / 25) < 0.7


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
  # Pruning a coefficient changes a whole 3x3 spatial filter of one (in, out) pair.
  c = coefficients["params"]["layer1_0"]["conv1"]["kernel"]
  pruned = {**coefficients["params"], "layer1_0": {
      **coefficients["params"]["layer1_0"],
      "conv1": {"kernel": c.at[0, 0, 2, 5].set(0.0)}}}
  delta = (wrapped.weights(pruned)["layer1_0"]["conv1"]["kernel"] -
           wrapped.weights(coefficients["params"])["layer1_0"]["conv1"]["kernel"])
  changed = np.asarray(jnp.abs(delta) > 1e-9)
  assert changed.sum() == 9 and changed[:, :, 2, 5].all()


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
  # Both densities: over the prunable weights and over every weight matrix (the 100x10 head too).
  assert [r["density_all_weights"] for r in rows] == [
      (r["weights_kept"] + 1000) / (total + 1000) for r in rows]
  # The whole evaluation history of every run is in its row.
  assert all(r["eval_history"][-1]["test_accuracy"] == r["test_accuracy"] for r in rows)
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
  assert driver.model.image_shape == tuple(driver.setup.dataset.info.input_shape)
  c = state.params["stem"]["kernel"]      # the MLP's first layer: 2-D DCT over the 8x8 image
  m = mask["stem"]["kernel"]
  assert float(jnp.max(jnp.abs(jnp.where(m, 0.0, c)))) == 0.0
  w = driver.model.weights(state.params)["stem"]["kernel"]
  assert int(jnp.sum(w == 0.0)) < int(jnp.sum(~m))


def test_bad_basis_names_the_field():
  config = _config()
  config.imp.mask_basis = "wavelet"
  with pytest.raises(config_lib.ConfigError, match="imp.mask_basis"):
    config_lib.validate(config, device_count=1)
