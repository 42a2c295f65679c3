"""torchvision's ImageNet AlexNet as Sidetune's side network (vpt_jax/models/side.py).

KMnP/vpt's Sidetune takes `torchvision.models.alexnet(pretrained=True)` (src/models/vit_models.py
L56): the file alexnet-owt-7be5be79.pth on PyTorch's download host, a state dict of
features.{0,3,6,8,10}.{weight,bias} (the five convolutions) and classifier.{1,4,6}.* (the
ImageNet classifier, which Sidetune does not use and this reader drops). Convolution weights are
PyTorch's (out, in, kh, kw), Flax's kernels (kh, kw, in, out). The name "alexnet" is downloaded
once into $VPT_JAX_CACHE/checkpoints (or the run's pretrained_cache_dir); a file path in the same
layout works too. Reading a .pth needs PyTorch.
"""

import functools
import os

import numpy as np

from vpt_jax.checkpoints import pretrained, torch_vit
from vpt_jax.models import side
from vpt_jax.utils import files

NAME = "alexnet"
HOST = "https://download.pytorch.org/models/"  # torchvision's AlexNet_Weights.IMAGENET1K_V1.
FILE = "alexnet-owt-7be5be79.pth"
TORCH_LAYERS = ("features.0", "features.3", "features.6", "features.8", "features.10")
_UNUSED = "classifier."


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Every tensor the side network needs, under torchvision's names."""
  shapes, channels = {}, 3
  for layer, (out, kernel, _, _) in zip(TORCH_LAYERS, side.ALEXNET_CONVS):
    shapes[f"{layer}.weight"] = (out, channels, kernel, kernel)
    shapes[f"{layer}.bias"] = (out,)
    channels = out
  return shapes


def read(path: str) -> dict[str, np.ndarray]:
  """The file's tensors (float32) under torchvision's names."""
  return torch_vit.read_state(path)


def convert(state: dict[str, np.ndarray], path: str = "the checkpoint") -> dict:
  """The side network's parameters (vit.Model's "side" subtree) from torchvision's state dict;
  one error lists every missing, unexpected and mis-shaped tensor."""
  expected = expected_shapes()
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(k for k in state if k not in expected and not k.startswith(_UNUSED))
  misshaped = sorted(f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
                     if k in state and tuple(state[k].shape) != expected[k])
  if missing or unexpected or misshaped:
    parts = [f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("mis-shaped", misshaped)) if keys]
    raise pretrained.CheckpointError(
        f"{path} is not torchvision's AlexNet ({'; '.join(parts)}); method_kwargs.side_checkpoint "
        f"takes '{NAME}' or a file in its layout (features.0.weight ...).")
  return {f"conv_{i}": {"kernel": np.transpose(state[f"{layer}.weight"], (2, 3, 1, 0)),
                        "bias": state[f"{layer}.bias"]}
          for i, layer in enumerate(TORCH_LAYERS)}


def resolve(name_or_path: str, cache_dir: str | None = None, base_url: str | None = None) -> str:
  """A local path: a file as is; "alexnet" downloaded once (its SHA-256 recorded beside it and
  checked on every later use, as pretrained.resolve does for backbones)."""
  if os.path.exists(name_or_path):
    return name_or_path
  if name_or_path != NAME:
    raise pretrained.CheckpointError(
        f"Side network checkpoint {name_or_path!r} is neither '{NAME}' (torchvision's ImageNet "
        "AlexNet) nor a file.")
  local = os.path.join(cache_dir or files.cache_dir("checkpoints"), "torchvision", FILE)
  if os.path.exists(local) and os.path.exists(local + ".sha256"):
    with open(local + ".sha256") as f:
      if files.sha256_file(local) != f.read().strip():
        files.set_aside(local, "damaged")
  if not os.path.exists(local):
    pretrained.download((base_url or HOST) + FILE, local, check=read)
    files.write_text(local + ".sha256", files.sha256_file(local) + "\n")
  return local


@functools.lru_cache(maxsize=2)  # Every run of a sweep starts from the same file.
def load(name_or_path: str, cache_dir: str | None = None, base_url: str | None = None) -> dict:
  """The side network's parameters from a name or file (see `resolve`)."""
  path = resolve(name_or_path, cache_dir, base_url)
  return convert(read(path), path)
