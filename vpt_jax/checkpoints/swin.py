"""Swin Transformer checkpoints as microsoft/Swin-Transformer publishes them (`.pth`,
{"model": state dict}; e.g. swin_base_patch4_window7_224_22k.pth, which KMnP/vpt loads as
swinb_imagenet22k_224), read into `swin.Model`'s tree.

Keys map one to one (PyTorch Linear weights transposed, the patch convolution OIHW -> HWIO,
LayerNorm weight -> scale): patch_embed.{proj, norm}; layers.i.blocks.j.{norm1, attn.qkv,
attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2} -> layers_i_blocks_j/...;
layers.i.downsample.{norm, reduction} -> layers_i_downsample/...; norm; head (the file's
ImageNet-22k head is kept only with keep_head). The buffers relative_position_index and attn_mask
are derived from the geometry (vpt_jax/models/swin.py builds them), so they are accepted and not
loaded. Anything else, or a key the model lacks, or a shape that does not fit, is reported by
`pretrained.fit`, all in one error. Only the papers' geometry is supported: 224 px inputs and
7x7 windows.
"""

import re

import numpy as np

from vpt_jax.checkpoints import description as description_lib
from vpt_jax.checkpoints import pretrained, torch_vit
from vpt_jax.models import swin

DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
IMAGE_SIZE, WINDOW = 224, 7


def read(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the file (under "model", "state_dict" or the top level), as float32 arrays;
  PyTorch is needed (the one-line `pip install torch` error otherwise)."""
  return torch_vit.read_state(path)


def _module(module: str) -> str:
  """A PyTorch module path in the model's names ('/'-joined)."""
  module = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.", r"layers_\1_blocks_\2/", module)
  module = re.sub(r"^layers\.(\d+)\.downsample\.", r"layers_\1_downsample/", module)
  return module.replace(".", "/")


def to_model_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The file's entries in the model's '/'-joined names, derived buffers dropped (no shape checks
  yet; an entry no rule knows keeps its name and is reported as unexpected)."""
  flat = {}
  for key, value in state.items():
    if key.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
      continue
    if key.endswith(".relative_position_bias_table"):
      flat[_module(key.removesuffix(".relative_position_bias_table"))
           + "/relative_position_bias_table"] = value
    elif key == "patch_embed.proj.weight" and value.ndim == 4:
      flat["patch_embed/proj/kernel"] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    elif match := re.fullmatch(r"(.+)\.(weight|bias)", key):
      module, kind = match.groups()
      name = "bias" if kind == "bias" else "scale" if value.ndim == 1 else "kernel"
      flat[f"{_module(module)}/{name}"] = value.T if value.ndim == 2 else value
    else:
      flat[key] = value
  return flat


_TABLE = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table")


def is_swin(state: dict[str, np.ndarray]) -> bool:
  """Window attention's relative position tables: a Swin file, whatever its suffix says."""
  return any(map(_TABLE.fullmatch, state))


def description(path: str, state: dict[str, np.ndarray]) -> description_lib.Description:
  """What a Swin file is: the stem's width and patch, blocks per stage, and each stage's heads and
  window from its relative position tables ((2 window - 1)^2 rows, one column per head)."""
  blocks = {}
  for key, value in state.items():
    if match := _TABLE.fullmatch(key):
      stage, block = map(int, match.groups())
      blocks.setdefault(stage, {})[block] = value.shape
  stages = range(1 + max(blocks))
  depths = tuple(1 + max(blocks.get(stage, {-1: None})) for stage in stages)
  heads = tuple(next(iter(blocks[stage].values()))[1] if stage in blocks else 0 for stage in stages)
  rows = next(iter(blocks[0].values()))[0] if 0 in blocks else 0
  proj = state.get("patch_embed.proj.weight")
  width, patch = (proj.shape[0], proj.shape[2]) if proj is not None and proj.ndim == 4 else (0, 0)
  return description_lib.Description(
      path=path, family="swin", layout="swin", width=width, depth=sum(depths), patch=patch,
      heads=heads[0], mlp_dim=swin.MLP_RATIO * width, pooling="gap", gelu="erf", gelu_forms=("erf",),
      norm_epsilon=swin.NORM_EPSILON, stage_depths=depths, stage_heads=heads,
      window=(int(round(np.sqrt(rows))) + 1) // 2)


def refuse_vit_model(path: str, described: description_lib.Description) -> None:
  """A Swin file given to a ViT model: said in one line with the file's geometry, rather than as
  a list of every key that does not fit."""
  variant = described.variant or "swin_B/4/w7"
  raise pretrained.CheckpointError(
      f"{path} is a Swin checkpoint (embed width {described.width}, stage depths "
      f"{'-'.join(map(str, described.stage_depths))}), not a ViT: use a Swin model variant, "
      f"{'' if described.variant else 'e.g. '}--config.model.variant={variant}.")


def load_state(path: str, state: dict[str, np.ndarray], model, image_size: int = 224,
               keep_head: bool = False) -> dict:
  """`model`'s parameters from the tensors `read` gave for `path` (checkpoints.load reads once and
  refuses a ViT model before)."""
  window = model.architecture.window
  if image_size != IMAGE_SIZE or window != WINDOW:
    raise pretrained.CheckpointError(
        f"Swin checkpoints are supported at {IMAGE_SIZE} px with {WINDOW}x{WINDOW} windows (the "
        f"papers' geometry), not {image_size} px with window {window}: set data.resolution=224.")
  return pretrained.fit(path, to_model_layout(state), model, image_size, keep_head)
