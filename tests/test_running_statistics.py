"""mlp_k's BatchNorm running averages (KMnP/vpt src/models/mlp.py, nn.BatchNorm1d): updated by
each train step over the real examples, never by the optimizer, used in evaluation, kept through
checkpoints, artifacts and packing; methods without BatchNorm carry none."""

import jax
import numpy as np
import pytest

import test_methods
from test_methods import HPARAMS
from vpt_jax import methods
from vpt_jax.models import peft, vit
from vpt_jax.training import artifacts, checkpointing, optim, steps
from vpt_jax.utils import paths

MASK = np.array([True] * 6 + [False] * 2)  # A short batch: two padded examples.


@pytest.fixture(scope="module")
def backbone():
  """(random parameters of a tiny mlp_k model, images, labels); shapes from eval_shape, which
  compiles nothing. BatchNorm's running averages start as BatchNorm1d's (0 and 1)."""
  model = vit.Model(**test_methods.BASE, **methods.get("mlp_k", depth=2, **HPARAMS).model_fields)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  params = paths.flatten(jax.tree.map(
      lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), shapes))
  for path in params:
    if path.endswith(("running_mean", "running_var")):
      params[path] = np.full_like(params[path], 1.0 if path.endswith("var") else 0.0)
  return paths.unflatten(params), images, np.arange(8, dtype=np.int32) % 5


@pytest.fixture(scope="module")
def trained(backbone):
  """Three steps of mlp_k: (model, groups, frozen, jitted step, tx, [(trainable, opt_state) at
  the start and after each step])."""
  params, images, labels = backbone
  stage = methods.get("mlp_k", depth=2, **HPARAMS)
  model = vit.Model(**test_methods.BASE, **stage.model_fields)
  groups = methods.labels(params, stage.rules)
  trainable, frozen = methods.split(params, groups)
  trainable_groups, _ = methods.split(groups, groups)
  tx = test_methods.sgd(trainable_groups, optim.warmup_cosine(1, 10), 0.05, weight_decay=1e-3)
  step = jax.jit(steps.make_train_step(model, tx))
  opt_state = tx.init(trainable)
  states = [(trainable, opt_state)]
  for i in range(3):
    trainable, opt_state, _ = step(trainable, opt_state, frozen, images, labels,
                                   jax.random.PRNGKey(i), MASK)
    states.append((trainable, opt_state))
  return model, groups, frozen, step, tx, states


def _restated_logits(params, h0):
  """mlp.py's eval forward in NumPy from the first hidden Linear's output `h0`: ReLU, BatchNorm1d
  with the running averages, the second hidden layer, the head."""
  x = np.asarray(h0)
  for i in range(2):
    layer = jax.device_get(params[f"mlp_head_{i}"])
    if i:
      x = x @ layer["dense"]["kernel"] + layer["dense"]["bias"]
    x = np.maximum(x, 0)
    x = ((x - layer["running_mean"]) / np.sqrt(layer["running_var"] + peft.BATCH_NORM_EPSILON)
         * layer["bn_scale"] + layer["bn_bias"])
  head = jax.device_get(params["head"])
  return x @ head["kernel"] + head["bias"]


def test_eval_uses_the_running_averages_the_steps_kept(backbone, trained):
  model, groups, frozen, step, _, states = trained
  _, images, labels = backbone
  trainable = states[-1][0]
  stats = {p: v for p, v in paths.flatten(trainable).items() if p.endswith(("mean", "var"))}
  assert sorted(stats) == [f"mlp_head_{i}/running_{s}" for i in (0, 1) for s in ("mean", "var")]
  assert {paths.flatten(groups)[p] for p in stats} == {peft.STATISTICS_GROUP}
  assert not np.allclose(stats["mlp_head_0/running_mean"], 0)

  # The step wrote what the training forward computed from the parameters before it: the
  # optimizer (here SGD with momentum and decay) never moved them.
  before, opt_state = states[-2]
  params = paths.merge(before, frozen)
  _, updated = jax.jit(lambda p: model.apply(
      {"params": p}, images, train=True, example_mask=MASK, rngs={"dropout": jax.random.PRNGKey(2)},
      mutable=[peft.STATISTICS_UPDATES]))(params)
  for path, value in paths.flatten(updated[peft.STATISTICS_UPDATES]).items():
    np.testing.assert_allclose(stats[path], value, rtol=1e-6, atol=1e-7, err_msg=path)

  params = paths.merge(trainable, frozen)
  (logits, _), captured = jax.jit(lambda p: model.apply(
      {"params": p}, images, capture_intermediates=True, mutable=["intermediates"]))(params)
  h0 = captured["intermediates"]["mlp_head_0"]["dense"]["__call__"][0]
  np.testing.assert_allclose(logits, _restated_logits(params, h0), rtol=1e-5, atol=1e-5)
  eval_step = jax.jit(steps.make_eval_step(model))
  _, eval_logits = eval_step(params, images, labels, MASK)
  np.testing.assert_allclose(eval_logits, logits, rtol=1e-5, atol=1e-5)
  # Running averages make an example's logits independent of the rest of its batch.
  _, alone = eval_step(params, images[:2], labels[:2], MASK[:2])
  np.testing.assert_allclose(alone, logits[:2], rtol=1e-5, atol=1e-5)


def test_checkpoint_resume_and_artifact_reproduce_them_bitwise(backbone, trained, tmp_path):
  model, groups, frozen, step, _, states = trained
  _, images, labels = backbone
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 2)
  trainable, opt_state = states[2]
  checkpointer.save(2, {"trainable": trainable, "opt_state": opt_state})
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          {"trainable": trainable, "opt_state": opt_state})
  restored_step, restored = checkpointer.restore_latest(abstract)
  checkpointer.close()
  assert restored_step == 2
  resumed, _, _ = step(restored["trainable"], restored["opt_state"], frozen, images, labels,
                       jax.random.PRNGKey(2), MASK)
  for path, value in paths.flatten(states[3][0]).items():
    np.testing.assert_array_equal(paths.flatten(resumed)[path], value, err_msg=path)

  artifacts.save(str(tmp_path / "artifact.npz"), resumed, {})
  loaded, _ = artifacts.load(str(tmp_path / "artifact.npz"))
  eval_step = jax.jit(steps.make_eval_step(model))
  _, reference = eval_step(paths.merge(states[3][0], frozen), images, labels, MASK)
  _, reread = eval_step(paths.merge(loaded, frozen), images, labels, MASK)
  np.testing.assert_array_equal(reread, reference)
  assert methods.count_trained(loaded, groups) == paths.count(loaded) - 4 * 192


def test_packed_runs_keep_their_own_running_averages(backbone, trained):
  model, _, frozen, single, tx, states = trained
  _, images, labels = backbone
  trainable = states[0][0]
  train_step = steps.make_train_step(model, tx)
  second = jax.tree.map(lambda x: x * 1.5, trainable)  # Another member's initialisation.
  members = [(t, tx.init(t)) for t in (trainable, second)]
  stack = lambda *xs: jax.numpy.stack(xs)
  packed = jax.jit(jax.vmap(train_step, in_axes=(0, 0, None, None, None, 0, None),
                            axis_name=optim.PACK_AXIS))
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  out, _, _ = packed(jax.tree.map(stack, *[m[0] for m in members]),
                     jax.tree.map(stack, *[m[1] for m in members]), frozen, images, labels, keys,
                     MASK)
  for i, (t, o) in enumerate(members):
    alone, _, _ = single(t, o, frozen, images, labels, keys[i], MASK)
    for path in ("mlp_head_0/running_mean", "mlp_head_1/running_var"):
      np.testing.assert_allclose(paths.flatten(out)[path][i], paths.flatten(alone)[path],
                                 rtol=1e-5, atol=1e-6, err_msg=path)
  assert not np.allclose(paths.flatten(out)["mlp_head_0/running_mean"][0],
                         paths.flatten(out)["mlp_head_0/running_mean"][1])


def test_methods_without_batch_norm_carry_no_statistics():
  for name in ("linear", "bitfit", "adaptformer"):
    method = methods.get(name, depth=2, **HPARAMS)
    model = vit.Model(**test_methods.BASE, **method.model_fields)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))["params"]
    groups = methods.labels(params, method.rules)
    assert peft.STATISTICS_GROUP not in set(jax.tree.leaves(groups))
    assert not steps._has_running_statistics(params)
