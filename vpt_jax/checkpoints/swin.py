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


def load(path: str, model, image_size: int = 224, keep_head: bool = False) -> dict:
  """`model`'s parameters from a Swin `.pth` file (checkpoints.load resolves names to files)."""
  if not isinstance(model, swin.Model):
    raise pretrained.CheckpointError(f"{path} is a Swin checkpoint: use a Swin model variant "
                                     "(e.g. model.variant='swin_B/4/w7'), not a ViT.")
  window = model.architecture.window
  if image_size != IMAGE_SIZE or window != WINDOW:
    raise pretrained.CheckpointError(
        f"Swin checkpoints are supported at {IMAGE_SIZE} px with {WINDOW}x{WINDOW} windows (the "
        f"papers' geometry), not {image_size} px with window {window}: set data.resolution=224.")
  return pretrained.fit(path, to_model_layout(read(path)), model, image_size, keep_head)
