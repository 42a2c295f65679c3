"""Beyond the two papers: VQT, GaLore, prediction ensembles, WiSE-FT and distribution shift."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import parity_reference
from test_train import tiny_config
from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import executors, plots, predictions, report, robustness, sweep
from vpt_jax.training import artifacts, optim
from vpt_jax.utils import paths
from vpt_jax.bench import costs
from vpt_jax.data import pipeline, shifts
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


def test_packed_galore_refreshes_its_projector_only_when_due():
  """In a pack (vmap over runs that share their step) the refresh stays a branch: the SVDs run
  only on refresh steps, not at every step as a per-run select would make them."""
  tx = optim.galore_transform(lambda step: 0.01, 0.0, {"k": True}, {"k": (6, 4)}, rank=2,
                              update_period=3, scale=1.0)
  params = {"k": jnp.ones((2, 6, 4))}
  state = jax.vmap(tx.init)(params)
  update = jax.vmap(tx.update, axis_name=optim.PACK_AXIS)
  primitives = [e.primitive.name for e in jax.make_jaxpr(update)(params, state, params).eqns]
  assert "cond" in primitives and "select_n" not in primitives
  alone = jax.vmap(tx.update)  # Without the pack's axis name: a select, both sides computed.
  assert "cond" not in [e.primitive.name for e in jax.make_jaxpr(alone)(params, state,
                                                                         params).eqns]
  packed, _ = update(params, state, params)  # The same numbers as one by one.
  for i in range(2):
    single, _ = tx.update({"k": params["k"][i]}, jax.tree.map(lambda x: x[i], state),
                          {"k": params["k"][i]})
    np.testing.assert_allclose(packed["k"][i], single["k"], rtol=1e-6, atol=1e-7)


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
  from vpt_jax.training import recipes
  tx = optim.make("galore_adamw", methods.split(groups, groups)[0], optim.warmup_cosine(1, 10),
                  **{k: recipes.GALORE[k] for k in optim.GALORE_FIELDS})
  state = jax.eval_shape(tx.init, trainable)
  chosen = paths.flatten(paths.first_match(trainable, recipes.GALORE["galore_rules"]))
  shapes = {path: optim.galore_matrix_shape(path, leaf.shape) if chosen[path] else
            int(np.prod(leaf.shape)) for path, leaf in paths.flatten(trainable).items()}
  assert sum(isinstance(s, tuple) for s in shapes.values()) == 2 * 6  # q, k, v, out, 2 MLP.
  # Scalars besides: the injected hyper-parameters (peak lr, decay, steps per epoch) and their step
  # count, a step count per group (head, backbone), an unused 0-d projector per unprojected leaf.
  counters = 4 + 2 + sum(not isinstance(s, tuple) for s in shapes.values())
  assert paths.count(state) - counters == galore_state_size(shapes, recipes.GALORE["galore_rank"])
  adamw = jax.eval_shape(optim.make("hf_adamw", methods.split(groups, groups)[0],
                                    optim.warmup_cosine(1, 10)).init, trainable)
  assert paths.count(state) < 0.4 * paths.count(adamw)


# --- Predictions, ensembles, shift and WiSE-FT ---------------------------------------------------

def test_ensembles_and_disagreement_by_hand():
  labels = np.array([0, 1, 1, 0])
  a = (np.array([[2.0, 0], [0, 2], [2, 0], [2, 0]]), labels)  # Wrong on example 2.
  b = (np.array([[0.0, 1], [0, 2], [0, 4], [2, 0]]), labels)  # Wrong on example 0.
  assert predictions.error_disagreement(a, b) == 0.5
  assert predictions.ensemble_accuracy([a]) == 0.75
  # Mean of softmax: example 0 -> class 0 (a is surer), example 2 -> class 1 (b is surer).
  assert predictions.ensemble_accuracy([a, b]) == 1.0
  analysis = predictions.analyse({("t", "x"): {42: a, 44: a}, ("t", "y"): {42: b}}, [("x", "y")])
  np.testing.assert_array_equal(analysis["t"]["disagreement"], [[0, 0.5], [0.5, 0]])
  assert analysis["t"]["ensembles"] == {"x+y": (1.0, 0.0, 1)}
  assert analysis["t"]["seed_ensembles"] == {"x": 0.75}
  with pytest.raises(ValueError, match="different examples"):
    predictions.ensemble_accuracy([a, (b[0][:3], labels[:3])])


def test_shifted_test_sets_are_deterministic_and_shifted(fake_data_dir):
  def images(shift, batch_size):
    return np.concatenate([b["image"][b["mask"]] for b in pipeline.eval_batches(
        tasks_lib.get("dtd"), "test", 32, batch_size, fake_data_dir, shift=shift)])
  clean = images(None, 16)
  for shift in shifts.DEFAULT_SHIFTS:
    shifted = images(shift, 16)
    assert shifted.shape == clean.shape and shifted.dtype == np.uint8, shift
    np.testing.assert_array_equal(shifted, images(shift, 7))  # Keyed by example, not batch.
  for shift in ("gaussian_noise:3", "contrast:3"):  # The test images here are nearly flat.
    assert np.abs(images(shift, 16).astype(int) - clean).mean() > 2, shift
  noisy = images("gaussian_noise:5", 16).astype(float)
  assert np.std(noisy - clean) > np.std(images("gaussian_noise:1", 16).astype(float) - clean)
  with pytest.raises(ValueError, match="must be <corruption>:<severity 1-5>"):
    next(pipeline.eval_batches(tasks_lib.get("dtd"), "test", 32, 16, fake_data_dir, shift="snow:3"))


def test_each_corruption_changes_an_image_as_it_should():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (64, 64, 3)), tf.uint8)
  index = tf.constant(3, tf.int64)
  run = lambda shift: shifts.corrupt_fn(shift, 224)(index, image).numpy().astype(float)
  clean = image.numpy().astype(float)
  high_frequency = lambda x: np.abs(np.diff(x, axis=0)).mean()
  for severity in (1, 5):
    assert high_frequency(run(f"gaussian_blur:{severity}")) < 0.6 * high_frequency(clean)
    assert run(f"contrast:{severity}").std() < 0.5 * clean.std()
    assert np.abs(run(f"jpeg:{severity}") - clean).mean() > 5
  assert (np.abs(run("gaussian_noise:5") - clean).mean()
          > np.abs(run("gaussian_noise:1") - clean).mean() > 5)
  assert high_frequency(run("gaussian_blur:5")) < high_frequency(run("gaussian_blur:1"))


def test_a_sweep_saves_predictions_then_ensembles_shift_and_wise(fake_data_dir, tiny_backbone,
                                                                 tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=full+linear",
                       **{"sweep.seeds": 2, "sweep.base_lrs": (0.002,),
                          "sweep.weight_decays": (1e-3,)})
  sweep_dir = str(tmp_path / "sweep")
  planner = sweep.Planner(config, sweep_dir=sweep_dir)
  counts = sweep.run_protocol(sweep_dir, planner, executors.local(planner), log=lambda *_: None)
  assert counts["ran"] == 6
  finals = sorted(glob.glob(f"{sweep_dir}/vtab1k/dtd/*/final/seed*"))
  for workdir in finals:
    result = json.loads(open(f"{workdir}/result.json").read())
    saved = np.load(f"{workdir}/{result['predictions']}")
    assert saved["logits"].dtype == np.float16 and saved["logits"].shape == (37, 47)
    accuracy = np.mean(saved["logits"].astype(np.float32).argmax(-1) == saved["labels"])
    assert abs(accuracy - result["test_accuracy"]) <= 1 / 37  # float16 may flip a near tie.

  shift = ("contrast:5",)
  for workdir in finals:
    stored = robustness.shift_run(workdir, shift, log=lambda *_: None)
    assert stored["clean"] == json.loads(open(f"{workdir}/result.json").read())["test_accuracy"]
  full_dir = f"{sweep_dir}/vtab1k/dtd/full"
  chosen = robustness.selection_run(full_dir)
  assert chosen.endswith("search/lr0.002_wd0.001")
  full_finals = [d for d in finals if "/full/" in d]
  out = robustness.wise(full_dir, chosen, full_finals, shift, alphas=(0.0, 0.5, 1.0),
                        log=lambda *_: None)
  # a is chosen on the split the search run was scored on (VTAB-1k: val200).
  assert out["selection_subset"] == "val200" and len(out["val200"]) == 3
  for run, curve in out["test"].items():
    result = json.loads(open(f"{full_dir}/{run}/result.json").read())
    assert curve["clean"][-1] == result["test_accuracy"]  # a = 1: the fine-tuned model.
  # theta_0 is where training started: the first epoch trains at lr 0 (the VPT code's schedule),
  # so its checkpoint holds the starting point, head included.
  model, trained, run_config = artifacts.load_trained(full_finals[0])
  start = robustness.initial_params(full_finals[0], model, trained, run_config)
  first = min(int(s) for s in os.listdir(f"{full_finals[0]}/checkpoints") if s.isdigit())
  saved = ocp.StandardCheckpointer().restore(f"{full_finals[0]}/checkpoints/{first}/default")
  for path, value in paths.flatten(saved["trainable"]).items():
    np.testing.assert_array_equal(paths.flatten(start)[path], value, err_msg=path)

  text = report.write(sweep_dir, str(tmp_path / "report"), ensembles=(("full", "linear"),))
  assert "Examples (%) on which exactly one of two methods errs" in text
  assert "| full+linear (ensemble, 2 seeds) |" in text and "| full (ensemble of its seeds) |" in text
  assert "| method | clean | contrast:5 | mean shifted |" in text
  row = next(line for line in text.splitlines() if line.startswith("| vtab1k | dtd | full |"))
  assert row.split(" | ")[3] == str(out["selected_alpha"])
  analysis = predictions.analyse(predictions.load(finals), [("full", "linear")])
  assert plots.ensembles(analysis, str(tmp_path / "e.png"))
  curves = {k[1:]: v for k, v in report.wise_curves(sweep_dir).items()}
  assert plots.robustness(report.shift_rows(sweep_dir)["vtab1k"], curves, str(tmp_path / "r.png"))


def test_method_costs_from_the_compiled_steps():
  rows = {m: costs.method_costs(m, "Ti/16", depth=2, image_size=64, batch=2)
          for m in ("linear", "vpt_deep", "vqt", "full", "galore")}
  # VQT: about a forward pass, no backward through the tokens (VPT-deep's 50 prompts have one).
  assert rows["vqt"]["gflops_per_image"] < 1.3 * rows["linear"]["gflops_per_image"]
  assert rows["vqt"]["gflops_per_image"] < 0.5 * rows["vpt_deep"]["gflops_per_image"]
  assert rows["vqt"]["temp_mb"] < rows["vpt_deep"]["temp_mb"]
  # GaLore: the same trainable parameters as full fine-tuning, far less optimizer state.
  assert rows["galore"]["trainable_parameters"] == rows["full"]["trainable_parameters"]
  assert rows["galore"]["optimizer_state_mb"] < 0.4 * rows["full"]["optimizer_state_mb"]
  # Full fine-tuning's AdamW keeps two moments per parameter (plus a few counters).
  assert rows["full"]["optimizer_state_mb"] == pytest.approx(2 * rows["full"]["parameters_mb"],
                                                             rel=1e-3)
  assert "| vqt | adam | " in costs.markdown(list(rows.values()))
