"""CLIP's text tower restated in PyTorch under its own parameter names, beside the image tower of
torch_dinov2_clip_reference.py (float64, random weights): it writes the CLIP files of the tests
that assert no parity; the text tower's and zero-shot head's parity is tested against open_clip
itself (tests/test_against_timm.py).

Written from the facts of openai/CLIP model.py (encode_text, build_attention_mask) and open_clip's
TextTransformer, not from vpt_jax:
  * token embedding + positional_embedding, then the residual blocks of the image tower
    (ln_1, torch.nn.MultiheadAttention, ln_2, c_fc, QuickGELU or GELU, c_proj) with an additive
    causal mask (-inf above the diagonal), then ln_final;
  * the features of the token with the largest id (EOT) @ text_projection.
"""

import math

import torch
from torch import nn

import torch_dinov2_clip_reference as image_reference


class CausalBlock(image_reference.ResidualAttentionBlock):
  def forward(self, x, mask):
    """x is (tokens, batch, width), as CLIP runs its transformer."""
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
    return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
  def __init__(self, width, depth, heads, quick_gelu):
    super().__init__()
    self.resblocks = nn.ModuleList(CausalBlock(width, heads, quick_gelu) for _ in range(depth))

  def forward(self, x, mask):
    for block in self.resblocks:
      x = block(x, mask)
    return x


class Clip(nn.Module):
  """A whole CLIP model: the image tower under `visual.`, the text tower at the top level."""

  def __init__(self, image_size, patch, vision_width, vision_depth, vision_heads, embed_dim, vocab_size,
               context_length, width, depth, heads, quick_gelu):
    super().__init__()
    self.visual = image_reference.ClipVisionTransformer(image_size, patch, vision_width, vision_depth,
                                                        vision_heads, embed_dim, quick_gelu)
    self.token_embedding = nn.Embedding(vocab_size, width)
    self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
    self.transformer = TextTransformer(width, depth, heads, quick_gelu)
    self.ln_final = nn.LayerNorm(width)
    self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))
    self.logit_scale = nn.Parameter(torch.zeros([]))

  def encode_text(self, tokens):
    x = self.token_embedding(tokens) + self.positional_embedding
    length = tokens.shape[1]
    mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    x = self.ln_final(self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2))
    return x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ self.text_projection

  def forward(self, images):
    return self.visual(images)


def random_clip(seed, image_size=32, patch=16, vision_width=32, vision_depth=1, vision_heads=2, embed_dim=24,
                vocab_size=100, context_length=16, width=64, depth=2, heads=4, quick_gelu=True):
  """Random float64 weights (image_reference.randomize), the temperature at CLIP's trained 100."""
  model = image_reference.randomize(Clip(image_size, patch, vision_width, vision_depth, vision_heads, embed_dim,
                                         vocab_size, context_length, width, depth, heads, quick_gelu), seed)
  with torch.no_grad():
    model.logit_scale.fill_(math.log(100.0))
  return model
