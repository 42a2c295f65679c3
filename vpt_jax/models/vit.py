"""Vision Transformer (Dosovitskiy et al. 2021) in Flax Linen.

The parameter tree is the one of Google's ImageNet-21k checkpoints, with Linen's module numbering:

  embedding/{kernel,bias}                 patch embedding, HWIO
  cls                                     class token (pool_type "tok" only)
  Transformer/posembed_input/pos_embedding   (1, tokens, width); added after `cls` is prepended,
                                          so it holds a CLS row when there is a class token
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}
  Transformer/encoder_norm
  pre_logits                              optional tanh representation layer
  head

`vpt_jax.checkpoints` maps both published layouts (vision_transformer and big_vision) onto this tree.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Architecture by size name, as big_vision names them.
_WIDTH = {"mu": 32, "Ti": 192, "S": 384, "M": 512, "B": 768, "L": 1024, "So400m": 1152,
          "H": 1280, "g": 1408, "G": 1664, "e": 1792}
_DEPTH = {"mu": 1, "Ti": 12, "S": 12, "M": 12, "B": 12, "L": 24, "So400m": 27,
          "H": 32, "g": 40, "G": 48, "e": 56}
_MLP_DIM = {"mu": 128, "Ti": 768, "S": 1536, "M": 2048, "B": 3072, "L": 4096, "So400m": 4304,
            "H": 5120, "g": 6144, "G": 8192, "e": 15360}
_HEADS = {"mu": 2, "Ti": 3, "S": 6, "M": 8, "B": 12, "L": 16, "So400m": 16,
          "H": 16, "g": 16, "G": 16, "e": 16}
SIZES = tuple(_WIDTH)


@dataclasses.dataclass(frozen=True)
class Architecture:
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: tuple[int, int]


def decode_variant(variant: str) -> Architecture:
  """"B/16" -> Architecture(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16))."""
  match = re.fullmatch(r"([A-Za-z0-9]+)/(\d+)", variant or "")
  if not match or match.group(1) not in _WIDTH:
    raise ValueError(f"Unknown ViT variant {variant!r}: use SIZE/PATCH with SIZE one of "
                     f"{', '.join(_WIDTH)} (e.g. 'B/16').")
  size, patch = match.group(1), int(match.group(2))
  return Architecture(_WIDTH[size], _DEPTH[size], _MLP_DIM[size], _HEADS[size], (patch, patch))


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train=False):
    width = x.shape[-1]
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    x = nn.gelu(dense(self.mlp_dim, "Dense_0")(x))  # tanh approximation, as Google's ViTs.
    x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
    return dense(width, "Dense_1")(x)


class Attention(nn.Module):
  """Multi-head self-attention with the parameter names of Linen's MultiHeadDotProductAttention."""
  num_heads: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, return_weights=False):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    project = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform())(x)
    q, k, v = project("query"), project("key"), project("value")  # (N, T, H, D)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    # Softmax in float32 so that bfloat16 compute keeps the attention distribution accurate.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    y = jnp.einsum("nhqk,nkhd->nqhd", weights.astype(v.dtype), v)
    y = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out",
                        kernel_init=nn.initializers.xavier_uniform())(y)
    return y, (weights if return_weights else None)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train=False, return_attention=False):
    y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
    y, attention = Attention(self.num_heads, dtype=self.dtype,
                             name="MultiHeadDotProductAttention_0")(y, return_attention)
    y = nn.Dropout(rate=self.dropout)(y, deterministic=not train)
    x = x + y
    y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_1")(x)
    y = MlpBlock(self.mlp_dim, self.dropout, dtype=self.dtype, name="MlpBlock_0")(y, train)
    y = nn.Dropout(rate=self.dropout)(y, deterministic=not train)
    return x + y, attention


class AddPositionEmbs(nn.Module):
  """Learned position embedding over all tokens present (the class token's row included)."""

  @nn.compact
  def __call__(self, x):
    pos_embedding = self.param("pos_embedding", nn.initializers.normal(stddev=x.shape[-1] ** -0.5),
                               (1,) + x.shape[1:], jnp.float32)
    return x + pos_embedding.astype(x.dtype)


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train=False, return_attention=False):
    x = AddPositionEmbs(name="posembed_input")(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
    attentions = []
    for i in range(self.depth):
      x, attention = Encoder1DBlock(self.mlp_dim, self.num_heads, self.dropout, dtype=self.dtype,
                                    name=f"encoderblock_{i}")(x, train, return_attention)
      attentions.append(attention)
    x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
    return x, (attentions if return_attention else None)


class Model(nn.Module):
  """ViT classifier on NHWC images in [-1, 1] (or normalised however the backbone was trained).

  Returns `(logits, aux)`. `aux` holds "pre_logits" (the pooled, optionally represented features),
  "encoded" (all tokens after the final norm) and, with `return_attention`, "attention": one
  (N, heads, tokens, tokens) float32 array per layer.

  Attributes:
    num_classes: classes of the head; 0 means no head (logits are the pre-logit features).
    variant: "SIZE/PATCH" as big_vision names them, e.g. "Ti/16", "B/16", "L/16", "H/14".
    pool_type: "tok" (class token) or "gap" (mean of all tokens after the final norm; no class token).
    representation_size: width of the tanh pre-logits layer, or None for none.
    dropout: dropout rate after the position embedding, inside the MLPs and on both residual branches.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    depth: overrides the variant's depth (small models for tests and demos).
  """
  num_classes: int
  variant: str = "B/16"
  pool_type: str = "tok"
  representation_size: int | None = None
  dropout: float = 0.0
  dtype: Any = None
  depth: int | None = None

  @property
  def architecture(self) -> Architecture:
    arch = decode_variant(self.variant)
    return dataclasses.replace(arch, depth=self.depth) if self.depth is not None else arch

  @property
  def has_class_token(self) -> bool:
    return self.pool_type == "tok"

  @nn.compact
  def __call__(self, images, *, train=False, return_attention=False):
    if self.pool_type not in ("tok", "gap"):
      raise ValueError(f"pool_type must be 'tok' or 'gap', got {self.pool_type!r}")
    arch = self.architecture
    x = nn.Conv(arch.width, arch.patch_size, strides=arch.patch_size, padding="VALID",
                dtype=self.dtype, name="embedding")(images)
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))

    if self.has_class_token:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)).astype(x.dtype), x], axis=1)
    x, attentions = Encoder(arch.depth, arch.mlp_dim, arch.num_heads, self.dropout,
                            dtype=self.dtype, name="Transformer")(x, train, return_attention)
    aux = {"encoded": x}
    pooled = x[:, 0] if self.has_class_token else jnp.mean(x, axis=1)
    if self.representation_size:
      pooled = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                 name="pre_logits")(pooled))
    aux["pre_logits"] = pooled
    if attentions is not None:
      aux["attention"] = attentions
    if not self.num_classes:
      return pooled.astype(jnp.float32), aux
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                      kernel_init=nn.initializers.zeros)(pooled)
    return logits.astype(jnp.float32), aux
