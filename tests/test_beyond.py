"""Beyond the two papers: VQT, GaLore, prediction ensembles, WiSE-FT and distribution shift."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import parity_reference
from vpt_jax import methods, optim, paths
from vpt_jax.models import vit

TINY = dict(variant="Ti/16", depth=2, num_classes=5)


def _vqt_params(query_tokens=2, seed=0):
  model = vit.Model(**TINY, query_tokens=query_tokens, gelu_approximate=False)
  images = jax.random.uniform(jax.random.PRNGKey(seed + 1), (3, 32, 32, 3), minval=-1, maxval=1)
  params = model.init(jax.random.PRNGKey(seed), images)["params"]
  # A head that is not zero, so that every feature shows in the logits.
  params["head"]["kernel"] = 0.3 * jax.random.normal(jax.random.PRNGKey(7),
                                                     params["head"]["kernel"].shape)
  return model, params, images


def test_vqt_is_the_reference_computation():
  model, params, images = _vqt_params()
  logits, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
  assert aux["pre_logits"].shape == (3, 192 * (1 + 2 * 2))  # CLS + 2 layers x 2 queries.
  flat = {k: np.asarray(v) for k, v in paths.flatten(params).items()}
  expected = parity_reference.logits(
      flat, np.asarray(images), "tok", queries=flat["query/embeddings"],
      head={"kernel": flat["head/kernel"], "bias": flat["head/bias"]},
      gelu=lambda x: 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2.0))))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_vqt_leaves_the_frozen_path_bitwise_unchanged():
  model, params, images = _vqt_params()
  plain = vit.Model(**TINY, gelu_approximate=False)
  plain_params = {k: v for k, v in params.items() if k not in ("query", "head")}
  plain_params["head"] = plain.init(jax.random.PRNGKey(0), images)["params"]["head"]
  encoded = lambda m, p: jax.jit(lambda p, x: m.apply({"params": p}, x)[1]["encoded"])(p, images)
  np.testing.assert_array_equal(encoded(model, params), encoded(plain, plain_params))
  # The queries are read by no token: other queries give the same backbone outputs.
  moved = dict(params, query={"embeddings": params["query"]["embeddings"] + 1.0})
  np.testing.assert_array_equal(encoded(model, moved), encoded(model, params))


def test_vqt_trains_queries_and_head_only():
  stage = methods.get("vqt", depth=2, query_tokens=3, query_dropout=0.1)
  model = vit.Model(**TINY, **stage.model_fields)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  groups = paths.flatten(methods.labels(abstract["params"], stage.rules))
  trainable = {k for k, g in groups.items() if g != methods.FROZEN}
  assert trainable == {"query/embeddings", "head/kernel", "head/bias"}
  assert abstract["params"]["query"]["embeddings"].shape == (2, 3, 192)


# --- GaLore --------------------------------------------------------------------------------------

def _torch_galore_adamw(weights, grads, lr, rank, period, scale, wd, b1=0.9, b2=0.999, eps=1e-6):
  """jiaweizzhao/GaLore galore_torch/adamw.py + galore_projector.py ("std"), restated in NumPy on
  PyTorch's (outputs, inputs) weight; returns the weights after each step. The singular vectors'
  signs, which GaLore leaves to the SVD library, follow vpt_jax's rule (largest entry positive)."""
  def signs(vectors, axis):
    largest = np.take_along_axis(vectors, np.abs(vectors).argmax(axis, keepdims=True), axis)
    return vectors * np.where(largest < 0, -1.0, 1.0)

  w, m, v, projector, out = weights.astype(np.float64), None, None, None, []
  for step, g in enumerate(grads):
    g = g.astype(np.float64)
    right = g.shape[0] >= g.shape[1]
    if projector is None or step % period == 0:
      u, _, vh = np.linalg.svd(g, full_matrices=False)
      projector = signs(vh[:rank], 1) if right else signs(u[:, :rank], 0)
    low = g @ projector.T if right else projector.T @ g
    m = np.zeros_like(low) if m is None else m
    v = np.zeros_like(low) if v is None else v
    m = b1 * m + (1 - b1) * low
    v = b2 * v + (1 - b2) * low * low
    t = step + 1
    step_size = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    norm = m / (np.sqrt(v) + eps)
    back = (norm @ projector if norm.shape[0] >= norm.shape[1] else projector @ norm) * scale
    w = w - step_size * back
    w = w - lr * wd * w
    out.append(w.copy())
  return out


@pytest.mark.parametrize("inputs, outputs", [(6, 4), (4, 6), (5, 5)])
def test_galore_matches_a_numpy_restatement(inputs, outputs):
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal((inputs, outputs)).astype(np.float32)
  grads = [rng.standard_normal((inputs, outputs)).astype(np.float32) for _ in range(5)]
  lr, rank, period, scale, wd = 0.01, 2, 3, 0.25, 0.1
  tx = optim.galore_transform(lambda step: lr, wd, {"k": True}, {"k": (inputs, outputs)},
                              rank=rank, update_period=period, scale=scale)
  params, state = {"k": jnp.asarray(kernel)}, None
  state = tx.init(params)
  expected = _torch_galore_adamw(kernel.T, [g.T for g in grads], lr, rank, period, scale, wd)
  for g, want in zip(grads, expected):
    updates, state = tx.update({"k": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["k"], want.T, rtol=1e-5, atol=1e-6)


def galore_state_size(shapes: dict, rank: int) -> int:
  """Scalars GaLore keeps: per projected (m, n) kernel a projector and two rank-r moments; two
  full moments for every other leaf."""
  total = 0
  for shape2d in shapes.values():
    if isinstance(shape2d, tuple):
      m, n = shape2d
      r = min(rank, m, n)
      total += (m * r if m > n else r * n) * 2 + (r * n if m > n else m * r)
    else:
      total += 2 * shape2d
  return total


def test_galore_state_size_is_the_formula():
  stage = methods.get("galore", depth=2)
  model = vit.Model(**TINY)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  groups = methods.labels(params, stage.rules)
  trainable, _ = methods.split(params, groups)
  from vpt_jax import recipes
  tx = optim.make("galore_adamw", methods.split(groups, groups)[0], optim.warmup_cosine(1, 10),
                  **{k: recipes.GALORE[k] for k in optim.GALORE_FIELDS})
  state = jax.eval_shape(tx.init, trainable)
  chosen = paths.flatten(paths.first_match(trainable, recipes.GALORE["galore_rules"]))
  shapes = {path: optim.galore_matrix_shape(path, leaf.shape) if chosen[path] else
            int(np.prod(leaf.shape)) for path, leaf in paths.flatten(trainable).items()}
  assert sum(isinstance(s, tuple) for s in shapes.values()) == 2 * 6  # q, k, v, out, 2 MLP.
  # Scalars besides: the injected hyper-parameters (peak lr, decay) and their step count, a step
  # count per group (head, backbone), a 0-d projector placeholder per unprojected leaf.
  counters = 3 + 2 + sum(not isinstance(s, tuple) for s in shapes.values())
  assert paths.count(state) - counters == galore_state_size(shapes, recipes.GALORE["galore_rank"])
  adamw = jax.eval_shape(optim.make("hf_adamw", methods.split(groups, groups)[0],
                                    optim.warmup_cosine(1, 10)).init, trainable)
  assert paths.count(state) < 0.4 * paths.count(adamw)
