"""PyTorch ViT checkpoints in timm's key layout, as facebookresearch/mae and MoCo v3 publish them.

Files understood (docs/checkpoints.md):
  * MAE (`mae_pretrain_vit_base.pth`, `_large`, `_huge`): {"model": encoder state dict}. KMnP/vpt
    loads it into a model with global pooling, which has no final `norm` but a `fc_norm` after the
    pooling, non-strictly: the file's `norm` goes unused and `fc_norm` keeps its fresh init (ones
    and zeros). Pool type "gap_fc_norm" does the same; a file that has `fc_norm` (MAE fine-tuned)
    keeps its own. A pre-training file with MAE's decoder loses the decoder.
  * MoCo v3 linear classification (`linear-vit-b-300ep.pth.tar`, which KMnP/vpt renames
    mocov3_linear-vit-b-300ep.pth.tar): {"state_dict": ...} with DistributedDataParallel's
    `module.` prefix and an ImageNet-1k head (kept only with keep_head).
  * MoCo v3 pre-training (`vit-b-300ep.pth.tar`): the `module.base_encoder.` part, without its
    projection MLP (`head.*`); the momentum encoder and the predictor are dropped. (The VPT code's
    prefix rule would load nothing from this file; here it loads the base encoder.)
  * a bare state dict in the same names.

Names map onto `vit.Model`'s tree: cls_token -> cls, pos_embed -> the position embedding (with the
class token's row), patch_embed.proj -> embedding (OIHW -> HWIO), blocks.i.{norm1, attn.qkv (split
into query, key, value per head), attn.proj, norm2, mlp.fc1, mlp.fc2} -> encoderblock_i, norm ->
encoder_norm, fc_norm, head. Anything else is reported by `pretrained.fit`, all in one error.
"""

import argparse
import logging
import os
import pickle
import re
import zipfile

import numpy as np

from vpt_jax.checkpoints import pretrained

_BLOCK = "Transformer/encoderblock_{}/"
_POSEMB = "Transformer/posembed_input/pos_embedding"
# Per-block modules whose PyTorch Linear/LayerNorm maps one to one (weights transposed).
_BLOCK_MODULES = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1", "mlp.fc1": "MlpBlock_0/Dense_0",
                  "mlp.fc2": "MlpBlock_0/Dense_1"}
_TOP_MODULES = {"norm": "Transformer/encoder_norm", "fc_norm": "fc_norm", "head": "head"}
_MOCO_PRETRAINING = "module.base_encoder."


def _torch():
  try:
    import torch
  except ImportError:
    raise pretrained.CheckpointError(
        "Reading a PyTorch checkpoint (.pth) needs PyTorch: pip install torch") from None
  return torch


def read(path: str) -> dict[str, np.ndarray]:
  """The ViT state dict of a PyTorch checkpoint file, unwrapped and with the prefixes of its
  publisher removed (see the module's docstring), as float32 arrays under timm's names."""
  torch = _torch()
  if not os.path.exists(path):
    raise pretrained.CheckpointError(f"Checkpoint file {path} does not exist.")
  try:
    # Tensors and plain containers only (no code runs from the file); MAE's training script
    # stores its argparse.Namespace beside the weights.
    with torch.serialization.safe_globals([argparse.Namespace]):
      checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise pretrained.CheckpointError(
        f"Checkpoint file {path} is not a PyTorch checkpoint that can be read safely ({reason}). "
        "Delete it and download it again.") from None
  return {k: v.detach().float().numpy() for k, v in _state_dict(checkpoint, path).items()}


def _state_dict(checkpoint, path: str) -> dict:
  """The model's tensors: under "model" (MAE), "state_dict" (MoCo v3) or the file itself."""
  state = checkpoint
  if isinstance(state, dict):
    state = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
  if not isinstance(state, dict) or not state or not all(hasattr(v, "detach") for v in state.values()):
    found = ", ".join(map(str, list(checkpoint)[:8])) if isinstance(checkpoint, dict) else type(
        checkpoint).__name__
    raise pretrained.CheckpointError(
        f"Checkpoint file {path} holds no state dict of tensors (looked under 'model', "
        f"'state_dict' and the top level; found {found}).")
  if any(k.startswith(_MOCO_PRETRAINING) for k in state):
    logging.info("MoCo v3 pre-training checkpoint: reading its base encoder without the projection "
                 "MLP; the momentum encoder and the predictor go unused.")
    state = {k[len(_MOCO_PRETRAINING):]: v for k, v in state.items()
             if k.startswith(_MOCO_PRETRAINING) and not k.startswith(_MOCO_PRETRAINING + "head.")}
  return {k.removeprefix("module."): v for k, v in state.items()}


def _is_mae_decoder(key: str) -> bool:
  return key == "mask_token" or key.startswith("decoder_")


def _split_qkv(attention: str, kind: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """timm's fused qkv Linear -> three DenseGeneral projections: its output rows are [q | k | v],
  each head-major, so q's kernel is W_q^T reshaped to (in, heads, head_dim)."""
  head_dim = value.shape[0] // 3 // num_heads
  parts = np.split(value, 3, axis=0)
  if kind == "weight":
    return {f"{attention}{name}/kernel": part.T.reshape(-1, num_heads, head_dim)
            for name, part in zip(("query", "key", "value"), parts)}
  return {f"{attention}{name}/bias": part.reshape(num_heads, head_dim)
          for name, part in zip(("query", "key", "value"), parts)}


def _block_entry(prefix: str, module: str, kind: str, value: np.ndarray,
                 num_heads: int) -> dict[str, np.ndarray] | None:
  attention = prefix + "MultiHeadDotProductAttention_0/"
  if module == "attn.qkv" and value.shape[0] % (3 * num_heads) == 0:
    return _split_qkv(attention, kind, value, num_heads)
  if module == "attn.proj" and kind == "bias":
    return {attention + "out/bias": value}
  if module == "attn.proj" and value.ndim == 2 and value.shape[1] % num_heads == 0:
    return {attention + "out/kernel": value.T.reshape(num_heads, value.shape[1] // num_heads, -1)}
  if module in _BLOCK_MODULES:
    return {prefix + _BLOCK_MODULES[module] + "/" + _param_name(module, kind, value): _linear(value)}
  return None


def _convert(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One PyTorch entry in the model's names; an entry no rule knows keeps its name (and is then
  reported as unexpected)."""
  if key in ("cls_token", "pos_embed"):
    return {"cls" if key == "cls_token" else _POSEMB: value}
  if key == "patch_embed.proj.weight" and value.ndim == 4:
    return {"embedding/kernel": value.transpose(2, 3, 1, 0)}  # OIHW -> HWIO.
  if key == "patch_embed.proj.bias":
    return {"embedding/bias": value}
  if match := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
    converted = _block_entry(_BLOCK.format(match.group(1)), match.group(2), match.group(3), value,
                             num_heads)
    return converted or {key: value}
  if match := re.fullmatch(r"(norm|fc_norm|head)\.(weight|bias)", key):
    module, kind = match.groups()
    return {_TOP_MODULES[module] + "/" + _param_name(module, kind, value): _linear(value)}
  return {key: value}


def _param_name(module: str, kind: str, value: np.ndarray) -> str:
  if kind == "bias":
    return "bias"
  return "scale" if "norm" in module and value.ndim == 1 else "kernel"


def _linear(value: np.ndarray) -> np.ndarray:
  """PyTorch Linear weights are (out, in); Flax kernels (in, out). Vectors stay as they are."""
  return value.T if value.ndim == 2 else value


def to_model_layout(state: dict[str, np.ndarray], model) -> dict[str, np.ndarray]:
  """A state dict from `read` in `model`'s '/'-joined names, with the entries the VPT code leaves
  unused dropped and the fc_norm it initialises added (no shape checks yet)."""
  decoder = sorted(k for k in state if _is_mae_decoder(k))
  if decoder:
    logging.info("Dropping MAE's decoder (%d entries): the encoder does not use it.", len(decoder))
  flat = {}
  for key, value in state.items():
    if not _is_mae_decoder(key):
      flat.update(_convert(key, value, model.architecture.num_heads))
  if model.pool_type == "gap_fc_norm":
    width = model.architecture.width
    if "fc_norm/scale" not in flat and "fc_norm/bias" not in flat:
      # KMnP/vpt's MAE model makes fc_norm afresh (the pre-training file has none) and leaves the
      # file's final norm unused.
      flat["fc_norm/scale"] = np.ones(width, np.float32)
      flat["fc_norm/bias"] = np.zeros(width, np.float32)
    for kind in ("scale", "bias"):
      flat.pop(f"Transformer/encoder_norm/{kind}", None)
  return flat


def load(path: str, model, image_size: int = 224, keep_head: bool = False) -> dict:
  """`model`'s parameters from a PyTorch ViT file (checkpoints.load resolves names to files)."""
  return pretrained.fit(path, to_model_layout(read(path), model), model, image_size, keep_head)
