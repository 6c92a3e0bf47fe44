"""Tests for kdt.pruning: selectors, scores, masks and schedules.

Everything is checked against hand computations or independent NumPy / Python
references on tiny parameter trees and tiny Flax models.
"""

import doctest
import fractions
import functools
import math

import flax.linen as nn
import jax
import jax.flatten_util  # noqa: F401  (registers jax.flatten_util)
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import pruning
from kdt.pruning import masks as masks_lib
from kdt.pruning import schedules
from kdt.pruning import scores as scores_lib
from kdt.pruning import selectors

# --------------------------------------------------------------------------- #
# Helpers and fixtures.
# --------------------------------------------------------------------------- #


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _kept(mask, prunable):
  """Number of kept prunable weights."""
  return sum(int(np.sum(m)) for m, p in
             zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)) if p)


def _layer_kept(mask, prunable):
  return [int(np.sum(m)) for m, p in
          zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)) if p]


def _assert_tree_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _non_prunable_all_true(mask, prunable):
  for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)):
    assert np.asarray(m).dtype == np.bool_
    if not p:
      assert np.all(np.asarray(m))


def _resnet_like_params():
  """A hand-built Flax-like parameter tree covering every selector case."""
  z = np.zeros
  return {
      "stem": {"kernel": z((3, 3, 3, 4), np.float32)},
      "stem_bn": {"scale": z(4, np.float32), "bias": z(4, np.float32)},
      "block0": {
          "conv1": {"kernel": z((3, 3, 4, 8), np.float32)},
          "bn1": {"scale": z(8, np.float32), "bias": z(8, np.float32)},
          "shortcut": {"kernel": z((1, 1, 4, 8), np.float32)},
          "ghost_jump1": {"kernel": z((1, 1, 4, 8), np.float32)},
          "ghost_bn": {"scale": z(8, np.float32), "bias": z(8, np.float32)},
      },
      "fc": {"kernel": z((8, 6), np.float32), "bias": z(6, np.float32)},
      "head": {"kernel": z((6, 10), np.float32), "bias": z(10, np.float32)},
  }


def _selected(prunable):
  return {n for n, p in zip(selectors.leaf_names(prunable),
                            jax.tree.leaves(prunable)) if p}


class TinyCNN(nn.Module):
  """stem conv + BN, a conv with a ghost 1x1 branch, a dense layer, a head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), name="stem")(x)
    x = nn.BatchNorm(use_running_average=not train, name="stem_bn")(x)
    x = nn.relu(x)
    y = nn.Conv(4, (3, 3), name="conv1")(x)
    g = nn.Conv(4, (1, 1), name="ghost_skip")(x)
    x = nn.relu(y + g).mean(axis=(1, 2))
    x = nn.relu(nn.Dense(8, name="fc")(x))
    return nn.Dense(3, name="head")(x)


class TinyMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16, name="stem")(x))
    x = nn.relu(nn.Dense(12, name="fc")(x))
    return nn.Dense(3, name="head")(x)


@pytest.fixture(scope="module")
def cnn():
  model = TinyCNN()
  variables = model.init(jax.random.key(0), jnp.ones((1, 6, 6, 3)))
  return model, variables["params"], variables["batch_stats"]


@pytest.fixture(scope="module")
def mlp():
  model = TinyMLP()
  params = model.init(jax.random.key(1), jnp.ones((1, 5)))["params"]
  return model, params


# --------------------------------------------------------------------------- #
# Selectors.
# --------------------------------------------------------------------------- #


def test_presets_pick_the_right_leaves():
  params = _resnet_like_params()
  convs = {"stem/kernel", "block0/conv1/kernel", "block0/shortcut/kernel"}
  assert _selected(pruning.prunable_leaves(params, "conv")) == convs
  assert _selected(pruning.prunable_leaves(params, "conv_dense")) == (
      convs | {"fc/kernel", "head/kernel"})
  assert _selected(pruning.prunable_leaves(params, "conv_dense_no_head")) == (
      convs | {"fc/kernel"})
  # Default preset is conv_dense.
  assert _selected(pruning.prunable_leaves(params)) == (
      convs | {"fc/kernel", "head/kernel"})


def test_selector_options():
  params = _resnet_like_params()
  no_stem = pruning.prunable_leaves(params, "conv_dense", prune_stem=False)
  assert "stem/kernel" not in _selected(no_stem)
  assert "block0/conv1/kernel" in _selected(no_stem)
  assert "head/kernel" not in _selected(
      pruning.prunable_leaves(params, "conv_dense", prune_head=False))
  assert "head/kernel" in _selected(
      pruning.prunable_leaves(params, "conv", prune_head=True))
  assert "fc/kernel" not in _selected(
      pruning.prunable_leaves(params, "conv", prune_head=True))
  excl = pruning.prunable_leaves(params, "conv_dense", exclude=(r"shortcut",))
  assert "block0/shortcut/kernel" not in _selected(excl)
  # Leaves are Python bools with the params structure.
  p = pruning.prunable_leaves(params)
  assert jax.tree.structure(p) == jax.tree.structure(params)
  assert all(type(x) is bool for x in jax.tree.leaves(p))


def test_unknown_preset_names_allowed_values():
  with pytest.raises(ValueError) as err:
    pruning.prunable_leaves(_resnet_like_params(), "dense_only")
  msg = str(err.value)
  assert "dense_only" in msg
  for preset in pruning.PRESETS:
    assert preset in msg


def test_selectors_on_flax_model(cnn):
  _, params, _ = cnn
  assert _selected(pruning.prunable_leaves(params, "conv")) == {
      "stem/kernel", "conv1/kernel"}
  assert _selected(pruning.prunable_leaves(params, "conv_dense")) == {
      "stem/kernel", "conv1/kernel", "fc/kernel", "head/kernel"}
  assert _selected(pruning.prunable_leaves(params, "conv_dense_no_head")) == {
      "stem/kernel", "conv1/kernel", "fc/kernel"}
  assert pruning.leaf_names(params) == [
      selectors.path_to_str(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


# --------------------------------------------------------------------------- #
# Exact counts.
# --------------------------------------------------------------------------- #


def test_ceil_count_exact_on_host_and_device():
  fracs = [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.94502, 0.999999, 1.0]
  ns = np.array(list(range(0, 60)) + [999_999, 2**24 + 1, 123_456_789,
                                       2**31 - 1], dtype=np.int64)
  for f in fracs:
    r = fractions.Fraction(f).limit_denominator(2**20)
    expected = [math.ceil(r * int(n)) for n in ns]
    host = [masks_lib.ceil_count(f, int(n)) for n in ns]
    device = jax.jit(lambda n, f=f: masks_lib.ceil_count(f, n))(
        jnp.asarray(ns, jnp.int32))
    assert host == expected, f
    assert np.asarray(device).tolist() == expected, f
  # Decimal fractions are read exactly: ceil(0.2 * n) == ceil(n / 5) always,
  # which is also what open_lth's float64 numpy gives for these counts.
  n = np.arange(0, 200_001)
  device = np.asarray(jax.jit(lambda n: masks_lib.ceil_count(0.2, n))(n))
  np.testing.assert_array_equal(device, -(-n // 5))
  np.testing.assert_array_equal(device, np.ceil(0.2 * n).astype(np.int64))
  # Float round-off trap of the "floor((1 - d) N) pruned" rule: (1 - 0.8) * 10
  # is 1.9999999999999996 in float64; we keep ceil(0.8 * 10) = 8 exactly.
  assert masks_lib.ceil_count(0.8, 10) == 8


# --------------------------------------------------------------------------- #
# Global and layer-wise pruning.
# --------------------------------------------------------------------------- #


def _tie_tree():
  scores = {
      "a": {"kernel": np.array([1., 1., 1., 1., 2., 2.], np.float32),
            "bias": np.array([-100., -100.], np.float32)},
      "b": {"kernel": np.array([[1., 1.], [0.5, 3.]], np.float32)},
  }
  prunable = {"a": {"kernel": True, "bias": False}, "b": {"kernel": True}}
  return scores, prunable


def test_prune_global_exact_count_and_deterministic_ties():
  scores, prunable = _tie_tree()
  mask = pruning.ones_like_params(scores)
  new = _np(pruning.prune_global(scores, mask, prunable, 0.5))
  # 10 prunable weights, ceil(0.5 * 10) = 5 pruned: the 0.5 and then the four
  # 1.0's with the lowest flat indices (a[0..3]); b's 1.0's (indices 6, 7) stay.
  np.testing.assert_array_equal(new["a"]["kernel"], [0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(new["b"]["kernel"], [[1, 1], [0, 1]])
  np.testing.assert_array_equal(new["a"]["bias"], [True, True])
  assert _kept(new, prunable) == 5
  # Same call again (and under jit) gives the identical mask.
  _assert_tree_equal(new, pruning.prune_global(scores, mask, prunable, 0.5))
  jitted = jax.jit(functools.partial(pruning.prune_global, prunable=prunable,
                                     fraction=0.5))
  _assert_tree_equal(new, jitted(scores, mask))
  # All-equal scores: exactly the lowest indices go.
  flat = jax.tree.map(np.ones_like, scores)
  new = _np(pruning.prune_global(flat, mask, prunable, 0.3))  # ceil(3) = 3
  np.testing.assert_array_equal(new["a"]["kernel"], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(new["b"]["kernel"], [[1, 1], [1, 1]])


def test_prune_global_never_revives_pruned_weights():
  scores, prunable = _tie_tree()
  mask = {"a": {"kernel": np.array([0, 1, 1, 1, 1, 0], bool),
                "bias": np.ones(2, bool)},
          "b": {"kernel": np.array([[1, 0], [1, 1]], bool)}}
  # Pruned weights get the largest scores: they must still stay pruned.
  big = jax.tree.map(lambda s, m: np.where(m, s, 1e9).astype(np.float32),
                     scores, mask)
  new = _np(pruning.prune_global(big, mask, prunable, 0.2))
  remaining = 7
  assert _kept(new, prunable) == remaining - math.ceil(0.2 * remaining)
  for n, m in zip(jax.tree.leaves(new), jax.tree.leaves(mask)):
    assert not np.any(n & ~m)


def test_iterative_global_rounds_follow_ceil_exactly(mlp):
  _, params = mlp
  prunable = pruning.prunable_leaves(params, "conv_dense")
  total = _kept(pruning.ones_like_params(params), prunable)
  prune = jax.jit(functools.partial(pruning.prune_global, prunable=prunable,
                                    fraction=0.2))
  mask = pruning.ones_like_params(params)
  expected = list(pruning.iterative_counts(total, 0.2, 8))

  @jax.jit
  def make_scores(key, mask):
    # Coarse scores give many ties; pruned weights get the top score.
    scores = jax.tree.map(lambda s: jnp.round(s * 2.0),
                          pruning.random_scores(key, params))
    return jax.tree.map(lambda s, m: jnp.where(m, s, 1e9), scores, mask)

  remaining = total
  for r in range(8):
    scores = make_scores(jax.random.key(r), mask)
    new = prune(scores, mask)
    if r in (0, 5):
      _assert_tree_equal(new, pruning.prune_global(scores, mask, prunable, 0.2))
    remaining -= math.ceil(fractions.Fraction(1, 5) * remaining)
    assert _kept(new, prunable) == remaining == expected[r]
    for n, m in zip(jax.tree.leaves(_np(new)), jax.tree.leaves(_np(mask))):
      assert not np.any(n & ~m)
    _non_prunable_all_true(new, prunable)
    mask = new


def test_open_lth_count_convention_lenet_300_100_counts():
  """open_lth sparse_global on LeNet-300-100 (784-300-100-10, fc.weight ignored), rate 0.2."""
  hidden, head = 784 * 300 + 300 * 100, 100 * 10
  assert hidden == 265_200
  kept, counts = hidden, []
  for _ in range(8):
    kept = pruning.iterative_kept_count(0.2, kept, convention="open_lth", ignored=head)
    counts.append(kept)
  assert counts[0] == 211_959 and counts[-1] == 43_655
  assert tuple(counts) == schedules.iterative_counts(hidden, 0.2, 8, convention="open_lth",
                                                     ignored=head)
  # The exact rule keeps more: 212,160 at level 1.
  assert pruning.iterative_kept_count(0.2, hidden) == 212_160
  # Jitted (int32) arithmetic agrees with the host's.
  traced = jax.jit(lambda r: pruning.iterative_kept_count(0.2, r, convention="open_lth",
                                                          ignored=head))
  assert int(traced(jnp.int32(hidden))) == 211_959
  assert pruning.iterative_kept_count(0.9, 5, convention="open_lth", ignored=10) == 0
  with pytest.raises(ValueError, match="exact, open_lth"):
    pruning.iterative_kept_count(0.2, 10, convention="open-lth")


def _open_lth_sparse_global(weights, mask, ignored_mask, fraction):
  """A line-by-line numpy copy of open_lth pruning/sparse_global.py Strategy.prune."""
  remaining = sum(int(np.sum(v)) for v in mask.values()) + sum(
      int(np.sum(v)) for v in ignored_mask.values())
  n = int(np.ceil(fraction * remaining))
  vector = np.concatenate([weights[k][mask[k]] for k in weights])
  threshold = np.sort(np.abs(vector))[n]
  return {k: np.where(np.abs(v) > threshold, mask[k], False) for k, v in weights.items()}


def test_prune_global_open_lth_matches_open_lth_code():
  rng = np.random.default_rng(0)
  shapes = {"fc1": (784, 300), "fc2": (300, 100)}
  params = {k: {"kernel": rng.normal(size=s).astype(np.float32)} for k, s in shapes.items()}
  params["head"] = {"kernel": rng.normal(size=(100, 10)).astype(np.float32)}
  prunable = {"fc1": {"kernel": True}, "fc2": {"kernel": True}, "head": {"kernel": False}}
  prune = jax.jit(functools.partial(pruning.prune_global, prunable=prunable, fraction=0.2,
                                    convention="open_lth", ignored=1000))
  mask = pruning.ones_like_params(params)
  ref = {k: np.ones(s, bool) for k, s in shapes.items()}
  for _ in range(3):
    mask = _np(prune(pruning.magnitude(params), mask))
    ref = _open_lth_sparse_global({k: params[k]["kernel"] for k in shapes}, ref,
                                  {"head": np.ones((100, 10), bool)}, 0.2)
    for k in shapes:
      np.testing.assert_array_equal(mask[k]["kernel"], ref[k])
    assert mask["head"]["kernel"].all()
  assert _kept(mask, prunable) == schedules.iterative_counts(
      265_200, 0.2, 3, convention="open_lth", ignored=1000)[-1]


def test_prune_layerwise_exact_counts_and_ties():
  scores, prunable = _tie_tree()
  mask = {"a": {"kernel": np.array([1, 1, 1, 1, 1, 0], bool),
                "bias": np.ones(2, bool)},
          "b": {"kernel": np.ones((2, 2), bool)}}
  new = _np(pruning.prune_layerwise(scores, mask, prunable, 0.5))
  # a: 5 remaining -> ceil(2.5) = 3 pruned, the tied 1.0's at indices 0, 1, 2.
  np.testing.assert_array_equal(new["a"]["kernel"], [0, 0, 0, 1, 1, 0])
  # b: 4 remaining -> 2 pruned: 0.5 then the first 1.0 (index 0).
  np.testing.assert_array_equal(new["b"]["kernel"], [[0, 1], [0, 1]])
  jitted = jax.jit(functools.partial(pruning.prune_layerwise, prunable=prunable,
                                     fraction=0.5))
  _assert_tree_equal(new, jitted(scores, mask))


def test_layerwise_rounds_on_model(mlp):
  _, params = mlp
  prunable = pruning.prunable_leaves(params, "conv_dense")
  prune = jax.jit(functools.partial(pruning.prune_layerwise,
                                    prunable=prunable, fraction=0.2))
  mask = pruning.ones_like_params(params)
  counts = _layer_kept(mask, prunable)
  for _ in range(4):
    mask = prune(pruning.magnitude(params), mask)
    counts = [c - math.ceil(fractions.Fraction(1, 5) * c) for c in counts]
    assert _layer_kept(mask, prunable) == counts


def test_traced_fraction_matches_static():
  scores, prunable = _tie_tree()
  mask = pruning.ones_like_params(scores)
  traced = jax.jit(lambda s, m, f: pruning.prune_global(s, m, prunable, f))
  for f in (0.1, 0.3, 0.5, 0.7):
    _assert_tree_equal(traced(scores, mask, jnp.float32(f)),
                       pruning.prune_global(scores, mask, prunable, f))


def test_errors():
  scores, prunable = _tie_tree()
  mask = pruning.ones_like_params(scores)
  with pytest.raises(TypeError, match="static Python bools"):
    jax.jit(pruning.prune_global)(scores, mask, prunable, 0.2)
  with pytest.raises(ValueError, match="structure"):
    pruning.prune_global(scores, mask, {"a": True, "b": True}, 0.2)
  with pytest.raises(ValueError) as err:
    pruning.mask_for_density(scores, prunable, 0.5, allocation="erdos")
  for a in pruning.ALLOCATIONS:
    assert a in str(err.value)


# --------------------------------------------------------------------------- #
# One-shot densities, ERK.
# --------------------------------------------------------------------------- #


def _rigl_erk_reference(shapes, density, power=1.0):
  """Independent port of rigl get_sparsities_erdos_renyi (real-valued counts)."""
  sizes = [int(np.prod(s)) for s in shapes]
  dense = set()
  while True:
    rhs, divisor, raw = 0.0, 0.0, {}
    for i, (s, n) in enumerate(zip(shapes, sizes)):
      if i in dense:
        rhs -= n * (1 - density)
      else:
        rhs += n * density
        raw[i] = (np.sum(s) / np.prod(s)) ** power
        divisor += raw[i] * n
    eps = rhs / divisor
    max_prob = max(raw.values())
    if max_prob * eps > 1:
      dense |= {i for i, r in raw.items() if r == max_prob}
    else:
      break
  return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]


def test_mask_for_density_global_layerwise_uniform(cnn):
  _, params, _ = cnn
  prunable = pruning.prunable_leaves(params, "conv_dense")
  scores = pruning.magnitude(params)
  names = [n for n, p in zip(pruning.leaf_names(params),
                             jax.tree.leaves(prunable)) if p]
  sizes = [int(np.size(x)) for x, p in
           zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if p]
  total = sum(sizes)
  for d in (0.8, 0.5, 0.1, 0.0137, 1.0):
    m = pruning.mask_for_density(scores, prunable, d)
    assert _kept(m, prunable) == math.ceil(fractions.Fraction(str(d)) * total)
    _non_prunable_all_true(m, prunable)
    m = pruning.mask_for_density(scores, prunable, d, allocation="layerwise")
    assert _layer_kept(m, prunable) == [
        math.ceil(fractions.Fraction(str(d)) * n) for n in sizes]
    m = pruning.mask_for_density(scores, prunable, d, allocation="uniform")
    assert _layer_kept(m, prunable) == [
        n if name.startswith("stem/") else
        math.ceil(fractions.Fraction(str(d)) * n)
        for name, n in zip(names, sizes)]
  # Global keeps the largest magnitudes.
  m = _np(pruning.mask_for_density(scores, prunable, 0.3))
  kept = np.concatenate([np.abs(np.asarray(s)).ravel()[np.asarray(k).ravel()]
                         for s, k, p in zip(jax.tree.leaves(params),
                                            jax.tree.leaves(m),
                                            jax.tree.leaves(prunable)) if p])
  dropped = np.concatenate([np.abs(np.asarray(s)).ravel()[~np.asarray(k).ravel()]
                            for s, k, p in zip(jax.tree.leaves(params),
                                               jax.tree.leaves(m),
                                               jax.tree.leaves(prunable)) if p])
  assert kept.min() >= dropped.max()
  # jit == eager.
  fn = jax.jit(functools.partial(pruning.mask_for_density, prunable=prunable,
                                 density=0.3, allocation="layerwise"))
  _assert_tree_equal(fn(scores),
                     pruning.mask_for_density(scores, prunable, 0.3,
                                              allocation="layerwise"))


def test_mask_for_density_respects_existing_mask():
  scores, prunable = _tie_tree()
  mask = {"a": {"kernel": np.array([1, 0, 0, 0, 0, 0], bool),
                "bias": np.ones(2, bool)},
          "b": {"kernel": np.array([[1, 1], [0, 0]], bool)}}
  big = jax.tree.map(lambda s: s + 100, scores)
  m = _np(pruning.mask_for_density(big, prunable, 0.5, mask=mask))
  # Target ceil(0.5 * 10) = 5 > 3 remaining: keep all remaining, revive none.
  _assert_tree_equal(m, {"a": {"kernel": mask["a"]["kernel"],
                               "bias": np.ones(2, bool)},
                         "b": {"kernel": mask["b"]["kernel"]}})
  m = _np(pruning.mask_for_density(big, prunable, 0.2, mask=mask))  # keep 2
  assert _kept(m, prunable) == 2
  np.testing.assert_array_equal(m["a"]["kernel"], [0] * 6)  # tie: idx 0 first


def test_erk_hand_values_and_reference():
  params = {"a": np.zeros((4, 4)), "b": np.zeros((100, 100))}
  prunable = {"a": True, "b": True}
  d = pruning.erk_densities(params, prunable, 0.1)
  # raw(a) = 8/16, raw(b) = 200/1e4; eps*raw(a) > 1 so a is dense, then
  # eps = (0.1 * 10016 - 16) / 200 -> d_b = 0.09856.
  assert d["a"] == 1.0
  assert d["b"] == pytest.approx((0.1 * 10016 - 16) / 10000, rel=1e-12)


def test_erk_on_conv_model(cnn):
  _, params, _ = cnn
  prunable = pruning.prunable_leaves(params, "conv_dense")
  shapes = [np.shape(x) for x, p in zip(jax.tree.leaves(params),
                                        jax.tree.leaves(prunable)) if p]
  sizes = [int(np.prod(s)) for s in shapes]
  scores = pruning.magnitude(params)
  for density in (0.05, 0.2, 0.5, 0.9):
    dens = pruning.erk_densities(params, prunable, density)
    assert list(dens) == [n for n, p in zip(pruning.leaf_names(params),
                                            jax.tree.leaves(prunable)) if p]
    values = list(dens.values())
    assert all(0.0 <= v <= 1.0 for v in values)
    np.testing.assert_allclose(values, _rigl_erk_reference(shapes, density),
                               rtol=1e-10)
    assert sum(v * n for v, n in zip(values, sizes)) == pytest.approx(
        density * sum(sizes))
    m = pruning.mask_for_density(scores, prunable, density, allocation="erk")
    layer = _layer_kept(m, prunable)
    assert sum(layer) == math.ceil(fractions.Fraction(str(density)) * sum(sizes))
    assert all(k <= n for k, n in zip(layer, sizes))
    assert all(abs(k - v * n) < 1 for k, v, n in zip(layer, values, sizes))
  # Power scale 0 is uniform.
  dens = pruning.erk_densities(params, prunable, 0.3, erk_power_scale=0.0)
  np.testing.assert_allclose(list(dens.values()), 0.3)


# --------------------------------------------------------------------------- #
# Random masks, apply, summaries, overlap, checksum.
# --------------------------------------------------------------------------- #


def test_random_mask_like_keeps_per_layer_counts(cnn):
  _, params, _ = cnn
  prunable = pruning.prunable_leaves(params, "conv_dense")
  mask = pruning.mask_for_density(pruning.magnitude(params), prunable, 0.3)
  fn = jax.jit(functools.partial(pruning.random_mask_like, prunable=prunable))
  r1 = fn(jax.random.key(0), mask)
  r2 = fn(jax.random.key(1), mask)
  assert _layer_kept(r1, prunable) == _layer_kept(mask, prunable)
  assert _layer_kept(r2, prunable) == _layer_kept(mask, prunable)
  _non_prunable_all_true(r1, prunable)
  assert pruning.mask_overlap(r1, mask, prunable)["hamming"] > 0
  assert pruning.mask_overlap(r1, r2, prunable)["hamming"] > 0
  _assert_tree_equal(fn(jax.random.key(0), mask), r1)  # deterministic
  # Eager == jit, on a small tree.
  scores, small_prunable = _tie_tree()
  small = pruning.prune_global(scores, pruning.ones_like_params(scores),
                               small_prunable, 0.5)
  eager = pruning.random_mask_like(jax.random.key(2), small, small_prunable)
  jitted = jax.jit(functools.partial(pruning.random_mask_like,
                                     prunable=small_prunable))(
                                         jax.random.key(2), small)
  _assert_tree_equal(eager, jitted)
  assert _layer_kept(eager, small_prunable) == _layer_kept(small, small_prunable)


def test_apply_mask_exact_zeros_and_dtype():
  params = {"w": jnp.array([-1.5, 2.0, -3.0], jnp.bfloat16),
            "v": jnp.array([[-1.0, jnp.nan]], jnp.float32)}
  mask = {"w": np.array([True, False, False]), "v": np.array([[False, False]])}
  out = _np(pruning.apply_mask(params, mask))
  assert out["w"].dtype == jnp.bfloat16 and out["v"].dtype == np.float32
  np.testing.assert_array_equal(out["w"].astype(np.float32), [-1.5, 0.0, 0.0])
  np.testing.assert_array_equal(out["v"], [[0.0, 0.0]])
  assert not np.any(np.signbit(out["v"]))
  assert not np.any(np.signbit(out["w"][1:].astype(np.float32)))


def test_sparsity_summary():
  mask = {"a": {"kernel": np.array([1, 0, 0, 1], bool), "bias": np.ones(2, bool)},
          "b": {"kernel": np.zeros((2, 3), bool)}}
  prunable = {"a": {"kernel": True, "bias": False}, "b": {"kernel": True}}
  s = pruning.sparsity_summary(mask, prunable)
  assert s == {"a/kernel": {"kept": 2, "total": 4, "density": 0.5},
               "b/kernel": {"kept": 0, "total": 6, "density": 0.0},
               "total": {"kept": 2, "total": 10, "density": 0.2}}


def test_mask_overlap_values():
  prunable = {"a": True, "b": False}
  a = {"a": np.array([1, 1, 0, 0, 1, 0], bool), "b": np.ones(3, bool)}
  same = pruning.mask_overlap(a, a, prunable)
  assert float(same["jaccard"]) == 1.0 and float(same["hamming"]) == 0.0
  disjoint = {"a": ~a["a"], "b": np.zeros(3, bool)}  # non-prunable ignored
  o = pruning.mask_overlap(a, disjoint, prunable)
  assert float(o["jaccard"]) == 0.0 and float(o["hamming"]) == 1.0
  half = {"a": np.array([1, 0, 1, 0, 1, 0], bool), "b": np.ones(3, bool)}
  o = jax.jit(functools.partial(pruning.mask_overlap, prunable=prunable))(a, half)
  # A = {0, 1, 4}, B = {0, 2, 4}: |A & B| = 2, |A | B| = 4, differ at 1, 2.
  assert float(o["jaccard"]) == pytest.approx(0.5)
  assert float(o["hamming"]) == pytest.approx(2 / 6)
  empty = {"a": np.zeros(6, bool), "b": np.ones(3, bool)}
  assert float(pruning.mask_overlap(empty, empty, prunable)["jaccard"]) == 1.0


def test_mask_checksum():
  scores, prunable = _tie_tree()
  m1 = pruning.prune_global(scores, pruning.ones_like_params(scores), prunable, 0.5)
  m2 = jax.tree.map(lambda x: np.array(x, copy=True), _np(m1))
  c1 = pruning.mask_checksum(m1)
  assert c1.dtype == jnp.uint32 and c1.shape == ()
  assert int(c1) == int(pruning.mask_checksum(m2))
  assert int(c1) == int(jax.jit(pruning.mask_checksum)(m1))
  seen = {int(c1)}
  for leaf_idx, leaf in enumerate(jax.tree.leaves(m2)):
    for i in range(leaf.size):
      flipped = jax.tree.leaves(m2)
      flipped = [x.copy() for x in flipped]
      flipped[leaf_idx].reshape(-1)[i] ^= True
      c = int(pruning.mask_checksum(jax.tree.structure(m2).unflatten(flipped)))
      assert c not in seen
      seen.add(c)


# --------------------------------------------------------------------------- #
# Scores against hand computations.
# --------------------------------------------------------------------------- #

_X = np.array([[1., 2., -1.], [0., 1., 3.], [2., -1., 1.], [1., 1., 1.]])
_Y = np.array([[1., 0.], [0., 1.], [1., 1.], [-1., 2.]])
_W = np.array([[0.5, -1.], [2., 0.25], [-0.5, 1.5]])
_B = np.array([0.1, -0.2])
_M = np.array([[True, False], [True, True], [False, True]])


def _linear_setup():
  params = {"dense": {"kernel": jnp.asarray(_W, jnp.float32),
                      "bias": jnp.asarray(_B, jnp.float32)}}
  mask = {"dense": {"kernel": _M, "bias": np.ones(2, bool)}}
  prunable = {"dense": {"kernel": True, "bias": False}}

  def loss_fn(p, batch, temperature=1.0):
    x, y = batch
    out = (x @ p["dense"]["kernel"] + p["dense"]["bias"]) / temperature
    return 0.5 * jnp.sum((out - y) ** 2)

  return params, mask, prunable, loss_fn


def _hand_grads(x, y, temperature=1.0):
  wm = _W * _M
  r = (x @ wm + _B) / temperature - y
  g_w = _M * (x.T @ r) / temperature
  g_b = r.sum(0) / temperature
  return wm, g_w, g_b


def test_snip_matches_hand_computation():
  params, mask, prunable, loss_fn = _linear_setup()
  wm, g_w, g_b = _hand_grads(_X, _Y)
  s = _np(pruning.snip(loss_fn, params, mask, (_X, _Y), prunable=prunable))
  expected = np.abs(g_w * wm) / np.sum(np.abs(g_w * wm))
  np.testing.assert_allclose(s["dense"]["kernel"], expected, rtol=1e-5)
  np.testing.assert_array_equal(s["dense"]["bias"], [0., 0.])
  assert np.all(s["dense"]["kernel"][~_M] == 0)
  # Without prunable the normaliser runs over every leaf.
  s = _np(pruning.snip(loss_fn, params, mask, (_X, _Y)))
  norm = np.sum(np.abs(g_w * wm)) + np.sum(np.abs(g_b * _B))
  np.testing.assert_allclose(s["dense"]["kernel"], np.abs(g_w * wm) / norm,
                             rtol=1e-5)
  fn = jax.jit(functools.partial(pruning.snip, loss_fn, prunable=prunable))
  jitted = fn(params, mask, (_X, _Y))
  eager = pruning.snip(loss_fn, params, mask, (_X, _Y), prunable=prunable)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_taylor_matches_hand_computation():
  params, mask, prunable, loss_fn = _linear_setup()
  x2, y2 = _X[::-1] * 0.5, _Y[::-1] + 1.0
  wm, g1, _ = _hand_grads(_X, _Y)
  _, g2, _ = _hand_grads(x2, y2)
  batches = (np.stack([_X, x2]), np.stack([_Y, y2]))
  s = _np(jax.jit(functools.partial(pruning.taylor, loss_fn, prunable=prunable))(
      params, mask, batches))
  np.testing.assert_allclose(s["dense"]["kernel"], np.abs(wm * (g1 + g2)),
                             rtol=1e-5)
  np.testing.assert_array_equal(s["dense"]["bias"], [0., 0.])


def test_grasp_matches_hand_computation():
  params, mask, prunable, loss_fn = _linear_setup()
  t = 2.0
  wm, g_w, g_b = _hand_grads(_X, _Y, t)
  # Quadratic loss: H_{W_ij, W_kl} = d_jl (X^T X)_ik / T^2 (times the masks),
  # H_{W_ij, b_l} = d_jl sum_n X_ni / T^2.
  hg_w = _M * (_X.T @ _X @ g_w) / t**2
  score = wm * hg_w
  s = _np(pruning.grasp(loss_fn, params, mask, (_X, _Y), temperature=t,
                        prunable=prunable))
  np.testing.assert_allclose(s["dense"]["kernel"],
                             score / (abs(score.sum()) + 1e-10), rtol=1e-5)
  # Without prunable, g includes the bias gradient.
  hg_w_all = _M * (_X.T @ _X @ g_w + np.outer(_X.sum(0), g_b)) / t**2
  score_all_w = wm * hg_w_all
  hg_b = (np.ones(len(_X)) @ _X @ g_w + len(_X) * g_b) / t**2
  score_b = _B * hg_b
  s = _np(pruning.grasp(loss_fn, params, mask, (_X, _Y), temperature=t))
  norm = abs(score_all_w.sum() + score_b.sum()) + 1e-10
  np.testing.assert_allclose(s["dense"]["kernel"], score_all_w / norm,
                             rtol=1e-5)
  np.testing.assert_allclose(s["dense"]["bias"], score_b / norm, rtol=1e-5)


def test_grasp_matches_explicit_hessian_on_nonlinear_model():
  key = jax.random.key(7)
  k1, k2, k3 = jax.random.split(key, 3)
  params = {"l1": {"kernel": jax.random.normal(k1, (3, 4))},
            "l2": {"kernel": jax.random.normal(k2, (4, 2))}}
  mask = {"l1": {"kernel": jax.random.bernoulli(k3, 0.7, (3, 4))},
          "l2": {"kernel": np.ones((4, 2), bool)}}
  x = jnp.asarray(_X, jnp.float32)
  labels = jnp.array([0, 1, 1, 0])
  loss_fn = pruning.classification_loss(
      lambda p, x: jnp.tanh(x @ p["l1"]["kernel"]) @ p["l2"]["kernel"])
  t = 3.0
  s = jax.jit(functools.partial(pruning.grasp, loss_fn, temperature=t))(
      params, mask, (x, labels))

  @jax.jit
  def reference(params, mask):
    wm = pruning.apply_mask(params, mask)
    flat, unravel = jax.flatten_util.ravel_pytree(wm)
    mflat, _ = jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), mask))
    f = lambda v: loss_fn(unravel(v * mflat), (x, labels), t)
    g = jax.grad(f)(flat)
    h = jax.hessian(f)(flat)
    score = flat * (h @ g)
    return unravel(score / (jnp.abs(score.sum()) + 1e-10))

  expected = reference(params, mask)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_magnitude_and_random_scores():
  params = {"w": jnp.array([-2.0, 0.5], jnp.bfloat16)}
  m = pruning.magnitude(params)["w"]
  assert m.dtype == jnp.float32
  np.testing.assert_array_equal(m, [2.0, 0.5])
  fn = jax.jit(pruning.random_scores)
  r1 = fn(jax.random.key(0), _resnet_like_params())
  r2 = fn(jax.random.key(0), _resnet_like_params())
  _assert_tree_equal(r1, r2)
  assert jax.tree.structure(r1) == jax.tree.structure(_resnet_like_params())
  # Different leaves get different draws.
  assert not np.allclose(r1["block0"]["shortcut"]["kernel"],
                         r1["block0"]["ghost_jump1"]["kernel"])


# Integer-valued weights so the float32 scores are exact and match NumPy.
_W1 = np.array([[1., -2., 3., 1.], [2., 1., -1., 4.], [-3., 1., 2., 2.]])
_W2 = np.array([[1., 2.], [-1., 3.], [2., -2.], [1., 1.]])


def _synflow_np_scores(m1, m2):
  a1, a2 = np.abs(_W1) * m1, np.abs(_W2) * m2
  # f(1) = 1^T A1 A2, R = 1^T A1 A2 1.
  s1 = a1 * (a2 @ np.ones(2))[None, :]
  s2 = (np.ones(3) @ a1)[:, None] * a2
  return s1, s2


def _np_keep_top(scores, eligible, n_keep):
  """Reference selection: candidates by (score, index), lowest pruned first."""
  order = sorted(np.flatnonzero(eligible), key=lambda i: (scores[i], i))
  keep = np.zeros_like(eligible)
  for i in order[len(order) - min(n_keep, len(order)):]:
    keep[i] = True
  return keep


def test_synflow_scores_and_iterative_mask_match_hand_computation():
  params = {"l1": {"kernel": jnp.asarray(_W1, jnp.float32)},
            "l2": {"kernel": jnp.asarray(_W2, jnp.float32)}}
  prunable = {"l1": {"kernel": True}, "l2": {"kernel": True}}
  apply_fn = lambda p, x: x @ p["l1"]["kernel"] @ p["l2"]["kernel"]
  m0 = pruning.ones_like_params(params)
  s = _np(pruning.synflow_scores(apply_fn, params, m0, (1, 3)))
  e1, e2 = _synflow_np_scores(np.ones((3, 4)), np.ones((4, 2)))
  np.testing.assert_array_equal(s["l1"]["kernel"], e1)
  np.testing.assert_array_equal(s["l2"]["kernel"], e2)

  total, density, iters = 20, 0.3, 4
  mask = _np(jax.jit(functools.partial(
      pruning.synflow, apply_fn, prunable=prunable, input_shape=(1, 3),
      target_density=density, iterations=iters))(params, m0))
  # Reference loop in NumPy.
  m1, m2 = np.ones((3, 4), bool), np.ones((4, 2), bool)
  for k in range(1, iters + 1):
    n_keep = math.ceil(fractions.Fraction(density ** (k / iters))
                       .limit_denominator(2**20) * total)
    s1, s2 = _synflow_np_scores(m1, m2)
    keep = _np_keep_top(np.concatenate([s1.ravel(), s2.ravel()]),
                        np.concatenate([m1.ravel(), m2.ravel()]), n_keep)
    m1, m2 = keep[:12].reshape(3, 4), keep[12:].reshape(4, 2)
  np.testing.assert_array_equal(mask["l1"]["kernel"], m1)
  np.testing.assert_array_equal(mask["l2"]["kernel"], m2)
  assert _kept(mask, prunable) == math.ceil(0.3 * total) == 6


def test_synflow_reaches_exact_target_on_flax_models(mlp, cnn):
  model, params = mlp
  prunable = pruning.prunable_leaves(params, "conv_dense")
  total = _kept(pruning.ones_like_params(params), prunable)
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  for density in (0.5, 0.1, 0.013):
    mask = pruning.synflow(apply_fn, params, pruning.ones_like_params(params),
                           prunable, (1, 5), density, iterations=20)
    assert _kept(mask, prunable) == math.ceil(
        fractions.Fraction(str(density)) * total)
    _non_prunable_all_true(mask, prunable)
  model, params, batch_stats = cnn
  prunable = pruning.prunable_leaves(params, "conv")
  total = _kept(pruning.ones_like_params(params), prunable)
  apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": batch_stats},
                                      x, train=False)
  mask = pruning.synflow(apply_fn, params, pruning.ones_like_params(params),
                         prunable, (1, 6, 6, 3), 0.2, iterations=10)
  assert _kept(mask, prunable) == math.ceil(fractions.Fraction(1, 5) * total)


def test_scores_on_flax_model_and_mask_pipeline(cnn):
  model, params, batch_stats = cnn
  prunable = pruning.prunable_leaves(params, "conv_dense")
  apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": batch_stats},
                                      x, train=False)
  loss_fn = pruning.classification_loss(apply_fn)
  key = jax.random.key(5)
  batch = {"image": jax.random.normal(key, (6, 6, 6, 3)),
           "label": jnp.arange(6) % 3}
  mask = pruning.ones_like_params(params)
  for score_fn in (
      functools.partial(pruning.snip, loss_fn, prunable=prunable),
      functools.partial(pruning.grasp, loss_fn, prunable=prunable)):
    s = jax.jit(score_fn)(params, mask, batch)
    assert jax.tree.structure(s) == jax.tree.structure(params)
    assert all(x.dtype == jnp.float32 and np.all(np.isfinite(x))
               for x in jax.tree.leaves(s))
    new = pruning.prune_global(s, mask, prunable, 0.2)
    total = _kept(mask, prunable)
    assert _kept(new, prunable) == total - math.ceil(0.2 * total)


# --------------------------------------------------------------------------- #
# Schedules.
# --------------------------------------------------------------------------- #


def test_schedule_formulas_exact():
  assert pruning.iterative_density(0, 0.2) == 1.0
  assert pruning.iterative_density(3, 0.2) == 0.8**3
  assert pruning.iterative_densities(0.2, 5) == tuple(0.8**r for r in range(1, 6))
  assert pruning.oneshot_densities(0.2, 16) == tuple(0.8**k for k in range(1, 17))
  sp = pruning.kd_ticket_sparsities()
  assert sp == tuple(1 - 0.8**k for k in range(1, 17))
  published = [20, 36, 48.8, 59.04, 67.23, 73.79, 79.03, 83.22, 86.58, 89.26,
               91.41, 93.13, 94.50, 95.60, 96.48, 97.19]
  np.testing.assert_allclose([100 * s for s in sp], published, atol=0.005)
  np.testing.assert_allclose([100 * s for s in pruning.kd_ticket_imagenet_sparsities()],
                             [36, 59.04, 73.79, 83.22, 89.26], atol=0.005)
  sched = pruning.synflow_schedule(0.05, 100)
  assert len(sched) == 100 and sched[-1] == 0.05
  assert sched == tuple(0.05 if k == 100 else 0.05 ** (k / 100)
                        for k in range(1, 101))
  assert all(a > b for a, b in zip(sched, sched[1:]))
  counts = pruning.iterative_counts(1000, 0.2, 6)
  expected, r = [], 1000
  for _ in range(6):
    r -= -(-r // 5)
    expected.append(r)
  assert counts == tuple(expected) == (800, 640, 512, 409, 327, 261)
  assert float(pruning.polynomial_sparsity(
      0, final_sparsity=0.9, begin_step=10, end_step=110)) == 0.0
  assert float(pruning.polynomial_sparsity(
      60, final_sparsity=0.9, begin_step=10, end_step=110)) == pytest.approx(
          0.9 - 0.9 * 0.5**3)
  assert float(pruning.polynomial_sparsity(
      500, final_sparsity=0.9, begin_step=10, end_step=110)) == pytest.approx(0.9)
  with pytest.raises(ValueError):
    pruning.synflow_schedule(0.0, 10)


# --------------------------------------------------------------------------- #
# Docstring examples.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("module", [selectors, masks_lib, scores_lib, schedules])
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0
