"""DINOv2's ViT and CLIP's image tower restated in PyTorch under their own parameter names, and
writers of their published files: the reference of the torch_vit reader's DINOv2 and CLIP parity
tests (float64, random weights).

Written from the facts of facebookresearch/dinov2 (models/vision_transformer.py, layers/block.py,
layer_scale.py, hub/backbones.py), OSU-MLB/PETL_Vision (model/vision_transformer.py, block.py,
experiment/build_model.py, which loads DINOv2 and CLIP through timm's checkpoint_filter_fn) and
openai/CLIP model.py, not from vpt_jax:
  * DINOv2: timm-style pre-norm blocks (fused qkv, exact GELU, LayerNorm eps 1e-6) whose attention
    and MLP outputs are multiplied by LayerScale's `gamma` (ls1, ls2) before the residual sum;
    `register_tokens` go after the class token once the position embedding is added; `mask_token`
    is unused outside pre-training. PETL_Vision pools the class token after the final `norm` and
    loads the 37x37 grid at 224 px resampled once (bicubic, antialiased, class row aside).
  * PETL_Vision's VPT puts each layer's prompts in front of every token and drops their outputs
    after the block (deep prompts).
  * CLIP: `conv1` without bias, `class_embedding` + `positional_embedding`, `ln_pre`, blocks of
    torch.nn.MultiheadAttention (in_proj_weight, out_proj) and an MLP c_fc, QuickGELU (OpenAI) or
    GELU (open_clip's LAION models), c_proj; LayerNorm eps 1e-5; `ln_post` of the class token,
    then `@ proj`. The text tower sits beside `visual.` in the same state dict.
"""

import collections
import copy

import torch
from torch import nn

from torch_vit_reference import Block, PatchEmbed


class LayerScale(nn.Module):
  def __init__(self, width):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(width))

  def forward(self, x):
    return x * self.gamma


class DinoBlock(Block):
  """timm's pre-norm block (the MAE/MoCo reference's) with LayerScale on both branches."""

  def __init__(self, width, heads, mlp_dim):
    super().__init__(width, heads, mlp_dim)
    self.ls1, self.ls2 = LayerScale(width), LayerScale(width)

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
  """`grid`: the pre-training position grid (37 for DINOv2's 518 px)."""

  def __init__(self, grid, patch, width, depth, heads, mlp_dim, registers, num_classes):
    super().__init__()
    self.patch_embed = PatchEmbed(width, patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, width))
    self.register_tokens = nn.Parameter(torch.zeros(1, registers, width)) if registers else None
    self.mask_token = nn.Parameter(torch.zeros(1, width))
    self.blocks = nn.ModuleList(DinoBlock(width, heads, mlp_dim) for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)

  def pos_embed_at(self, grid):
    """PETL_Vision's load-time resampling (timm's resample_abs_pos_embed)."""
    old = int(round((self.pos_embed.shape[1] - 1) ** 0.5))
    if old == grid:
      return self.pos_embed
    patches = self.pos_embed[:, 1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(self.pos_embed.dtype)
    return torch.cat([self.pos_embed[:, :1], patches], dim=1)

  def forward(self, images, prompts=None):
    """(features, logits); images NCHW; prompts (layers, P, width) or None, PETL_Vision's way."""
    x = self.patch_embed(images)
    grid = images.shape[-1] // self.patch_embed.proj.kernel_size[0]
    x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed_at(grid)
    if self.register_tokens is not None:
      x = torch.cat([x[:, :1], self.register_tokens.expand(len(x), -1, -1), x[:, 1:]], dim=1)
    for i, block in enumerate(self.blocks):
      if prompts is not None:
        x = torch.cat([prompts[i].expand(len(x), -1, -1), x], dim=1)
      x = block(x)
      if prompts is not None:
        x = x[:, prompts.shape[1]:]
    features = self.norm(x)[:, 0]
    return features, self.head(features)


class QuickGELU(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
  def __init__(self, width, heads, quick_gelu):
    super().__init__()
    self.attn = nn.MultiheadAttention(width, heads)
    self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
    self.mlp = nn.Sequential(collections.OrderedDict([
        ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
        ("c_proj", nn.Linear(4 * width, width))]))

  def forward(self, x):
    """x is (tokens, batch, width), as CLIP runs its transformer."""
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
  def __init__(self, width, depth, heads, quick_gelu):
    super().__init__()
    self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, quick_gelu)
                                     for _ in range(depth)])

  def forward(self, x):
    return self.resblocks(x)


class ClipVisionTransformer(nn.Module):
  def __init__(self, image_size, patch, width, depth, heads, output_dim, quick_gelu):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = nn.Parameter(torch.zeros(width))
    self.positional_embedding = nn.Parameter(torch.zeros((image_size // patch) ** 2 + 1, width))
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = Transformer(width, depth, heads, quick_gelu)
    self.ln_post = nn.LayerNorm(width)
    self.proj = nn.Parameter(torch.zeros(width, output_dim))

  def forward(self, images):
    x = self.conv1(images).flatten(2).transpose(1, 2)
    cls = self.class_embedding.to(x.dtype) + torch.zeros(len(x), 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + self.positional_embedding
    x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
    return self.ln_post(x[:, 0]) @ self.proj


class Clip(nn.Module):
  """The whole CLIP model's parameters (a small text tower beside `visual`) and a head on the
  image embedding (not part of CLIP's file)."""

  def __init__(self, image_size, patch, width, depth, heads, output_dim, quick_gelu, num_classes):
    super().__init__()
    self.visual = ClipVisionTransformer(image_size, patch, width, depth, heads, output_dim,
                                        quick_gelu)
    text_width = 32
    self.token_embedding = nn.Embedding(50, text_width)
    self.positional_embedding = nn.Parameter(torch.zeros(7, text_width))
    self.transformer = Transformer(text_width, 1, 2, quick_gelu)
    self.ln_final = nn.LayerNorm(text_width)
    self.text_projection = nn.Parameter(torch.zeros(text_width, output_dim))
    self.logit_scale = nn.Parameter(torch.zeros([]))
    self.head = nn.Linear(output_dim, num_classes)

  def forward(self, images):
    features = self.visual(images)
    return features, self.head(features)


def randomize(model, seed):
  """Random float64 weights, LayerNorm scales and LayerScale gammas around 1."""
  model = model.double()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
      around_one = (("norm" in name or "ln_" in name) and name.endswith("weight")) or name.endswith(
          "gamma")
      param.copy_(1 + 0.1 * noise if around_one else 0.05 * noise)
  return model.eval()


def _float32(state, drop=("head.",)):
  return {k: v.detach().float().contiguous().clone() for k, v in state.items()
          if not k.startswith(drop)}


def save_dinov2(model, path):
  """DINOv2's hub file: a bare state dict, mask_token included, no head."""
  torch.save(_float32(model.state_dict()), path)


def clip_state(model):
  """CLIP's state dict: `visual.` and the text tower, without the test's head."""
  return _float32(model.state_dict())


class _FlatClip(nn.Module):
  """The archive's module tree: CLIP's own names at the top (no wrapper prefix), the head left out."""

  def __init__(self, model, image_size):
    super().__init__()
    for name, child in model.named_children():
      if name != "head":
        self.add_module(name, child)
    for name, param in model.named_parameters(recurse=False):
      self.register_parameter(name, param)
    self.register_buffer("input_resolution", torch.tensor(image_size))
    self.register_buffer("context_length", torch.tensor(7))
    self.register_buffer("vocab_size", torch.tensor(50))

  def forward(self, images):
    return self.visual(images)


def save_openai_torchscript(model, path, image_size):
  """OpenAI's `ViT-B-16.pt`: a TorchScript archive whose state dict has CLIP's key layout."""
  flat = _FlatClip(copy.deepcopy(model).float(), image_size)
  torch.jit.save(torch.jit.trace(flat, torch.zeros(1, 3, image_size, image_size)), path)
