"""The ViTs of MAE and MoCo v3 as KMnP/vpt runs them, restated in PyTorch under timm's parameter
names, and writers of their published checkpoint files: the reference of VPT-deep's prompt
insertion (which no library ships) and the writer of the files of the tests that assert no
parity; the files' parity with timm's own ViT is tests/test_against_timm.py's.

Written from the facts of facebookresearch/mae models_vit.py and KMnP/vpt
src/models/vit_backbones/{vit_mae.py, vit_moco.py}, src/models/vit_prompt/{vit_mae.py,
vit_moco.py} and src/models/build_vit_backbone.py, not from vpt_jax:
  * timm's block: pre-norm; one fused qkv Linear whose output rows are [q | k | v], each
    head-major; softmax(q k^T / sqrt(head_dim)); proj; MLP fc1, exact GELU, fc2; LayerNorm eps 1e-6.
  * MoCo v3 (timm's default pooling): final `norm`, then the class token.
  * MAE with global_pool=True: no final norm; the mean of every token after the class token
    (prompts included: VIT_POOL_TYPE "original"), then `fc_norm`.
  * VPT's prompts: set 0 goes after the class token, before the patches (after the position
    embedding); with deep prompts, set i replaces the outputs of set i-1 before block i.
  * Files: MAE {"model": encoder state dict} (its final `norm`, no `fc_norm`, no head); MoCo v3's
    linear-probe file {"state_dict": ...} with `module.` prefixes and a head.
"""

import torch
from torch import nn


class Attention(nn.Module):
  def __init__(self, width, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(width, 3 * width)
    self.proj = nn.Linear(width, width)

  def forward(self, x):
    n, t, c = x.shape
    head_dim = c // self.heads
    q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) * head_dim ** -0.5, dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
  def __init__(self, width, mlp_dim):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)

  def forward(self, x):
    return self.fc2(nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, width, heads, mlp_dim):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
    self.attn, self.mlp = Attention(width, heads), Mlp(width, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, width, patch):
    super().__init__()
    self.proj = nn.Conv2d(3, width, patch, stride=patch)

  def forward(self, images):
    return self.proj(images).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
  """`global_pool`: MAE's pooling with fc_norm; otherwise MoCo v3's (final norm, class token)."""

  def __init__(self, image_size, patch, width, depth, heads, mlp_dim, num_classes, global_pool):
    super().__init__()
    self.patch_embed = PatchEmbed(width, patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image_size // patch) ** 2, width))
    self.blocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(depth))
    self.global_pool = global_pool
    if global_pool:
      self.fc_norm = nn.LayerNorm(width, eps=1e-6)
    else:
      self.norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)

  def forward_features(self, images, prompts=None):
    """images NCHW; prompts (sets, P, width) or None."""
    x = self.patch_embed(images)
    x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
    for i, block in enumerate(self.blocks):
      if prompts is not None and i < len(prompts):
        rest = x[:, 1 + prompts.shape[1]:] if i else x[:, 1:]
        x = torch.cat([x[:, :1], prompts[i].expand(len(x), -1, -1), rest], dim=1)
      x = block(x)
    if self.global_pool:
      return self.fc_norm(x[:, 1:].mean(dim=1))
    return self.norm(x)[:, 0]

  def forward(self, images, prompts=None):
    """(features, logits)."""
    features = self.forward_features(images, prompts)
    return features, self.head(features)


def random_model(seed, image_size, patch, width, depth, heads, mlp_dim, num_classes, global_pool):
  """A float64 reference with random weights, LayerNorms included (scales around 1)."""
  model = VisionTransformer(image_size, patch, width, depth, heads, mlp_dim, num_classes,
                            global_pool).double()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
      is_norm_scale = "norm" in name and name.endswith("weight")
      param.copy_(1 + 0.1 * noise if is_norm_scale else 0.05 * noise)
  return model.eval()


def _float32(state):
  return {k: v.detach().float().clone() for k, v in state.items()}


def save_mae_pretraining(model, path, seed=0, decoder=False):
  """MAE's published pre-training file: the encoder with its own final `norm` (random here: the
  VPT code leaves it unused) and neither `fc_norm` nor a head; `model`'s fc_norm is made the fresh
  LayerNorm the VPT code builds (ones, zeros). `decoder` adds a pre-training run's decoder."""
  with torch.no_grad():
    model.fc_norm.weight.fill_(1.0)
    model.fc_norm.bias.fill_(0.0)
  state = {k: v for k, v in _float32(model.state_dict()).items()
           if not k.startswith(("fc_norm.", "head."))}
  generator = torch.Generator().manual_seed(seed)
  width = model.cls_token.shape[-1]
  state["norm.weight"] = torch.randn(width, generator=generator)
  state["norm.bias"] = torch.randn(width, generator=generator)
  if decoder:
    state["mask_token"] = torch.randn(1, 1, 16, generator=generator)
    state["decoder_embed.weight"] = torch.randn(16, width, generator=generator)
    state["decoder_blocks.0.norm1.weight"] = torch.randn(16, generator=generator)
    state["decoder_pred.weight"] = torch.randn(48, 16, generator=generator)
  torch.save({"model": state}, path)


def save_mae_finetuned(model, path):
  """A file holding fc_norm and a head (MAE's fine-tuned checkpoints)."""
  torch.save({"model": _float32(model.state_dict())}, path)


def save_mocov3_linear(model, path):
  """MoCo v3's linear-probe file as KMnP/vpt downloads it (main_lincls.py's checkpoint)."""
  state = {"module." + k: v for k, v in _float32(model.state_dict()).items()}
  torch.save({"epoch": 90, "arch": "vit_base", "state_dict": state, "best_acc1": 76.7,
              "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, path)
