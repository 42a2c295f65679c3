"""Pre-trained backbones by published name (config.backbone): one small record each.

A record says what the weights are (architecture and pooling for `vit.Model`), which checkpoint
reader understands their file (vpt_jax/checkpoints/), how their pre-training normalised images,
and where their owners host the file (downloaded once into $VPT_JAX_CACHE/checkpoints). A path to
a file works as well as a name; the architecture is then read off the file
(vpt_jax.checkpoints.describe).
"""

import dataclasses

GOOGLE = "https://storage.googleapis.com/vit_models/"
META = "https://dl.fbaipublicfiles.com/"  # facebookresearch/mae, moco-v3 and dinov2 host their files here.
OPENAI = "https://openaipublic.azureedge.net/clip/models/"  # openai/CLIP clip.py's _MODELS.
HUGGINGFACE = "https://huggingface.co/"  # open_clip's pretrained.py points at the LAION repositories.
# The Swin authors' release files (microsoft/Swin-Transformer README; KMnP/vpt README's Swin-B link).
SWIN = "https://github.com/SwinTransformer/storage/releases/download/"


@dataclasses.dataclass(frozen=True)
class Backbone:
  name: str
  about: str
  variant: str  # vit.Model's "SIZE/PATCH", or swin.Model's "swin_SIZE/PATCH/wWINDOW".
  file: str  # Path under `host`, and under the download cache.
  host: str = GOOGLE
  checkpoint_format: str = "vit_npz"  # A reader in vpt_jax/checkpoints/.
  pool_type: str = "tok"  # vit.Model's pool_type: how the VPT code pools this backbone.
  # Inputs its pre-training saw ("inception": [-1, 1]; "imagenet": ImageNet's mean and std). The
  # VPT recipes normalise Google's backbones with ImageNet's statistics too (data.normalization).
  # "clip": CLIP's own mean and std.
  normalization: str = "inception"
  # Further vit.Model fields the architecture needs, as (field, value) pairs (config.model).
  model: tuple = ()


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
  BACKBONES[backbone.name] = backbone
  return backbone


for _size, _patch in (("B", 16), ("B", 32), ("L", 16), ("L", 32), ("H", 14)):
  register(Backbone(f"ViT-{_size}_{_patch}", f"Google's supervised ViT-{_size}/{_patch}, ImageNet-21k"
                    + (" (the VPT papers' backbone)" if (_size, _patch) == ("B", 16) else ""),
                    f"{_size}/{_patch}", f"imagenet21k/ViT-{_size}_{_patch}.npz"))
# Google's ImageNet-21k models fine-tuned on ImageNet-1k (gs://vit_models/imagenet21k+imagenet2012):
# the 224 px files, which ChengHan111/VPT-or-FT's configs default to as sup_vitb16_224
# (src/models/build_vit_backbone.py: "ViT-B_16-224.npz"; sup_vitl16_224: "ViT-L_16-224.npz").
for _size in ("B", "L"):
  register(Backbone(f"sup_vit{_size.lower()}16_224",
                    f"Google's ViT-{_size}/16, ImageNet-21k then ImageNet-1k at 224 px (VPT-or-FT's "
                    "default backbone)" if _size == "B" else
                    f"Google's ViT-{_size}/16, ImageNet-21k then ImageNet-1k at 224 px",
                    f"{_size}/16", f"imagenet21k+imagenet2012/ViT-{_size}_16-224.npz"))
# AugReg (Steiner et al. 2022), the recommended ViT of each size in google-research/
# vision_transformer's README: the ImageNet-21k file and its ImageNet-1k fine-tuning at 384 px.
_AUGREG = {"Ti_16": "aug_none-wd_0.03", "S_16": "aug_light1-wd_0.03", "S_32": "aug_none-wd_0.1",
           "B_16": "aug_medium1-wd_0.1", "B_32": "aug_light1-wd_0.1", "L_16": "aug_strong1-wd_0.1"}
_AUGREG_FINETUNE_LR = {"Ti_16": "0.03", "S_16": "0.03", "S_32": "0.01", "B_16": "0.03", "B_32": "0.01",
                       "L_16": "0.01"}
for _name, _recipe in _AUGREG.items():
  _file = f"augreg/{_name}-i21k-300ep-lr_0.001-{_recipe}-do_0.0-sd_0.0"
  _variant = _name.replace("_", "/")
  register(Backbone(f"augreg_{_name}_i21k", f"Google's AugReg ViT-{_variant}, ImageNet-21k, 300 epochs",
                    _variant, _file + ".npz"))
  register(Backbone(f"augreg_{_name}_i21k_in1k", f"Google's AugReg ViT-{_variant}, ImageNet-21k then "
                    "ImageNet-1k at 384 px", _variant,
                    f"{_file}--imagenet2012-steps_20k-lr_{_AUGREG_FINETUNE_LR[_name]}-res_384.npz"))

# The self-supervised backbones of the VPT paper's Table 4, as KMnP/vpt builds them
# (src/models/build_vit_backbone.py, vit_backbones/vit_mae.py and vit_moco.py); both were trained
# on ImageNet-1k images normalised with ImageNet's statistics (docs/checkpoints.md).
for _size, _patch, _file in (("B", 16, "base"), ("L", 16, "large"), ("H", 14, "huge")):
  register(Backbone(f"mae_vit{_size.lower()}{_patch}",
                    f"MAE ViT-{_size}/{_patch}, self-supervised on ImageNet-1k; global pooling with "
                    "a fresh fc_norm, as the VPT code uses it", f"{_size}/{_patch}",
                    f"mae/pretrain/mae_pretrain_vit_{_file}.pth", host=META,
                    checkpoint_format="torch_vit", pool_type="gap_fc_norm", normalization="imagenet"))
register(Backbone("mocov3_vitb16", "MoCo v3 ViT-B/16, self-supervised on ImageNet-1k, 300 epochs "
                  "(the linear-probe file the VPT code loads as mocov3_linear-vit-b-300ep.pth.tar)",
                  "B/16", "moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar", host=META,
                  checkpoint_format="torch_vit", normalization="imagenet"))


# DINOv2 (facebookresearch/dinov2 hub files, trained at 518 px), as OSU-MLB/PETL_Vision uses
# ViT-B/14: timm's ViT with LayerScale, the class token after the final norm, the 37x37 position
# grid resampled to the input (bicubic, antialiased); ImageNet's normalization. The register
# variants add 4 tokens after the class token.
_DINOV2 = dict(host=META, checkpoint_format="torch_vit", normalization="imagenet")
for _size, _arch in (("S", "vits14"), ("B", "vitb14"), ("L", "vitl14")):
  for _registers in (0, 4):
    _suffix = f"_reg{_registers}" if _registers else ""
    register(Backbone(
        f"dinov2_{_arch}{_suffix}",
        f"DINOv2 ViT-{_size}/14{f' with {_registers} registers' if _registers else ''}, "
        "self-supervised on LVD-142M; class token, as PETL_Vision uses it",
        f"{_size}/14", f"dinov2/dinov2_{_arch}/dinov2_{_arch}{_suffix}_pretrain.pth",
        model=(("layer_scale", True), ("register_tokens", _registers), ("gelu_approximate", False)),
        **_DINOV2))

# CLIP's image towers (PETL_Vision: OpenAI's ViT-B/16 through timm's
# vit_base_patch16_clip_quickgelu_224): ln_pre, LayerNorm epsilon 1e-5, no patch-embedding bias,
# ln_post on the class token, then the 512-wide projection `proj`; CLIP's normalization.
_CLIP = (("pre_norm", True), ("norm_epsilon", 1e-5), ("embedding_bias", False),
         ("projection_dim", 512))
_OPENAI_FILES = {16: "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
                 32: "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"}
_LAION_REPOS = {16: "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", 32: "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"}
for _patch in (16, 32):
  register(Backbone(f"clip_vitb{_patch}", f"OpenAI's CLIP ViT-B/{_patch} image tower (WIT-400M), "
                    "QuickGELU", f"B/{_patch}", _OPENAI_FILES[_patch], host=OPENAI,
                    checkpoint_format="torch_vit", normalization="clip",
                    model=_CLIP + (("quick_gelu", True),)))
  register(Backbone(f"openclip_vitb{_patch}_laion2b", f"open_clip's CLIP ViT-B/{_patch} image tower, "
                    "LAION-2B, GELU", f"B/{_patch}",
                    f"{_LAION_REPOS[_patch]}/resolve/main/open_clip_pytorch_model.bin",
                    host=HUGGINGFACE, checkpoint_format="torch_vit", normalization="clip",
                    model=_CLIP + (("gelu_approximate", False),)))


# Swin-B and Swin-L, supervised on ImageNet-22k at 224 px with 7x7 windows, under the names KMnP/vpt
# gives them (src/models/build_vit_backbone.py MODEL_ZOO L20-27; built L170-210 with embed_dim
# 128 / 192, depths 2-2-18-2, heads 4-8-16-32 / 6-12-24-48, window 7); the VPT code normalises
# every input with ImageNet's statistics (src/data/transforms.py L8-9). A Swin model mean-pools
# every token after its final norm (models/swin.py), whatever pool_type says.
for _size, _file in (("B", "base"), ("L", "large")):
  register(Backbone(f"swin{_size.lower()}_imagenet22k_224",
                    f"Swin-{_size}, supervised on ImageNet-22k, 224 px, window 7"
                    + (" (the VPT paper's Table 2 backbone)" if _size == "B" else ""),
                    f"swin_{_size}/4/w7", f"v1.0.0/swin_{_file}_patch4_window7_224_22k.pth",
                    host=SWIN, checkpoint_format="swin_pth", pool_type="gap",
                    normalization="imagenet"))


def find(name: str) -> Backbone | None:
  """The backbone published as `name` (or as its file's path without .npz), else None."""
  name = name.removesuffix(".npz")
  return BACKBONES.get(name) or next(
      (b for b in BACKBONES.values() if b.file.removesuffix(".npz") == name), None)
