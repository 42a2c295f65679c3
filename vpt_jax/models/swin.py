"""Swin Transformer (Liu et al. 2021) in Flax Linen, with VPT's prompts as KMnP/vpt puts them.

The architecture is microsoft/Swin-Transformer's models/swin_transformer.py as KMnP/vpt copies it
(src/models/vit_backbones/swin_transformer.py): a 4x4 patch embedding with a LayerNorm, four
stages of blocks that attend inside 7x7 windows (every second block's windows shifted by 3, with
the mask that keeps wrapped-around regions apart), a learned relative position bias per head,
patch merging (2x2 neighbours concatenated, LayerNorm, bias-free linear 4C -> 2C) between stages,
then a final LayerNorm and the mean over all tokens; exact GELU, LayerNorm epsilon 1e-5 (torch's).

The parameter tree uses the original module names, so a `.pth` key maps by one rule
(vpt_jax/checkpoints/swin.py; "layers.i.blocks.j." -> "layers_i_blocks_j/"):

  patch_embed/{proj (HWIO conv), norm}
  layers_{i}_blocks_{j}/{norm1, attn/{qkv, proj, relative_position_bias_table}, norm2, mlp/{fc1, fc2}}
  layers_{i}_downsample/{norm, reduction}       stages 0-2
  norm, head
  prompt/{embeddings, deep_{i}}                VPT only (see `Model`)

VPT on Swin (KMnP/vpt src/models/vit_prompt/swin_transformer.py; docs/protocol.md "VPT on Swin"):
P prompt tokens are prepended after the patch embedding. Inside every block they are split off
after norm1, a copy joins each window (zero relative position bias and no shift mask to or from
them), and their outputs are averaged over the windows before the residual sum and the MLP.
Patch merging tiles the prompts four times along the channels and sends them through the same
norm and reduction. VPT-deep replaces the prompts before every block but the first (stage 0 has
depth_0 - 1 deep sets besides the shallow one; stages 1-3 one per block), and the mean pool
covers the prompt tokens too. One deliberate difference, for batches of more than one image: the
reference pairs window i of the batch with the prompts of example i mod B (it expands the prompts
windows-first while windows are ordered batch-first), which mixes examples' prompts; here each
window gets its own example's prompts. At batch 1 and for VPT-deep in evaluation (the prompts
that carry across blocks then meet a single window per example) the two compute the same.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.models import vit

# Swin-T/S/B/L as microsoft/Swin-Transformer configures them (configs/swin/*.yaml; KMnP/vpt
# build_vit_backbone.py L170-210): stem width, blocks per stage, heads per stage. "mu" is a toy
# size for tests and demos.
_SIZES = {"mu": (16, (1, 1, 1, 1), (1, 2, 4, 8)),
          "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
          "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
          "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
          "L": (192, (2, 2, 18, 2), (6, 12, 24, 48))}
SIZES = tuple(_SIZES)
_VARIANT = re.compile(r"swin_([A-Za-z]+)(?:/(\d+))?(?:/w(\d+))?")
NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which Swin trains with.
MLP_RATIO = 4


def is_variant(variant) -> bool:
  """Whether a variant string names a Swin model (the family is read off the variant)."""
  return isinstance(variant, str) and variant.startswith("swin_")


@dataclasses.dataclass(frozen=True)
class Architecture:
  embed_dim: int
  depths: tuple[int, ...]
  heads: tuple[int, ...]
  patch_size: tuple[int, int]
  window: int

  @property
  def depth(self) -> int:
    """Blocks in all (stochastic depth and partial-k count them in order)."""
    return sum(self.depths)

  @property
  def dims(self) -> tuple[int, ...]:
    return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

  @property
  def width(self) -> int:
    """The pooled feature width (the last stage's)."""
    return self.dims[-1]

  @property
  def num_heads(self) -> int:
    return self.heads[0]


def decode_variant(variant: str) -> Architecture:
  """"swin_B/4/w7" (or "swin_B": patch 4, window 7) -> Architecture."""
  match = _VARIANT.fullmatch(variant or "")
  if not match or match.group(1) not in _SIZES:
    raise ValueError(f"Unknown Swin variant {variant!r}: use swin_SIZE[/PATCH][/wWINDOW] with SIZE "
                     f"one of {', '.join(_SIZES)} (e.g. 'swin_B/4/w7').")
  dim, depths, heads = _SIZES[match.group(1)]
  patch, window = int(match.group(2) or 4), int(match.group(3) or 7)
  return Architecture(dim, depths, heads, (patch, patch), window)


def stage_geometry(arch: Architecture, image_size: int) -> list[tuple[int, int, int]]:
  """(resolution, window, shift) of each stage for square `image_size` inputs, as the reference
  sets them: a stage no larger than the window attends over the whole of it, unshifted
  (SwinTransformerBlock.__init__); one shift of window // 2 for odd blocks otherwise."""
  side = image_size // arch.patch_size[0]
  stages = len(arch.depths)
  if image_size % arch.patch_size[0] or side % 2 ** (stages - 1):
    raise ValueError(f"Swin needs an image size that is a multiple of patch x 2^{stages - 1} = "
                     f"{arch.patch_size[0] * 2 ** (stages - 1)}, not {image_size}.")
  geometry = []
  for i in range(stages):
    resolution = side // 2 ** i
    window = min(arch.window, resolution)
    if resolution % window:
      raise ValueError(f"Swin stage {i} is {resolution}x{resolution} tokens, which {window}x"
                       f"{window} windows do not tile: use an image size whose stages are "
                       f"multiples of the window (224 px for window 7).")
    geometry.append((resolution, window, 0 if resolution <= arch.window else arch.window // 2))
  return geometry


def relative_position_index(window: int) -> np.ndarray:
  """(w^2, w^2) index into the ((2w-1)^2, heads) table: the pair's row offset, shifted to start
  at 0, times (2w - 1), plus the column offset (WindowAttention.__init__)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  relative = coords[:, :, None] - coords[:, None, :] + window - 1
  return relative[0] * (2 * window - 1) + relative[1]


def shift_mask(resolution: int, window: int, shift: int) -> np.ndarray | None:
  """(windows, w^2, w^2) additive mask of a shifted block: -100 between tokens that came from
  different regions of the rolled map, as the reference builds it; None when unshifted."""
  if not shift:
    return None
  regions = np.zeros((resolution, resolution), np.float32)
  bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for a, rows in enumerate(bounds):
    for b, cols in enumerate(bounds):
      regions[rows, cols] = 3 * a + b
  windows = partition(regions[None, :, :, None], window)[..., 0]  # (windows, w^2)
  return np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)


def partition(x, window: int):
  """(B, H, W, C) -> (B * windows, w^2, C), windows ordered row-major within each image."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def unpartition(windows, window: int, b: int, h: int, w: int):
  """The inverse of `partition`."""
  x = windows.reshape(b, h // window, w // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, -1)


def _layer_norm(name, dtype):
  return nn.LayerNorm(epsilon=NORM_EPSILON, dtype=dtype, name=name)


def _dense(features, name, dtype, use_bias=True):
  # timm's trunc_normal_(std=.02) and zero bias, the reference's _init_weights; checkpoints
  # replace them.
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.initializers.truncated_normal(0.02))


class WindowAttention(nn.Module):
  """Multi-head attention inside each window with a learned relative position bias; `prompts`
  leading tokens of every window get no bias and no mask (PromptedWindowAttention)."""
  num_heads: int
  window: int
  prompts: int = 0
  dropout: float = 0.0
  dtype: Any = None
  lora_rank: int = 0
  lora_alpha: float = 0.0

  @nn.compact
  def __call__(self, x, mask, train: bool):
    windows, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = _dense(3 * width, "qkv", self.dtype)(x)
    if self.lora_rank:  # Hu et al.: x A B * alpha / r added to the query and value outputs.
      scale = (self.lora_alpha or self.lora_rank) / self.lora_rank
      updates = []
      for name in ("query", "key", "value"):
        if name == "key":
          updates.append(jnp.zeros_like(x))
          continue
        a = self.param(f"lora_{name}_a", nn.initializers.he_uniform(), (width, self.lora_rank),
                       jnp.float32)
        b = self.param(f"lora_{name}_b", nn.initializers.zeros, (self.lora_rank, width), jnp.float32)
        updates.append(scale * (x @ a.astype(x.dtype)) @ b.astype(x.dtype))
      qkv = qkv + jnp.concatenate(updates, axis=-1)
    q, k, v = jnp.split(qkv.reshape(windows, tokens, 3, self.num_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (windows, tokens, heads, head_dim)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q * head_dim ** -0.5, k)
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads), jnp.float32)
    bias = table[relative_position_index(self.window).reshape(-1)].reshape(
        self.window ** 2, self.window ** 2, self.num_heads).transpose(2, 0, 1)
    bias = jnp.pad(bias, ((0, 0), (self.prompts, 0), (self.prompts, 0)))
    logits = logits.astype(jnp.float32) + bias[None]
    if mask is not None:
      mask = jnp.pad(jnp.asarray(mask), ((0, 0), (self.prompts, 0), (self.prompts, 0)))
      n_windows = mask.shape[0]
      logits = (logits.reshape(-1, n_windows, self.num_heads, tokens, tokens)
                + mask[None, :, None]).reshape(logits.shape)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(windows, tokens, width)
    y = _dense(width, "proj", self.dtype)(y)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


class Mlp(nn.Module):
  hidden: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    width = x.shape[-1]
    x = nn.gelu(_dense(self.hidden, "fc1", self.dtype)(x), approximate=False)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = _dense(width, "fc2", self.dtype)(x)
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class Block(nn.Module):
  """A Swin block on (B, prompts + H*W, C) tokens (prompts first)."""
  num_heads: int
  resolution: int
  window: int
  shift: int
  prompts: int = 0
  dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = None
  lora_rank: int = 0
  lora_alpha: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, _, c = x.shape
    side, p = self.resolution, self.prompts
    shortcut = x
    x = _layer_norm("norm1", self.dtype)(x)
    prompts, x = x[:, :p], x[:, p:].reshape(b, side, side, c)
    if self.shift:
      x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
    windows = partition(x, self.window)
    n_windows = windows.shape[0] // b
    if p:  # Each window gets a copy of its image's prompts in front.
      copies = jnp.broadcast_to(prompts[:, None], (b, n_windows, p, c)).reshape(-1, p, c)
      windows = jnp.concatenate([copies, windows], axis=1)
    y = WindowAttention(self.num_heads, self.window, p, self.dropout, self.dtype, self.lora_rank,
                        self.lora_alpha, name="attn")(
        windows, shift_mask(side, self.window, self.shift), train)
    prompts = y[:, :p].reshape(b, n_windows, p, c).mean(axis=1)  # Averaged over the windows.
    x = unpartition(y[:, p:], self.window, b, side, side)
    if self.shift:
      x = jnp.roll(x, (self.shift, self.shift), axis=(1, 2))
    x = jnp.concatenate([prompts, x.reshape(b, side * side, c)], axis=1)
    x = shortcut + vit.DropPath(self.drop_path)(x, train)
    y = Mlp(MLP_RATIO * c, self.dropout, self.dtype, name="mlp")(
        _layer_norm("norm2", self.dtype)(x), train)
    return x + vit.DropPath(self.drop_path)(y, train)


class PatchMerging(nn.Module):
  """2x2 neighbours concatenated ([0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2], rows
  first), normed and reduced to twice the width; prompts tiled 4x along the channels go through
  the same norm and reduction (PromptedPatchMerging)."""
  resolution: int
  prompts: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    b, _, c = x.shape
    side, p = self.resolution, self.prompts
    prompts, x = x[:, :p], x[:, p:].reshape(b, side, side, c)
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1).reshape(b, -1, 4 * c)
    x = jnp.concatenate([jnp.tile(prompts, (1, 1, 4)), x], axis=1)
    x = _layer_norm("norm", self.dtype)(x)
    return _dense(2 * c, "reduction", self.dtype, use_bias=False)(x)


class PatchEmbed(nn.Module):
  embed_dim: int
  patch_size: tuple[int, int]
  dtype: Any = None

  @nn.compact
  def __call__(self, images):
    x = nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding="VALID",
                dtype=self.dtype, name="proj")(images)
    n, h, w, c = x.shape
    return _layer_norm("norm", self.dtype)(x.reshape(n, h * w, c))


class Prompts(nn.Module):
  """VPT's prompt tokens on Swin: `embeddings` (1, P, C0) after the patch embedding and, for
  VPT-deep, `deep_{i}` (sets, P, C_i) per stage: depth_0 - 1 sets in stage 0, depth_i in the
  others. All start uniform(-v, v) with v = sqrt(6 / (3 * patch_h * patch_w + C0)), the stem
  width even for the wider stages, as the reference does."""
  num_tokens: int
  arch: Architecture
  deep: bool
  dropout: float = 0.0

  @nn.compact
  def __call__(self, batch_size: int, train: bool):
    arch, p = self.arch, self.num_tokens
    bound = (6.0 / (3 * arch.patch_size[0] * arch.patch_size[1] + arch.embed_dim)) ** 0.5
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    drop = lambda x: nn.Dropout(self.dropout)(x, deterministic=not train)
    first = self.param("embeddings", init, (1, p, arch.embed_dim), jnp.float32)
    # The shallow set is expanded to the batch before its dropout (a mask per example); the deep
    # sets are dropped out as they are stored, one mask for the whole batch (forward_features).
    shallow = drop(jnp.broadcast_to(first, (batch_size, p, arch.embed_dim)))
    deep = []
    if self.deep:
      for i, (depth, dim) in enumerate(zip(arch.depths, arch.dims)):
        sets = depth - 1 if i == 0 else depth
        deep.append(drop(self.param(f"deep_{i}", init, (sets, p, dim), jnp.float32)) if sets else None)
    return shallow, deep


class Model(nn.Module):
  """Swin classifier on NHWC images, with `vit.Model`'s call contract: `(logits, aux)`, aux
  "pre_logits" (the pooled features) and "encoded" (all tokens after the final norm, prompts
  first).

  Attributes:
    num_classes: head outputs; 0: no head (logits are the pooled features).
    variant: "swin_SIZE[/PATCH][/wWINDOW]", e.g. "swin_B/4/w7" (patch 4 and window 7 by default).
    depth: every stage gets this many blocks instead of the variant's (small test models).
    dropout: the reference's drop_rate: after the patch embedding, after attention's projection
      and in the MLP (0 in the VPT code's Swin).
    drop_path: stochastic depth, linear over all blocks in order from 0 to this rate (the
      reference's dpr); 0 or None: none.
    head_init, dtype: as `vit.Model`.
    prompt_tokens, prompt_deep, prompt_dropout: VPT on Swin (module docstring).
    peft: only LoRA (lora_rank, lora_alpha) applies to Swin.
    remat: rematerialise each block in the backward pass.
  """
  num_classes: int
  variant: str = "swin_B/4/w7"
  depth: int | None = None
  dropout: float = 0.0
  drop_path: float | None = 0.0
  head_init: str = "zeros"
  dtype: Any = None
  prompt_tokens: int = 0
  prompt_deep: bool = False
  prompt_dropout: float = 0.0
  peft: vit.PeftModules = vit.PeftModules()
  remat: bool = False

  def __post_init__(self):
    unsupported = {f.name for f in dataclasses.fields(vit.PeftModules)
                   if f.name not in ("lora_rank", "lora_alpha")
                   and getattr(self.peft, f.name) != getattr(vit.PeftModules(), f.name)}
    if unsupported:
      raise ValueError(f"The Swin model has none of {sorted(unsupported)}: of the block modules "
                       "only LoRA (lora_rank) applies to it.")
    super().__post_init__()

  @property
  def architecture(self) -> Architecture:
    arch = decode_variant(self.variant)
    if self.depth is not None:
      arch = dataclasses.replace(arch, depths=(self.depth,) * len(arch.depths))
    return arch

  # What code written for `vit.Model` asks of any model.
  has_class_token = False
  pool_type = "gap"

  @nn.compact
  def __call__(self, images, *, train=False, return_attention=False, example_mask=None):
    """`return_attention` is refused (window attention has no per-token map over the image);
    `example_mask` is accepted for the contract (Swin has no batch statistics)."""
    del example_mask
    if return_attention:
      raise ValueError("The Swin model returns no attention maps (attention is per window).")
    arch = self.architecture
    geometry = stage_geometry(arch, images.shape[1])
    x = PatchEmbed(arch.embed_dim, arch.patch_size, self.dtype, name="patch_embed")(images)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    n, p = x.shape[0], self.prompt_tokens
    deep = []
    if p:
      shallow, deep = Prompts(p, arch, self.prompt_deep, self.prompt_dropout, name="prompt")(n, train)
      x = jnp.concatenate([shallow.astype(x.dtype), x], axis=1)
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    total, index = max(arch.depth - 1, 1), 0
    for stage, (depth, heads, (resolution, window, shift)) in enumerate(
        zip(arch.depths, arch.heads, geometry)):
      for j in range(depth):
        if deep and (stage or j):  # A deep set replaces the prompts before every later block.
          prompts = deep[stage][j - 1 if stage == 0 else j]
          x = jnp.concatenate([jnp.broadcast_to(prompts, (n,) + prompts.shape).astype(x.dtype),
                               x[:, p:]], axis=1)
        x = block(heads, resolution, window, shift if j % 2 else 0, p, self.dropout,
                  (self.drop_path or 0.0) * index / total, self.dtype, self.peft.lora_rank,
                  self.peft.lora_alpha, name=f"layers_{stage}_blocks_{j}")(x, train)
        index += 1
      if stage < len(arch.depths) - 1:
        x = PatchMerging(resolution, p, self.dtype, name=f"layers_{stage}_downsample")(x)
    x = _layer_norm("norm", self.dtype)(x)
    pooled = jnp.mean(x, axis=1)  # Over every token, prompts included (AdaptiveAvgPool1d).
    aux = {"encoded": x, "pre_logits": pooled}
    if not self.num_classes:
      return pooled.astype(jnp.float32), aux
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                      **vit._head_initializers(self.head_init, self.num_classes))(pooled)
    return logits.astype(jnp.float32), aux
