"""CLIP's text tower (Radford et al. 2021) in Flax, CLIP's tokenizer, and the zero-shot head.

The tower, as openai/CLIP's model.py and open_clip's TextTransformer compute it: token embedding
plus a learned position embedding, pre-norm residual blocks whose attention is causal (token i
reads tokens <= i), `ln_final`, then the features of the end-of-text token, the one with the
largest id in each row (CLIP's tokenizer gives EOT the largest id), times `text_projection`.
LayerNorm epsilon 1e-5; QuickGELU in OpenAI's models, GELU in open_clip's LAION ones.

Parameter tree (vpt_jax/checkpoints/clip_text.py reads it from CLIP's files):

  token_embedding/embedding (vocab, width)
  positional_embedding (context_length, width)
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}
                                     the image tower's block names (vit.py), so that one conversion
                                     of CLIP's resblocks serves both towers
  ln_final/{scale, bias}
  text_projection (width, embed_dim)  features @ text_projection, no bias
"""

import dataclasses
import functools
import importlib.util
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.models import vit

CONTEXT_LENGTH = 77  # Every CLIP model's.
_NORM_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  embed_dim: int
  quick_gelu: bool


class _Block(nn.Module):
  num_heads: int
  mlp_dim: int
  quick_gelu: bool
  dtype: Any = None

  @nn.compact
  def __call__(self, x, mask):
    y = nn.LayerNorm(epsilon=_NORM_EPSILON, dtype=self.dtype, name="LayerNorm_0")(x)
    x = x + nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                            name="MultiHeadDotProductAttention_0")(y, mask=mask)
    y = nn.LayerNorm(epsilon=_NORM_EPSILON, dtype=self.dtype, name="LayerNorm_1")(x)
    return x + vit.MlpBlock(self.mlp_dim, dtype=self.dtype, gelu_approximate=False,
                            quick_gelu=self.quick_gelu, name="MlpBlock_0")(y)


class _Encoder(nn.Module):
  config: TextConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    for i in range(c.depth):
      x = _Block(c.num_heads, 4 * c.width, c.quick_gelu, dtype=self.dtype, name=f"encoderblock_{i}")(x, mask)
    return x


class TextTransformer(nn.Module):
  """Token ids (N, context_length), int -> text embeddings (N, embed_dim), float32, unnormalised."""
  config: TextConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, tokens):
    c = self.config
    x = nn.Embed(c.vocab_size, c.width, dtype=self.dtype, name="token_embedding")(tokens)
    positions = self.param("positional_embedding", nn.initializers.normal(0.01), (c.context_length, c.width),
                           jnp.float32)
    x = x + positions[:tokens.shape[1]].astype(x.dtype)
    x = _Encoder(c, dtype=self.dtype, name="Transformer")(x, nn.make_causal_mask(tokens))
    x = nn.LayerNorm(epsilon=_NORM_EPSILON, dtype=self.dtype, name="ln_final")(x)
    eot = x[jnp.arange(len(tokens)), jnp.argmax(tokens, axis=-1)]
    projection = self.param("text_projection", nn.initializers.normal(c.width ** -0.5), (c.width, c.embed_dim),
                            jnp.float32)
    return (eot @ projection.astype(eot.dtype)).astype(jnp.float32)


@functools.cache
def _open_clip_tokenizer():
  """open_clip's SimpleTokenizer (OpenAI's BPE, its vocabulary shipped in the package). Its module is
  loaded from the installed package's file: open_clip's own __init__ builds the whole model zoo
  and imports torchvision, timm and huggingface_hub, which the tokenizer (ftfy, regex, torch) does
  not need."""
  spec = importlib.util.find_spec("open_clip")
  path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py") if spec else ""
  if not os.path.exists(path):
    raise ImportError("CLIP's tokenizer needs open_clip's BPE vocabulary: pip install open_clip_torch "
                      "(vpt_jax's [clip] extra).")
  module_spec = importlib.util.spec_from_file_location("vpt_jax_open_clip_tokenizer", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.SimpleTokenizer()


def tokenize(texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """CLIP's token ids (len(texts), context_length), int32: [SOT, BPE tokens of the lower-cased,
  whitespace-cleaned text, EOT], zero-padded; a text too long is cut and ends in EOT."""
  return _open_clip_tokenizer()(list(texts), context_length).numpy().astype(np.int32)


def zero_shot_head(text_model: TextTransformer, text_params, logit_scale: float, class_names: Sequence[str],
                   templates: Sequence[str], tokenize: Callable[[Sequence[str]], np.ndarray] = tokenize) -> dict:
  """The zero-shot classifier as `vit.Model`'s head parameters: {"kernel": (embed_dim, classes),
  "bias": zeros}, each class's column the mean of its L2-normalised template embeddings,
  normalised again, times exp(logit_scale) (OSU-MLB/PETL_Vision's build_clip_zs_classifier.py,
  after CLIP's zero-shot notebook). Apply it on L2-normalised image embeddings (vit.Model's
  normalize_features) to get CLIP's logits, exp(logit_scale) * cosine similarity.

  `templates` hold "{}" where the class name goes; `logit_scale` is the file's (a log)."""
  encode = jax.jit(lambda tokens: text_model.apply({"params": text_params}, tokens))
  columns = []
  for name in class_names:  # One class per call: the batch shape, and so the compilation, is fixed.
    embeddings = _l2_normalize(encode(tokenize([t.format(name) for t in templates])))
    columns.append(_l2_normalize(embeddings.mean(axis=0)))
  kernel = jnp.stack(columns, axis=1) * jnp.exp(jnp.float32(logit_scale))
  return {"kernel": kernel, "bias": jnp.zeros(len(class_names), jnp.float32)}


def _l2_normalize(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
