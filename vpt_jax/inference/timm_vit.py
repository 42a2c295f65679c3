"""A plain vit.Model as timm's VisionTransformer: the architecture name and keyword arguments for
`timm.create_model(name, pretrained=False, **kwargs)`, and the state dict under timm's keys, so
that `load_state_dict(state, strict=True)` gives the same function of the image.

The keys are those vpt_jax/checkpoints/torch_vit.py reads (the reverse of its mapping), so the
file is also a vpt_jax backbone. Registers (DINOv2 with registers) use timm's no_embed_class
layout, whose position embedding covers the patches only: the class token's row is added to the
class token itself, which is what it adds before the first block.
"""

import numpy as np

from vpt_jax.inference.merge import NotMergeableError
from vpt_jax.utils import paths

# timm's registered ViT of each width (its defaults: LayerNorm epsilon 1e-6, exact GELU); the
# keyword arguments below set the rest of the geometry.
_BY_WIDTH = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224", 768: "vit_base_patch16_224",
             1024: "vit_large_patch16_224", 1280: "vit_huge_patch14_224"}
# CLIP's image towers (LayerNorm epsilon 1e-5, pre-norm, no patch-embedding bias).
_CLIP = {False: "vit_base_patch16_clip_224", True: "vit_base_patch16_clip_quickgelu_224"}


def architecture(model, image_size: int) -> dict:
  """{"model": timm name, "kwargs": {...}} building `model` (a plain vit.Model) in timm."""
  arch = model.architecture
  clip = model.norm_epsilon == 1e-5 and model.pre_norm and not model.embedding_bias
  plain = model.norm_epsilon == 1e-6 and not model.pre_norm and not model.quick_gelu
  if not (clip or plain) or (clip and model.gelu_approximate and not model.quick_gelu):
    raise NotMergeableError(
        f"no timm ViT has this backbone's LayerNorm epsilon {model.norm_epsilon}, pre_norm="
        f"{model.pre_norm}, embedding bias {model.embedding_bias}, quick_gelu={model.quick_gelu} and "
        f"gelu_approximate={model.gelu_approximate}.")
  name = _CLIP[bool(model.quick_gelu)] if clip else _BY_WIDTH.get(arch.width, "vit_base_patch16_224")
  kwargs = {"num_classes": model.num_classes, "img_size": image_size,
            "patch_size": arch.patch_size[0], "embed_dim": arch.width, "depth": arch.depth,
            "num_heads": arch.num_heads, "mlp_ratio": arch.mlp_dim / arch.width,
            "class_token": model.has_class_token,
            "global_pool": "token" if model.pool_type == "tok" else "avg",
            "fc_norm": model.pool_type == "gap_fc_norm"}
  if plain and model.gelu_approximate:
    kwargs["act_layer"] = "gelu_tanh"  # Google's ViTs: tanh GELU; timm's default is the exact one.
  if model.layer_scale:
    kwargs["init_values"] = 1e-5  # Any value makes ls1/ls2; the state dict brings the trained ones.
  if model.register_tokens:
    kwargs["reg_tokens"] = model.register_tokens
    kwargs["no_embed_class"] = True
  return {"model": name, "kwargs": kwargs}


def _linear(layer: dict, prefix: str) -> dict:
  return {f"{prefix}.weight": layer["kernel"].T, f"{prefix}.bias": layer["bias"]}


def _norm(layer: dict, prefix: str) -> dict:
  return {f"{prefix}.weight": layer["scale"], f"{prefix}.bias": layer["bias"]}


def _block(block: dict, prefix: str) -> dict:
  attention = block["MultiHeadDotProductAttention_0"]
  width = attention["query"]["kernel"].shape[0]
  qkv = [attention[n]["kernel"].reshape(width, width).T for n in ("query", "key", "value")]
  out = attention["out"]["kernel"]
  state = {**_norm(block["LayerNorm_0"], f"{prefix}.norm1"),
           f"{prefix}.attn.qkv.weight": np.concatenate(qkv, axis=0),
           f"{prefix}.attn.qkv.bias": np.concatenate([attention[n]["bias"].reshape(width)
                                                      for n in ("query", "key", "value")]),
           f"{prefix}.attn.proj.weight": out.reshape(-1, out.shape[-1]).T,
           f"{prefix}.attn.proj.bias": attention["out"]["bias"],
           **_norm(block["LayerNorm_1"], f"{prefix}.norm2"),
           **_linear(block["MlpBlock_0"]["Dense_0"], f"{prefix}.mlp.fc1"),
           **_linear(block["MlpBlock_0"]["Dense_1"], f"{prefix}.mlp.fc2")}
  for i in (0, 1):
    if f"LayerScale_{i}" in block:
      state[f"{prefix}.ls{i + 1}.gamma"] = block[f"LayerScale_{i}"]["scale"]
  return state


def state_dict(model, params: dict) -> dict[str, np.ndarray]:
  """`params` of the plain `model` under timm's keys, float32 and contiguous."""
  p = paths.unflatten({k: np.asarray(v, np.float32) for k, v in paths.flatten(params).items()})
  encoder = p["Transformer"]
  embedding = p["embedding"]
  pos = encoder["posembed_input"]["pos_embedding"]
  state = {"patch_embed.proj.weight": embedding["kernel"].transpose(3, 2, 0, 1),
           "pos_embed": pos}
  if "bias" in embedding:
    state["patch_embed.proj.bias"] = embedding["bias"]
  elif not model.pre_norm:  # timm's patch embedding has a bias unless pre-norm: a zero one.
    state["patch_embed.proj.bias"] = np.zeros(embedding["kernel"].shape[-1], np.float32)
  if model.has_class_token:
    state["cls_token"] = p["cls"]
  if model.register_tokens:
    state["reg_token"] = p["registers"]
    state["cls_token"], state["pos_embed"] = p["cls"] + pos[:, :1], pos[:, 1:]
  if "pre_encoder_norm" in encoder:
    state.update(_norm(encoder["pre_encoder_norm"], "norm_pre"))
  for i in range(model.architecture.depth):
    state.update(_block(encoder[f"encoderblock_{i}"], f"blocks.{i}"))
  if "encoder_norm" in encoder:
    state.update(_norm(encoder["encoder_norm"], "norm"))
  if "fc_norm" in p:
    state.update(_norm(p["fc_norm"], "fc_norm"))
  if "head" in p:
    state.update(_linear(p["head"], "head"))
  return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}
