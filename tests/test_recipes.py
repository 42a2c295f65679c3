"""The `paper` and `google` recipes, item by item, and step parity with a PyTorch restatement of the
reference training loop (tests/torch_reference.py)."""

import importlib.util
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from configs import vtab as vtab_config
from test_train import REPO, tiny_config
from vpt_jax import methods
from vpt_jax.bench import costs
from vpt_jax.study import attention, published, report, sweep
from vpt_jax.training import artifacts, loop, optim, programs, recipes, sharding, spec, steps, train
from vpt_jax.utils import config_lib, paths
from vpt_jax.data import device, tfds_source
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit


def resolved(arg, **fields):
  config = vtab_config.get_config(arg)
  for path, value in fields.items():
    config_lib.set_path(config, path.replace("__", "."), value)
  return recipes.resolve(config)


# --- The settings each method gets (item 2 a, e, f, i, l) --------------------------------------

def test_full_fine_tuning_is_vpt_or_ft_with_its_optimizer_quirk():
  # ChengHan111/VPT-or-FT configs/base-finetune.yaml, command.txt, src/solver/optimizer.py.
  for wd in (0.01, 0.001, 0.0001):
    config = resolved("task=dtd,method=full", optim__weight_decay=wd)
    assert (config.optim.name, config.optim.applied_weight_decay) == ("hf_adamw", 0.01)
    assert config.optim.weight_decay == wd  # The grid's value names the run; 0.01 applies.
    assert config.optim.decay_rules == ((r".*/bias", False), (".*", True))
  sgd = resolved("task=dtd,method=full", optim__weight_decay=0.0)
  assert (sgd.optim.name, sgd.optim.applied_weight_decay, sgd.optim.momentum) == ("sgd", 0.0, 0.9)
  config = resolved("task=dtd,method=full")
  assert (config.optim.batch_size, config.optim.warmup_epochs, config.optim.epochs) == (128, 5, 100)
  assert (config.model.dropout, config.model.attn_out_dropout) == (0.1, 0.0)
  assert config.sweep.base_lrs == (0.005, 0.001, 0.0005, 0.0001)
  assert config.sweep.weight_decays == (0.01, 0.001, 0.0001, 0.0)


def test_vpt_linear_and_mixed_are_the_vpt_code():
  # KMnP/vpt configs/base-prompt.yaml, base-linear.yaml, tune_vtab.py; VPT-or-FT FT_PT_MIXED.
  prompt_grid = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
  for method, batch, prompt_dropout in (("vpt_deep", 64, 0.1), ("vpt_shallow", 64, 0.0),
                                        ("mixed", 64, 0.1), ("linear", 1024, 0.1)):
    config = resolved(f"task=dtd,method={method}")
    assert config.optim.name == "sgd" and config.optim.batch_size == batch, method
    assert config.optim.warmup_epochs == 10 and config.optim.decay_rules[0] == ("head/bias", False)
    assert config.model.dropout == 0.0, method  # The backbone runs in eval mode.
    assert config.method_kwargs.prompt_dropout == prompt_dropout
    assert config.sweep.base_lrs == prompt_grid, method
  # Methods neither paper trained take the VPT recipe.
  for method in ("layernorm", "lora", "ssf", "lp_ft", "adaptformer", "fact_tk"):
    config = resolved(f"task=dtd,method={method}")
    assert (config.optim.name, config.optim.batch_size, config.optim.warmup_epochs) == (
        "sgd", 64, 10), method
    assert config.model.dropout == 0.0
  assert resolved("task=dtd,method=lp_ft").stage_optim.linear.batch_size == 1024


def test_vpt_papers_other_rows_take_the_configs_its_demo_runs_them_with():
  # KMnP/vpt demo.ipynb cell 2: Partial-1, Bias, Adapter with configs/base-finetune.yaml (adamw
  # L14, warm-up 5 L12, batch 384 L25; tune_vtab.py "finetune" grid), the backbone in eval mode
  # (vit_models.py L173-174); MLP-3 with configs/base-linear.yaml (sgd, 10 warm-up, batch 1024).
  for method in ("partial_k", "bitfit", "adapter"):
    config = resolved(f"task=dtd,method={method}")
    assert (config.optim.name, config.optim.applied_weight_decay, config.optim.batch_size,
            config.optim.warmup_epochs, config.optim.epochs) == ("hf_adamw", 0.01, 384, 5, 100), method
    assert config.optim.decay_rules == ((r".*/bias", False), (".*", True))
    assert (config.model.dropout, config.model.attn_out_dropout) == (0.0, 0.0), method
    assert config.sweep.base_lrs == (0.005, 0.001, 0.0005, 0.0001), method
    sgd = resolved(f"task=dtd,method={method}", optim__weight_decay=0.0)
    assert (sgd.optim.name, sgd.optim.applied_weight_decay) == ("sgd", 0.0)
  for method in ("mlp_k", "linear"):
    config = resolved(f"task=dtd,method={method}")
    assert (config.optim.name, config.optim.batch_size, config.optim.warmup_epochs,
            config.optim.momentum) == ("sgd", 1024, 10, 0.9), method
    assert config.optim.decay_rules[0] == ("head/bias", False) and config.model.dropout == 0.0
    assert config.sweep.base_lrs == (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
  # FGVC: the same split, from the FGVC configs (configs/finetune/cub.yaml: 0.00375 at 384).
  cub = resolved("task=cub,method=bitfit")
  assert (cub.optim.batch_size, cub.optim.warmup_epochs) == (384, 5)
  assert cub.optim.base_lr == pytest.approx(0.00375 * 256 / 384)
  assert resolved("task=cub,method=mlp_k").optim.batch_size == 1024


def test_common_settings_of_the_paper_recipe():
  config = resolved("task=dsprites_ori,method=vpt_deep")
  assert config.method_kwargs.prompt_tokens == 50  # VPT-or-FT command.txt L531.
  assert resolved("task=clevr_dist,method=vpt_deep").method_kwargs.prompt_tokens == 200
  assert (config.model.gelu_approximate, config.model.head_init) == (False, "vpt")
  assert (config.data.resize, config.data.normalization) == ("tf1_bilinear", "imagenet")
  assert (config.optim.schedule, config.optim.on_non_finite) == ("epoch", "score_last_epoch")
  assert sweep.final_seeds(config.sweep) == (42, 44, 82, 100, 800)
  config.sweep.seeds = 2
  assert sweep.final_seeds(config.sweep) == (42, 44)
  config.sweep.seeds = 6
  with pytest.raises(ValueError, match="sweep.seeds=6 but sweep.seed_values lists 5 seeds"):
    sweep.final_seeds(config.sweep)


def test_prompt_lengths_and_batch_are_the_sources_settled_values():
  # docs/protocol.md: the lengths Han et al.'s Tuned/Total row implies (their Table 18 disagrees
  # for these four); VPT-or-FT's batch 64 on every task.
  for task, tokens in (("dsprites_ori", 50), ("clevr_count", 50), ("kitti_dist", 50),
                       ("dsprites_loc", 10), ("clevr_dist", 200), ("sun397", 5)):
    config = resolved(f"task={task},method=vpt_deep")
    assert (config.method_kwargs.prompt_tokens, config.optim.batch_size) == (tokens, 64), task
  # Han et al.'s Tuned/Total for dsprites_ori (0.55%) is what 50 prompts and a 16-way head give.
  assert round(100 * (12 * 768 * 50 + 769 * 16) / (85_798_656 + 12 * 768 * 50 + 769 * 16), 2) == 0.55


def test_kittis_196_way_head_is_an_explicit_switch(fake_data_dir, tiny_backbone, tmp_path):
  config = resolved("task=kitti_dist,method=vpt_deep")
  assert config.model.head_classes is None  # Off by default: KITTI's 4 classes.
  assert spec.from_resolved(resolved("task=kitti_dist,method=vpt_deep", model__head_classes=196),
                            "w").stages[0].model.num_classes == 196
  with pytest.raises(ValueError, match="model.head_classes=3 must be None"):
    resolved("task=kitti_dist,method=vpt_deep", model__head_classes=3)
  # A run with the wider head trains, evaluates and loads back with it.
  wide = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                     **{"model.head_classes": 60, "optim.epochs": 1, "optim.warmup_epochs": 0})
  result = train.train_and_evaluate(wide, str(tmp_path / "run"), log=lambda *_: None)
  assert result["eval_examples"] == 37 and result["trainable_parameters"] == 60 * (192 + 1)
  model, params, _ = artifacts.load_trained(str(tmp_path / "run"))
  assert model.num_classes == 60 and params["head"]["kernel"].shape == (192, 60)


def test_ft_then_pt_fine_tunes_then_prompt_tunes_with_a_fresh_head():
  config = resolved("task=dtd,method=ft_then_pt")
  assert (config.stage_optim.full.name, config.stage_optim.full.batch_size) == ("hf_adamw", 128)
  assert config.stage_model.full.dropout == 0.1 and config.model.dropout == 0.0
  assert config.optim.name == "sgd" and max(config.sweep.base_lrs) == 50.0
  stages = spec.from_resolved(config, "w").stages
  assert [s.method.name for s in stages] == ["full", "vpt_deep"]
  assert stages[0].model.dropout == 0.1 and stages[1].model.dropout == 0.0
  previous = {"head": {"kernel": 1}, "Transformer": {"x": 2}}
  assert stages[1].start_from(previous) == {"Transformer": {"x": 2}}  # build_vit_backbone.py L580.
  lp_ft = spec.from_resolved(resolved("task=dtd,method=lp_ft"), "w").stages
  assert lp_ft[1].start_from(previous) == previous  # LP-FT keeps its probed head.


def test_ft_then_pt_takes_the_sweeps_ft_selection_and_says_so(tmp_path):
  config = vtab_config.get_config("task=dtd,method=full+ft_then_pt")
  planner = sweep.Planner(config, sweep_dir=str(tmp_path))
  assert planner.waits_for("ft_then_pt") == ["full"] and planner.waits_for("full") == []
  run = sweep.Run("vtab1k", "dtd", "ft_then_pt", "search", 0.5, 0.0, 0)
  default = recipes.resolve(planner.run_config(run))
  assert (default.stage_optim.full.base_lr, default.stage_optim.full.selected_in) == (0.001, None)
  best = tmp_path / "vtab1k/dtd/full/best.json"
  best.parent.mkdir(parents=True)
  best.write_text(json.dumps({"base_lr": 0.005, "weight_decay": 0.0}))
  chosen = recipes.resolve(planner.run_config(run))
  assert (chosen.stage_optim.full.base_lr, chosen.stage_optim.full.weight_decay) == (0.005, 0.0)
  assert chosen.stage_optim.full.name == "sgd"  # wd 0 selects VPT-or-FT's SGD branch.
  assert chosen.stage_optim.full.selected_in == "vtab1k/dtd/full/best.json"


def test_google_recipe_is_googles_fine_tuning_and_only_that():
  config = resolved("task=dtd,method=full,recipe=google")
  assert (config.optim.name, config.optim.weight_decay, config.optim.grad_clip_norm) == (
      "sgd", 0.0, 1.0)
  assert (config.optim.steps, config.optim.warmup_steps, config.optim.batch_size) == (
      2500, 500, 512)
  assert (config.optim.schedule, config.optim.scale_lr, config.optim.base_lr) == (
      "step", False, 0.01)
  assert (config.data.normalization, config.model.head_init, config.model.gelu_approximate) == (
      "inception", "zeros", True)
  with pytest.raises(ValueError, match="Recipe 'google' .* no setting for method 'vpt_deep'"):
    resolved("task=dtd,method=vpt_deep,recipe=google")
  with pytest.raises(ValueError, match="recipe='vpt' is not a recipe; choose one of: paper"):
    resolved("task=dtd,method=full,recipe=vpt")


# --- The parts (items 2 a-d, g) -----------------------------------------------------------------

def test_decay_groups_map_the_pytorch_names_onto_b16():
  # VPT-or-FT decays every tensor whose name lacks "bias": 101 of the 200 tensors of ViT-B/16
  # with its head (LayerNorm scales, cls, position embedding and head kernel included).
  model = vit.Model(num_classes=100, variant="B/16")
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))["params"]
  mask = paths.flatten(optim.decay_mask(params, resolved("method=full").optim.decay_rules))
  assert len(mask) == 200 and sum(mask.values()) == 101
  assert all(not decays for path, decays in mask.items() if path.endswith("bias"))
  for path in ("cls", "Transformer/posembed_input/pos_embedding", "head/kernel",
               "Transformer/encoderblock_3/LayerNorm_1/scale", "Transformer/encoder_norm/scale"):
    assert mask[path], path


def test_hf_adamw_follows_the_reference_class():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(
      np.float32)}
  groups = {"w": "g", "b": "g"}
  lrs = [0.0, 0.01, 0.02, 0.005]  # An epoch at lr 0 first, as the per-epoch schedule has it.
  tx = optim.make("hf_adamw", groups, lambda step, peak, _: jnp.asarray(lrs)[step] * peak,
                  decay_rules=(("b", False), (".*", True)))
  state = optim.set_hyperparams(tx.init(params), peak_lr=1.0, weight_decay=0.01)
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  ours = params
  for t, lr in enumerate(lrs, start=1):
    grads = {k: rng.normal(size=x.shape).astype(np.float32) for k, x in params.items()}
    updates, state = tx.update(grads, state, ours)
    ours = optax.apply_updates(ours, updates)
    for k in p:  # VPT-or-FT src/solver/optimizer.py AdamW.step, in float64.
      m[k] = 0.9 * m[k] + 0.1 * grads[k]
      v2[k] = 0.999 * v2[k] + 0.001 * grads[k] ** 2
      p[k] = p[k] - lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m[k] / (np.sqrt(v2[k]) + 1e-6)
      if k == "w":
        p[k] = p[k] - lr * 0.01 * p[k]
  for k in p:
    np.testing.assert_allclose(ours[k], p[k], rtol=2e-6, atol=1e-7)
  # optax's AdamW (eps after bias correction, decay on the weights before the step) is another
  # optimizer: on the same gradients it ends elsewhere.
  plain = optax.adamw(0.01, eps=1e-6, weight_decay=0.01)
  grads = {k: np.ones_like(x) * 1e-4 for k, x in params.items()}
  theirs, _ = plain.update(grads, plain.init(params), params)
  mine, _ = tx.update(grads, optim.set_hyperparams(tx.init(params), peak_lr=1.0 / lrs[1],
                                                   weight_decay=0.01), params)
  assert not np.allclose(theirs["b"], mine["b"], rtol=1e-3)


def test_schedule_steps_once_per_epoch_from_zero():
  schedule = optim.warmup_cosine_epochs(5, 100, 7)
  lr = lambda step: float(schedule(step, 1.0))
  assert [lr(s) for s in range(7)] == [0.0] * 7  # The whole first epoch trains at lr 0.
  assert [lr(7 * e) for e in range(1, 6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
  assert lr(7 * 6 + 3) == pytest.approx(0.5 * (1 + math.cos(math.pi / 95)))
  assert lr(7 * 99 + 6) == pytest.approx(math.sin(math.pi / 190) ** 2, rel=1e-4)  # 2.734e-4


def test_metrics_carry_the_rate_each_epoch_trained_with(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                       **{"optim.epochs": 3, "optim.warmup_epochs": 1, "optim.batch_size": 512,
                          "optim.base_lr": 0.5})
  train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda *_: None)
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  peak = 0.5 * 512 / 256
  assert [r["learning_rate"] for r in rows] == pytest.approx([0.0, peak, peak / 2])
  assert [r["step"] for r in rows] == [2, 4, 6]  # 800 images at batch 512: 2 steps an epoch.


def test_vpt_head_init():
  model = vit.Model(num_classes=47, variant="Ti/16", depth=1, head_init="vpt")
  head = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]["head"]
  assert np.std(head["kernel"]) == pytest.approx(math.sqrt(2 / 47), rel=0.03)  # kaiming fan_out
  np.testing.assert_allclose(head["bias"], -math.log(99), rtol=1e-6)  # prior probability 0.01
  zeros = vit.Model(num_classes=47, variant="Ti/16", depth=1)
  assert not np.any(zeros.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
                    ["head"]["kernel"])


def test_exact_gelu_is_an_option_and_tanh_the_default():
  x = jnp.linspace(-3, 3, 7)[None, :]
  block = lambda approximate: vit.MlpBlock(mlp_dim=7, gelu_approximate=approximate)
  params = block(True).init(jax.random.PRNGKey(0), x)
  hidden = x @ params["params"]["Dense_0"]["kernel"] + params["params"]["Dense_0"]["bias"]
  exact = 0.5 * hidden * (1 + jax.scipy.special.erf(hidden / math.sqrt(2)))
  expected = exact @ params["params"]["Dense_1"]["kernel"] + params["params"]["Dense_1"]["bias"]
  np.testing.assert_allclose(block(False).apply(params, x), expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(block(True).apply(params, x), expected, rtol=1e-5, atol=1e-6)
  assert vit.Model(num_classes=2).gelu_approximate  # Google's parity keeps the tanh form.


def legacy_bilinear(image, size):
  """TF1's bilinear resize without half-pixel centres: source = target * in / out, clamped."""
  in_h, in_w = image.shape[:2]
  out = np.zeros((size, size, image.shape[2]))
  for y in range(size):
    for x in range(size):
      sy, sx = y * in_h / size, x * in_w / size
      y0, x0 = int(np.floor(sy)), int(np.floor(sx))
      y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
      dy, dx = sy - y0, sx - x0
      top = image[y0, x0] * (1 - dx) + image[y0, x1] * dx
      bottom = image[y1, x0] * (1 - dx) + image[y1, x1] * dx
      out[y, x] = top * (1 - dy) + bottom * dy
  return out


def test_resize_is_tf1_bilinear_without_half_pixel_centres():
  image = np.random.default_rng(0).integers(0, 256, (13, 9, 3)).astype(np.uint8)
  ours = tfds_source.resize(tf.constant(image), 20, "tf1_bilinear").numpy()
  np.testing.assert_allclose(ours, legacy_bilinear(image.astype(np.float64), 20), atol=1e-3)
  tf2 = tfds_source.resize(tf.constant(image), 20, "bilinear").numpy()
  assert np.abs(tf2 - ours).max() > 5  # Half-pixel centres sample elsewhere.
  # The uint8 cache rounds to the nearest level: at most 0.5/255 in [0, 1] pixel units.
  assert np.abs(np.round(ours) - ours).max() <= 0.5


# --- Divergence (item 2 h) ----------------------------------------------------------------------

def _nan_in_epoch(epoch, steps_per_epoch):
  original = steps.make_train_step

  def make_train_step(model, tx):
    step = original(model, tx)

    def poisoned(trainable, opt_state, frozen, images, labels, rng, mask=None):
      count = opt_state.count
      trainable, opt_state, out = step(trainable, opt_state, frozen, images, labels, rng, mask)
      out["loss"] = jnp.where(count >= (epoch - 1) * steps_per_epoch + 1, jnp.nan, out["loss"])
      return trainable, opt_state, out
    return poisoned
  return make_train_step


def test_a_diverged_run_is_scored_at_its_last_finished_epoch(fake_data_dir, tiny_backbone,
                                                              tmp_path, monkeypatch):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, **{"optim.epochs": 4})
  monkeypatch.setattr(steps, "make_train_step", _nan_in_epoch(3, 32))
  monkeypatch.setattr(programs, "_programs", {})  # Programs compiled with the real step.
  workdir = tmp_path / "run"
  lines = []
  result = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert result["diverged"] == {"step": 65, "epoch": 3, "scored_epoch": 2}
  assert any("scored at epoch 2 as the VPT code does" in line for line in lines)
  # The scored parameters are those of epoch 2's end (its checkpoint, step 64).
  saved = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "64" / "default"))
  trained, _ = artifacts.load(str(workdir / "artifact.npz"))
  for path, value in paths.flatten(trained).items():
    np.testing.assert_array_equal(value, paths.flatten(saved["trainable"])[path], err_msg=path)
  # A divergence in the first epoch leaves nothing to score: the run fails, as in the VPT code.
  monkeypatch.setattr(steps, "make_train_step", _nan_in_epoch(1, 32))
  monkeypatch.setattr(programs, "_programs", {})
  with pytest.raises(loop.NonFiniteLossError, match="Loss became nan at step 1 "):
    train.train_and_evaluate(config, str(tmp_path / "first"), log=lambda *_: None)


def test_the_report_flags_diverged_runs(tmp_path):
  for seed, diverged in ((42, None), (44, {"step": 9, "epoch": 3, "scored_epoch": 2})):
    workdir = tmp_path / f"vtab1k/dtd/vpt_deep/final/seed{seed}"
    workdir.mkdir(parents=True)
    result = {"task": "dtd", "method": "vpt_deep", "recipe": "paper", "test_accuracy": 0.5,
              "tuned_percent": 0.5, "wall_seconds": 1.0}
    if diverged:
      result["diverged"] = diverged
    (workdir / "result.json").write_text(json.dumps(result))
  text = report.write(str(tmp_path), str(tmp_path / "report"), with_published=True)
  assert "| vpt_deep | 50.0 ± 0.0† |" in text
  assert ("- vtab1k/dtd/vpt_deep/final/seed44: diverged at step 9 (epoch 3), scored at epoch 2"
          in text)
  # The rows of the papers the recipe reproduces: VPT paper and Han et al. for VPT-deep.
  assert "| vpt_deep (VPT paper) | 65.8 |" in text and "| vpt_deep (Han et al. 2024) | 68.8 |" in text


# --- Published numbers (item 4) -----------------------------------------------------------------

def test_published_rows_of_han_et_al():
  rows = {(r.method, r.source): r for r in published.ROWS}
  han = published.SOURCE_HAN
  for method, natural, specialized, structured in (("full", 75.19, 83.48, 48.07),
                                                    ("vpt_deep", 79.53, 82.65, 56.09),
                                                    ("mixed", 72.80, 79.78, 42.94)):
    stats = report.summary({(t, method): report.Cell([v], 0.0)
                            for t, v in rows[(method, han)].accuracies.items()})[method]
    # The printed group means, within the rounding of 1-decimal entries (retinopathy of FT is one
    # of the uncertain ones: 73.3 as read, 73.8 would fit).
    assert [stats["groups"][g].value for g in tasks_lib.GROUPS] == pytest.approx(
        [natural, specialized, structured], abs=0.15), method
  assert "diabetic_retinopathy" in rows[("full", han)].uncertain
  assert [r.method for r in published.rows_for("paper", "1shot", {"full", "vpt_deep"})] == [
      "full", "vpt_deep"]
  assert published.rows_for("google", "vtab1k", {"full"}) == []
  paper_rows = published.rows_for("paper", "vtab1k", {"full", "vpt_deep", "mixed"})
  assert {(r.method, r.source) for r in paper_rows} == {
      ("full", han), ("vpt_deep", published.SOURCE_VPT), ("vpt_deep", han), ("mixed", han)}


# --- Small training sets (items 2 j, k) ---------------------------------------------------------

def test_the_one_shot_command_trains_and_reports(tmp_path):
  process = subprocess.run(
      [sys.executable, "launch/main.py", "--config=configs/demo.py:task=demo_count,method=vpt_deep",
       "--config.data.train_subset=1shot_seed0", f"--workdir={tmp_path / 'run'}",
       f"--config.data.data_dir={tmp_path / 'tfds'}", f"--config.data.cache_dir={tmp_path / 'c'}",
       "--config.optim.epochs=3"], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train_subset"] == "1shot_seed0" and result["eval_examples"] == 500
  assert result["steps"] == 3  # 6 images at batch 64: one short batch an epoch.
  assert 0.0 <= result["test_accuracy"] <= 1.0


def test_a_kshot_sweep_runs(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                       **{"optim.epochs": 1, "optim.warmup_epochs": 0, "sweep.seeds": 1,
                          "sweep.base_lrs": (0.5,), "sweep.weight_decays": (0.0,),
                          "sweep.protocol": "kshot"})
  planner = sweep.Planner(config, sweep_dir=str(tmp_path / "sweep"))
  from vpt_jax.study import executors
  counts = sweep.run_protocol(str(tmp_path / "sweep"), planner, executors.local(planner),
                              log=lambda *_: None)
  assert counts == {"skipped": 0, "ran": 2, "failed": 0, "infeasible": 0}
  search = json.loads((tmp_path / "sweep/1shot/dtd/linear/search/lr0.5_wd0/result.json")
                      .read_text())
  final = json.loads((tmp_path / "sweep/1shot/dtd/linear/final/seed42/result.json").read_text())
  assert (search["train_subset"], search["eval_subset"], search["eval_examples"]) == (
      "1shot_train800_seed0", "1shot_val200_seed0", 47)
  assert (final["train_subset"], final["eval_examples"]) == ("2shot_train800val200_seed0", 37)


# --- Step parity with PyTorch (item 3) ----------------------------------------------------------

torch_missing = importlib.util.find_spec("torch") is None
PARITY = {  # name: (method, weight decay, base lr)
    "vpt_deep": ("vpt_deep", 1e-3, 0.5), "full_adamw": ("full", 1e-3, 0.001),
    "full_sgd": ("full", 0.0, 0.001), "mixed": ("mixed", 1e-3, 0.1),
    "linear": ("linear", 1e-3, 0.1)}


@pytest.mark.skipif(torch_missing, reason="torch is not installed (pip install -e '.[reference]')")
@pytest.mark.parametrize("name", list(PARITY))
def test_steps_match_the_pytorch_reference(name, fake_data_dir, tiny_backbone, tmp_path):
  import torch
  import torch_reference
  method, weight_decay, base_lr = PARITY[name]
  config = recipes.resolve(tiny_config(
      fake_data_dir, tiny_backbone, tmp_path, f"task=dtd,method={method}",
      **{"optim.epochs": 3, "optim.warmup_epochs": 1, "optim.batch_size": None,
         "optim.base_lr": base_lr, "optim.weight_decay": weight_decay, "model.dropout": 0.0,
         "method_kwargs.prompt_dropout": 0.0, "data.train_subset": "scale400_train"}))
  run = spec.from_resolved(config, str(tmp_path / "w"))
  [stage] = run.stages
  mesh = sharding.make_mesh()
  training = programs.training_set(run.data, mesh)  # scale400_train: inside scale400_trainval.
  images, labels, n = training.images, training.labels, training.examples
  setup, member, state = train.create_train_state(run, stage, programs.backbone(run), None, mesh,
                                                  training, lambda *_: None)
  extent = np.asarray([n, member.extent.steps_per_epoch], np.int32)
  initial = {k: np.asarray(v) for k, v in paths.flatten(jax.device_get(
      paths.merge(state["trainable"], member.frozen))).items()}

  # Our steps, epoch by epoch, as train.fit runs them; the same batches for the reference.
  batch = stage.optim.batch_size
  # The run's own examples, in its order (the array may hold them inside scale400_trainval).
  host_images = np.asarray(device.normalize(images, config.data.normalization))[training.host_rows]
  host_labels = np.asarray(labels)[training.host_rows]
  trainable, opt_state = state["trainable"], state["opt_state"]
  ours, batches, step = [], [], 0
  for epoch in range(3):
    permutation = device.epoch_permutation(member.rngs["data"], epoch, n, training.capacity)
    order = np.asarray(permutation)[:n]
    batches.append([])
    for s in range(member.extent.steps_per_epoch):
      trainable, opt_state, out = setup.train_step(
          trainable, opt_state, member.frozen, images, labels, training.rows, permutation, extent, step,
          member.rngs["train"], member.rngs["flip"])
      ours.append(float(out["loss"][0]))  # A pack of one: metrics per member.
      chosen = order[s * batch:(s + 1) * batch]
      batches[-1].append((torch.from_numpy(host_images[chosen].transpose(0, 3, 1, 2).copy()),
                          torch.from_numpy(host_labels[chosen].astype(np.int64))))
      step += 1

  torch.manual_seed(0)
  reference = torch_reference.from_flax(initial, heads=3,
                                        prompt_tokens=config.method_kwargs.prompt_tokens
                                        if method in ("vpt_deep", "mixed") else 0)
  theirs = torch_reference.train(reference, method, stage.optim.peak_lr, weight_decay, 3,
                                 1, batches)
  assert len(ours) == len(theirs) == 3 * member.extent.steps_per_epoch
  np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)
  final = paths.flatten(jax.device_get(paths.merge(trainable, member.frozen)))
  expected = torch_reference.to_flax_names(reference)
  trained = paths.flatten(jax.device_get(trainable))
  worst = 0.0
  for path in trained:
    scale = max(1.0, float(np.abs(expected[path]).max()))
    worst = max(worst, float(np.abs(final[path] - expected[path]).max()) / scale)
    np.testing.assert_allclose(final[path], expected[path], atol=2e-5 * scale, err_msg=path)
  assert any(not np.allclose(final[p], initial[p]) for p in trained)  # Something trained.
  print(f"{name}: max |loss diff| {np.abs(np.subtract(ours, theirs)).max():.2e}, "
        f"max relative parameter diff {worst:.2e}")


# --- The paper recipe on the VPT paper's other backbones (issue 22 item 4) -------------------------

def test_paper_full_fine_tuning_takes_each_backbones_own_regularisation():
  # MAE's ViT: drop_path_rate 0.1 and timm's drop_rate 0 (KMnP/vpt vit_mae.py L59-62), active
  # only where the backbone trains in train mode (full fine-tuning; FT-then-PT's first stage).
  mae = resolved("task=dtd,method=full,backbone=mae_vitb16")
  assert (mae.model.dropout, mae.model.drop_path, mae.optim.batch_size) == (0.0, 0.1, 128)
  assert mae.optim.name == "hf_adamw" and mae.model.pool_type == "gap_fc_norm"
  assert resolved("task=dtd,method=ft_then_pt,backbone=mae_vitb16").stage_model.full.drop_path == 0.1
  moco = resolved("task=dtd,method=full,backbone=mocov3_vitb16")  # timm's defaults: neither.
  assert (moco.model.dropout, moco.model.drop_path) == (0.0, 0.0)
  supervised = resolved("task=dtd,method=full")  # Google's ViT: dropout 0.1, as before.
  assert (supervised.model.dropout, supervised.model.drop_path) == (0.1, None)
  # Swin-B/L: drop_path_rate 0.5 (build_vit_backbone.py L170-206), batch 128 (VF command.txt L536).
  full = recipes.paper("full", "dtd", {"backbone": "swinl_imagenet22k_224"})
  assert (full["model"]["drop_path"], full["model"]["dropout"], full["optim"]["batch_size"]) == (
      0.5, 0.0, 128)
  # Frozen backbones stay in eval mode: no drop-path for prompts or the linear probe.
  assert resolved("task=dtd,method=vpt_deep,backbone=mae_vitb16").model.drop_path is None


def test_paper_prompts_on_mae_and_moco_take_the_supervised_lengths_and_batch():
  # Han et al.'s MAE/MoCo Tuned/Total rows (Tables 10-15) equal the supervised ones.
  for backbone in ("mae_vitb16", "mocov3_vitb16"):
    vpt = resolved(f"task=dsprites_ori,method=vpt_deep,backbone={backbone}")
    assert (vpt.method_kwargs.prompt_tokens, vpt.optim.batch_size, vpt.model.dropout,
            vpt.model.drop_path) == (50, 64, 0.0, None), backbone
    assert vpt.sweep.base_lrs == recipes.PROMPT_LRS


def test_paper_linear_probe_on_mae_searches_the_linear_mae_grid():
  # KMnP/vpt tune_vtab.py L236-243: three rates below the linear grid.
  assert resolved("task=dtd,method=linear,backbone=mae_vitb16").sweep.base_lrs == (
      50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05, 0.025, 0.005, 0.0025)
  assert len(resolved("task=dtd,method=linear,backbone=mocov3_vitb16").sweep.base_lrs) == 10


def test_paper_vpt_on_swin_takes_vf_batch_and_the_derived_lengths():
  # Keyed by name; the recipe function itself. VF's Swin prompt batch 80 (base-prompt_swin.yaml
  # L25, command.txt L539); lengths that reproduce Han et al.'s Tuned/Total row (Tables 7-9).
  swin = {"backbone": "swinb_imagenet22k_224"}
  vpt = recipes.paper("vpt_deep", "svhn", swin)
  assert (vpt["optim"]["batch_size"], vpt["method_kwargs"]["prompt_tokens"]) == (80, 50)
  assert recipes.paper("vpt_deep", "dtd", swin)["method_kwargs"]["prompt_tokens"] == 1
  assert recipes.paper("ft_then_pt", "dtd", swin)["optim"]["batch_size"] == 80
  assert recipes.paper("linear", "dtd", swin)["optim"]["batch_size"] == 1024
  printed = dict(zip(published.TASK_ORDER, (0.13, 0.13, 0.07, 0.13, 0.06, 0.70, 0.48, 0.07, 0.13,
                                            0.19, 0.02, 0.70, 0.70, 0.14, 0.69, 0.15, 0.09, 0.16,
                                            0.02)))
  for task, tokens in recipes.SWIN_PROMPT_TOKENS.items():
    tuned = (2 * 128 + 2 * 256 + 18 * 512 + 2 * 1024) * tokens + 1025 * tasks_lib.get(
        task).num_classes
    assert abs(100 * tuned / (86.7e6 + tuned) - printed[task]) < (0.025 if task != "eurosat"
                                                                  else 0.021), task


def test_paper_refuses_the_backbones_no_paper_trained():
  # DINOv2 and CLIP: one line pointing at the mai recipe.
  for backbone in ("dinov2_vitb14", "clip_vitb16"):
    with pytest.raises(ValueError, match=f"recipe=paper has no settings for backbone='{backbone}'"
                                         ".*use recipe=mai"):
      resolved(f"task=dtd,method=vpt_deep,backbone={backbone}")
  assert resolved("task=dtd,method=vpt_deep,backbone=dinov2_vitb14,recipe=mai").optim.name == "adamw"


def test_published_rows_of_the_other_backbones_fit_their_printed_means():
  rows = {(r.method, r.source): r for r in published.ROWS}
  for source, method, printed in (
      (published.SOURCE_HAN_SWIN, "full", (79.10, 86.21, 59.65)),
      (published.SOURCE_HAN_SWIN, "vpt_deep", (82.49, 83.33, 51.85)),  # Printed 78.78: marked.
      (published.SOURCE_HAN_MAE, "full", (59.31, 79.68, 53.82)),
      (published.SOURCE_HAN_MAE, "vpt_deep", (35.31, 72.95, 27.91)),
      (published.SOURCE_HAN_MOCO, "full", (71.95, 84.72, 51.98)),
      (published.SOURCE_HAN_MOCO, "vpt_deep", (70.26, 82.33, 42.39))):
    stats = report.summary({(t, method): report.Cell([v], 0.0)
                            for t, v in rows[(method, source)].accuracies.items()})[method]
    assert [stats["groups"][g].value for g in tasks_lib.GROUPS] == pytest.approx(
        printed, abs=0.02), (source, method)
  assert set(rows[("vpt_deep", published.SOURCE_HAN_SWIN)].uncertain) == set(
      published.TASK_ORDER[:7])
  assert rows[("vpt_deep", published.SOURCE_VPT_SWIN)].group_means == {
      "natural": 76.78, "specialized": 84.53, "structured": 53.35}
  mae_rows = published.rows_for("paper", "vtab1k", {"full", "vpt_deep", "partial_k"}, "mae_vitb16")
  assert {(r.method, r.source) for r in mae_rows} == {
      ("full", published.SOURCE_HAN_MAE), ("vpt_deep", published.SOURCE_HAN_MAE),
      ("partial_k", published.SOURCE_VPT_SSL), ("vpt_deep", published.SOURCE_VPT_SSL)}
  # A file or no backbone: the papers' ViT-B/16 rows, as before; DINOv2: none.
  assert {r.source for r in published.rows_for("paper", "vtab1k", {"vpt_deep"}, "/x/ViT.npz")} == {
      published.SOURCE_VPT, published.SOURCE_HAN}
  assert published.rows_for("paper", "vtab1k", {"vpt_deep", "full"}, "dinov2_vitb14") == []


def test_a_report_on_mae_runs_shows_the_mae_rows(tmp_path):
  for method, accuracy in (("full", 0.5), ("vpt_deep", 0.6), ("linear", 0.3)):
    workdir = tmp_path / f"vtab1k/dtd/{method}/final/seed42"
    workdir.mkdir(parents=True)
    (workdir / "result.json").write_text(json.dumps({
        "task": "dtd", "method": method, "recipe": "paper", "test_accuracy": accuracy,
        "tuned_percent": 0.5, "wall_seconds": 1.0}))
    (workdir / "config.json").write_text(json.dumps({"backbone": "mae_vitb16", "task": "dtd"}))
  text = report.write(str(tmp_path), str(tmp_path / "report"), with_published=True)
  # Han et al. Tables 10-12 (MAE): FT dtd 56.9, VPT dtd 58.0; the VPT paper's Table 4 means.
  assert "| full (Han et al. 2024) | 56.9 | 59.3 | 79.7 | 53.8 |" in text
  assert "| vpt_deep (Han et al. 2024) | 58.0 | 35.3 | 73.0 | 27.9 |" in text
  assert "| linear (VPT paper) | — | 18.9 | 53.7 | 23.7 |" in text
  # Not the supervised rows (VPT paper dtd 65.8 / 63.2, Han et al. 68.8 / 65.0).
  assert "65.8" not in text and "68.8" not in text and "63.2" not in text and "| 65.0 |" not in text


# --- CLIP's projection and the tooling on other backbones (issue 22 items 4, 5) -------------------

def test_clips_projection_trains_with_the_head_under_every_method():
  # OSU-MLB/PETL_Vision experiment/build_model.py: model.head = Sequential(proj, fc), and every
  # name holding "head" trains.
  model = vit.Model(num_classes=3, variant="Ti/16", depth=1, pre_norm=True, projection_dim=16,
                    prompt_tokens=2, prompt_deep=True)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  for name in ("linear", "vpt_deep", "bitfit", "full"):
    groups = paths.flatten(methods.labels(params, methods.get(
        name, depth=1, width=192, prompt_tokens=2, prompt_dropout=0.0).tuned_stage.rules))
    assert groups["projection/kernel"] == "head", name
    assert groups["head/kernel"] == "head", name
  lp_ft = methods.get("lp_ft", depth=1)
  assert all(s.rules[0] == methods.PROJECTION for s in lp_ft.stages)
  # A model without a projection: the rule stays unused, no error.
  plain = vit.Model(num_classes=3, variant="Ti/16", depth=1)
  plain_params = jax.eval_shape(plain.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  groups = paths.flatten(methods.labels(plain_params["params"], methods.get(
      "linear", depth=1).rules))
  assert "projection/kernel" not in groups and groups["head/kernel"] == "head"


def test_attention_maps_skip_register_and_prompt_tokens():
  model = vit.Model(num_classes=3, variant="Ti/14", depth=1, register_tokens=4, prompt_tokens=5)
  assert attention.patch_slice(model) == slice(10, None)  # [CLS, 4 registers, 5 prompts, ...].


def test_a_backbones_run_step_costs_come_from_its_resolved_spec():
  # launch/method_costs.py --backbones: the run's own model (MAE's pooling), the recipe's prompt
  # length and optimizer; one Ti-wide block at 32 px keeps the compile small.
  config = resolved("task=dtd,method=vpt_deep,backbone=mae_vitb16", model__depth=1,
                    model__variant="Ti/16", data__resolution=32)
  row = costs.run_costs(spec.from_resolved(config, "unused"), batch=1)
  assert (row["backbone"], row["recipe"], row["prompt_tokens"], row["optimizer"]) == (
      "mae_vitb16", "paper", 10, "sgd")
  assert row["trainable_without_head"] == 1 * 10 * 192  # One block's deep prompts.
  assert row["trainable_parameters"] == 10 * 192 + 192 * 47 + 47
  assert row["all_parameters"] > 400_000 and row["gflops_per_image"] > 0.003
