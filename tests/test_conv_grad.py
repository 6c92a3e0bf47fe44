"""kdt.models.conv_grad: the chunked weight gradient equals the plain one, in every autodiff mode."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdt import models
from kdt.models import conv_grad

CONV = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _plain(x, w):
  return lax.conv_general_dilated(x, w, **CONV)


def _chunked(x, w):
  return conv_grad.conv_general_dilated(x, w, **CONV)


def _loss(conv):
  return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))


@pytest.fixture
def chunks():
  """Forces 4 chunks on every backend for one test, then restores the setting."""
  previous = conv_grad.weight_grad_chunks_setting()
  conv_grad.set_weight_grad_chunks(4)
  yield 4
  conv_grad.set_weight_grad_chunks(previous)


def _inputs(batch=16, side=6):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, side, side, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  return x, w


def _close(a, b, rtol=1e-5):
  scale = max(1.0, float(jnp.max(jnp.abs(a))))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=rtol * scale, rtol=0)


def test_doctests():
  assert doctest.testmod(conv_grad).failed == 0


def test_chunk_count_rules():
  # auto on CPU: as many chunks (<= MAX_AUTO_CHUNKS) as split each device's rows into >= 16 rows.
  assert conv_grad.chunks_for(128, backend="cpu", devices=1, setting="auto") == 8
  assert conv_grad.chunks_for(128, backend="cpu", devices=4, setting="auto") == 2
  assert conv_grad.chunks_for(128, backend="cpu", devices=8, setting="auto") == 1  # 16 rows each
  assert conv_grad.chunks_for(100, backend="cpu", devices=1, setting="auto") == 5
  assert conv_grad.chunks_for(31, backend="cpu", devices=1, setting="auto") == 1  # prime
  assert conv_grad.chunks_for(128, backend="cpu", devices=3, setting="auto") == 1  # uneven split
  assert conv_grad.chunks_for(128, backend="tpu", devices=1, setting="auto") == 1
  # an explicit count: the most chunks up to it with >= MIN_CHUNK_ROWS rows per device.
  assert conv_grad.chunks_for(128, backend="tpu", devices=1, setting=2) == 2
  assert conv_grad.chunks_for(6, backend="cpu", devices=1, setting=4) == 1  # < 4 rows a chunk
  assert conv_grad.chunks_for(64, backend="cpu", devices=4, setting=8) == 4
  assert conv_grad.chunks_for(40, backend="cpu", devices=1, setting=1) == 1
  with pytest.raises(ValueError, match="'auto' or an int"):
    conv_grad.set_weight_grad_chunks(0)


def test_forward_and_gradients_match_the_plain_convolution(chunks):
  x, w = _inputs()
  assert conv_grad.chunks_for(x.shape[0]) == chunks
  np.testing.assert_array_equal(np.asarray(_chunked(x, w)), np.asarray(_plain(x, w)))
  plain = jax.grad(_loss(_plain), argnums=(0, 1))(x, w)
  chunked = jax.jit(jax.grad(_loss(_chunked), argnums=(0, 1)))(x, w)
  for a, b in zip(plain, chunked):
    _close(a, b)


def test_the_weight_gradient_is_really_split(chunks):
  x, w = _inputs()
  jaxpr = str(jax.make_jaxpr(jax.grad(_loss(_chunked), argnums=1))(x, w))
  plain = str(jax.make_jaxpr(jax.grad(_loss(_plain), argnums=1))(x, w))
  assert jaxpr.count("conv_general_dilated") == plain.count("conv_general_dilated") + chunks - 1


def test_forward_mode_higher_order_and_vmap_work(chunks):
  x, w = _inputs()
  tangent = (0.5 * x, w)
  _close(jax.jvp(_loss(_plain), (x, w), tangent)[1], jax.jvp(_loss(_chunked), (x, w), tangent)[1])
  hvp = lambda conv: jax.jvp(jax.grad(_loss(conv), argnums=1), (x, w), (jnp.zeros_like(x), w))[1]
  _close(hvp(_plain), hvp(_chunked), rtol=1e-4)
  second = lambda conv: jax.grad(lambda v: jnp.sum(jax.grad(_loss(conv), argnums=1)(x, v)**2))(w)
  _close(second(_plain), second(_chunked), rtol=1e-4)
  weights, inputs = jnp.stack([w, -w]), jnp.stack([x, x + 1.0])
  batched = lambda conv: jax.vmap(jax.grad(_loss(conv), argnums=1))(inputs, weights)
  _close(batched(_plain), batched(_chunked))


def test_kdt_models_train_with_it(chunks):
  """A CNN's parameter gradient is the plain convolution's up to float summation order."""
  model = models.create_model("conv2", num_classes=10, input_shape=(8, 8, 3))
  x, _ = _inputs(batch=16, side=8)
  params = model.init(jax.random.key(0), x)["params"]
  loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
  chunked = jax.grad(loss)(params)
  conv_grad.set_weight_grad_chunks(1)
  plain = jax.grad(loss)(params)
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-4), plain, chunked)
