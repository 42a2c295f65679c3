"""Pre-trained backbones by published name (config.backbone): one small record each.

A record says what the weights are (architecture and pooling for `vit.Model`), which checkpoint
reader understands their file (vpt_jax/checkpoints/), how their pre-training normalised images,
and where their owners host the file (downloaded once into $VPT_JAX_CACHE/checkpoints). A path to
a file works as well as a name; config.model then says the architecture.
"""

import dataclasses

GOOGLE = "https://storage.googleapis.com/vit_models/"
META = "https://dl.fbaipublicfiles.com/"  # facebookresearch/mae and moco-v3 host their files here.


@dataclasses.dataclass(frozen=True)
class Backbone:
  name: str
  about: str
  variant: str  # vit.Model's "SIZE/PATCH".
  file: str  # Path under `host`, and under the download cache.
  host: str = GOOGLE
  checkpoint_format: str = "vit_npz"  # A reader in vpt_jax/checkpoints/.
  pool_type: str = "tok"  # vit.Model's pool_type: how the VPT code pools this backbone.
  # Inputs its pre-training saw ("inception": [-1, 1]; "imagenet": ImageNet's mean and std). The
  # VPT recipes normalise Google's backbones with ImageNet's statistics too (data.normalization).
  normalization: str = "inception"


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
  BACKBONES[backbone.name] = backbone
  return backbone


for _size, _patch in (("B", 16), ("B", 32), ("L", 16), ("L", 32), ("H", 14)):
  register(Backbone(f"ViT-{_size}_{_patch}", f"Google's supervised ViT-{_size}/{_patch}, ImageNet-21k"
                    + (" (the VPT papers' backbone)" if (_size, _patch) == ("B", 16) else ""),
                    f"{_size}/{_patch}", f"imagenet21k/ViT-{_size}_{_patch}.npz"))
register(Backbone("augreg_B_16_i21k", "Google's AugReg ViT-B/16, ImageNet-21k, 300 epochs",
                  "B/16", "augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"))

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


def find(name: str) -> Backbone | None:
  """The backbone published as `name` (or as its file's path without .npz), else None."""
  name = name.removesuffix(".npz")
  return BACKBONES.get(name) or next(
      (b for b in BACKBONES.values() if b.file.removesuffix(".npz") == name), None)
