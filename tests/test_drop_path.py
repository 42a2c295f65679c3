"""Stochastic depth (model.drop_path): timm's DropPath per example on both residual branches of
every block, at timm's linear-in-depth rates, and rate 0 bitwise the model without it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from vpt_jax.models import vit


def _timm_drop_path(x, mask, rate):
  """timm.layers.drop.drop_path with its Bernoulli draw given: x / keep_prob * random_tensor."""
  keep_prob = 1 - rate
  random_tensor = torch.tensor(np.array(mask), dtype=x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
  return x.div(keep_prob) * random_tensor


def test_drop_path_matches_timm_given_its_mask():
  rate = 0.3
  y = jax.random.normal(jax.random.PRNGKey(0), (64, 5, 8))
  module = vit.DropPath(rate)
  out = module.apply({}, y, True, rngs={"dropout": jax.random.PRNGKey(1)})
  kept = np.asarray(jnp.any(out != 0, axis=(1, 2)))
  expected = _timm_drop_path(torch.from_numpy(np.asarray(y, np.float64)), kept, rate).numpy()
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-7)
  # Whole examples are dropped or kept, about `rate` of them dropped.
  assert 5 <= (~kept).sum() <= 35
  # Evaluation, and rate 0, leave the branch as it is.
  assert module.apply({}, y, False) is y
  assert vit.DropPath(0.0).apply({}, y, True) is y


def test_rates_are_linear_in_depth_as_timm():
  depth, rate = 5, 0.2
  model = vit.Model(num_classes=3, variant="Ti/16", depth=depth, drop_path=rate)
  images = jnp.ones((2, 32, 32, 3))
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, vit.DropPath) and context.method_name == "__call__":
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  # VisionTransformer: dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)], the
  # same rate on a block's attention and MLP branches.
  timm_rates = torch.linspace(0, rate, depth).tolist()
  np.testing.assert_allclose(rates, [r for r in timm_rates for _ in range(2)], rtol=1e-6)


def test_rate_zero_is_bitwise_the_model_without_it():
  images = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 3))
  old = vit.Model(num_classes=5, variant="Ti/16", depth=3, dropout=0.1)
  new = vit.Model(num_classes=5, variant="Ti/16", depth=3, dropout=0.1, drop_path=0.0)
  params = old.init(jax.random.PRNGKey(0), images)["params"]
  for train in (False, True):
    rngs = {"dropout": jax.random.PRNGKey(4)}
    old_logits, _ = old.apply({"params": params}, images, train=train, rngs=rngs)
    new_logits, _ = new.apply({"params": params}, images, train=train, rngs=rngs)
    assert np.array_equal(np.asarray(old_logits), np.asarray(new_logits))


def test_training_with_drop_path_changes_only_training_outputs():
  images = jax.random.normal(jax.random.PRNGKey(5), (3, 32, 32, 3))
  model = vit.Model(num_classes=4, variant="Ti/16", depth=2, drop_path=0.5)
  plain = vit.Model(num_classes=4, variant="Ti/16", depth=2)
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  encoded = lambda m, **kw: np.asarray(m.apply({"params": params}, images, **kw)[1]["encoded"])
  # Evaluation is deterministic and the plain model's; training drops branches.
  assert np.array_equal(encoded(model), encoded(plain))
  trained = encoded(model, train=True, rngs={"dropout": jax.random.PRNGKey(6)})
  assert np.isfinite(trained).all() and not np.allclose(trained, encoded(plain))
