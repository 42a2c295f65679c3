"""Predicting with and exporting a finished run: predictions equal the run's saved test logits;
merged exports compute the tuned model's logits in vpt_jax (the .npz as a backbone, the
.safetensors through the timm-layout reader) and in timm's own ViT; non-mergeable methods export
their parameters; what cannot be used is refused in one line."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from configs import vtab as vtab_config
from test_folder_data import custom_folder
from test_train import REPO
from vpt_jax import checkpoints, methods
from vpt_jax.inference import export, merge, predict, timm_vit
from vpt_jax.inference import run as run_lib
from vpt_jax.models import vit
from vpt_jax.training import train
from vpt_jax.utils import config_lib, files, paths

KWARGS = dict(lora_rank=4, lora_alpha=8.0, fact_dim=4, fact_scaler=0.5, repadapter_bottleneck=8,
              repadapter_scaler=0.7, repadapter_group=2, partial_k=1, prompt_tokens=2, prompt_dropout=0.0,
              adapter_bottleneck=8, adapter_scaler=0.1, adapter_dim=8, adapter_reduction=8, query_tokens=2,
              query_dropout=0.0, convpass_bottleneck=8, convpass_scaler=10.0, mlp_k=3)
MERGEABLE = ("full", "bitfit", "layernorm", "partial_k", "lora", "ssf", "fact_tt", "fact_tk", "repadapter",
             "difffit", "linear")
NOT_MERGEABLE = {"vpt_shallow": "prompt tokens", "vpt_deep": "prompt tokens", "mixed": "prompt tokens",
                 "adapter": "adapters", "adapter_houlsby": "adapters", "adaptformer": "adapter modules",
                 "convpass": "convpass modules", "lora_p_adapter": "adapter modules", "vqt": "query tokens",
                 "mlp_k": "MLP head", "sidetune": "side network"}
IMAGES = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)


def _relative_close(actual, expected, tolerance=1e-4):
  scale = np.abs(expected).max()
  assert np.abs(np.asarray(actual) - expected).max() <= tolerance * scale, np.abs(actual - expected).max() / scale


def _logits(model, params, images=IMAGES):
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x)[0])(params, images))


@pytest.fixture(scope="module")
def demo_backbone():
  plain = vit.Model(num_classes=5, variant="Ti/8", depth=2)
  params = checkpoints.load(demo.BACKBONE, plain, image_size=32)
  return {k: v for k, v in params.items() if k != "head"}


def tuned(method: str, backbone: dict, seed: int = 0):
  """The demo backbone with `method`'s modules, every parameter it trains set at random (so no
  module is the identity it starts as)."""
  spec = methods.get(method, depth=2, width=192, **KWARGS)
  model = vit.Model(num_classes=5, variant="Ti/8", depth=2, **spec.model_fields)
  params = methods.init_params(model, backbone, jax.random.PRNGKey(seed), 32)
  groups = paths.flatten(methods.labels(params, spec.rules))
  rng = np.random.default_rng(seed)
  flat = {k: np.asarray(v) + (0 if groups[k] == methods.FROZEN else
                              0.3 * (np.std(v) or 1.0) * rng.standard_normal(np.shape(v)).astype(np.float32))
          for k, v in paths.flatten(params).items()}
  return model, paths.unflatten(flat)


@pytest.fixture(scope="module")
def merged(demo_backbone, tmp_path_factory):
  """{method: (tuned logits, plain model, merged params, timm state dict)} for MERGEABLE."""
  out = {}
  for method in MERGEABLE:
    model, params = tuned(method, demo_backbone)
    plain, plain_params = merge.merge(model, params)
    out[method] = (_logits(model, params), plain, plain_params, timm_vit.state_dict(plain, plain_params))
  return out


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_model_computes_the_tuned_logits_in_vpt_jax(method, merged, tmp_path):
  expected, plain, params, state = merged[method]
  assert plain == vit.Model(num_classes=5, variant="Ti/8", depth=2)
  _relative_close(_logits(plain, params), expected)
  checkpoints.pretrained.export_npz(params, str(tmp_path / "model.npz"))
  reloaded = checkpoints.load(str(tmp_path / "model.npz"), plain, image_size=32, keep_head=True)
  _relative_close(_logits(plain, reloaded), expected)
  # timm's keys, read back by vpt_jax's own reader of timm-layout files.
  export._save_safetensors(str(tmp_path / "model.safetensors"), state, {})
  from_timm_layout = checkpoints.load(str(tmp_path / "model.safetensors"), plain, image_size=32, keep_head=True)
  _relative_close(_logits(plain, from_timm_layout), expected)


def _timm_logits(architecture: dict, state: dict, images=IMAGES):
  timm = pytest.importorskip("timm")
  torch = pytest.importorskip("torch")
  model = timm.create_model(architecture["model"], pretrained=False, **architecture["kwargs"]).eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_model_computes_the_tuned_logits_in_timm(method, merged):
  expected, plain, _, state = merged[method]
  architecture = timm_vit.architecture(plain, 32)
  assert architecture == {"model": "vit_tiny_patch16_224", "kwargs": {
      "num_classes": 5, "img_size": 32, "patch_size": 8, "embed_dim": 192, "depth": 2, "num_heads": 3,
      "mlp_ratio": 4.0, "class_token": True, "global_pool": "token", "fc_norm": False, "act_layer": "gelu_tanh"}}
  _relative_close(_timm_logits(architecture, state), expected)


# Other backbones' layouts (random weights): Google's gap pooling, MAE's fc_norm, CLIP's tower
# (pre-norm, epsilon 1e-5, no embedding bias, QuickGELU, a projection folded into the head) and
# DINOv2 with registers (LayerScale, exact GELU).
OTHER_BACKBONES = {
    "gap": dict(pool_type="gap"),
    "mae": dict(pool_type="gap_fc_norm", gelu_approximate=False),
    "clip": dict(pre_norm=True, norm_epsilon=1e-5, embedding_bias=False, quick_gelu=True, projection_dim=16),
    "dinov2_reg": dict(layer_scale=True, register_tokens=2, gelu_approximate=False),
}


@pytest.mark.parametrize("name", OTHER_BACKBONES)
def test_other_backbones_merge_into_timm(name):
  model = vit.Model(num_classes=3, variant="Ti/8", depth=1, peft=vit.PeftModules(lora_rank=2),
                    **OTHER_BACKBONES[name])
  params = model.init(jax.random.PRNGKey(1), IMAGES[:1])["params"]
  params = jax.tree.map(lambda v: v + 0.05 * jax.random.normal(jax.random.PRNGKey(v.size), v.shape), params)
  expected = _logits(model, params)
  plain, plain_params = merge.merge(model, jax.device_get(params))
  _relative_close(_logits(plain, plain_params), expected)
  _relative_close(_timm_logits(timm_vit.architecture(plain, 32), timm_vit.state_dict(plain, plain_params)),
                  expected)


@pytest.mark.parametrize("method", NOT_MERGEABLE)
def test_methods_that_add_tokens_or_modules_are_refused(method):
  spec = methods.get(method, depth=2, width=192, **KWARGS)
  model = vit.Model(num_classes=5, variant="Ti/8", depth=2, **spec.model_fields)
  assert NOT_MERGEABLE[method] in merge.reason_not_mergeable(model)
  with pytest.raises(merge.NotMergeableError, match="not mergeable: it"):
    merge.merge(model, {})
  zero_shot = vit.Model(num_classes=5, variant="Ti/8", depth=2, head_init="zero_shot")
  assert "L2-normalised" in merge.reason_not_mergeable(zero_shot)


# ---------------------------------------------------------------------------------------------
# Finished tiny runs on a folder task the test writes.

def _train(folder, method, root):
  config = vtab_config.get_config(f"task=folder:{folder},method={method}")
  for key, value in {"backbone": demo.BACKBONE, "model.variant": "Ti/8", "model.depth": 2, "data.resolution": 32,
                     "optim.epochs": 1, "optim.warmup_epochs": 0, "optim.batch_size": 8, "eval_batch_size": 4,
                     "method_kwargs.prompt_tokens": 2, "method_kwargs.lora_rank": 2,
                     "data.normalization": "inception", "data.cache_dir": str(root / "cache")}.items():
    config_lib.set_path(config, key, value)
  workdir = root / method
  train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict_export")
  folder = custom_folder(root / "my pets", np.random.default_rng(3))
  (folder / "classes.txt").write_text("cat\ndog\nbird\n")
  return folder, {method: _train(folder, method, root) for method in ("vpt_deep", "lora")}


def _test_images(folder):
  return [str(folder / line.split()[0]) for line in (folder / "test.txt").read_text().splitlines()]


def _cli(script, *args):
  return subprocess.run([sys.executable, f"launch/{script}.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize("method", ["vpt_deep", "lora"])
def test_predictions_equal_the_runs_saved_test_logits(runs, method):
  folder, workdirs = runs
  run = run_lib.open_run(str(workdirs[method]))
  assert run.class_names == ["cat", "dog", "bird"] and run.preprocessing.resize == "tf1_bilinear"
  predictions = predict.classify(run, predict.collect(_test_images(folder), run.class_names), batch_size=2,
                                 progress=False)
  saved = files.read_npz(str(workdirs[method] / train.PREDICTIONS))
  assert predictions.labels is None and predictions.logits.shape == saved["logits"].shape == (5, 3)
  np.testing.assert_allclose(predictions.logits, saved["logits"].astype(np.float32), rtol=1e-3, atol=1e-3)


def test_predict_command_on_a_class_folder(runs, tmp_path):
  folder, workdirs = runs
  labelled = tmp_path / "labelled"
  labels = [int(line.split()[1]) for line in (folder / "test.txt").read_text().splitlines()]
  for path, label in zip(_test_images(folder), labels):
    target = labelled / ["cat", "dog", "bird"][label] / os.path.basename(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
  (labelled / "dog" / "broken.png").write_bytes(b"not an image")
  done = _cli("predict", f"--run={workdirs['vpt_deep']}", f"--out={tmp_path / 'out.csv'}", "--top_k=2",
              "--batch_size=4", str(labelled))
  assert done.returncode == 0, done.stderr
  result = json.loads((workdirs["vpt_deep"] / "result.json").read_text())
  assert f"Accuracy {100 * result['test_accuracy']:.2f}% on 5 labelled images" in done.stdout
  assert "1 files skipped" in done.stdout and "broken.png" in done.stdout
  assert "predicted" in done.stdout and (tmp_path / "out_confusion.png").exists()
  rows = (tmp_path / "out.csv").read_text().splitlines()
  assert rows[0] == ("path,top1_label,top1_class,top1_probability,top2_label,top2_class,top2_probability,"
                     "true_label,true_class,correct") and len(rows) == 6
  assert "Traceback" not in done.stderr


def test_runs_that_cannot_be_used_are_one_line_errors(runs, tmp_path):
  _, workdirs = runs
  with pytest.raises(run_lib.RunError, match="is not a run directory"):
    run_lib.check(str(tmp_path))
  unfinished = tmp_path / "unfinished"
  shutil.copytree(workdirs["vpt_deep"], unfinished)
  os.remove(unfinished / "result.json")
  with pytest.raises(run_lib.RunError, match="has not finished"):
    run_lib.check(str(unfinished))
  damaged = tmp_path / "damaged"
  shutil.copytree(workdirs["vpt_deep"], damaged)
  data = bytearray((damaged / "artifact.npz").read_bytes())
  data[-40] ^= 0xFF
  (damaged / "artifact.npz").write_bytes(bytes(data))
  done = _cli("predict", f"--run={damaged}", str(tmp_path))
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines() == [
      f"error: {damaged}/artifact.npz does not match the SHA-256 its run recorded: the file is damaged; "
      "train the run again in a new --workdir."]


def test_non_mergeable_run_exports_its_parameters_and_says_so(runs, tmp_path):
  _, workdirs = runs
  run = run_lib.open_run(str(workdirs["vpt_deep"]))
  card = export.export(run, str(tmp_path / "vpt"))
  assert (card["merged"], card["mergeable"]) == (False, False)
  assert "prompt tokens" in card["not_mergeable_because"]
  assert card["backbone"]["sha256"] == files.sha256_file(demo.BACKBONE)
  import safetensors.numpy
  saved = safetensors.numpy.load_file(str(tmp_path / "vpt" / export.PARAMETERS_FILE))
  assert set(saved) == {"head/bias", "head/kernel", "prompt/embeddings"}
  flat = paths.flatten(run.params)
  for key, value in saved.items():
    np.testing.assert_array_equal(value, flat[key])
  assert card["files"][0]["sha256"] == files.sha256_file(str(tmp_path / "vpt" / export.PARAMETERS_FILE))
  assert card["hyperparameters"]["method_fields"]["prompt_tokens"] == 2
  done = _cli("export", f"--run={workdirs['vpt_deep']}", f"--out={tmp_path / 'refused'}", "--merged")
  assert done.returncode == 1 and done.stderr.strip().splitlines() == [
      "error: vpt_deep is not mergeable into a plain ViT: it adds prompt tokens to the sequence (VPT). Export it "
      "without --merged: its parameters and head, to use on the backbone."]


@pytest.fixture(scope="module")
def lora_export(runs, tmp_path_factory):
  folder, workdirs = runs
  out = tmp_path_factory.mktemp("lora_export")
  done = _cli("export", f"--run={workdirs['lora']}", f"--out={out}")
  assert done.returncode == 0, done.stderr
  run = run_lib.open_run(str(workdirs["lora"]))
  images = np.stack([predict._load(p, 32, run.preprocessing.resize) for p in _test_images(folder)])
  inputs = np.asarray(run.preprocessing.prepare(images))
  return out, done.stdout, json.loads((out / export.CARD).read_text()), inputs, _logits(run.model, run.params,
                                                                                          inputs)


def test_merged_export_of_a_finished_run_in_vpt_jax(lora_export):
  out, stdout, card, inputs, expected = lora_export
  assert "lora: merged into a plain ViT (timm vit_tiny_patch16_224)" in stdout
  assert card["merged"] and card["class_names"] == ["cat", "dog", "bird"] and card["method"] == "lora"
  assert card["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and card["preprocessing"]["std"] == [0.5, 0.5, 0.5]
  assert {f["name"]: f["sha256"] for f in card["files"]} == {
      name: files.sha256_file(str(out / name)) for name in export.MERGED_FILES}
  assert "act_layer" not in card["timm"]["kwargs"]  # The vtab recipe's exact GELU is timm's default.
  plain = vit.Model(**card["vpt_jax"]["model"])
  params = checkpoints.load(str(out / "model.npz"), plain, image_size=32, keep_head=True)
  _relative_close(_logits(plain, params, inputs), expected)


def test_merged_export_of_a_finished_run_in_timm(lora_export):
  out, _, card, inputs, expected = lora_export
  import safetensors.numpy
  _relative_close(_timm_logits(card["timm"], safetensors.numpy.load_file(str(out / "model.safetensors")), inputs),
                  expected)
