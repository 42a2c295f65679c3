"""CLIP's text tower from the same files as its image tower (OpenAI's TorchScript `ViT-B-16.pt`,
open_clip's `open_clip_pytorch_model.bin` or `.safetensors`), into
vpt_jax.models.clip_text.TextTransformer's tree.

The text tower sits at the top level of CLIP's state dict, beside `visual.`:

  token_embedding.weight (vocab, width)
  positional_embedding (context_length, width)
  transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2,
                           mlp.c_fc, mlp.c_proj}    the image tower's block layout
  ln_final.{weight, bias}
  text_projection (width, embed_dim)                features @ text_projection
  logit_scale ()                                    log of the logits' temperature

Blocks convert as the image tower's do (clip.py's names, then torch_vit's conversion). The heads
are width // 64, as openai/CLIP's build_model sets them. Every text key is checked against the
layout the file's token embedding and block count imply (and the image model's projection width),
all in one error.
"""

import dataclasses
import logging
import re

import flax.traverse_util
import jax.numpy as jnp
import numpy as np

from vpt_jax.checkpoints import clip, pretrained, torch_vit
from vpt_jax.models import clip_text

# Entries beside the weights that are not text weights: OpenAI's TorchScript archives keep these
# three as tensors, and the causal mask is rebuilt from the tokens.
_NOT_WEIGHTS = ("attn_mask", "input_resolution", "context_length", "vocab_size")
_TOP = {"token_embedding.weight": "token_embedding/embedding", "positional_embedding": "positional_embedding",
        "ln_final.weight": "ln_final/scale", "ln_final.bias": "ln_final/bias", "text_projection": "text_projection"}


@dataclasses.dataclass(frozen=True)
class TextTower:
  model: clip_text.TextTransformer
  params: dict
  logit_scale: float  # The file's, a log: the logits are exp(logit_scale) * cosine similarity.


def _block_shapes(width: int) -> dict[str, tuple]:
  return {"ln_1.weight": (width,), "ln_1.bias": (width,), "attn.in_proj_weight": (3 * width, width),
          "attn.in_proj_bias": (3 * width,), "attn.out_proj.weight": (width, width),
          "attn.out_proj.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
          "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
          "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,)}


def expected_shapes(config: clip_text.TextConfig) -> dict[str, tuple]:
  """The text tower's keys and shapes in CLIP's files for `config`."""
  width = config.width
  shapes = {"token_embedding.weight": (config.vocab_size, width),
            "positional_embedding": (config.context_length, width), "ln_final.weight": (width,),
            "ln_final.bias": (width,), "text_projection": (width, config.embed_dim), "logit_scale": ()}
  for i in range(config.depth):
    shapes.update({f"transformer.resblocks.{i}.{k}": v for k, v in _block_shapes(width).items()})
  return shapes


def _config(state: dict[str, np.ndarray], quick_gelu: bool, embed_dim: int | None,
            num_heads: int | None) -> clip_text.TextConfig:
  vocab_size, width = state["token_embedding.weight"].shape
  blocks = [int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))]
  return clip_text.TextConfig(
      vocab_size=vocab_size,
      context_length=state.get("positional_embedding", np.zeros((clip_text.CONTEXT_LENGTH, 0))).shape[0],
      width=width, depth=max(blocks, default=-1) + 1, num_heads=num_heads or max(width // 64, 1),
      embed_dim=embed_dim or state.get("text_projection", np.zeros((0, width))).shape[-1],
      quick_gelu=quick_gelu)


def _mismatch(path: str, text: dict[str, np.ndarray], expected: dict[str, tuple]) -> str:
  missing = sorted(set(expected) - set(text))
  unexpected = sorted(set(text) - set(expected))
  mismatched = sorted(k for k in set(text) & set(expected) if text[k].shape != expected[k])

  def listing(title, keys, shape_of):
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"{len(keys)} {title} (" + ", ".join(f"{k} {shape_of(k)}" for k in keys[:8]) + more + ")"

  parts = ([listing("missing", missing, lambda k: expected[k])] if missing else []) + (
      [listing("unexpected", unexpected, lambda k: text[k].shape)] if unexpected else []) + (
      [listing("mismatched", mismatched, lambda k: f"{text[k].shape} vs {expected[k]}")] if mismatched else [])
  return f"Checkpoint {path}'s CLIP text tower does not fit: " + "; ".join(parts) + "." if parts else ""


def _convert(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  if key in _TOP:
    return {_TOP[key]: value}
  return torch_vit._convert(clip._rename(key), value, num_heads)


def from_state(path: str, state: dict[str, np.ndarray], quick_gelu: bool, embed_dim: int | None = None,
               num_heads: int | None = None) -> TextTower:
  """The text tower of a CLIP state dict (`path` names it in errors); `embed_dim`: the width its
  projection must have (the image tower's), None: the file's."""
  if "token_embedding.weight" not in state:
    raise pretrained.CheckpointError(
        f"Checkpoint {path} has no CLIP text tower (no token_embedding.weight among its {len(state)} "
        "entries): the zero-shot head needs a whole CLIP model's file, e.g. OpenAI's ViT-B-16.pt or "
        "open_clip's open_clip_pytorch_model.bin.")
  text = {k: v for k, v in state.items() if not k.startswith(clip._VISUAL) and k not in _NOT_WEIGHTS}
  config = _config(state, quick_gelu, embed_dim, num_heads)
  if error := _mismatch(path, text, expected_shapes(config)):
    raise pretrained.CheckpointError(error)
  logging.info("CLIP text tower: %d blocks, width %d, %d heads, vocabulary %d, context %d, embedding %d.",
               config.depth, config.width, config.num_heads, config.vocab_size, config.context_length,
               config.embed_dim)
  flat = {}
  for key, value in text.items():
    if key != "logit_scale":
      flat.update(_convert(key, value, config.num_heads))
  params = flax.traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")
  return TextTower(clip_text.TextTransformer(config), params, float(text["logit_scale"]))


def load(name_or_path: str, image_model, num_heads: int | None = None, cache_dir: str | None = None,
         base_url: str | None = None) -> TextTower:
  """The text tower of a published CLIP name (models/backbones.py) or file, for `image_model`, the
  vit.Model of its image tower: the text tower shares its projection width and its activation,
  which an OpenAI archive decides (QuickGELU, whatever `image_model` says) and open_clip's layout,
  which holds either form, leaves to `image_model`."""
  path = pretrained.resolve(name_or_path, cache_dir, base_url, check=torch_vit.read)
  state = torch_vit.read_state(path)
  quick_gelu = image_model.quick_gelu or clip.is_openai(state)
  if quick_gelu and not image_model.quick_gelu:
    logging.warning("%s is OpenAI's CLIP: its text tower runs with QuickGELU although the image model "
                    "has quick_gelu=False.", path)
  return from_state(path, state, quick_gelu, image_model.projection_dim, num_heads)
