"""checkpoints.describe: what each layout's file is, read off tiny random-weight files written by
the reference writers (tests/torch_vit_reference.py, torch_dinov2_clip_reference.py,
torch_swin_reference.py; Google's layout by pretrained.export_npz); a run's model made from a
file given by path (checkpoints.configure, as the launchers call it, and checkpoints.build), the
same features as the model built with the right options; and the config-time refusal of an
option that contradicts the file, in one line."""

import jax
import numpy as np
import pytest
import torch

import torch_dinov2_clip_reference as clip_reference
import torch_swin_reference as swin_reference
import torch_vit_reference as vit_reference
from configs import default, demo
from configs import vtab as vtab_config
from vpt_jax import checkpoints
from vpt_jax.checkpoints import pretrained
from vpt_jax.models import swin, vit

EMBED = 24  # The tiny CLIP's projection width.


def npz_file(path, pool_type="tok"):
  """Google's vision_transformer layout of a random mu/4 (width 32, 2 heads) of depth 2."""
  model = vit.Model(num_classes=3, variant="mu/4", depth=2, pool_type=pool_type)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  pretrained.export_npz(params, str(path))
  return str(path)


def timm_reference(global_pool, seed=0):
  """timm's ViT (the VPT code's MAE and MoCo v3 models) at width 32, 2 heads, depth 2, patch 16."""
  return vit_reference.random_model(seed, 32, 16, 32, 2, 2, 128, 5, global_pool)


def dinov2_file(path, registers=4, seed=0):
  ref = clip_reference.randomize(clip_reference.DinoVisionTransformer(2, 14, 32, 2, 2, 128, registers, 3), seed)
  clip_reference.save_dinov2(ref, str(path))
  return str(path), ref


def clip_file(path, quick_gelu, seed=0):
  """OpenAI's TorchScript archive (.pt) or open_clip's state dict (.bin) of a CLIP whose image
  tower is 32 wide, 1 block, 2 heads, patch 16 at 32 px."""
  ref = clip_reference.randomize(clip_reference.Clip(32, 16, 32, 1, 2, EMBED, quick_gelu, 3), seed)
  if str(path).endswith(".pt"):
    clip_reference.save_openai_torchscript(ref, str(path), 32)
  else:
    torch.save(clip_reference.clip_state(ref), str(path))
  return str(path), ref


def swin_file(path):
  ref = swin_reference.randomize(swin_reference.SwinTransformer(224, 4, 16, (1,) * 4, (1, 2, 4, 8), 7, 5), 0)
  swin_reference.save_checkpoint(ref, str(path))
  return str(path)


def images(size, n=2, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def features(model, params, x):
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x)[0])(params, x))


def test_google_npz_files_are_described(tmp_path):
  tok = checkpoints.describe(npz_file(tmp_path / "tok.npz"))
  assert (tok.family, tok.layout, tok.width, tok.depth, tok.patch, tok.heads, tok.mlp_dim, tok.pooling) == (
      "vit", "vision_transformer", 32, 2, 4, 2, 128, "cls")
  assert tok.pool_types == ("tok", "gap") and tok.gelu is None and tok.norm_epsilon is None
  assert tok.model_fields() == {"variant": "mu/4", "pool_type": "tok", "depth": 2}
  assert tok.geometry() == "width 32, depth 2, patch 4, 2 heads"
  gap = checkpoints.describe(npz_file(tmp_path / "gap.npz", pool_type="gap"))
  assert (gap.pooling, gap.pool_types, gap.model_fields()["pool_type"]) == ("gap", ("gap",), "gap")


def test_timm_layout_files_are_described(tmp_path):
  vit_reference.save_mae_pretraining(timm_reference(global_pool=True), str(tmp_path / "mae.pth"))
  vit_reference.save_mae_finetuned(timm_reference(global_pool=True), str(tmp_path / "mae_ft.pth"))
  vit_reference.save_mocov3_linear(timm_reference(global_pool=False), str(tmp_path / "moco.pth.tar"))
  mae, fine_tuned, moco = (checkpoints.describe(str(tmp_path / name))
                           for name in ("mae.pth", "mae_ft.pth", "moco.pth.tar"))
  for described in (mae, fine_tuned, moco):
    # The heads are not in a PyTorch file: those of vit.py's named size of that width and MLP.
    assert (described.family, described.layout, described.width, described.depth, described.patch,
            described.heads) == ("vit", "timm", 32, 2, 16, 2)
    assert described.gelu is None and described.norm_epsilon is None  # The file does not say.
  assert mae.pool_types == moco.pool_types == ("tok", "gap_fc_norm")
  assert fine_tuned.fc_norm and fine_tuned.model_fields() == {"variant": "mu/16", "pool_type": "gap_fc_norm",
                                                               "depth": 2}


def test_dinov2_files_are_described_with_their_family_settings(tmp_path):
  path, _ = dinov2_file(tmp_path / "dinov2_reg4.pth")
  described = checkpoints.describe(path)
  assert (described.family, described.layer_scale, described.registers, described.gelu,
          described.gelu_forms, described.norm_epsilon) == ("dinov2", True, 4, "erf", ("erf",), 1e-6)
  assert described.model_fields() == {"variant": "mu/14", "pool_type": "tok", "depth": 2, "layer_scale": True,
                                      "register_tokens": 4, "gelu_approximate": False}
  assert described.geometry() == "DINOv2, width 32, depth 2, patch 14, 2 heads, LayerScale, 4 registers"


def test_clip_files_are_described_with_their_gelu(tmp_path):
  openai = checkpoints.describe(clip_file(tmp_path / "ViT-tiny.pt", quick_gelu=True)[0])
  open_clip = checkpoints.describe(clip_file(tmp_path / "open_clip_pytorch_model.bin", quick_gelu=False)[0])
  clip_fields = {"variant": "mu/16", "pool_type": "tok", "pre_norm": True, "embedding_bias": False,
                 "projection_dim": EMBED, "norm_epsilon": 1e-5}
  assert (openai.family, openai.layout, openai.gelu, openai.gelu_forms) == ("clip", "openai", "quick", ("quick",))
  assert openai.model_fields() == {**clip_fields, "quick_gelu": True}
  # open_clip's layout holds LAION's GELU models and its copies of OpenAI's QuickGELU ones.
  assert (open_clip.layout, open_clip.gelu, open_clip.gelu_forms) == ("open_clip", "erf", ("erf", "quick"))
  assert open_clip.model_fields() == {**clip_fields, "gelu_approximate": False}
  assert (open_clip.pre_norm, open_clip.projection, open_clip.embedding_bias, open_clip.norm_epsilon) == (
      True, EMBED, False, 1e-5)


def test_swin_files_are_described_with_their_stages(tmp_path):
  described = checkpoints.describe(swin_file(tmp_path / "swin.pth"))
  assert (described.family, described.width, described.patch, described.window, described.stage_depths,
          described.stage_heads, described.depth) == ("swin", 16, 4, 7, (1, 1, 1, 1), (1, 2, 4, 8), 4)
  assert described.model_fields() == {"variant": "swin_mu/4/w7", "pool_type": "gap"}


@pytest.mark.parametrize("kind", ["npz", "dinov2", "openai", "open_clip"])
def test_a_model_built_from_a_file_computes_what_the_right_options_do(kind, tmp_path):
  if kind == "npz":
    path, size, right = npz_file(tmp_path / "g.npz"), 16, dict(variant="mu/4", depth=2)
  elif kind == "dinov2":
    path, size = dinov2_file(tmp_path / "d.pth")[0], 28
    right = dict(variant="mu/14", depth=2, layer_scale=True, register_tokens=4, gelu_approximate=False)
  else:
    path = clip_file(tmp_path / ("c.pt" if kind == "openai" else "c.bin"), quick_gelu=kind == "openai")[0]
    size = 32
    right = dict(variant="mu/16", pre_norm=True, norm_epsilon=1e-5, embedding_bias=False,
                 projection_dim=EMBED, **({"quick_gelu": True} if kind == "openai" else {"gelu_approximate": False}))
  model, params = checkpoints.build(path, image_size=size)
  expected_model = vit.Model(num_classes=0, **right)
  assert model == expected_model
  x = images(size)
  np.testing.assert_array_equal(features(model, params, x), features(
      expected_model, checkpoints.load(path, expected_model, image_size=size), x))


def test_build_takes_a_published_name_or_a_file_and_further_fields(tmp_path):
  # A published name's record, with its file already in the cache (here a 1-block ViT-S/14).
  ref = clip_reference.randomize(clip_reference.DinoVisionTransformer(2, 14, 384, 1, 6, 1536, 0, 3), 0)
  cached = tmp_path / "cache" / "dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
  cached.parent.mkdir(parents=True)
  clip_reference.save_dinov2(ref, str(cached))
  model, params = checkpoints.build("dinov2_vits14", image_size=28, cache_dir=str(tmp_path / "cache"), depth=1)
  assert (model.variant, model.depth, model.layer_scale, model.gelu_approximate) == ("S/14", 1, True, False)
  assert params["Transformer"]["encoderblock_0"]["LayerScale_0"]["scale"].shape == (384,)
  # A file, with a field of the user's and a contradicting one.
  path, _ = dinov2_file(tmp_path / "d.pth")
  model, params = checkpoints.build(path, num_classes=7, image_size=28, drop_path=0.1)
  assert (model.num_classes, model.drop_path, model.register_tokens) == (7, 0.1, 4)
  assert not np.any(params["head"]["kernel"])
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.build(path, variant="S/14", layer_scale=False)
  assert str(error.value) == (
      f"variant='S/14' and layer_scale=False do not fit checkpoint {path} (DINOv2, width 32, depth 2, "
      "patch 14, 2 heads, LayerScale, 4 registers): use variant='mu/14' layer_scale=True.")


def vtab(backbone, **fields):
  """configs/vtab.py's config with config.backbone set afterwards (as --config.backbone does) and
  further config.model fields (as --config.model.X does)."""
  config = vtab_config.get_config("task=dtd,method=linear")
  config.backbone = backbone
  for field, value in fields.items():
    config.model[field] = value
  return config


def test_a_file_given_by_path_makes_the_model_fields(tmp_path):
  path, _ = dinov2_file(tmp_path / "dinov2_reg4.pth")
  config = checkpoints.configure(vtab(path))  # The default architecture: B/16, no LayerScale.
  assert {k: config.model.get(k) for k in ("variant", "depth", "pool_type", "layer_scale", "register_tokens",
                                           "gelu_approximate")} == dict(
      variant="mu/14", depth=2, pool_type="tok", layer_scale=True, register_tokens=4, gelu_approximate=False)
  assert config.data.normalization == "imagenet"
  clip_path, _ = clip_file(tmp_path / "open_clip_pytorch_model.bin", quick_gelu=True)
  config = checkpoints.configure(vtab(clip_path, quick_gelu=True))  # Either form fits open_clip's layout.
  assert (config.model.quick_gelu, config.model.gelu_approximate, config.model.norm_epsilon,
          config.model.projection_dim, config.data.normalization) == (True, None, 1e-5, EMBED, "clip")


def test_published_names_and_the_demo_are_left_as_their_config_says(monkeypatch):
  monkeypatch.setattr(checkpoints, "_read", lambda path: pytest.fail(f"read {path}"))
  config = vtab_config.get_config("task=dtd,method=linear,backbone=dinov2_vitb14")
  before = config.to_dict()
  assert checkpoints.configure(config).to_dict() == before  # No file read for a published name.
  monkeypatch.undo()
  config = demo.get_config()
  before = config.to_dict()
  assert checkpoints.configure(config).to_dict() == before  # The demo's file fits what it sets.
  scratch = default.get_config()
  scratch.backbone = None
  assert checkpoints.configure(scratch).to_dict() == dict(default.get_config().to_dict(), backbone=None)


@pytest.mark.parametrize("fields, explicit, needed", [
    (dict(variant="B/14"), (), "--config.model.variant=B/14 does not fit checkpoint {path} ({geometry}): "
     "use --config.model.variant=mu/14."),
    (dict(variant="B/16"), ("variant",), "--config.model.variant=B/16 does not fit checkpoint {path} "
     "({geometry}): use --config.model.variant=mu/14."),
    (dict(depth=3, gelu_approximate=True), (), "--config.model.depth=3 and --config.model.gelu_approximate=True "
     "do not fit checkpoint {path} ({geometry}): use --config.model.depth=2 --config.model.gelu_approximate=False."),
    (dict(pool_type="gap"), (), "--config.model.pool_type=gap does not fit checkpoint {path} ({geometry}): use "
     "--config.model.pool_type=tok."),
    (dict(register_tokens=0), ("register_tokens",), "--config.model.register_tokens=0 does not fit checkpoint "
     "{path} ({geometry}): use --config.model.register_tokens=4."),
])
def test_an_option_that_contradicts_the_file_is_one_line(fields, explicit, needed, tmp_path):
  path, _ = dinov2_file(tmp_path / "dinov2_reg4.pth")
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.configure(vtab(path, **fields), explicit)
  assert str(error.value) == needed.format(
      path=path, geometry="DINOv2, width 32, depth 2, patch 14, 2 heads, LayerScale, 4 registers")


def test_clip_options_that_contradict_the_file_are_one_line(tmp_path):
  openai, _ = clip_file(tmp_path / "ViT-tiny.pt", quick_gelu=True)
  geometry = "CLIP, width 32, depth 1, patch 16, 2 heads, ln_pre, projection 24, QuickGELU"
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.configure(vtab(openai, quick_gelu=False), explicit=("quick_gelu",))
  assert str(error.value) == (f"--config.model.quick_gelu=False does not fit checkpoint {openai} ({geometry}): "
                              "use --config.model.quick_gelu=True.")
  open_clip, _ = clip_file(tmp_path / "open_clip_pytorch_model.bin", quick_gelu=False)
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.configure(vtab(open_clip, norm_epsilon=1e-6, projection_dim=512), explicit=("norm_epsilon",))
  assert str(error.value) == (
      f"--config.model.norm_epsilon=1e-06 and --config.model.projection_dim=512 do not fit checkpoint {open_clip} "
      "(CLIP, width 32, depth 1, patch 16, 2 heads, ln_pre, projection 24): use --config.model.norm_epsilon=1e-05 "
      "--config.model.projection_dim=24.")


def test_a_swin_file_by_path_makes_a_swin_model(tmp_path):
  path = swin_file(tmp_path / "swin.pth")
  config = checkpoints.configure(vtab(path))
  assert (config.model.variant, config.model.depth, config.model.pool_type, config.data.normalization) == (
      "swin_mu/4/w7", None, "gap", "imagenet")
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.configure(vtab(path, variant="S/16"))
  assert str(error.value) == (
      f"--config.model.variant=S/16 does not fit checkpoint {path} (Swin, embed width 16, stage depths 1-1-1-1, "
      "heads 1-2-4-8, patch 4, window 7): use --config.model.variant=swin_mu/4/w7.")
  model, params = checkpoints.build(path)
  assert isinstance(model, swin.Model) and model.variant == "swin_mu/4/w7" and "head" not in params
