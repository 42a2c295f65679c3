"""Pre-trained backbones by published name (config.backbone): one small record each.

A record says what the weights are (architecture and pooling for `vit.Model`), which checkpoint
reader understands their file (vpt_jax/checkpoints/), how their pre-training normalised images,
and where their owners host the file (downloaded once into $VPT_JAX_CACHE/checkpoints). A path to
a file works as well as a name; config.model then says the architecture.
"""

import dataclasses

GOOGLE = "https://storage.googleapis.com/vit_models/"


@dataclasses.dataclass(frozen=True)
class Backbone:
  name: str
  about: str
  variant: str  # vit.Model's "SIZE/PATCH".
  file: str  # Path under `host`, and under the download cache.
  host: str = GOOGLE
  checkpoint_format: str = "vit_npz"  # A reader in vpt_jax/checkpoints/.
  pool_type: str = "tok"
  # Inputs its pre-training saw ("inception": [-1, 1]); the VPT recipes normalise with ImageNet's
  # statistics whatever the backbone (data.normalization).
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


def find(name: str) -> Backbone | None:
  """The backbone published as `name` (or as its file's path without .npz), else None."""
  name = name.removesuffix(".npz")
  return BACKBONES.get(name) or next(
      (b for b in BACKBONES.values() if b.file.removesuffix(".npz") == name), None)
