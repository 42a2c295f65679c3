"""MAE and MoCo v3 backbones: VPT-deep on an MAE file against a PyTorch restatement of the VPT
code's prompted ViT (tests/torch_vit_reference.py; no library has its prompt insertion), format
dispatch, one-line errors, the registry and config argument, and a tiny MAE run through
train.train_and_evaluate. The files' parity with the authors' models (timm's ViT, MAE's global
pool, MoCo v3's layouts) is tests/test_against_timm.py's."""

import json
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest
import torch

import torch_vit_reference as reference
from configs import vtab as vtab_config
from test_train import tiny_config
from vpt_jax import checkpoints
from vpt_jax.checkpoints import pretrained, torch_vit
from vpt_jax.models import backbones, vit
from vpt_jax.training import artifacts, train

TOLERANCE = 1e-4


def reference_model(variant, depth, num_classes, global_pool, image_size=224, seed=0):
  arch = vit.decode_variant(variant)
  return reference.random_model(seed, image_size, arch.patch_size[0], arch.width, depth,
                                arch.num_heads, arch.mlp_dim, num_classes, global_pool)


def images(n=2, size=224, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def reference_outputs(model, x, *args):
  """(features, logits) of a torch reference model on NHWC images `x`; NumPy `args` (prompts)
  follow as float64 tensors."""
  args = [torch.from_numpy(a).double() if isinstance(a, np.ndarray) else a for a in args]
  with torch.no_grad():
    features, logits = model(torch.from_numpy(x).double().permute(0, 3, 1, 2), *args)
  return features.numpy(), logits.numpy()


def ours(model, params, x):
  logits, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
  return np.asarray(aux["pre_logits"], np.float64), np.asarray(logits, np.float64)


def max_difference(a, b):
  assert a.shape == b.shape
  return float(np.max(np.abs(a - b)))


def flat(params):
  return flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")


def test_vpt_deep_on_mae_matches_the_reference_prompt_insertion(tmp_path):
  """Against the restatement: timm's ViT has no prompts, and KMnP/vpt's prompt insertion lives in
  its own code, which no installable library ships."""
  ref = reference_model("Ti/16", 3, num_classes=7, global_pool=True, seed=5)
  path = str(tmp_path / "mae.pth")
  reference.save_mae_finetuned(ref, path)
  model = vit.Model(num_classes=7, variant="Ti/16", depth=3, pool_type="gap_fc_norm",
                    gelu_approximate=False, prompt_tokens=4, prompt_deep=True)
  backbone = checkpoints.load(path, model.clone(prompt_tokens=0, prompt_deep=False),
                              keep_head=True)
  prompts = np.random.default_rng(6).normal(size=(3, 4, 192)).astype(np.float32)
  params = {**backbone, "prompt": {"embeddings": prompts}}
  x = images(seed=4)
  (expected_features, expected_logits), (features, logits) = (
      reference_outputs(ref, x, prompts), ours(model, params, x))
  assert max_difference(features, expected_features) <= TOLERANCE
  assert max_difference(logits, expected_logits) <= TOLERANCE
  # The pooled mean covers the prompts' outputs (VIT_POOL_TYPE "original"): without them the
  # features differ.
  assert max_difference(features, reference_outputs(ref, x)[0]) > 1e-2


def test_wrong_file_is_one_error_listing_every_key(tmp_path):
  """The restatement's model only supplies tensors under timm's names (no parity is asserted)."""
  ref = reference_model("Ti/16", 2, num_classes=3, global_pool=False, seed=7)
  state = {k: v.float() for k, v in ref.state_dict().items() if not k.startswith("blocks.1.mlp")}
  state["blocks.0.attn.relative_position_bias_table"] = torch.zeros(4, 3)
  path = str(tmp_path / "wrong.pth")
  torch.save({"state_dict": state}, path)
  model = vit.Model(num_classes=0, variant="Ti/16", depth=3)
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(path, model)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"Checkpoint {path} does not fit the model")
  assert "missing (" in message and "encoderblock_1/MlpBlock_0/Dense_0/kernel (192, 768)" in message
  assert "encoderblock_2/LayerNorm_0/scale" in message
  assert "1 unexpected (blocks.0.attn.relative_position_bias_table (4, 3))" in message
  # A file with MAE's fc_norm, for a model that pools the class token: fc_norm is unexpected.
  mae_state = {k: v.float() for k, v in ref.state_dict().items()}
  torch.save({"model": {**mae_state, "fc_norm.weight": torch.ones(192),
                        "fc_norm.bias": torch.zeros(192)}}, path)
  with pytest.raises(pretrained.CheckpointError, match=r"unexpected \(fc_norm/bias \(192,\)"):
    checkpoints.load(path, vit.Model(num_classes=0, variant="Ti/16", depth=2))


def test_unreadable_files_and_missing_torch_are_one_line(tmp_path, monkeypatch):
  garbage = tmp_path / "page.pth"
  garbage.write_text("<html>Not found</html>")
  with pytest.raises(pretrained.CheckpointError, match="is not a PyTorch checkpoint") as error:
    torch_vit.read(str(garbage))
  assert "\n" not in str(error.value)
  torch.save({"model": {"step": 3}}, tmp_path / "no_tensors.pth")
  with pytest.raises(pretrained.CheckpointError, match="holds no state dict of tensors"):
    torch_vit.read(str(tmp_path / "no_tensors.pth"))
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(pretrained.CheckpointError,
                     match=r"^Reading a PyTorch checkpoint \(.pth\) needs PyTorch: pip install torch$"):
    torch_vit.read(str(garbage))


def test_formats_dispatch_by_record_and_suffix(tmp_path):
  assert [checkpoints.checkpoint_format(n) for n in ("ViT-B_16", "mae_vitb16", "mae_vith14",
                                                      "mocov3_vitb16", "x/y.npz", "m.pth",
                                                      "m.pth.tar", "m.pt")] == [
      "vit_npz", "torch_vit", "torch_vit", "torch_vit", "vit_npz", "torch_vit", "torch_vit",
      "torch_vit"]
  with pytest.raises(pretrained.CheckpointError, match="neither a published name .* nor a file"):
    checkpoints.checkpoint_format("mae_vitb15")


def test_offline_error_says_where_to_put_the_file(tmp_path):
  model = vit.Model(num_classes=0, variant="B/16", pool_type="gap_fc_norm")
  destination = tmp_path / "mae" / "pretrain" / "mae_pretrain_vit_base.pth"
  with pytest.raises(pretrained.CheckpointError) as error:
    # Port 9 on loopback refuses, as an offline machine would.
    checkpoints.load("mae_vitb16", model, cache_dir=str(tmp_path), base_url="http://127.0.0.1:9/")
  message = str(error.value)
  assert "\n" not in message
  assert "http://127.0.0.1:9/mae/pretrain/mae_pretrain_vit_base.pth" in message
  assert message.endswith(f"place it at {destination}.") and not destination.exists()


def test_registry_records_and_config_argument():
  mae, moco = backbones.BACKBONES["mae_vitb16"], backbones.BACKBONES["mocov3_vitb16"]
  assert mae.host + mae.file == "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"
  assert moco.host + moco.file == (
      "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar")
  assert [(b.variant, b.pool_type) for b in map(backbones.BACKBONES.get, (
      "mae_vitb16", "mae_vitl16", "mae_vith14", "mocov3_vitb16"))] == [
      ("B/16", "gap_fc_norm"), ("L/16", "gap_fc_norm"), ("H/14", "gap_fc_norm"), ("B/16", "tok")]
  config = vtab_config.get_config("task=dtd,method=vpt_deep,backbone=mae_vitl16")
  assert (config.backbone, config.model.variant, config.model.pool_type,
          config.data.normalization) == ("mae_vitl16", "L/16", "gap_fc_norm", "imagenet")
  default = vtab_config.get_config("task=dtd")
  assert (default.backbone, default.model.variant, default.model.pool_type,
          default.data.normalization) == ("ViT-B_16", "B/16", "tok", None)
  with pytest.raises(ValueError, match="backbone='mae' is not a published backbone"):
    vtab_config.get_config("backbone=mae")


def test_tiny_mae_run_trains_one_epoch(fake_data_dir, tmp_path):
  """The restatement writes the MAE file a run starts from (no parity is asserted)."""
  ref = reference_model("Ti/16", 2, num_classes=3, global_pool=True, image_size=32, seed=8)
  path = str(tmp_path / "tiny_mae.pth")
  reference.save_mae_pretraining(ref, path)
  config = tiny_config(fake_data_dir, path, tmp_path, "task=dtd,method=vpt_deep,backbone=mae_vitb16",
                       **{"optim.epochs": 1, "optim.warmup_epochs": 0})
  assert (config.model.pool_type, config.data.normalization) == ("gap_fc_norm", "imagenet")
  result = train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda *_: None)
  assert result["eval_examples"] == 37 and 0.0 <= result["test_accuracy"] <= 1.0
  assert np.isfinite(result["test_loss"])
  # head + 2 layers x 2 prompts; the backbone (fc_norm included) stays frozen.
  assert result["trainable_parameters"] == 47 * 192 + 47 + 2 * 2 * 192
  # What the run trained on is the file's encoder.
  run_config = json.loads((tmp_path / "run" / "config.json").read_text())
  backbone = flat(artifacts.pretrained_backbone(run_config, 47))
  np.testing.assert_allclose(backbone["embedding/kernel"],
                             ref.patch_embed.proj.weight.detach().float().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(backbone["fc_norm/scale"], 1.0)
