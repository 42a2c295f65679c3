"""CLIP's image tower (OpenAI's files and open_clip's) renamed into timm's ViT names, which
`torch_vit` then converts like any other PyTorch ViT.

OpenAI (`ViT-B-16.pt`, a TorchScript archive; or its state dict) and open_clip
(`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`) share one layout, the whole model
in one state dict: the image tower under `visual.` and the text tower at the top level.

  visual.conv1.weight                      patch embedding, no bias
  visual.class_embedding (D,)              class token
  visual.positional_embedding (T, D)       class token's row first
  visual.ln_pre                            LayerNorm before the blocks
  visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
                                  ln_2, mlp.c_fc, mlp.c_proj}
  visual.ln_post                           LayerNorm of the class token's output
  visual.proj (D, E)                       image embedding, features @ proj (no bias)

`in_proj_weight` is torch.nn.MultiheadAttention's fused (3D, D) [q | k | v] projection, laid out
as timm's qkv. The text tower (issue 25 reads it) is dropped here, every key of it by name.
"""

import logging
import re

import numpy as np

_VISUAL = "visual."
# The text tower and the model-level entries: token embedding, its transformer, final norm and
# projection, CLIP's temperature (and SigLIP-style bias), and what OpenAI's TorchScript archives
# keep as tensors beside the weights.
_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
_TEXT_KEYS = ("positional_embedding", "text_projection", "logit_scale", "logit_bias", "attn_mask",
              "input_resolution", "context_length", "vocab_size")
_BLOCK_RENAMES = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.qkv.weight",
                  "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj": "attn.proj",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP_RENAMES = {"conv1": "patch_embed.proj", "ln_pre": "norm_pre", "ln_post": "norm"}


def is_clip(state: dict) -> bool:
  return _VISUAL + "class_embedding" in state


def is_openai(state: dict) -> bool:
  """OpenAI's TorchScript archives keep input_resolution (and the text tower's context_length and
  vocab_size) as tensors beside the weights; open_clip's state dicts do not. OpenAI's models all
  use QuickGELU, open_clip's layout holds either form."""
  return is_clip(state) and "input_resolution" in state


def is_text_tower(key: str) -> bool:
  return key in _TEXT_KEYS or key.startswith(_TEXT_PREFIXES)


def _rename(key: str) -> str:
  """A `visual.` key (prefix removed) in timm's names; a key no rule knows keeps its name."""
  if match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+?)((?:\.weight|\.bias)?)", key):
    index, module, kind = match.groups()
    if module in _BLOCK_RENAMES:
      return f"blocks.{index}.{_BLOCK_RENAMES[module]}{kind}"
  module, _, kind = key.rpartition(".")
  if module in _TOP_RENAMES:
    return f"{_TOP_RENAMES[module]}.{kind}"
  return {"class_embedding": "cls_token", "positional_embedding": "pos_embed"}.get(key, key)


def to_timm_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The image tower of a CLIP state dict under timm's names; the text tower is dropped, and any
  other key is kept as it is (so that the model's fit reports it)."""
  text = sorted(k for k in state if is_text_tower(k))
  if text:
    logging.info("Dropping CLIP's text tower (%d entries: %s, ...): the image tower is used alone.",
                 len(text), ", ".join(text[:4]))
  out = {}
  for key, value in state.items():
    if is_text_tower(key):
      continue
    name = _rename(key[len(_VISUAL):]) if key.startswith(_VISUAL) else key
    if name == "cls_token":
      value = value.reshape(1, 1, -1)
    elif name == "pos_embed":
      value = value[None]
    out[name] = value
  return out
