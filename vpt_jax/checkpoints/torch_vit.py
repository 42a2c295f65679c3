"""PyTorch ViT checkpoints in timm's key layout, as facebookresearch/mae, MoCo v3 and DINOv2
publish them, and CLIP's image tower (renamed into that layout by `clip`).

Files understood (docs/checkpoints.md): pickled state dicts (.pth, .pth.tar, .pt, .bin), OpenAI's
TorchScript archives (.pt) and safetensors files (.safetensors, read with the safetensors package
and no torch), holding:
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
  * DINOv2 (`dinov2_vitb14_pretrain.pth`, `dinov2_vitb14_reg4_pretrain.pth`, ...): a bare state
    dict with LayerScale (`blocks.i.ls1.gamma`, `ls2.gamma`), `register_tokens` in the register
    variants, and `mask_token`, iBOT's embedding of masked patches, used only in pre-training and
    dropped here. Its position grid is 37x37 (518 px); another resolution resamples it as
    PETL_Vision loads DINOv2 through timm: bicubic with antialiasing, the class token's row aside.
  * CLIP (OpenAI's `ViT-B-16.pt`, open_clip's `open_clip_pytorch_model.bin` or safetensors): the
    `visual.` tower; its `ln_pre` becomes the model's pre_encoder_norm, `ln_post` the final norm and
    `proj` the projection; the text tower is dropped (`clip`).
  * a bare state dict in the same names.

Names map onto `vit.Model`'s tree: cls_token -> cls, pos_embed -> the position embedding (with the
class token's row), patch_embed.proj -> embedding (OIHW -> HWIO), blocks.i.{norm1, attn.qkv (split
into query, key, value per head), attn.proj, norm2, mlp.fc1, mlp.fc2} -> encoderblock_i, norm ->
encoder_norm, fc_norm, head; blocks.i.ls{1,2}.gamma -> LayerScale_{0,1}, register_tokens ->
registers, norm_pre -> Transformer/pre_encoder_norm, proj -> projection. Anything else is reported
by `pretrained.fit`, all in one error.
"""

import argparse
import logging
import os
import pickle
import re
import zipfile

import numpy as np

from vpt_jax.checkpoints import clip, pretrained
from vpt_jax.checkpoints import description as description_lib
from vpt_jax.models import vit

_BLOCK = "Transformer/encoderblock_{}/"
_POSEMB = "Transformer/posembed_input/pos_embedding"
# Per-block modules whose PyTorch Linear/LayerNorm maps one to one (weights transposed).
_BLOCK_MODULES = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1", "mlp.fc1": "MlpBlock_0/Dense_0",
                  "mlp.fc2": "MlpBlock_0/Dense_1"}
_TOP_MODULES = {"norm": "Transformer/encoder_norm", "fc_norm": "fc_norm", "head": "head",
                "norm_pre": "Transformer/pre_encoder_norm"}
_MOCO_PRETRAINING = "module.base_encoder."


def _torch():
  try:
    import torch
  except ImportError:
    raise pretrained.CheckpointError(
        "Reading a PyTorch checkpoint (.pth) needs PyTorch: pip install torch") from None
  return torch


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    import safetensors
    import safetensors.numpy
  except ImportError:
    raise pretrained.CheckpointError(
        "Reading a safetensors checkpoint needs the safetensors package: pip install safetensors"
    ) from None
  try:
    return safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, OSError, ValueError, TypeError) as e:
    raise pretrained.CheckpointError(
        f"Checkpoint file {path} is not a safetensors file that can be read ({_first_line(e)}). "
        "Delete it and download it again.") from None


def _is_torchscript(path: str) -> bool:
  """OpenAI's CLIP files are TorchScript archives: a zip with the model's code beside its data."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_torch(path: str):
  torch = _torch()
  try:
    if _is_torchscript(path):
      # TorchScript deserialises its own restricted language, not Python pickles; only the
      # weights are kept.
      return torch.jit.load(path, map_location="cpu").state_dict()
    # Tensors and plain containers only (no code runs from the file); MAE's training script
    # stores its argparse.Namespace beside the weights.
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise pretrained.CheckpointError(
        f"Checkpoint file {path} is not a PyTorch checkpoint that can be read safely "
        f"({_first_line(e)}). Delete it and download it again.") from None


def read_state(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a PyTorch or safetensors checkpoint file, unwrapped and with the prefixes of
  its publisher removed (see the module's docstring), as float32 arrays under the file's names
  (CLIP's text tower included: vpt_jax/checkpoints/clip_text.py reads it)."""
  if not os.path.exists(path):
    raise pretrained.CheckpointError(f"Checkpoint file {path} does not exist.")
  if path.endswith(".safetensors"):
    return {k: np.asarray(v, np.float32) for k, v in _read_safetensors(path).items()}
  return {k: v.detach().float().numpy() for k, v in _state_dict(_load_torch(path), path).items()}


def read(path: str) -> dict[str, np.ndarray]:
  """`read_state` under timm's names: CLIP's image tower renamed, its text tower dropped."""
  state = read_state(path)
  return clip.to_timm_names(state) if clip.is_clip(state) else state


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


def _is_mae_decoder(key: str, value: np.ndarray) -> bool:
  """MAE's decoder; its mask token is (1, 1, decoder width), DINOv2's (1, width)."""
  return (key == "mask_token" and value.ndim == 3) or key.startswith("decoder_")


def is_dinov2(state: dict[str, np.ndarray]) -> bool:
  """DINOv2's files, the only ones here with a 2-D mask token (and LayerScale)."""
  return "mask_token" in state and state["mask_token"].ndim == 2


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
  if module in ("ls1", "ls2") and kind == "gamma":
    return {prefix + f"LayerScale_{int(module[-1]) - 1}/scale": value}
  if module in _BLOCK_MODULES:
    return {prefix + _BLOCK_MODULES[module] + "/" + _param_name(module, kind, value): _linear(value)}
  return None


def _convert(key: str, value: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """One PyTorch entry in the model's names; an entry no rule knows keeps its name (and is then
  reported as unexpected)."""
  if key in ("cls_token", "pos_embed", "register_tokens"):
    return {{"cls_token": "cls", "pos_embed": _POSEMB, "register_tokens": "registers"}[key]: value}
  if key == "proj" and value.ndim == 2:
    return {"projection/kernel": value}  # CLIP computes features @ proj: already (in, out).
  if key == "patch_embed.proj.weight" and value.ndim == 4:
    return {"embedding/kernel": value.transpose(2, 3, 1, 0)}  # OIHW -> HWIO.
  if key == "patch_embed.proj.bias":
    return {"embedding/bias": value}
  if match := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", key):
    converted = _block_entry(_BLOCK.format(match.group(1)), match.group(2), match.group(3), value,
                             num_heads)
    return converted or {key: value}
  if match := re.fullmatch(r"(norm|fc_norm|head|norm_pre)\.(weight|bias)", key):
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
  """A state dict from `read` in `model`'s '/'-joined names, with the entries the reference code
  leaves unused dropped and the fc_norm the VPT code initialises added (no shape checks yet)."""
  decoder = sorted(k for k, v in state.items() if _is_mae_decoder(k, v))
  if decoder:
    logging.info("Dropping MAE's decoder (%d entries): the encoder does not use it.", len(decoder))
  unused = set(decoder)
  if is_dinov2(state):
    logging.info("Dropping DINOv2's mask_token: it replaces masked patches in pre-training only.")
    unused.add("mask_token")
  if "proj" in state and not model.projection_dim:
    logging.warning("Dropping CLIP's projection (proj): the model has no projection_dim, so its "
                    "features are ln_post's output, not CLIP's image embedding.")
    unused.add("proj")
  flat = {}
  for key, value in state.items():
    if key not in unused:
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


def resample_posemb_bicubic(posemb: np.ndarray, grid: int) -> np.ndarray:
  """timm's resample_abs_pos_embed, as PETL_Vision loads DINOv2 at 224 px: the square patch grid
  resized to `grid` x `grid` by torch's bicubic interpolation with antialiasing, in float32, the
  class token's row kept aside."""
  torch = _torch()
  old = int(round(np.sqrt(posemb.shape[1] - 1)))
  if old * old != posemb.shape[1] - 1:
    raise pretrained.CheckpointError(f"Cannot resample a position embedding of {posemb.shape[1]} "
                                     "tokens: only square patch grids are supported.")
  logging.info("Resampling the position embedding grid %dx%d -> %dx%d (bicubic, antialiased)",
               old, old, grid, grid)
  patches = torch.from_numpy(np.ascontiguousarray(posemb[0, 1:], np.float32))
  patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
  patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic",
                                            antialias=True)
  patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).numpy()
  return np.concatenate([posemb[:, :1], patches], axis=1)


def _heads(width: int, mlp_dim: int) -> int:
  """A PyTorch file's head count, which its weights do not hold (the fused qkv is (3 width,
  width) whatever the split): the named size of that width and MLP (vit.py's, which follow the
  published configs: timm's, DINOv2's and OpenAI's build_model give width // 64 heads up to L,
  ViT-H 16), else width // 64."""
  return next((arch.num_heads for arch in map(vit.decode_variant, (f"{s}/1" for s in vit.SIZES))
               if (arch.width, arch.mlp_dim) == (width, mlp_dim)), max(width // 64, 1))


def description(path: str, raw: dict[str, np.ndarray]) -> description_lib.Description:
  """What a PyTorch ViT file (`read_state`'s tensors) is. The family fixes what the weights do
  not: DINOv2 trains with exact GELU and LayerNorm epsilon 1e-6, CLIP with epsilon 1e-5 and
  QuickGELU in OpenAI's archives (which keep input_resolution beside the weights) or either form
  in open_clip's layout (its LAION models GELU, its copies of OpenAI's QuickGELU). A timm-layout
  file does not say (MAE and MoCo v3 train with exact GELU; vpt_jax's exports hold any model)."""
  is_clip = clip.is_clip(raw)
  state = clip.to_timm_names(raw) if is_clip else raw
  try:
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
  except (KeyError, ValueError) as e:
    raise pretrained.CheckpointError(
        f"Checkpoint {path} is not a ViT in a layout vpt_jax reads (timm's, DINOv2's, CLIP's): no "
        f"usable {e} entry.") from None
  family = "clip" if is_clip else "dinov2" if is_dinov2(state) else "vit"
  openai = clip.is_openai(raw)
  gelu, gelu_forms, epsilon = {"clip": ("quick" if openai else "erf", ("quick",) if openai else ("erf", "quick"), 1e-5),
                               "dinov2": ("erf", ("erf",), 1e-6),
                               "vit": (None, description_lib.GELU_FORMS, None)}[family]
  proj = state.get("proj")
  return description_lib.Description(
      path=path, family=family, layout="openai" if openai else "open_clip" if is_clip else "timm",
      width=width, depth=len({m.group(1) for m in map(re.compile(r"blocks\.(\d+)\.").match, state) if m}),
      patch=patch, heads=_heads(width, mlp_dim), mlp_dim=mlp_dim,
      pooling="cls" if "cls_token" in state else "gap", fc_norm="fc_norm.weight" in state,
      layer_scale=any(re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k) for k in state),
      registers=state["register_tokens"].shape[1] if "register_tokens" in state else 0,
      pre_norm="norm_pre.weight" in state,
      projection=proj.shape[1] if proj is not None and proj.ndim == 2 else None,
      embedding_bias="patch_embed.proj.bias" in state, gelu=gelu, gelu_forms=gelu_forms,
      norm_epsilon=epsilon)


def load_state(path: str, raw: dict[str, np.ndarray], model, image_size: int = 224,
               keep_head: bool = False) -> dict:
  """`model`'s parameters from the tensors `read_state` gave for `path` (checkpoints.load reads
  the file once)."""
  state = clip.to_timm_names(raw) if clip.is_clip(raw) else raw
  flat = to_model_layout(state, model)
  grid = image_size // model.architecture.patch_size[0]
  if is_dinov2(state) and _POSEMB in flat and flat[_POSEMB].shape[1] != grid * grid + 1:
    flat[_POSEMB] = resample_posemb_bicubic(flat[_POSEMB], grid)
  return pretrained.fit(path, flat, model, image_size, keep_head)
