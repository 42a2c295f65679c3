"""A tuned ViT folded into a plain one: the same function of the image, with no method module
left, so that any ViT implementation (timm's included) runs it.

What folds exactly (eval mode, dropout off), by the tuned model's own fields rather than the
method's name (so every method that builds such a model merges, two-stage ones included):
  * parameters of the plain tree (full, partial_k, selective_*, bitfit, layernorm, linear, galore,
    lp_ft): they are the plain model already;
  * LoRA: query/value kernels + (alpha / rank) A B;
  * SSF: each scale and shift into the kernel and bias (or LayerNorm) whose output it maps; the
    embedding's shift into the bias (or, without one, the patch rows of the position embedding);
  * FacT (tt, tk): each matrix's update U core V x scale added to its kernel;
  * RepAdapter (linear, before attention and MLP): x -> x M + c folded into the q, k, v and fc1
    kernels and biases that read it;
  * DiffFit: each branch's gamma into the attention output and fc2 kernels and biases;
  * CLIP's bias-free projection: into the head (head(x P) = x (P W) + b).
Prompts, queries, adapters and other non-linear modules, side networks, MLP heads, tanh
pre-logits and heads on L2-normalised features do not: `reason_not_mergeable` says which.
"""

import dataclasses

import numpy as np

from vpt_jax.models import peft as peft_lib
from vpt_jax.models import swin, vit
from vpt_jax.utils import paths


class NotMergeableError(ValueError):
  """The tuned model cannot be written as a plain ViT; the message says why."""


# vit.Model fields that only a tuned model sets, and their plain values.
METHOD_FIELDS = ("prompt_tokens", "prompt_deep", "prompt_dropout", "prompt_project", "prompt_carry",
                 "prompt_layers", "query_tokens", "query_dropout", "peft", "projection_dim",
                 "normalize_features", "head_init")
_RUNTIME_FIELDS = ("dropout", "attn_out_dropout", "embedding_dropout", "drop_path", "attention_impl",
                   "remat", "dtype")


def reason_not_mergeable(model) -> str:
  """Why `model` does not fold into a plain ViT, or "" when it does."""
  if isinstance(model, swin.Model):
    return "a Swin backbone (the merged export writes ViTs only)"
  if model.prompt_tokens:
    return "it adds prompt tokens to the sequence (VPT)"
  if model.query_tokens:
    return "it adds query tokens whose outputs the head reads (VQT)"
  p = model.peft
  if p.adapter_dim:
    return "it adds adapters (a GELU bottleneck on each block's output)"
  for spec in (p.petl_attention, p.petl_mlp):
    if spec is not None and not (spec.kind == "repadapter" and spec.mode == "sequential_before"):
      return f"it adds {spec.kind} modules ({spec.mode}), whose activation does not fold into a weight"
  if p.head_hidden:
    return "its MLP head (Linear, ReLU, BatchNorm) is not a linear head"
  if p.side_network:
    return "it adds a side network (AlexNet) beside the ViT"
  if model.head_init == "zero_shot" or model.normalize_features:
    return "its head reads L2-normalised features, which a plain ViT does not compute"
  if model.representation_size:
    return "it has a tanh pre-logits layer, which timm's ViT lacks"
  if p.ssf and model.pool_type == "gap_fc_norm":
    return "SSF's final scale sits before fc_norm's LayerNorm, which does not absorb it"
  return ""


def plain_model(model) -> vit.Model:
  """The plain ViT with `model`'s architecture and head, in eval mode."""
  defaults = {f.name: f.default for f in dataclasses.fields(vit.Model) if f.name in METHOD_FIELDS + _RUNTIME_FIELDS}
  defaults["dropout"], defaults["drop_path"] = 0.0, 0.0
  return model.clone(**defaults)


def _fold_output_scale(layer: dict, scale, shift, out_axes: int) -> None:
  """`layer`'s output y -> y * scale + shift, over its last `out_axes` kernel axes."""
  shape = layer["kernel"].shape[-out_axes:]
  s, t = np.reshape(scale, shape), np.reshape(shift, shape)
  layer["kernel"] = layer["kernel"] * s
  layer["bias"] = layer["bias"] * s + t


def _pop_ssf(node: dict, name: str):
  ssf = node.pop(f"ssf_{name}")
  return ssf["scale"], ssf["shift"]


def _fold_ssf(tree: dict, model) -> None:
  embedding = tree["embedding"]
  scale, shift = _pop_ssf(tree, "embedding")
  embedding["kernel"] = embedding["kernel"] * scale
  if "bias" in embedding:
    embedding["bias"] = embedding["bias"] * scale + shift
  else:  # The shift reaches the patch tokens only; so does the position embedding's patch part.
    pos = tree["Transformer"]["posembed_input"]
    pos["pos_embedding"] = pos["pos_embedding"].copy()
    pos["pos_embedding"][:, int(model.has_class_token):] += shift
  blocks = [v for k, v in tree["Transformer"].items() if k.startswith("encoderblock_")]
  for block in blocks:
    for norm in ("LayerNorm_0", "LayerNorm_1"):
      scale, shift = _pop_ssf(block, norm)
      block[norm] = {"scale": block[norm]["scale"] * scale, "bias": block[norm]["bias"] * scale + shift}
    attention = block["MultiHeadDotProductAttention_0"]
    for name in ("query", "key", "value"):
      _fold_output_scale(attention[name], *_pop_ssf(attention, name), out_axes=2)
    _fold_output_scale(attention["out"], *_pop_ssf(attention, "out"), out_axes=1)
    mlp = block["MlpBlock_0"]
    for name in ("Dense_0", "Dense_1"):
      _fold_output_scale(mlp[name], *_pop_ssf(mlp, name), out_axes=1)
  norm = tree["Transformer"]["encoder_norm"]
  scale, shift = _pop_ssf(tree, "encoder_norm")
  tree["Transformer"]["encoder_norm"] = {"scale": norm["scale"] * scale, "bias": norm["bias"] * scale + shift}


def _fold_lora(tree: dict, peft) -> None:
  scale = (peft.lora_alpha or peft.lora_rank) / peft.lora_rank
  for key, block in tree["Transformer"].items():
    if key.startswith("encoderblock_"):
      attention = block["MultiHeadDotProductAttention_0"]
      if peft.lora_form == "petl":
        _fold_shared_lora(attention)
        continue
      for name in ("query", "value"):
        a, b = attention.pop(f"lora_{name}_a"), attention.pop(f"lora_{name}_b")
        attention[name]["kernel"] = attention[name]["kernel"] + scale * np.einsum("dr,rhk->dhk", a, b)


def _fold_shared_lora(attention: dict) -> None:
  """PETL_Vision's LoRA (merge_factor 1): down @ up's three width-sized slices into q, k, v."""
  down, up = attention.pop("lora_down"), attention.pop("lora_up")
  for i, name in enumerate(("query", "key", "value")):
    kernel = attention[name]["kernel"]  # (width, heads, head_dim)
    width = kernel.shape[0]
    attention[name]["kernel"] = kernel + (down @ up[:, i * width:(i + 1) * width]).reshape(kernel.shape)


def _fact_updates(fact: dict, fact_type: str, block: int, scale: float) -> dict:
  """Each matrix's kernel update U core V x scale, in its kernel's (in, out) shape (fc1's output
  and fc2's input in four width-sized slices, as peft.fact_delta computes them)."""
  u, v = fact["u"], fact["v"]
  d = u.shape[1]
  cores = peft_lib.fact_cores(fact, fact_type, block)
  updates = {name: u @ np.asarray(cores[name]) @ v * scale for name in ("q", "k", "v", "out")}
  fc1, fc2 = np.asarray(cores["fc1"]), np.asarray(cores["fc2"])
  updates["fc1"] = np.concatenate([u @ fc1[:, i * d:(i + 1) * d] @ v for i in range(4)], axis=1) * scale
  updates["fc2"] = np.concatenate([u @ fc2[i * d:(i + 1) * d] @ v for i in range(4)], axis=0) * scale
  return updates


def _fold_fact(tree: dict, peft) -> None:
  fact = tree["Transformer"].pop("fact")
  if peft.fact_type == "tt":  # FacTParams nests block i's cores under block_i, flattened to block_i_<name>.
    fact = {**{k: v for k, v in fact.items() if not k.startswith("block_")},
            **{f"block_{i}": {name: fact[f"block_{i}_{name}"] for name in ("q", "k", "v", "out", "fc1", "fc2")}
               for i in sorted({int(k.split("_")[1]) for k in fact if k.startswith("block_")})}}
  for key, block in tree["Transformer"].items():
    if not key.startswith("encoderblock_"):
      continue
    updates = _fact_updates(fact, peft.fact_type, int(key.rsplit("_", 1)[1]), peft.fact_scale)
    attention, mlp = block["MultiHeadDotProductAttention_0"], block["MlpBlock_0"]
    for name in ("query", "key", "value"):
      kernel = attention[name]["kernel"]
      attention[name]["kernel"] = kernel + updates[name[0]].reshape(kernel.shape)
    attention["out"]["kernel"] = attention["out"]["kernel"] + updates["out"].reshape(attention["out"]["kernel"].shape)
    mlp["Dense_0"]["kernel"] = mlp["Dense_0"]["kernel"] + updates["fc1"]
    mlp["Dense_1"]["kernel"] = mlp["Dense_1"]["kernel"] + updates["fc2"]


def _repadapter_map(module: dict, spec) -> tuple[np.ndarray, np.ndarray]:
  """RepAdapter as x -> x M + c (peft.RepAdapter without dropout): M = I + s Wd U, c = s (bd U +
  bu), U the block-diagonal matrix of its grouped up-projection."""
  up = module["up_kernel"]  # (groups, bottleneck / groups, width / groups)
  groups, rows, cols = up.shape
  dense_up = np.zeros((groups * rows, groups * cols), up.dtype)
  for g in range(groups):
    dense_up[g * rows:(g + 1) * rows, g * cols:(g + 1) * cols] = up[g]
  width = dense_up.shape[1]
  m = np.eye(width, dtype=up.dtype) + spec.scale * module["down"]["kernel"] @ dense_up
  c = spec.scale * (module["down"]["bias"] @ dense_up + module["up_bias"])
  return m, c


def _fold_input_map(layer: dict, m: np.ndarray, c: np.ndarray) -> None:
  """`layer` reading x M + c instead of x."""
  kernel = layer["kernel"]
  layer["bias"] = layer["bias"] + np.tensordot(c, kernel, axes=1)
  layer["kernel"] = np.tensordot(m, kernel, axes=1)


def _fold_repadapter(tree: dict, peft) -> None:
  for key, block in tree["Transformer"].items():
    if not key.startswith("encoderblock_"):
      continue
    if peft.petl_attention is not None:
      m, c = _repadapter_map(block.pop("petl_attention"), peft.petl_attention)
      for name in ("query", "key", "value"):
        _fold_input_map(block["MultiHeadDotProductAttention_0"][name], m, c)
    if peft.petl_mlp is not None:
      _fold_input_map(block["MlpBlock_0"]["Dense_0"], *_repadapter_map(block.pop("petl_mlp"), peft.petl_mlp))


def _fold_difffit(tree: dict) -> None:
  for key, block in tree["Transformer"].items():
    if key.startswith("encoderblock_"):
      for gamma, layer, axes in (("difffit_0", block["MultiHeadDotProductAttention_0"]["out"], 1),
                                 ("difffit_1", block["MlpBlock_0"]["Dense_1"], 1)):
        g = block.pop(gamma)["gamma"]
        _fold_output_scale(layer, g, np.zeros_like(g), axes)


def _fold_projection(tree: dict) -> None:
  projection = tree.pop("projection")["kernel"]
  tree["head"] = {"kernel": projection @ tree["head"]["kernel"], "bias": tree["head"]["bias"]}


def merge(model, params) -> tuple[vit.Model, dict]:
  """(the plain ViT, its float32 parameters) computing what `model` computes with `params` in
  evaluation; NotMergeableError when it cannot."""
  reason = reason_not_mergeable(model)
  if reason:
    raise NotMergeableError(f"not mergeable: {reason}.")
  tree = paths.unflatten({k: np.asarray(v, np.float32).copy() for k, v in paths.flatten(params).items()})
  p = model.peft
  # Order matters where modules share a layer: LoRA then SSF then FacT map a projection's
  # output as the forward does; RepAdapter maps its input (after all of them); DiffFit the
  # branch's final output.
  if p.lora_rank:
    _fold_lora(tree, p)
  if p.ssf:
    _fold_ssf(tree, model)
  if p.fact_type:
    _fold_fact(tree, p)
  if p.petl_attention is not None or p.petl_mlp is not None:
    _fold_repadapter(tree, p)
  if p.difffit:
    _fold_difffit(tree)
  if model.projection_dim:
    _fold_projection(tree)
  return plain_model(model), tree
