"""DINOv2 and CLIP backbones: VPT-deep on DINOv2 with registers against a float64 PyTorch
restatement of PETL_Vision's prompted model (tests/torch_dinov2_clip_reference.py; no library has
its prompts), QuickGELU's and the epsilon's effect, the new model options' defaults, one-line
errors, the registry (Google's IN-21k -> IN-1k and AugReg files included) and a tiny DINOv2 run.
The published files' parity with the authors' models (timm's DINOv2 through its
checkpoint_filter_fn, open_clip's CLIP in OpenAI's and open_clip's layouts) is
tests/test_against_timm.py's."""

import sys

import jax
import numpy as np
import pytest
import torch

import torch_dinov2_clip_reference as reference
from test_torch_checkpoints import flat, max_difference, ours, reference_outputs
from configs import vtab as vtab_config
from test_train import tiny_config
from vpt_jax import catalog, checkpoints
from vpt_jax.checkpoints import pretrained, torch_vit
from vpt_jax.data import device
from vpt_jax.models import backbones, vit
from vpt_jax.training import train

TOLERANCE = 1e-4


def assert_parity(ref, model, params, x, *args):
  """Features and logits of our model and the torch reference agree within TOLERANCE."""
  (expected_features, expected_logits), (features, logits) = (
      reference_outputs(ref, x, *args), ours(model, params, x))
  assert max_difference(features, expected_features) <= TOLERANCE
  assert max_difference(logits, expected_logits) <= TOLERANCE


def images(n=2, size=224, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def dinov2_reference(variant, depth, registers, num_classes, grid=37, seed=0):
  arch = vit.decode_variant(variant)
  return reference.randomize(reference.DinoVisionTransformer(
      grid, arch.patch_size[0], arch.width, depth, arch.num_heads, arch.mlp_dim, registers,
      num_classes), seed)


def dinov2_model(variant, depth, registers, num_classes, **kwargs):
  return vit.Model(num_classes=num_classes, variant=variant, depth=depth, layer_scale=True,
                   register_tokens=registers, gelu_approximate=False, **kwargs)


def copy_head(params, ref):
  """The hub files have no head: the reference's is written into ours to compare logits."""
  return {**params, "head": {"kernel": ref.head.weight.detach().float().numpy().T,
                             "bias": ref.head.bias.detach().float().numpy()}}


def test_vpt_deep_on_dinov2_with_registers_matches_petl_vision_prompts(tmp_path):
  """Against the restatement: PETL_Vision's prompt insertion lives in its own code, which no
  installable library ships (timm's DINOv2 has no prompts)."""
  ref = dinov2_reference("Ti/14", 3, 4, num_classes=5, grid=6, seed=2)
  path = str(tmp_path / "dinov2_reg.pth")
  reference.save_dinov2(ref, path)
  model = dinov2_model("Ti/14", 3, 4, num_classes=5, prompt_tokens=3, prompt_deep=True)
  backbone = checkpoints.load(path, model.clone(prompt_tokens=0, prompt_deep=False), image_size=56)
  prompts = np.random.default_rng(3).normal(size=(3, 3, 192)).astype(np.float32)
  params = {**copy_head(backbone, ref), "prompt": {"embeddings": prompts}}
  x = images(size=56, seed=2)
  # PETL_Vision puts the prompts before the class token, vpt_jax after the registers: attention
  # does not see order, so both compute the same.
  assert_parity(ref, model, params, x, torch.from_numpy(prompts).double())
  assert max_difference(ours(model, params, x)[0], reference_outputs(ref, x)[0]) > 1e-2


def clip_reference(patch, depth, quick_gelu, image_size=224, width=768, heads=12, seed=0):
  return reference.randomize(reference.Clip(image_size, patch, width, depth, heads, 512, quick_gelu,
                                            num_classes=6), seed)


def clip_model(variant, depth, quick_gelu, num_classes=6, projection_dim=512):
  return vit.Model(num_classes=num_classes, variant=variant, depth=depth, pre_norm=True,
                   norm_epsilon=1e-5, embedding_bias=False, projection_dim=projection_dim,
                   quick_gelu=quick_gelu, gelu_approximate=False)


def load_clip(path, model, ref, image_size=224):
  params = checkpoints.load(path, model, image_size=image_size)
  return {**params, "head": {"kernel": ref.head.weight.detach().float().numpy().T,
                             "bias": ref.head.bias.detach().float().numpy()}}


def test_quick_gelu_and_epsilon_matter_and_the_text_tower_is_dropped(tmp_path, caplog):
  """The restatement's CLIP supplies a file and the features the reader must reproduce, to show
  that QuickGELU and the epsilon matter (open_clip's parity: tests/test_against_timm.py)."""
  ref = clip_reference(16, 2, quick_gelu=True, image_size=32, width=32, heads=2, seed=5)
  path = str(tmp_path / "clip.bin")
  state = reference.clip_state(ref)
  torch.save(state, path)
  text = [k for k in state if not k.startswith("visual.")]
  x = images(size=32, seed=5)
  expected, _ = reference_outputs(ref, x)
  model = clip_model("mu/16", 2, quick_gelu=True)
  with caplog.at_level("INFO"):
    params = load_clip(path, model, ref, image_size=32)
  assert f"Dropping CLIP's text tower ({len(text)} entries" in caplog.text and len(text) == 18
  assert not any(k.startswith(("transformer", "token", "ln_final")) for k in flat(params))
  assert max_difference(ours(model, params, x)[0], expected) <= TOLERANCE
  assert max_difference(ours(model.clone(quick_gelu=False), params, x)[0], expected) > 1e-3
  # Without a projection the model pools the 32-wide ln_post output; proj goes unused.
  unprojected = clip_model("mu/16", 2, quick_gelu=True, projection_dim=None, num_classes=0)
  features, _ = ours(unprojected, checkpoints.load(path, unprojected, image_size=32), x)
  projection = ref.visual.proj.detach().numpy()
  assert max_difference(features @ projection, expected) <= TOLERANCE


def test_new_options_default_to_the_plain_vit():
  model = vit.Model(num_classes=3, variant="Ti/16", depth=1)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  names = set(flat(variables["params"]))
  assert "embedding/bias" in names and "registers" not in names and "projection/kernel" not in names
  assert not any("LayerScale" in k or "pre_encoder_norm" in k for k in names)
  x = images(size=32, seed=6)
  explicit = model.clone(layer_scale=False, register_tokens=0, pre_norm=False, quick_gelu=False,
                         norm_epsilon=1e-6, embedding_bias=True, projection_dim=None)
  np.testing.assert_array_equal(model.apply(variables, x)[0], explicit.apply(variables, x)[0])
  with pytest.raises(ValueError, match="register_tokens sit after the class token"):
    vit.Model(num_classes=3, variant="Ti/16", depth=1, pool_type="gap", register_tokens=2).init(
        jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))


def test_wrong_files_are_one_line_errors(tmp_path, monkeypatch):
  """The restatement's model only supplies a DINOv2 file (no parity is asserted)."""
  # A DINOv2 file with registers for a model without them, and a missing LayerScale.
  ref = dinov2_reference("Ti/14", 2, 4, num_classes=3, grid=4, seed=7)
  path = str(tmp_path / "dinov2_reg4.pth")
  reference.save_dinov2(ref, path)
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(path, vit.Model(num_classes=0, variant="Ti/14", depth=2,
                                     gelu_approximate=False), image_size=56)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"Checkpoint {path} does not fit the model: 5 "
                                                     "unexpected (")
  assert "encoderblock_0/LayerScale_0/scale (192,)" in message and "registers (1, 4, 192)" in message
  # A damaged safetensors file, and the package missing.
  broken = tmp_path / "model.safetensors"
  broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(pretrained.CheckpointError, match="is not a safetensors file") as error:
    torch_vit.read(str(broken))
  assert "\n" not in str(error.value)
  monkeypatch.setitem(sys.modules, "safetensors", None)
  with pytest.raises(pretrained.CheckpointError, match=(
      r"^Reading a safetensors checkpoint needs the safetensors package: pip install safetensors$")):
    torch_vit.read(str(broken))


def test_registry_normalization_config_and_list():
  for name in ("dinov2_vits14", "dinov2_vitb14_reg4", "dinov2_vitl14", "clip_vitb16",
               "openclip_vitb32_laion2b", "sup_vitb16_224", "augreg_S_16_i21k_in1k"):
    assert name in backbones.BACKBONES and any(line.split()[0] == name
                                               for line in catalog.lines() if line.startswith("  "))
  record = backbones.BACKBONES["dinov2_vitb14_reg4"]
  assert record.host + record.file == (
      "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth")
  assert backbones.BACKBONES["clip_vitb16"].host + backbones.BACKBONES["clip_vitb16"].file == (
      "https://openaipublic.azureedge.net/clip/models/"
      "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt")
  sup = backbones.BACKBONES["sup_vitb16_224"]
  assert (sup.host + sup.file, sup.checkpoint_format) == (
      "https://storage.googleapis.com/vit_models/imagenet21k+imagenet2012/ViT-B_16-224.npz", "vit_npz")
  assert backbones.find("augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0").name == (
      "augreg_B_16_i21k")
  assert [checkpoints.checkpoint_format(n) for n in ("dinov2_vitb14", "clip_vitb32", "m.bin",
                                                      "m.safetensors")] == ["torch_vit"] * 4
  config = vtab_config.get_config("task=dtd,method=vpt_deep,backbone=clip_vitb16")
  assert (config.model.variant, config.model.quick_gelu, config.model.norm_epsilon,
          config.model.projection_dim, config.data.normalization) == ("B/16", True, 1e-5, 512, "clip")
  config = vtab_config.get_config("task=dtd,backbone=dinov2_vitl14_reg4")
  assert (config.model.variant, config.model.layer_scale, config.model.register_tokens,
          config.data.normalization) == ("L/14", True, 4, "imagenet")
  pixels = np.array([[[[0, 128, 255]]]], np.uint8)
  np.testing.assert_allclose(device.normalize(pixels, "clip")[0, 0, 0], (
      (0 - 0.48145466) / 0.26862954, (128 / 255 - 0.4578275) / 0.26130258,
      (1 - 0.40821073) / 0.27577711), rtol=1e-6)


def test_tiny_dinov2_run_trains_one_epoch(fake_data_dir, tmp_path):
  """The restatement writes the DINOv2 file a run starts from (no parity is asserted)."""
  ref = dinov2_reference("Ti/16", 2, 4, num_classes=3, grid=4, seed=8)
  path = str(tmp_path / "tiny_dinov2_reg4.pth")
  reference.save_dinov2(ref, path)
  config = tiny_config(fake_data_dir, path, tmp_path,
                       "task=dtd,method=vpt_deep,backbone=dinov2_vitb14_reg4",
                       **{"optim.epochs": 1, "optim.warmup_epochs": 0})
  assert (config.model.register_tokens, config.data.normalization) == (4, "imagenet")
  result = train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda *_: None)
  assert result["eval_examples"] == 37 and 0.0 <= result["test_accuracy"] <= 1.0
  assert np.isfinite(result["test_loss"])
  # head + 2 layers x 2 prompts; registers and LayerScale stay frozen with the backbone.
  assert result["trainable_parameters"] == 47 * 192 + 47 + 2 * 2 * 192
