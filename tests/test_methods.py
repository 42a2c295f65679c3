"""Tuning methods: what trains and what stays frozen, identity starts, prompts, counts, artifacts."""

import re
import chex
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vpt_jax import methods
from vpt_jax.training import artifacts, optim, steps
from vpt_jax.utils import paths
from vpt_jax.models import vit

HPARAMS = dict(prompt_tokens=3, prompt_dropout=0.1, lora_rank=2, adapter_dim=4, adapter_reduction=48,
               partial_k=1, query_tokens=2, query_dropout=0.1, adapter_bottleneck=4,
               adapter_scaler=0.1, convpass_bottleneck=4, convpass_scaler=10.0,
               repadapter_bottleneck=4, repadapter_scaler=1.0, fact_dim=4, fact_scaler=1.0,
               tuned_blocks=(-1,), mlp_k=3)
BASE = dict(num_classes=5, variant="Ti/16", depth=2)
IMAGE_SIZE = 32


def flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture(scope="module")
def backbone():
  """A 'pre-trained' tiny backbone: random weights, non-zero head, non-trivial norms."""
  model = vit.Model(**BASE)
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, IMAGE_SIZE, IMAGE_SIZE, 3), minval=-1,
                              maxval=1)
  params = model.init(jax.random.PRNGKey(1), images)["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  return params, images, jnp.arange(8) % 5


def sgd(trainable_groups, schedule, peak_lr, weight_decay=0.0, **kwargs):
  """optim.make("sgd") with its hyper-parameters set in the state that `init` returns."""
  tx = optim.make("sgd", trainable_groups, schedule, **{"momentum": 0.9, **kwargs})
  init = lambda params: optim.set_hyperparams(tx.init(params), peak_lr=peak_lr,
                                              weight_decay=weight_decay)
  return optax.GradientTransformation(init, tx.update)


def stage_setup(stage, backbone_params, **optimizer_kwargs):
  model = vit.Model(**BASE, **stage.model_fields)
  if stage.name == "vqt":  # Its head reads wider features: a fresh one, as training gives it.
    backbone_params = {k: v for k, v in backbone_params.items() if k != "head"}
  params = methods.init_params(model, backbone_params, jax.random.PRNGKey(3), IMAGE_SIZE)
  groups = methods.labels(params, stage.rules)
  trainable, frozen = methods.split(params, groups)
  trainable_groups, _ = methods.split(groups, groups)
  tx = sgd(trainable_groups, optim.warmup_cosine(1, 10), 0.05, **optimizer_kwargs)
  return model, params, groups, trainable, frozen, tx


def all_stages():
  for name in methods.names():
    if name == "sidetune":  # Its AlexNet needs 63 px or more: tests/test_sidetune.py.
      continue
    method = methods.get(name, depth=2, **HPARAMS)
    for i, stage in enumerate(method.stages or (method,)):
      yield pytest.param(stage, id=f"{name}-{i}-{stage.name}" if method.stages else name)


@pytest.mark.parametrize("stage", list(all_stages()))
def test_frozen_unchanged_trainable_changed(stage, backbone):
  backbone_params, images, labels = backbone
  model, params, groups, trainable, frozen, tx = stage_setup(stage, backbone_params)
  opt_state = tx.init(trainable)
  # Optimizer state exists for trainable leaves only (momentum: one buffer each), not for
  # BatchNorm's running averages (mlp_k), which the step writes.
  assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim) == methods.count_trained(
      trainable, groups)
  step = jax.jit(steps.make_train_step(model, tx))
  new_trainable = trainable
  for i in range(3):
    new_trainable, opt_state, metrics = step(new_trainable, opt_state, frozen, images, labels,
                                             jax.random.PRNGKey(i))
  assert np.isfinite(metrics["loss"])
  before, after = flat(params), flat(paths.merge(new_trainable, frozen))
  assert before.keys() == after.keys()
  group_of = flat(groups)
  # The VPT code's adapter starts all-zero, so only its up bias gets gradients (as in that code).
  stuck = re.compile(r".*/adapter_mlp/(down/.*|up/kernel)" if stage.name == "adapter" else "$^")
  for path in before:
    if group_of[path] == methods.FROZEN or stuck.fullmatch(path):
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    else:
      assert not np.array_equal(after[path], before[path]), f"{path} did not train"
  assert any(g != methods.FROZEN for g in group_of.values())


@pytest.mark.parametrize("name", ["lora", "adapter", "adapter_houlsby", "ssf", "adaptformer",
                                  "convpass", "repadapter", "lora_p_adapter", "difffit",
                                  "fact_tk", "fact_tt"])
def test_identity_initialised_modules_keep_pretrained_logits(name, backbone, forward):
  backbone_params, images, _ = backbone
  stage = methods.get(name, depth=2, **HPARAMS)
  model, params, *_ = stage_setup(stage, backbone_params)
  assert paths.count(params) > paths.count(backbone_params)
  tuned, _ = model.apply({"params": params}, images)
  pretrained, _ = vit.Model(**BASE).apply({"params": backbone_params}, images)
  np.testing.assert_array_equal(tuned, pretrained)


def test_deep_prompts_act_per_layer(backbone):
  backbone_params, images, _ = backbone
  model = vit.Model(**{**BASE, "depth": 4}, prompt_tokens=3, prompt_deep=True)
  backbone4 = vit.Model(**{**BASE, "depth": 4}).init(jax.random.PRNGKey(0), images)["params"]
  params = methods.init_params(model, backbone4, jax.random.PRNGKey(1), IMAGE_SIZE)
  chex.assert_shape(params["prompt"]["embeddings"], (4, 3, 192))

  def block_outputs(params):
    _, state = model.apply({"params": params}, images, capture_intermediates=True,
                           mutable=["intermediates"])
    blocks = state["intermediates"]["Transformer"]
    return [np.asarray(blocks[f"encoderblock_{i}"]["__call__"][0][0]) for i in range(4)]

  reference = block_outputs(params)
  changed = jax.tree.map(lambda x: x, params)
  changed["prompt"]["embeddings"] = params["prompt"]["embeddings"].at[2].add(1.0)
  outputs = block_outputs(changed)
  for layer in (0, 1):
    np.testing.assert_array_equal(outputs[layer], reference[layer])
  for layer in (2, 3):
    assert not np.allclose(outputs[layer], reference[layer])


def test_insert_prompts_prepends_then_replaces():
  x = jnp.array([[[0.0], [1.0], [2.0], [3.0]]])  # [CLS, p, p, patch] after a first layer.
  prompts = jnp.array([[[7.0], [8.0]]])
  np.testing.assert_array_equal(vit.insert_prompts(x, prompts, 1, replace=True)[0, :, 0],
                                [0, 7, 8, 3])
  np.testing.assert_array_equal(vit.insert_prompts(x[:, [0, 3]], prompts, 1, replace=False)[0, :, 0],
                                [0, 7, 8, 3])


def test_prompt_sequence_and_gap_pooling():
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, IMAGE_SIZE, IMAGE_SIZE, 3))
  model = vit.Model(num_classes=3, variant="Ti/16", depth=1, pool_type="gap", prompt_tokens=5)
  params = model.init(jax.random.PRNGKey(1), images)["params"]
  _, aux = model.apply({"params": params}, images)
  chex.assert_shape(aux["encoded"], (2, 5 + 4, 192))  # [prompts, patches], no class token.
  np.testing.assert_allclose(aux["pre_logits"], aux["encoded"][:, 5:].mean(axis=1), atol=1e-6)
  # Prompts carry no position embedding: the embedding still covers only the patches.
  chex.assert_shape(params["Transformer"]["posembed_input"]["pos_embedding"], (1, 4, 192))


def test_prompt_init_range_and_projection():
  b16_deep = vit.VisualPrompts(num_tokens=50, num_sets=12, width=768, patch_size=(16, 16))
  params = b16_deep.init(jax.random.PRNGKey(0), 2)["params"]
  prompts = np.asarray(params["embeddings"])
  chex.assert_shape(prompts, (12, 50, 768))
  chex.assert_shape(b16_deep.apply({"params": params}, 2), (12, 2, 50, 768))
  bound = np.sqrt(6 / (3 * 16 * 16 + 768))
  assert bound == pytest.approx(0.0625)
  assert prompts.min() >= -bound and prompts.max() <= bound and prompts.max() > 0.9 * bound
  projected = vit.Model(num_classes=3, variant="Ti/16", depth=1, prompt_tokens=2,
                        prompt_project=16)
  shapes = jax.eval_shape(projected.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  chex.assert_shape(shapes["params"]["prompt"]["embeddings"], (1, 2, 16))
  chex.assert_shape(shapes["params"]["prompt"]["projection"]["kernel"], (16, 192))


def b16_trainable(name, **hparams):
  method = methods.get(name, depth=12, **{**HPARAMS, **hparams})
  model = vit.Model(num_classes=100, variant="B/16", **method.model_fields)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))["params"]
  groups = methods.labels(params, method.rules)
  trainable, _ = methods.split(params, groups)
  return methods.count_trained({k: v for k, v in trainable.items() if k != "head"}, groups), params, groups


B16 = 85_798_656
W, MLP, D = 768, 3072, 12


@pytest.mark.parametrize("name, hparams, expected", [
    ("linear", {}, 0),
    ("full", {}, B16),
    ("vpt_shallow", dict(prompt_tokens=50), 50 * W),
    ("vpt_deep", dict(prompt_tokens=50), D * 50 * W),
    ("mixed", dict(prompt_tokens=50), B16 + D * 50 * W),
    ("bitfit", {}, W + D * (7 * W + MLP) + W),  # embedding, per block (2 LN, qkv, out, 2 MLP), norm
    ("layernorm", {}, D * 4 * W + 2 * W),
    ("lora", dict(lora_rank=8), D * 2 * (W * 8 + 8 * W)),
    ("adapter", dict(adapter_reduction=8), D * (W * 96 + 96 + 96 * W + W)),  # VPT's r=8: 1,779,840.
    ("adapter_houlsby", dict(adapter_dim=64), D * 2 * (W * 64 + 64 + 64 * W + W)),
    ("ssf", {}, 2 * (W + D * (7 * W + MLP) + W)),
    ("partial_k", dict(partial_k=2), 2 * 7_087_872 + 2 * W),
    # Two Linear + BatchNorm1d affine layers; their running averages are not counted.
    ("mlp_k", dict(mlp_k=3), 2 * (W * W + W + 2 * W)),
])
def test_b16_parameter_counts(name, hparams, expected):
  assert b16_trainable(name, **hparams)[0] == expected


def test_the_vpt_codes_adapter_learns_only_its_output_bias(backbone):
  """KMnP/vpt's Pfeiffer adapter starts with every weight and bias at zero: GELU(0) = 0 leaves the
  down-projection and the up-projection's kernel without gradient, so only the up bias moves."""
  backbone_params, images, labels = backbone
  stage = methods.get("adapter", depth=2, width=192, **{**HPARAMS, "adapter_reduction": 4})
  model, params, *_ = stage_setup(stage, backbone_params)
  adapter = params["Transformer"]["encoderblock_0"]["adapter_mlp"]
  assert adapter["down"]["kernel"].shape == (192, 48)
  assert "adapter_attention" not in params["Transformer"]["encoderblock_0"]

  def loss(p):
    logits, _ = model.apply({"params": p}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  grads = jax.grad(loss)(params)["Transformer"]["encoderblock_1"]["adapter_mlp"]
  assert not np.any(grads["down"]["kernel"]) and not np.any(grads["down"]["bias"])
  assert not np.any(grads["up"]["kernel"]) and np.any(grads["up"]["bias"])


def test_summary_line_for_vpt_deep_b16():
  _, params, groups = b16_trainable("vpt_deep", prompt_tokens=50)
  line = methods.summary("vpt_deep", params, groups, backbone_count=B16)
  assert "without the head 460,800 = 0.54% of the 85,798,656-parameter backbone" in line
  assert "537,700 trainable parameters" in line  # + the 100-class head, 76,900.


def test_vpt_deep_step_forms_no_frozen_weight_gradients(backbone):
  """XLA's own FLOP count of the compiled step: VPT-deep skips the frozen weights' gradients."""
  backbone_params, _, _ = backbone
  images = jnp.zeros((8, 64, 64, 3))
  labels = jnp.zeros((8,), jnp.int32)
  backbone64 = paths.merge(backbone_params, {"Transformer": {"posembed_input": {
      "pos_embedding": jnp.zeros((1, 17, 192))}}})
  flops = {}
  for name in ("full", "vpt_deep", "linear", "vqt"):
    stage = methods.get(name, depth=2, prompt_tokens=1, prompt_dropout=0.0, query_tokens=1,
                        query_dropout=0.0)
    model = vit.Model(**BASE, **stage.model_fields)
    given = {k: v for k, v in backbone64.items() if k != "head" or name != "vqt"}
    params = methods.init_params(model, given, jax.random.PRNGKey(0), 64)
    groups = methods.labels(params, stage.rules)
    trainable, frozen = methods.split(params, groups)
    tx = sgd(methods.split(groups, groups)[0], optim.warmup_cosine(1, 10), 0.1, 1e-4)
    compiled = jax.jit(steps.make_train_step(model, tx)).lower(
        trainable, tx.init(trainable), frozen, images, labels, jax.random.PRNGKey(0)).compile()
    analysis = compiled.cost_analysis()
    flops[name] = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  assert flops["vpt_deep"] < 0.8 * flops["full"], flops
  assert flops["linear"] < 0.5 * flops["full"], flops
  # VQT's queries read the backbone but nothing flows back through it: its step costs about a
  # forward pass (as linear probing), far from VPT-deep's backward through every token.
  assert flops["vqt"] < 1.25 * flops["linear"] and flops["vqt"] < 0.6 * flops["vpt_deep"], flops


def test_artifact_round_trip(backbone, tmp_path):
  backbone_params, images, labels = backbone
  stage = methods.get("vpt_deep", depth=2, **HPARAMS)
  model, params, groups, trainable, frozen, tx = stage_setup(stage, backbone_params)
  step = jax.jit(steps.make_train_step(model, tx))
  trainable, _, _ = step(trainable, tx.init(trainable), frozen, images, labels,
                         jax.random.PRNGKey(0))
  path = str(tmp_path / "dtd.vpt_deep.npz")
  size = artifacts.save(path, trainable, {"method": "vpt_deep", "task": "dtd"})
  full_size = 4 * paths.count(params)
  assert size < full_size / 50

  loaded, meta = artifacts.load(path)
  assert meta == {"method": "vpt_deep", "task": "dtd"}
  chex.assert_trees_all_equal(loaded, jax.device_get(trainable))
  restored = paths.merge(backbone_params, loaded)
  expected, _ = model.apply({"params": paths.merge(trainable, frozen)}, images)
  logits, _ = model.apply({"params": restored}, images)
  np.testing.assert_array_equal(logits, expected)


def test_group_learning_rates(backbone):
  backbone_params, images, labels = backbone
  stage = methods.get("mixed", depth=2, **HPARAMS)
  model, params, groups, trainable, frozen, tx = stage_setup(
      stage, backbone_params, lr_mults={"backbone": 0.0})
  step = jax.jit(steps.make_train_step(model, tx))
  new, opt_state = trainable, tx.init(trainable)
  for i in range(2):  # The warm-up starts at lr 0.
    new, opt_state, _ = step(new, opt_state, frozen, images, labels, jax.random.PRNGKey(i))
  chex.assert_trees_all_equal(new["Transformer"], trainable["Transformer"])
  assert not np.array_equal(new["prompt"]["embeddings"], trainable["prompt"]["embeddings"])
  with pytest.raises(ValueError, match=r"lr_mults names groups \['prompts'\]"):
    stage_setup(stage, backbone_params, lr_mults={"prompts": 0.1})


def test_coupled_weight_decay_and_momentum():
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  groups = {"w": "head", "b": "head"}
  tx = sgd(groups, lambda step, peak, _: peak, 0.1, 0.01, decay_rules=(("b", False), (".*", True)))
  state = tx.init(params)
  grads = {"w": jnp.array([0.3, 0.4]), "b": jnp.array([0.2])}
  w, b, buf_w, buf_b = np.array([1.0, -2.0]), np.array([0.5]), 0.0, 0.0
  for _ in range(2):  # PyTorch SGD: d = g + wd * p; buf = 0.9 * buf + d; p -= lr * buf.
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    buf_w = 0.9 * buf_w + (np.array([0.3, 0.4]) + 0.01 * w)
    buf_b = 0.9 * buf_b + np.array([0.2])
    w, b = w - 0.1 * buf_w, b - 0.1 * buf_b
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)
  np.testing.assert_allclose(params["b"], b, rtol=1e-6)


def test_configuration_errors():
  with pytest.raises(ValueError, match="Unknown method 'vtp_deep'; choose one of: linear, .*vpt_deep"):
    methods.get("vtp_deep", depth=12)
  with pytest.raises(ValueError, match="Method 'vpt_deep' needs more hyper-parameters.*prompt_tokens"):
    methods.get("vpt_deep", depth=12)
  with pytest.raises(ValueError, match="partial_k=13 must be between 1 and the model depth 12"):
    methods.get("partial_k", depth=12, partial_k=13)
  params = {"head": {"kernel": jnp.zeros((2, 2))}, "other": jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"No rule matches parameters \['other'\]"):
    methods.labels(params, [("head/.*", "head")])
  with pytest.raises(ValueError, match="match no parameter"):
    methods.labels(params, methods.get("lora", depth=12, lora_rank=4).rules)


def test_two_stage_methods_list_their_stages():
  assert [s.name for s in methods.get("ft_then_pt", depth=12, **HPARAMS).stages] == ["full",
                                                                                    "vpt_deep"]
  assert [s.name for s in methods.get("lp_ft", depth=12).stages] == ["linear", "full"]


def test_a_short_last_batch_trains_on_its_real_examples_only(backbone):
  # The padding of a short batch (mask False) changes neither the update nor the metrics.
  backbone_params, images, labels = backbone
  model, _, _, trainable, frozen, tx = stage_setup(methods.get("full", depth=2), backbone_params)
  step = jax.jit(steps.make_train_step(model, tx))
  opt_state = tx.init(trainable)
  step(trainable, opt_state, frozen, images, labels, jax.random.PRNGKey(0))  # Past lr 0.
  _, opt_state, _ = step(trainable, opt_state, frozen, images, labels, jax.random.PRNGKey(0))
  real, out_real = step(trainable, opt_state, frozen, images[:5], labels[:5],
                        jax.random.PRNGKey(1))[::2]
  padded = jnp.concatenate([images[:5], -images[5:]]), jnp.concatenate([labels[:5], labels[5:]])
  mask = jnp.arange(8) < 5
  masked, out_masked = step(trainable, opt_state, frozen, *padded, jax.random.PRNGKey(1),
                            mask)[::2]
  chex.assert_trees_all_close(masked, real, atol=1e-6)
  assert not np.allclose(flat(real)["head/kernel"], flat(trainable)["head/kernel"])
  np.testing.assert_allclose(out_masked["loss"], out_real["loss"], rtol=1e-6)
  np.testing.assert_allclose(out_masked["accuracy"], out_real["accuracy"])
