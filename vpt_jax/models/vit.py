"""Vision Transformer (Dosovitskiy et al. 2021) in Flax Linen.

The parameter tree is the one of Google's ImageNet-21k checkpoints, with Linen's module numbering:

  embedding/{kernel,bias}                 patch embedding, HWIO
  cls                                     class token (pool_type "tok" only)
  registers                               register_tokens > 0 only: (1, registers, width)
  Transformer/posembed_input/pos_embedding   (1, tokens, width); added after `cls` is prepended,
                                          so it holds a CLS row when there is a class token
  Transformer/pre_encoder_norm            pre_norm only: CLIP's ln_pre, before the blocks
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}
                                          and, with layer_scale, LayerScale_0, LayerScale_1
  Transformer/encoder_norm                (absent with pool_type "gap_fc_norm")
  fc_norm                                 pool_type "gap_fc_norm" only: the norm of the pooled features
  projection                              projection_dim only: CLIP's bias-free `proj`
  pre_logits                              optional tanh representation layer
  head

`vpt_jax.checkpoints.pretrained` maps both published layouts (vision_transformer and big_vision) onto this tree.
"""

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.models import peft as peft_lib
from vpt_jax.models import side as side_lib

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
POOL_TYPES = ("tok", "gap", "gap_fc_norm")  # See `Model.pool_type`.
LORA_FORMS = ("qv", "petl")  # See `Attention`.


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


# Attention implementations a model accepts: None (explicit einsums), "xla", "cudnn", or "auto".
ATTENTION_IMPLS = (None, "auto", "xla", "cudnn")
# cuDNN's fused (flash) attention has kernels for these compute dtypes only.
_CUDNN_DTYPES = ("bfloat16", "float16")
# Known fault: cuDNN before 9.15.1 can compute a wrong attention backward (or hit an illegal
# address) when the key length is not a multiple of 128, there is no mask, and the kernel is
# replayed from a CUDA graph. Our sequences are 197 tokens (B/16 at 224 px), 247 (50 prompts) and
# up to 397 (200 prompts), and XLA records cuDNN calls into command buffers (CUDA graphs) by
# default. The workaround, applied by launch/device_check.py when the runtime's cuDNN is older:
# XLA_FLAGS=--xla_gpu_enable_command_buffer=-CUDNN,-CUSTOM_CALL (those calls run outside graphs).
CUDNN_COMMAND_BUFFER_FIXED = (9, 15, 1)
CUDNN_COMMAND_BUFFER_WORKAROUND = "--xla_gpu_enable_command_buffer=-CUDNN,-CUSTOM_CALL"


def _dtype_name(dtype) -> str:
  return jnp.dtype(dtype or jnp.float32).name


def check_attention(attention_impl: str | None, dtype) -> None:
  """Refuses an implementation this model cannot run, in one line, before anything compiles."""
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={attention_impl!r} must be one of None (explicit), 'auto', "
                     "'xla' or 'cudnn'.")
  if attention_impl == "cudnn" and _dtype_name(dtype) not in _CUDNN_DTYPES:
    raise ValueError(f"attention_impl='cudnn' needs a bfloat16 or float16 compute dtype (cuDNN's "
                     f"fused attention has no {_dtype_name(dtype)} kernel): set dtype=bfloat16, "
                     "or attention_impl='auto' or None.")


def attention_implementation(attention_impl: str | None, dtype, platform: str | None = None):
  """The implementation a model runs: "auto" is cuDNN's fused attention on a GPU in bfloat16 or
  float16 and the explicit einsums (None) otherwise (on a CPU they are as fast as XLA's fused
  path, and cuDNN has no float32 kernel); other values are checked and kept."""
  check_attention(attention_impl, dtype)
  if attention_impl != "auto":
    return attention_impl
  platform = platform or jax.default_backend()
  return "cudnn" if platform == "gpu" and _dtype_name(dtype) in _CUDNN_DTYPES else None


class ScaleShift(nn.Module):
  """SSF (Lian et al. 2022): a learned per-channel affine map, initialised to the identity."""

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1:]
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    shift = self.param("shift", nn.initializers.zeros, features, jnp.float32)
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def _maybe_ssf(enabled: bool, name: str):
  return ScaleShift(name=f"ssf_{name}") if enabled else (lambda x: x)


class LayerScale(nn.Module):
  """A learned per-channel scale of a residual branch (Touvron et al. 2021; DINOv2's ls1, ls2).
  Initialised to 1e-5, DINOv2's training value; a checkpoint brings its own."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.constant(1e-5), x.shape[-1:], jnp.float32)
    return x * scale.astype(x.dtype)


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = None
  ssf: bool = False
  gelu_approximate: bool = True
  quick_gelu: bool = False  # x * sigmoid(1.702 x), OpenAI CLIP's activation; wins over gelu_approximate.

  @nn.compact
  def __call__(self, x, train=False, fact=None):
    """`fact(name, inputs)`: FacT's update of Dense_0 ("fc1") and Dense_1 ("fc2"), or None."""
    width = x.shape[-1]
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    h = _maybe_ssf(self.ssf, "Dense_0")(dense(self.mlp_dim, "Dense_0")(x))
    x = h if fact is None else h + fact("fc1", x)
    x = x * nn.sigmoid(1.702 * x) if self.quick_gelu else nn.gelu(x, approximate=self.gelu_approximate)
    x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
    y = _maybe_ssf(self.ssf, "Dense_1")(dense(width, "Dense_1")(x))
    return y if fact is None else y + fact("fc2", x)


class Adapter(nn.Module):
  """Bottleneck adapter x + up(GELU(down(x))); the up-projection starts at zero so the block
  starts unchanged. `pfeiffer`: as KMnP/vpt's (src/models/vit_adapter/vit.py): the exact GELU and
  every weight and bias at zero, which leaves the down-projection without gradient (GELU(0) = 0)
  for good, so only the up-projection's bias learns, as in that code."""
  dim: int
  dtype: Any = None
  pfeiffer: bool = False

  @nn.compact
  def __call__(self, x):
    zeros = nn.initializers.zeros
    down_init = dict(kernel_init=zeros) if self.pfeiffer else {}
    y = nn.Dense(self.dim, dtype=self.dtype, name="down", **down_init)(x)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=zeros, name="up")(
        nn.gelu(y, approximate=not self.pfeiffer))
    return x + y


class Attention(nn.Module):
  """Multi-head self-attention with the parameter names of Linen's MultiHeadDotProductAttention.

  `lora_rank` > 0 adds a low-rank update `x A B * lora_alpha / lora_rank` to the query and value
  projections (Hu et al. 2021); B starts at zero, so the output starts unchanged. `lora_form`
  "petl" is OSU-MLB/PETL_Vision's LoRA instead (model/lora.py): one down-projection `lora_down`
  (width -> rank, torch Linear's kaiming_uniform(a=sqrt(5))) shared by query, key and value, read
  through dropout 0.1, and one up-projection `lora_up` (rank -> 3 x width, from zero) whose three
  width-sized slices are added to q, k and v, times merge_factor (1 in training; lora_alpha is
  not read).
  `queries` (VQT, Tu et al. 2023) are extra tokens that attend to the tokens of `x` through the
  same projections while no token attends to them; their outputs come back apart, and the
  outputs of `x` are computed exactly as without them.
  """
  num_heads: int
  dtype: Any = None
  lora_rank: int = 0
  lora_alpha: float = 0.0
  ssf: bool = False
  attention_impl: str | None = None
  lora_form: str = "qv"

  @nn.compact
  def __call__(self, x, return_weights=False, queries=None, fact=None, train=False):
    """`fact(name, inputs)`: FacT's update of the query, key, value ("q", "k", "v") and output
    ("out") projections, added to their outputs (PETL_Vision model/attention.py), or None.
    `train`: PETL_Vision's LoRA applies its dropout."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    projections = {name: nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name,
                                         kernel_init=nn.initializers.xavier_uniform())
                   for name in ("query", "key", "value")}
    if self.lora_form not in LORA_FORMS:
      raise ValueError(f"lora_form={self.lora_form!r} must be one of {', '.join(LORA_FORMS)}.")
    qv_lora = self.lora_rank and self.lora_form == "qv"
    lora = {name: (self.param(f"lora_{name}_a", nn.initializers.he_uniform(),
                              (width, self.lora_rank), jnp.float32),
                   self.param(f"lora_{name}_b", nn.initializers.zeros,
                              (self.lora_rank, self.num_heads, head_dim), jnp.float32))
            for name in ("query", "value")} if qv_lora else {}
    shared_lora = None
    if self.lora_rank and self.lora_form == "petl":
      down = self.param("lora_down", peft_lib.TORCH_LINEAR, (width, self.lora_rank), jnp.float32)
      up = self.param("lora_up", nn.initializers.zeros, (self.lora_rank, 3 * width), jnp.float32)
      lora_dropout = nn.Dropout(peft_lib.DROPOUT)

      def shared_lora(inputs):  # (N, T, 3, H, D): the q, k and v updates of one dropout draw.
        h = lora_dropout(inputs, deterministic=not train) @ down.astype(inputs.dtype)
        return (h @ up.astype(inputs.dtype)).reshape(inputs.shape[:2] + (3, self.num_heads, head_dim))
    ssf = {name: ScaleShift(name=f"ssf_{name}") for name in ("query", "key", "value")
           } if self.ssf else {}

    def project(name, inputs, shared_delta=None):
      y = projections[name](inputs)
      if name in lora:
        a, b = lora[name]
        scale = (self.lora_alpha or self.lora_rank) / self.lora_rank
        y = y + scale * jnp.einsum("ntd,dr,rhk->nthk", inputs, a.astype(inputs.dtype),
                                   b.astype(inputs.dtype))
      if name in ssf:
        y = ssf[name](y.reshape(y.shape[:2] + (width,))).reshape(y.shape)
      if fact is not None:
        y = y + fact(name[0], inputs).reshape(y.shape)
      if shared_delta is not None:  # PETL_Vision adds it last, after SSF and FacT.
        y = y + shared_delta[:, :, ("query", "key", "value").index(name)].astype(y.dtype)
      return y

    def explicit(q, k, v):
      logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
      # Softmax in float32 so that bfloat16 compute keeps the attention distribution accurate.
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      return jnp.einsum("nhqk,nkhd->nqhd", weights.astype(v.dtype), v), weights

    delta = None if shared_lora is None else shared_lora(x)
    q, k, v = (project(name, x, delta) for name in ("query", "key", "value"))  # (N, T, H, D)
    weights = None
    if return_weights or self.attention_impl is None:
      y, weights = explicit(q, k, v)
    else:  # Fused kernel ("cudnn": flash attention on NVIDIA GPUs; "xla": XLA's own).
      y = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out",
                          kernel_init=nn.initializers.xavier_uniform())
    out_ssf = _maybe_ssf(self.ssf, "out")

    def output(y):
      z = out_ssf(out(y))
      return z if fact is None else z + fact("out", y.reshape(y.shape[:2] + (width,)))
    query_outputs = None
    if queries is not None:
      query_delta = None if shared_lora is None else shared_lora(queries)
      query_outputs = output(explicit(project("query", queries, query_delta), k, v)[0])
    return output(y), weights, query_outputs


@dataclasses.dataclass(frozen=True)
class PeftModules:
  """Parameter-efficient modules inside every block (LoRA, adapters, SSF); all start as the
  identity, so the pre-trained model's outputs are unchanged at step 0. Adapters: "houlsby" after
  attention and after the MLP; "pfeiffer" (the VPT code's) after the MLP only.
  Mai et al.'s (OSU-MLB/PETL_Vision, vpt_jax/models/peft.py): a module on the attention and/or
  MLP branch (`petl_attention`, `petl_mlp`), DiffFit's per-channel gammas on both branches, FacT
  ("tk" or "tt", rank `fact_dim`, update scale `fact_scale`); not all of these start as the
  identity (random-initialised adapters do not)."""
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_form: str = "qv"  # "petl": PETL_Vision's shared q/k/v LoRA (`Attention`).
  adapter_dim: int = 0
  ssf: bool = False
  adapter_style: str = "houlsby"
  petl_attention: peft_lib.Insert | None = None
  petl_mlp: peft_lib.Insert | None = None
  difffit: bool = False
  fact_type: str = ""
  fact_dim: int = 0
  fact_scale: float = 1.0
  head_hidden: int = 0  # Hidden layers of the VPT code's MLP head before the head (mlp_k: k - 1).
  side_network: bool = False  # Sidetune's AlexNet side network, mixed into the features (side.py).


class DropPath(nn.Module):
  """Stochastic depth as timm's DropPath: in training, each example's branch output is zeroed
  with probability `rate` and the kept ones are scaled by 1 / (1 - rate)."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, y, train: bool):
    if not train or self.rate == 0.0:  # Rate 0 leaves the block's arithmetic untouched.
      return y
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return y * (mask.astype(y.dtype) / keep)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block; adapters sit on both branches before the residual sum."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = None
  peft: PeftModules = PeftModules()
  attention_impl: str | None = None
  attn_out_dropout: float | None = None  # None: `dropout`.
  gelu_approximate: bool = True
  layer_scale: bool = False
  norm_epsilon: float = 1e-6
  quick_gelu: bool = False
  drop_path: float = 0.0  # This block's stochastic-depth rate on both residual branches.
  block_index: int = 0  # Which of FacT's per-block cores this block uses.

  @nn.compact
  def __call__(self, x, train=False, return_attention=False, queries=None, fact_params=None):
    """(x, attention weights or None, query outputs or None); `queries` (VQT) pass through the
    block reading `x` but are never read by it. `fact_params`: FacT's, shared by all blocks."""
    ssf = self.peft.ssf
    norm_0 = nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, name="LayerNorm_0")
    ssf_0 = _maybe_ssf(ssf, "LayerNorm_0")
    attention = Attention(self.num_heads, dtype=self.dtype, lora_rank=self.peft.lora_rank,
                          lora_alpha=self.peft.lora_alpha, ssf=ssf,
                          attention_impl=self.attention_impl, lora_form=self.peft.lora_form,
                          name="MultiHeadDotProductAttention_0")
    pfeiffer = self.peft.adapter_style == "pfeiffer"
    adapter_attention = (Adapter(self.peft.adapter_dim, dtype=self.dtype, name="adapter_attention")
                         if self.peft.adapter_dim and not pfeiffer else (lambda y: y))
    attn_out_dropout = self.dropout if self.attn_out_dropout is None else self.attn_out_dropout
    dropout_attention = nn.Dropout(rate=attn_out_dropout)
    norm_1 = nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, name="LayerNorm_1")
    ssf_1 = _maybe_ssf(ssf, "LayerNorm_1")
    mlp = MlpBlock(self.mlp_dim, self.dropout, dtype=self.dtype, ssf=ssf,
                   gelu_approximate=self.gelu_approximate, quick_gelu=self.quick_gelu,
                   name="MlpBlock_0")
    # LayerScale multiplies the block's own branch output; an adapter then sees what the
    # pre-trained block adds to the residual stream (and starts as the identity on it).
    scale_0, scale_1 = ((LayerScale(name="LayerScale_0"), LayerScale(name="LayerScale_1"))
                        if self.layer_scale else (lambda y: y, lambda y: y))
    adapter_mlp = (Adapter(self.peft.adapter_dim, dtype=self.dtype, pfeiffer=pfeiffer,
                           name="adapter_mlp") if self.peft.adapter_dim else (lambda y: y))
    dropout_mlp = nn.Dropout(rate=self.dropout)
    drop_path_0, drop_path_1 = DropPath(self.drop_path), DropPath(self.drop_path)
    petl_0, petl_1 = self.peft.petl_attention, self.peft.petl_mlp
    petl_module_0 = peft_lib.petl_module(petl_0, self.dtype, "petl_attention")
    petl_module_1 = peft_lib.petl_module(petl_1, self.dtype, "petl_mlp")
    difffit_0, difffit_1 = ((peft_lib.DiffFitScale(name="difffit_0"),
                             peft_lib.DiffFitScale(name="difffit_1"))
                            if self.peft.difffit else (lambda y: y, lambda y: y))
    fact_0 = fact_1 = None
    if self.peft.fact_type:
      cores = peft_lib.fact_cores(fact_params, self.peft.fact_type, self.block_index)
      # FacT's per-block dropouts, one per branch (model/fact.py per_block_para).
      drops = nn.Dropout(peft_lib.DROPOUT), nn.Dropout(peft_lib.DROPOUT)
      fact_0, fact_1 = (
          lambda name, h, drop=drop: peft_lib.fact_delta(
              fact_params, cores, name, h, lambda z: drop(z, deterministic=not train),
              self.peft.fact_scale) for drop in drops)

    outputs = {}

    def attend(normed):
      y, outputs["weights"], outputs["query_y"] = attention(
          normed, return_attention, None if queries is None else ssf_0(norm_0(queries)), fact_0, train)
      return y

    y = peft_lib.petl_branch(petl_0, petl_module_0, attend, x, ssf_0(norm_0(x)), train)

    def rest(x, y, petl=True):
      x = x + drop_path_0(dropout_attention(difffit_0(adapter_attention(scale_0(y))),
                                            deterministic=not train), train)
      normed = ssf_1(norm_1(x))
      y = (peft_lib.petl_branch(petl_1, petl_module_1, lambda n: mlp(n, train, fact_1), x, normed, train)
           if petl else mlp(normed, train, fact_1))
      y = difffit_1(adapter_mlp(scale_1(y)))
      return x + drop_path_1(dropout_mlp(y, deterministic=not train), train)
    # VQT's queries take the plain branches (PETL_Vision's modules are not combined with them).
    return (rest(x, y), outputs["weights"],
            None if queries is None else rest(queries, outputs["query_y"], petl=False))


class AddPositionEmbs(nn.Module):
  """Learned position embedding over all tokens present (the class token's row included)."""

  @nn.compact
  def __call__(self, x):
    pos_embedding = self.param("pos_embedding", nn.initializers.normal(stddev=x.shape[-1] ** -0.5),
                               (1,) + x.shape[1:], jnp.float32)
    return x + pos_embedding.astype(x.dtype)


def insert_prompts(x, prompts, start: int, replace: bool):
  """The prompt-prepending wrapper around a layer: puts `prompts` (N, P, D) at token `start`.

  With `replace`, the P tokens already there (the previous layer's prompt outputs) are discarded.
  """
  rest = x[:, start + prompts.shape[1]:] if replace else x[:, start:]
  return jnp.concatenate([x[:, :start], prompts.astype(x.dtype), rest], axis=1)


def remove_prompts(x, start: int, count: int):
  """The tokens of `x` without the `count` prompt outputs at token `start`."""
  return jnp.concatenate([x[:, :start], x[:, start + count:]], axis=1)


class Encoder(nn.Module):
  """Position embedding, blocks and final norm; optionally with visual prompts (VPT) or visual
  queries (VQT).

  `prompts` is (layers, N, P, D) or None. Layer 0's prompts go after the class token (if any) and
  the register tokens and before the patches, after the position embedding (prompts get none).
  `registers` (N, R, D) or None: DINOv2's register tokens, inserted after the class token once the
  position embedding is added (they get none), as DINOv2's prepare_tokens_with_masks does. With more than one set
  (VPT-deep), set i replaces the prompt outputs of layer i-1 before layer i.
  `prompt_from`: the block the first set enters (set j enters block prompt_from + j).
  `prompt_carry` False: each set's outputs are removed after the block it entered, as
  OSU-MLB/PETL_Vision's forward_features does (so a single set acts in one block only); True
  (KMnP/vpt): they go on to the next block, where a later set replaces them.
  `queries` is (layers, N, Q, D) or None: set i goes through layer i beside its tokens (reading
  them, unread by them), and its outputs are returned per layer, without the final norm.
  """
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = None
  peft: PeftModules = PeftModules()
  attention_impl: str | None = None
  remat: bool = False
  attn_out_dropout: float | None = None
  gelu_approximate: bool = True
  embedding_dropout: float | None = None  # None: `dropout`.
  final_norm: bool = True  # False: the tokens leave unnormalised (the model normalises the pool).
  layer_scale: bool = False
  norm_epsilon: float = 1e-6
  quick_gelu: bool = False
  pre_norm: bool = False  # A LayerNorm before the blocks (CLIP's ln_pre); prompts enter after it.
  # Stochastic depth: block i drops its branches at drop_path x i / (depth - 1), timm's
  # linear-in-depth rule (VisionTransformer: torch.linspace(0, drop_path_rate, depth)).
  drop_path: float = 0.0
  prompt_from: int = 0
  prompt_carry: bool = True

  @nn.compact
  def __call__(self, x, prompts=None, prompt_start=0, train=False, return_attention=False,
               queries=None, registers=None):
    x = AddPositionEmbs(name="posembed_input")(x)
    if registers is not None:
      x = jnp.concatenate([x[:, :1], registers.astype(x.dtype), x[:, 1:]], axis=1)
    embedding_dropout = self.dropout if self.embedding_dropout is None else self.embedding_dropout
    x = nn.Dropout(rate=embedding_dropout)(x, deterministic=not train)
    if self.pre_norm:
      x = nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, name="pre_encoder_norm")(x)
    # Rematerialisation recomputes each block's activations in the backward pass: less memory
    # for large batches, same parameter tree.
    block = nn.remat(Encoder1DBlock, static_argnums=(2, 3)) if self.remat else Encoder1DBlock
    fact_params = (peft_lib.FacTParams(self.peft.fact_type, self.peft.fact_dim, self.depth,
                                       name="fact")(x.shape[-1]) if self.peft.fact_type else None)
    attentions, query_outputs = [], []
    for i in range(self.depth):
      entering = i - self.prompt_from
      prompted = prompts is not None and 0 <= entering < len(prompts)
      if prompted:
        x = insert_prompts(x, prompts[entering], prompt_start,
                           replace=self.prompt_carry and entering > 0)
      x, attention, query_output = block(
          self.mlp_dim, self.num_heads, self.dropout, dtype=self.dtype, peft=self.peft,
          attention_impl=self.attention_impl, attn_out_dropout=self.attn_out_dropout,
          gelu_approximate=self.gelu_approximate, layer_scale=self.layer_scale,
          norm_epsilon=self.norm_epsilon, quick_gelu=self.quick_gelu,
          drop_path=self.drop_path * i / max(self.depth - 1, 1), block_index=i,
          name=f"encoderblock_{i}")(
              x, train, return_attention, None if queries is None else queries[i], fact_params)
      if prompted and not self.prompt_carry:
        x = remove_prompts(x, prompt_start, prompts.shape[2])
      attentions.append(attention)
      query_outputs.append(query_output)
    if self.final_norm:
      x = nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, name="encoder_norm")(x)
    return (x, attentions if return_attention else None,
            query_outputs if queries is not None else None)


class VisualPrompts(nn.Module):
  """Learned prompt tokens (Jia et al. 2022): one set for VPT-shallow, one per layer for VPT-deep.

  Initialised uniform(-v, v) with v = sqrt(6 / (3 * patch_h * patch_w + prompt_dim)), as the
  reference code does; an optional linear projection maps prompt_dim to the model width.
  """
  num_tokens: int
  num_sets: int
  width: int
  patch_size: tuple[int, int]
  dropout: float = 0.0
  project_dim: int | None = None

  @nn.compact
  def __call__(self, batch_size, train=False):
    prompt_dim = self.project_dim or self.width
    bound = (6.0 / (3 * self.patch_size[0] * self.patch_size[1] + prompt_dim)) ** 0.5
    symmetric_uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    prompts = self.param("embeddings", symmetric_uniform,
                         (self.num_sets, self.num_tokens, prompt_dim), jnp.float32)
    if self.project_dim:
      prompts = nn.Dense(self.width, name="projection")(prompts)
    prompts = jnp.broadcast_to(prompts[:, None], (self.num_sets, batch_size) + prompts.shape[1:])
    # Expanded to the batch first, so each example gets its own dropout mask.
    return nn.Dropout(rate=self.dropout)(prompts, deterministic=not train)


def _l2_normalize(x):
  """torch.nn.functional.normalize: x / max(||x||, 1e-12), in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _head_initializers(head_init: str, num_classes: int) -> dict:
  if head_init == "zeros":
    return dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
  if head_init == "vpt":  # KMnP/vpt src/models/mlp.py: kaiming_normal_(fan_out), special_bias.
    return dict(kernel_init=nn.initializers.normal(stddev=(2.0 / num_classes) ** 0.5),
                bias_init=nn.initializers.constant(-math.log((1 - 0.01) / 0.01)))
  if head_init == "zero_shot":  # Placeholder: the train state sets CLIP's classifier (training/zero_shot.py).
    return dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
  raise ValueError(f"head_init={head_init!r} must be 'zeros', 'vpt' or 'zero_shot'.")


class Model(nn.Module):
  """ViT classifier on NHWC images in [-1, 1] (or normalised however the backbone was trained).

  Returns `(logits, aux)`. `aux` holds "pre_logits" (the pooled, optionally represented features),
  "encoded" (all tokens after the final norm) and, with `return_attention`, "attention": one
  (N, heads, tokens, tokens) float32 array per layer.

  Attributes:
    num_classes: classes of the head; 0 means no head (logits are the pre-logit features).
    variant: "SIZE/PATCH" as big_vision names them, e.g. "Ti/16", "B/16", "L/16", "H/14".
    pool_type: "tok" (class token) or "gap" (mean of the patch tokens after the final norm, prompt
      tokens excluded; no class token), or "gap_fc_norm": MAE's global pooling as KMnP/vpt uses it
      (vit_backbones/vit_mae.py, VIT_POOL_TYPE "original"): the class token goes through the
      blocks, the features are the mean of every token after it, prompts included, and a
      LayerNorm of its own, `fc_norm`, replaces the encoder's final norm (so "encoded" holds the
      unnormalised tokens).
    representation_size: width of the tanh pre-logits layer, or None for none.
    dropout: dropout rate after the position embedding, inside the MLPs (after the GELU) and on
      both residual branches, as Google's ViT; 0 is the frozen-backbone "eval mode".
    attn_out_dropout: the rate on the attention branch instead (None: `dropout`); the ViT of the
      VPT code bases has none there (its proj_dropout is 0).
    gelu_approximate: the tanh form of GELU (Google's ViTs, the checkpoints' own) rather than the
      exact erf form (PyTorch's, the VPT code bases').
    head_init: "zeros" (Google's fine-tuning) or "vpt": kernel normal with std
      sqrt(2 / num_classes) (kaiming, fan_out), bias -log(99) (prior 0.01), as the VPT code's head,
      or "zero_shot": CLIP's zero-shot classifier of the task's class names, which the train state
      sets from the backbone's own text tower (vpt_jax/training/zero_shot.py; `init` gives zeros);
      it implies `normalize_features`, as PETL_Vision's ClassificationHead(normalize=True).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    depth: overrides the variant's depth (small models for tests and demos).
    prompt_tokens: number of visual prompt tokens (0: no prompts). Sequence: [CLS, prompts, patches].
    prompt_deep: a prompt set for every layer (VPT-deep) rather than one after the embedding.
    prompt_carry: prompt outputs go on to the next block (KMnP/vpt's VPT, the VPT paper's) or,
      False, are removed after the block their set entered (OSU-MLB/PETL_Vision's model/vpt.py
      with vision_transformer.py forward_features: its VPT-shallow prompts act in block 0 only).
    prompt_layers: prompts enter at block depth - prompt_layers, VPT-deep's sets one per block
      from there (PETL_Vision's vpt_layer: the last k blocks); None: from block 0.
    prompt_dropout: dropout on the prompt tokens while training.
    prompt_project: prompt width before a learned projection to the model width (None: no
      projection).
    peft: LoRA, adapters and SSF inside the blocks.
    attention_impl: None computes attention explicitly; "xla" or "cudnn" use
      jax.nn.dot_product_attention with that implementation (fused) when no weights are returned;
      "auto" picks cuDNN on a GPU in bfloat16/float16, else explicit (`attention_implementation`).
      "cudnn" with a float32 dtype is refused when the model is built (cuDNN has no such kernel).
    remat: rematerialise each block in the backward pass (less memory, ~1/3 more compute).
    embedding_dropout: the rate after the position embedding instead (None: `dropout`); VQT's
      code trains with its backbone in eval mode but its embedding dropout (0.1) active.
    query_tokens: VQT's learned queries per layer (0: none). They read each layer's tokens and
      are read by none; the head sees [L2-normalised CLS output, then per layer the
      L2-normalised flattened query outputs] (andytu28/VQT, concat combiner).
    query_dropout: dropout on the queries while training.
    layer_scale: a learned per-channel scale on each block's attention and MLP outputs (DINOv2's
      LayerScale, `ls1`/`ls2`).
    register_tokens: learned tokens after the class token that get no position embedding and are
      not pooled (DINOv2 with registers, Darcet et al. 2024). Sequence: [CLS, registers, prompts,
      patches]. Attention does not see token order, so prompts before or after the registers
      compute the same; this order keeps [CLS, registers] a fixed prefix, as timm's prefix tokens.
    pre_norm: a LayerNorm after the position embedding, before the blocks (CLIP's `ln_pre`).
    quick_gelu: x * sigmoid(1.702 x) in the MLPs (OpenAI CLIP's QuickGELU) instead of GELU.
    norm_epsilon: every LayerNorm's epsilon: 1e-6 (Google's, timm's ViTs, DINOv2) or 1e-5
      (PyTorch's default, CLIP's).
    embedding_bias: the patch embedding has a bias (CLIP's `conv1` has none).
    projection_dim: a bias-free linear map of the pooled features to this width (CLIP's `proj`,
      which gives the image embedding) before pre_logits and the head; None: none.
    normalize_features: the head sees the features L2-normalised (and so does aux["pre_logits"]):
      CLIP's zero-shot classifier, cosine similarity times the logit scale (models/clip_text.py),
      as PETL_Vision's ClassificationHead(normalize=True) applies it after `proj`.
    drop_path: stochastic depth in training (timm's DropPath on each block's attention and MLP
      branches), linear in depth from 0 at the first block to this rate at the last; 0 or None
      (a config that leaves it to a recipe that sets none): none.
  """
  num_classes: int
  variant: str = "B/16"
  pool_type: str = "tok"
  representation_size: int | None = None
  dropout: float = 0.0
  attn_out_dropout: float | None = None
  gelu_approximate: bool = True
  head_init: str = "zeros"
  dtype: Any = None
  depth: int | None = None
  prompt_tokens: int = 0
  prompt_deep: bool = False
  prompt_dropout: float = 0.0
  prompt_project: int | None = None
  prompt_carry: bool = True
  prompt_layers: int | None = None
  peft: PeftModules = PeftModules()
  attention_impl: str | None = None
  remat: bool = False
  embedding_dropout: float | None = None
  query_tokens: int = 0
  query_dropout: float = 0.0
  layer_scale: bool = False
  register_tokens: int = 0
  pre_norm: bool = False
  quick_gelu: bool = False
  norm_epsilon: float = 1e-6
  embedding_bias: bool = True
  projection_dim: int | None = None
  normalize_features: bool = False
  drop_path: float | None = 0.0

  def __post_init__(self):
    check_attention(self.attention_impl, self.dtype)  # A config error, not a crash at compile.
    super().__post_init__()

  @property
  def architecture(self) -> Architecture:
    arch = decode_variant(self.variant)
    return dataclasses.replace(arch, depth=self.depth) if self.depth is not None else arch

  @property
  def has_class_token(self) -> bool:
    return self.pool_type in ("tok", "gap_fc_norm")

  def _prompt_from(self, depth: int) -> int:
    """The block the prompts enter (`prompt_layers`)."""
    if self.prompt_layers is None:
      return 0
    if not 1 <= self.prompt_layers <= depth:
      raise ValueError(f"prompt_layers={self.prompt_layers} must be between 1 and the model depth {depth}.")
    return depth - self.prompt_layers

  @nn.compact
  def __call__(self, images, *, train=False, return_attention=False, example_mask=None):
    """`example_mask` (N,) bool, False on a padded batch's padding: the MLP head's BatchNorm
    (peft.head_hidden) takes its statistics over the real examples only."""
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"pool_type must be 'tok' or 'gap' or 'gap_fc_norm', got {self.pool_type!r}.")
    if self.register_tokens and not self.has_class_token:
      raise ValueError("register_tokens sit after the class token: use pool_type 'tok'.")
    arch = self.architecture
    x = nn.Conv(arch.width, arch.patch_size, strides=arch.patch_size, padding="VALID",
                use_bias=self.embedding_bias, dtype=self.dtype, name="embedding")(images)
    x = _maybe_ssf(self.peft.ssf, "embedding")(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))

    if self.has_class_token:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)).astype(x.dtype), x], axis=1)
    registers = None
    if self.register_tokens:
      registers = self.param("registers", nn.initializers.normal(stddev=1e-6),
                             (1, self.register_tokens, c), jnp.float32)
      registers = jnp.broadcast_to(registers, (n, self.register_tokens, c))
    prefix_tokens = int(self.has_class_token) + self.register_tokens
    prompts, prompt_from = None, self._prompt_from(arch.depth)
    if self.prompt_tokens:
      prompts = VisualPrompts(self.prompt_tokens, arch.depth - prompt_from if self.prompt_deep else 1,
                              c, arch.patch_size, self.prompt_dropout, self.prompt_project,
                              name="prompt")(n, train)
    queries = None
    if self.query_tokens:
      if self.pool_type != "tok":
        raise ValueError("VQT (query_tokens > 0) reads the class token: use pool_type 'tok'.")
      # Initialised as VPT's prompts (andytu28/VQT h2t_vit.py).
      queries = VisualPrompts(self.query_tokens, arch.depth, c, arch.patch_size,
                              self.query_dropout, name="query")(n, train)

    x, attentions, query_outputs = Encoder(
        arch.depth, arch.mlp_dim, arch.num_heads, self.dropout, dtype=self.dtype,
        peft=self.peft, attention_impl=attention_implementation(self.attention_impl, self.dtype),
        remat=self.remat, attn_out_dropout=self.attn_out_dropout,
        gelu_approximate=self.gelu_approximate, embedding_dropout=self.embedding_dropout,
        final_norm=self.pool_type != "gap_fc_norm", layer_scale=self.layer_scale,
        norm_epsilon=self.norm_epsilon, quick_gelu=self.quick_gelu, pre_norm=self.pre_norm,
        drop_path=self.drop_path or 0.0, prompt_from=prompt_from, prompt_carry=self.prompt_carry,
        name="Transformer")(
            x, prompts, prefix_tokens, train, return_attention, queries, registers)
    x = _maybe_ssf(self.peft.ssf, "encoder_norm")(x)
    aux = {"encoded": x}
    if query_outputs is not None:
      pooled = jnp.concatenate([_l2_normalize(x[:, 0])] + [
          _l2_normalize(q.reshape(n, -1)) for q in query_outputs], axis=-1)
    elif self.pool_type == "gap_fc_norm":
      pooled = nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, name="fc_norm")(
          jnp.mean(x[:, 1:], axis=1))
    elif self.has_class_token:
      pooled = x[:, 0]
    else:
      pooled = jnp.mean(x[:, self.prompt_tokens if self.prompt_carry else 0:], axis=1)
    if self.projection_dim:
      pooled = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype, name="projection")(pooled)
    if self.representation_size:
      pooled = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                 name="pre_logits")(pooled))
    if self.normalize_features or self.head_init == "zero_shot":
      pooled = _l2_normalize(pooled)
    if self.peft.side_network:
      # KMnP/vpt vit_models.py forward (L167-185): sigmoid(alpha) x the ViT's features + (1 -
      # sigmoid(alpha)) x the projected side features, then the head.
      side = side_lib.AlexNetFeatures(dtype=self.dtype, name="side")(images)
      side = nn.Dense(pooled.shape[-1], use_bias=False, dtype=self.dtype, name="side_projection",
                      kernel_init=side_lib.TORCH_LINEAR)(side)
      alpha = nn.sigmoid(self.param("side_alpha", nn.initializers.zeros, (), jnp.float32))
      pooled = (alpha * pooled + (1 - alpha) * side).astype(pooled.dtype)
    for i in range(self.peft.head_hidden):
      pooled = peft_lib.MlpHeadLayer(pooled.shape[-1], dtype=self.dtype, name=f"mlp_head_{i}")(
          pooled, example_mask, train)
    aux["pre_logits"] = pooled
    if attentions is not None:
      aux["attention"] = attentions
    if not self.num_classes:
      return pooled.astype(jnp.float32), aux
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                      **_head_initializers(self.head_init, self.num_classes))(pooled)
    return logits.astype(jnp.float32), aux
