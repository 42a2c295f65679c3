"""Pre-trained checkpoints: one reader per file format, and `load`, which picks the reader.

A published name (vpt_jax/models/backbones.py) is read by its record's `checkpoint_format`; a
file by its suffix (a PyTorch file loaded into a Swin model by the Swin reader). Every reader
converts to its model's tree and refuses a file that does not
fit the model with one error listing its missing, unexpected and mis-shaped keys.
"""

import os

from vpt_jax.checkpoints import alexnet

from vpt_jax.checkpoints import pretrained, swin, torch_vit
from vpt_jax.models import backbones
from vpt_jax.models import swin as swin_model

READERS = {"vit_npz": pretrained, "torch_vit": torch_vit, "swin_pth": swin}
_SUFFIXES = {".npz": "vit_npz", ".pth": "torch_vit", ".pth.tar": "torch_vit", ".pt": "torch_vit",
             ".bin": "torch_vit", ".safetensors": "torch_vit"}


def checkpoint_format(name_or_path: str) -> str:
  """The reader's name for a published name or a file."""
  published = None if os.path.exists(name_or_path) else backbones.find(name_or_path)
  if published is not None:
    return published.checkpoint_format
  pretrained.refuse_missing_file(name_or_path, published)
  suffix = next((s for s in _SUFFIXES if name_or_path.endswith(s)), None)
  if suffix is None:
    raise pretrained.CheckpointError(
        f"Checkpoint {name_or_path!r} is neither a published name ({', '.join(backbones.BACKBONES)}) "
        f"nor a file ending in {', '.join(_SUFFIXES)}.")
  return _SUFFIXES[suffix]


def load(name_or_path: str, model, image_size: int = 224, keep_head: bool = False,
         cache_dir: str | None = None, base_url: str | None = None) -> dict:
  """`model`'s parameters (nested dict of float32 arrays) from a published name (downloaded once
  into $VPT_JAX_CACHE/checkpoints or `cache_dir`; offline, the error says where to put the file)
  or a checkpoint file. The position grid is resampled to `image_size`; the head is the file's
  only with `keep_head` and when it fits, else zeros."""
  checkpoint_format_ = checkpoint_format(name_or_path)
  if checkpoint_format_ == "torch_vit" and isinstance(model, swin_model.Model):
    checkpoint_format_ = "swin_pth"  # A .pth file given by path, for a Swin model.
  reader = READERS[checkpoint_format_]
  path = pretrained.resolve(name_or_path, cache_dir, base_url, check=reader.read)
  return reader.load(path, model, image_size, keep_head)


# Pre-trained parts a method adds beside the backbone: Sidetune's side network, by name or file.
SIDE_NETWORKS = {alexnet.NAME: alexnet}


def load_side(name_or_path: str, cache_dir: str | None = None, base_url: str | None = None) -> dict:
  """Sidetune's side network (vit.Model's "side" subtree) from torchvision's ImageNet AlexNet
  ("alexnet", downloaded once; offline, the error says where to put the file) or a file in its
  layout (vpt_jax/checkpoints/alexnet.py)."""
  return alexnet.load(name_or_path, cache_dir, base_url)
