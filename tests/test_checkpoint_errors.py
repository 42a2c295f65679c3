"""A checkpoint that cannot be what the model is says why in one line: a path that does not exist,
a Swin file given to a ViT model and a ViT file to a Swin model, a variant the file does not fit
(its geometry first, at config resolution and at load), a DINOv2 file and the default
architecture, a CLIP file with only some of CLIP's options; and CLIP's text tower from an OpenAI
file runs QuickGELU whatever the image model says."""

import os
import subprocess
import sys

import pytest
import torch

import torch_clip_text_reference as clip_text_reference
import torch_dinov2_clip_reference as dinov2_clip_reference
from configs import demo
from vpt_jax import checkpoints
from vpt_jax.checkpoints import clip_text, pretrained
from vpt_jax.models import swin, vit


def test_a_missing_path_says_so_first_in_one_short_line(tmp_path):
  missing = str(tmp_path / "no_such" / "backbone.pth")
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(missing, vit.Model(num_classes=0, variant="mu/4", depth=1))
  assert str(error.value) == f"Checkpoint file {missing} does not exist."


def test_a_swin_file_given_to_a_vit_model_says_it_is_swin(tmp_path):
  state = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}
  for stage, depth in enumerate((2, 1)):
    for block in range(depth):
      state[f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table"] = torch.zeros(169, 2)
  path = tmp_path / "swin.pth"
  torch.save({"model": state}, path)
  with pytest.raises(pretrained.CheckpointError, match=r"is a Swin checkpoint \(embed width 8, stage depths "
                     r"2-1\), not a ViT: use a Swin model variant"):
    checkpoints.load(str(path), vit.Model(num_classes=0, variant="mu/4", depth=1))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_GEOMETRY = "width 192, depth 2, patch 8, 3 heads"


def run_main(*args):
  return subprocess.run([sys.executable, "launch/main.py", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_a_variant_the_demo_file_does_not_fit_is_refused_at_config_resolution(tmp_path):
  process = run_main("--config=configs/demo.py:task=demo_digits,method=linear", "--config.model.variant=S/8",
                     f"--workdir={tmp_path / 'run'}")
  assert process.returncode == 1 and not (tmp_path / "run").exists()
  assert process.stderr.strip().splitlines() == [
      f"error: --config.model.variant=S/8 does not fit checkpoint {demo.BACKBONE} ({DEMO_GEOMETRY}): use "
      "--config.model.variant=Ti/8."]


def test_a_model_the_file_does_not_fit_hears_the_file_geometry_first():
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(demo.BACKBONE, vit.Model(num_classes=0, variant="S/8", depth=2), image_size=32)
  message = str(error.value)
  assert message == (
      f"Checkpoint {demo.BACKBONE} does not fit the model: the file is {DEMO_GEOMETRY}, the model width 384, "
      "depth 2, patch 8, 6 heads: use --config.model.variant=Ti/8 (38 mismatched keys, e.g. cls (1, 1, 192) vs "
      "model (1, 1, 384); embedding/bias (192,) vs model (384,)).")
  assert len(message) < 400
  with pytest.raises(pretrained.CheckpointError) as error:  # The default B/16: variant and depth.
    checkpoints.load(demo.BACKBONE, vit.Model(num_classes=0), image_size=32)
  assert (f"the file is {DEMO_GEOMETRY}, the model width 768, depth 12, patch 16, 12 heads: use --config.model."
          "variant=Ti/8 --config.model.depth=2 (160 missing, 38 mismatched keys, e.g. ") in str(error.value)
  assert len(str(error.value)) < 400


def dinov2_file(tmp_path):
  ref = dinov2_clip_reference.randomize(dinov2_clip_reference.DinoVisionTransformer(2, 14, 32, 2, 2, 128, 4, 3), 0)
  path = str(tmp_path / "dinov2_vitmu14_reg4_pretrain.pth")
  dinov2_clip_reference.save_dinov2(ref, path)
  return path


def test_a_dinov2_file_and_a_default_architecture(tmp_path):
  path = dinov2_file(tmp_path)
  geometry = "DINOv2, width 32, depth 2, patch 14, 2 heads, LayerScale, 4 registers"
  # Set on the command line, the variant is refused before anything runs, naming the option.
  process = run_main("--config=configs/vtab.py:task=dtd,method=linear", f"--config.backbone={path}",
                     "--config.model.variant=B/16", f"--workdir={tmp_path / 'run'}")
  assert process.returncode == 1 and process.stderr.strip().splitlines() == [
      f"error: --config.model.variant=B/16 does not fit checkpoint {path} ({geometry}): use "
      "--config.model.variant=mu/14."]
  # Given to the default model in code, the load names every option the file needs.
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(path, vit.Model(num_classes=0), image_size=28)
  assert str(error.value).startswith(
      f"Checkpoint {path} does not fit the model: the file is {geometry}, the model width 768, depth 12, patch 16, "
      "12 heads: use --config.model.variant=mu/14 --config.model.depth=2 --config.model.layer_scale=True "
      "--config.model.register_tokens=4 --config.model.gelu_approximate=False (")


def clip_file(tmp_path, name="open_clip_pytorch_model.bin"):
  ref = dinov2_clip_reference.randomize(dinov2_clip_reference.Clip(32, 16, 32, 1, 2, 24, True, 3), 0)
  path = str(tmp_path / name)
  if name.endswith(".pt"):
    dinov2_clip_reference.save_openai_torchscript(ref, path, 32)
  else:
    torch.save(dinov2_clip_reference.clip_state(ref), path)
  return path


def test_a_clip_file_and_a_model_with_only_some_of_its_options_is_refused(tmp_path):
  path = clip_file(tmp_path)
  # ln_pre, no patch bias and the projection, but Google's epsilon and tanh GELU.
  model = vit.Model(num_classes=0, variant="mu/16", depth=1, pre_norm=True, embedding_bias=False, projection_dim=24)
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(path, model, image_size=32)
  assert str(error.value) == (
      f"Checkpoint {path} (CLIP, width 32, depth 1, patch 16, 2 heads, ln_pre, projection 24) does not fit the model "
      "(norm_epsilon=1e-06, gelu_approximate=True): use --config.model.norm_epsilon=1e-05 "
      "--config.model.gelu_approximate=False.")
  openai = clip_file(tmp_path, "ViT-tiny.pt")
  with pytest.raises(pretrained.CheckpointError, match=r"\(quick_gelu=False\): use --config.model.quick_gelu=True\.$"):
    checkpoints.load(openai, model.clone(norm_epsilon=1e-5, gelu_approximate=False), image_size=32)


def test_an_openai_text_tower_runs_quick_gelu_whatever_the_image_model(tmp_path):
  ref = clip_text_reference.random_clip(0)
  path = str(tmp_path / "ViT-tiny.pt")
  dinov2_clip_reference.save_openai_torchscript(ref, path, 32)
  plain = vit.Model(num_classes=0, variant="mu/16", depth=1)
  assert clip_text.load(path, plain, num_heads=4).model.config.quick_gelu
  bin_path = str(tmp_path / "open_clip_pytorch_model.bin")
  torch.save(dinov2_clip_reference.clip_state(ref), bin_path)
  assert not clip_text.load(bin_path, plain, num_heads=4).model.config.quick_gelu  # open_clip's: either form.


def test_a_vit_file_given_to_a_swin_model_says_it_is_a_vit():
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(demo.BACKBONE, swin.Model(num_classes=0, variant="swin_mu/4/w7", depth=1))
  assert str(error.value) == (f"{demo.BACKBONE} is a ViT checkpoint ({DEMO_GEOMETRY}), not a Swin: use "
                              "--config.model.variant=Ti/8.")
