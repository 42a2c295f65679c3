"""ViT module: shapes for every variant, pooling, representation layer, dtype, attention, dropout."""

import chex
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpt_jax.models import vit

SIZES = vit.SIZES


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pool_type", ["tok", "gap"])
def test_every_variant_shapes(size, pool_type):
  # Abstract evaluation: real shapes of every variant without computing a single weight.
  model = vit.Model(num_classes=7, variant=f"{size}/16", pool_type=pool_type)
  arch = model.architecture
  images = jax.ShapeDtypeStruct((2, 64, 48, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  (logits, aux) = jax.eval_shape(model.apply, variables, images)
  tokens = 4 * 3 + (pool_type == "tok")
  chex.assert_shape(logits, (2, 7))
  chex.assert_shape(aux["encoded"], (2, tokens, arch.width))
  chex.assert_shape(aux["pre_logits"], (2, arch.width))
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  chex.assert_shape(params["Transformer/posembed_input/pos_embedding"], (1, tokens, arch.width))
  chex.assert_shape(params[f"Transformer/encoderblock_{arch.depth - 1}/MlpBlock_0/Dense_0/kernel"],
                    (arch.width, arch.mlp_dim))
  chex.assert_shape(params["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"],
                    (arch.width, arch.num_heads, arch.width // arch.num_heads))
  assert f"Transformer/encoderblock_{arch.depth}/LayerNorm_0/scale" not in params
  assert ("cls" in params) == (pool_type == "tok")


def test_published_architectures():
  assert vit.decode_variant("B/16") == vit.Architecture(768, 12, 3072, 12, (16, 16))
  assert vit.decode_variant("H/14") == vit.Architecture(1280, 32, 5120, 16, (14, 14))
  with pytest.raises(ValueError, match="Unknown ViT variant 'X/16'.*B/16"):
    vit.decode_variant("X/16")


def test_parameter_count_b16():
  # docs/checkpoints.md: 85,798,656 backbone; 86,567,656 with a 1000-class head.
  for num_classes, expected in [(0, 85_798_656), (1000, 86_567_656)]:
    model = vit.Model(num_classes=num_classes, variant="B/16")
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                               jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert sum(x.size for x in jax.tree.leaves(variables)) == expected


@pytest.fixture(scope="module")
def tiny():
  model = vit.Model(num_classes=5, variant="Ti/16", depth=2, representation_size=24)
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3), minval=-1, maxval=1)
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  # Random heads and tokens so that pooling and the head show in the outputs.
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), params)
  return model, params, images


def test_pooling_and_representation(tiny):
  model, params, images = tiny
  logits, aux = model.apply({"params": params}, images)
  chex.assert_shape(logits, (3, 5))
  pre = params["pre_logits"]
  expected = np.tanh(np.asarray(aux["encoded"][:, 0]) @ pre["kernel"] + pre["bias"])
  np.testing.assert_allclose(aux["pre_logits"], expected, atol=1e-5)
  np.testing.assert_allclose(logits, expected @ params["head"]["kernel"] + params["head"]["bias"],
                             atol=1e-5)

  gap = vit.Model(num_classes=5, variant="Ti/16", depth=2, pool_type="gap")
  gap_params = gap.init(jax.random.PRNGKey(0), images)["params"]
  _, aux = gap.apply({"params": gap_params}, images)
  chex.assert_shape(aux["encoded"], (3, 4, 192))
  np.testing.assert_allclose(aux["pre_logits"], aux["encoded"].mean(axis=1), atol=1e-6)


def test_headless_model_returns_features(tiny):
  _, params, images = tiny
  model = vit.Model(num_classes=0, variant="Ti/16", depth=2, representation_size=24)
  params = {k: v for k, v in params.items() if k != "head"}
  features, aux = model.apply({"params": params}, images)
  chex.assert_shape(features, (3, 24))
  np.testing.assert_array_equal(features, aux["pre_logits"])


def test_attention_weights(tiny):
  model, params, images = tiny
  logits, aux = model.apply({"params": params}, images, return_attention=True)
  assert len(aux["attention"]) == 2
  for weights in aux["attention"]:
    chex.assert_shape(weights, (3, 3, 5, 5))
    chex.assert_type(weights, jnp.float32)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(logits, model.apply({"params": params}, images)[0])


def test_bfloat16_compute_float32_params(tiny):
  model, params, images = tiny
  bf16 = vit.Model(num_classes=5, variant="Ti/16", depth=2, representation_size=24,
                   dtype=jnp.bfloat16)
  new_params = bf16.init(jax.random.PRNGKey(0), images)["params"]
  assert {x.dtype for x in jax.tree.leaves(new_params)} == {jnp.dtype(jnp.float32)}
  logits, aux = bf16.apply({"params": params}, images)
  chex.assert_type(logits, jnp.float32)
  assert aux["encoded"].dtype == jnp.bfloat16
  reference, _ = model.apply({"params": params}, images)
  np.testing.assert_allclose(logits, reference, atol=0.05 * float(jnp.abs(reference).max()))


def test_dropout_only_in_training(tiny):
  _, params, images = tiny
  model = vit.Model(num_classes=5, variant="Ti/16", depth=2, representation_size=24, dropout=0.5)
  eval_a, _ = model.apply({"params": params}, images)
  eval_b, _ = model.apply({"params": params}, images)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = model.apply({"params": params}, images, train=True,
                           rngs={"dropout": jax.random.PRNGKey(0)})
  train_b, _ = model.apply({"params": params}, images, train=True,
                           rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)


def test_rejects_unknown_pool_type():
  model = vit.Model(num_classes=2, variant="mu/16", pool_type="map")
  with pytest.raises(ValueError, match="pool_type must be 'tok' or 'gap'"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_fused_attention_and_remat_change_nothing(tiny):
  _, params, images = tiny

  def outputs(**kwargs):
    model = vit.Model(num_classes=5, variant="Ti/16", depth=2, representation_size=24, **kwargs)
    loss = lambda p: jnp.sum(model.apply({"params": p}, images, train=True)[0] ** 2)
    return model.apply({"params": params}, images)[0], jax.grad(loss)(params)

  logits, grads = outputs()
  for kwargs in (dict(attention_impl="xla"), dict(remat=True), dict(attention_impl="xla",
                                                                   remat=True)):
    other_logits, other_grads = outputs(**kwargs)
    np.testing.assert_allclose(other_logits, logits, atol=1e-5)
    chex.assert_trees_all_close(other_grads, grads, atol=1e-5)


def test_attention_auto_picks_cudnn_only_for_half_precision_on_a_gpu():
  pick = vit.attention_implementation
  assert pick("auto", jnp.bfloat16, "gpu") == "cudnn"
  assert pick("auto", jnp.float16, "gpu") == "cudnn"
  # cuDNN's fused attention has no float32 kernel (None is the model's float32 default).
  assert pick("auto", None, "gpu") is None and pick("auto", jnp.float32, "gpu") is None
  assert pick("auto", jnp.bfloat16, "cpu") is None
  assert pick("xla", None, "gpu") == "xla" and pick(None, jnp.bfloat16, "gpu") is None
  assert pick("cudnn", jnp.bfloat16, "gpu") == "cudnn"


def test_cudnn_attention_in_float32_is_refused_when_the_model_is_built():
  for dtype in (None, jnp.float32):
    with pytest.raises(ValueError) as error:
      vit.Model(num_classes=5, variant="Ti/16", depth=1, attention_impl="cudnn", dtype=dtype)
    assert "\n" not in str(error.value) and "needs a bfloat16 or float16" in str(error.value)
  with pytest.raises(ValueError, match="must be one of None"):
    vit.Model(num_classes=5, attention_impl="flash")
  vit.Model(num_classes=5, attention_impl="cudnn", dtype=jnp.bfloat16)  # Accepted.


def test_auto_attention_runs_the_explicit_path_on_the_cpu(tiny):
  _, params, images = tiny
  logits = lambda impl: vit.Model(num_classes=5, variant="Ti/16", depth=2, representation_size=24,
                                  attention_impl=impl).apply({"params": params}, images)[0]
  np.testing.assert_array_equal(logits("auto"), logits(None))
