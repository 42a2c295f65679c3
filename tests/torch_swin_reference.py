"""microsoft/Swin-Transformer's SwinTransformer and KMnP/vpt's prompted Swin, restated in PyTorch
under the original parameter and buffer names: the reference of the Swin reader's and model's
parity tests (timm cannot be imported here: it needs torchvision).

Written from the facts of KMnP/vpt src/models/vit_backbones/swin_transformer.py (a copy of
microsoft's models/swin_transformer.py) and src/models/vit_prompt/swin_transformer.py, not from
vpt_jax:
  * patch_embed: Conv2d(3, C, 4, stride 4), flattened, LayerNorm (patch_norm=True); no absolute
    position embedding (ape=False).
  * Block: x + attn(norm1(x)) over windows (cyclic shift by -s before, +s after, for odd blocks
    of stages larger than the window), then x + mlp(norm2(x)); attention: qkv Linear, q scaled by
    head_dim^-0.5, + relative position bias table[relative_position_index], + attn_mask (-100
    between regions) on shifted blocks, softmax, proj. A stage no larger than the window uses the
    whole stage as its window, unshifted. LayerNorm eps 1e-5, exact GELU, MLP ratio 4.
  * PatchMerging: cat(x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]), norm(4C),
    reduction (4C -> 2C, no bias).
  * Final norm, mean over tokens, head.
  * Prompts ("prepend"): prompt_embeddings (1, P, C) after the patch embedding; deep sets
    deep_prompt_embeddings_{0..3} ((d0 - 1, P, C), (d1, P, 2C), (d2, P, 4C), (d3, P, 8C)) replace
    the prompts before every block but the first. In a block, prompts are split off after norm1,
    expanded windows-first (prompt_emb.unsqueeze(0).expand(nW, ...).reshape(-1, P, C)) and
    prepended to every window; the bias and mask are padded with zeros for them; their outputs
    are averaged as attn_windows[:, :P].view(-1, B, P, C).mean(0). Patch merging tiles them 4x
    along channels through the same norm and reduction. The pool averages all tokens.
"""

import torch
from torch import nn


def window_partition(x, w):
  b, h, wd, c = x.shape
  x = x.view(b, h // w, w, wd // w, w, c)
  return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, c)


def window_reverse(windows, w, h, wd):
  b = int(windows.shape[0] / (h * wd / w / w))
  x = windows.view(b, h // w, wd // w, w, w, -1)
  return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, wd, -1)


class WindowAttention(nn.Module):
  def __init__(self, dim, window, heads, prompts=0):
    super().__init__()
    self.window, self.heads, self.prompts = window, heads, prompts
    self.scale = (dim // heads) ** -0.5
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
    coords = torch.stack(torch.meshgrid([torch.arange(window), torch.arange(window)],
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    self.register_buffer("relative_position_index", rel.sum(-1))
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, mask=None):
    b_, n, c = x.shape
    qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    w2 = self.window ** 2
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
        w2, w2, -1).permute(2, 0, 1)
    p = self.prompts
    if p:
      bias = torch.cat((torch.zeros(self.heads, p, w2, dtype=bias.dtype), bias), dim=1)
      bias = torch.cat((torch.zeros(self.heads, w2 + p, p, dtype=bias.dtype), bias), dim=-1)
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
      nw = mask.shape[0]
      if p:
        mask = torch.cat((torch.zeros(nw, p, w2, dtype=mask.dtype), mask), dim=1)
        mask = torch.cat((torch.zeros(nw, w2 + p, p, dtype=mask.dtype), mask), dim=-1)
      attn = attn.view(b_ // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
      attn = attn.view(-1, self.heads, n, n)
    attn = attn.softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class Mlp(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

  def forward(self, x):
    return self.fc2(nn.functional.gelu(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
  def __init__(self, dim, resolution, heads, window, shift, prompts=0):
    super().__init__()
    self.resolution, self.prompts = resolution, prompts
    if resolution <= window:
      shift, window = 0, resolution
    self.window, self.shift = window, shift
    self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.attn = WindowAttention(dim, window, heads, prompts)
    self.mlp = Mlp(dim)
    attn_mask = None
    if shift:
      img_mask = torch.zeros((1, resolution, resolution, 1))
      slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
      cnt = 0
      for hs in slices:
        for ws in slices:
          img_mask[:, hs, ws, :] = cnt
          cnt += 1
      mw = window_partition(img_mask, window).view(-1, window * window)
      attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
      attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
    self.register_buffer("attn_mask", attn_mask)

  def forward(self, x):
    h = w = self.resolution
    b, _, c = x.shape
    p = self.prompts
    shortcut = x
    x = self.norm1(x)
    prompt_emb, x = x[:, :p], x[:, p:]
    x = x.reshape(b, h, w, c)
    if self.shift:
      x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
    windows = window_partition(x, self.window).view(-1, self.window ** 2, c)
    nw = windows.shape[0] // b
    if p:  # The VPT code's pairing: expanded windows-first, while windows are batch-first.
      prompt_emb = prompt_emb.unsqueeze(0).expand(nw, -1, -1, -1).reshape(-1, p, c)
      windows = torch.cat((prompt_emb, windows), dim=1)
    out = self.attn(windows, mask=self.attn_mask)
    if p:
      prompt_emb = out[:, :p].reshape(-1, b, p, c).mean(0)
      out = out[:, p:]
    x = window_reverse(out.reshape(-1, self.window, self.window, c), self.window, h, w)
    if self.shift:
      x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
    x = x.reshape(b, h * w, c)
    if p:
      x = torch.cat((prompt_emb, x), dim=1)
    x = shortcut + x
    return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
  def __init__(self, resolution, dim, prompts=0):
    super().__init__()
    self.resolution, self.prompts = resolution, prompts
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x):
    b, _, c = x.shape
    p = self.prompts
    prompt_emb, x = x[:, :p], x[:, p:]
    x = x.reshape(b, self.resolution, self.resolution, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    x = x.reshape(b, -1, 4 * c)
    if p:
      x = torch.cat((torch.cat((prompt_emb,) * 4, dim=-1), x), dim=1)
    return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
  def __init__(self, dim, resolution, depth, heads, window, downsample, prompts=0):
    super().__init__()
    self.prompts = prompts
    self.blocks = nn.ModuleList([
        SwinTransformerBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2,
                             prompts) for i in range(depth)])
    self.downsample = PatchMerging(resolution, dim, prompts) if downsample else None

  def forward(self, x, deep=None):
    b, p = x.shape[0], self.prompts
    for i, block in enumerate(self.blocks):
      if deep is not None:
        first_stage = deep.shape[0] != len(self.blocks)
        if not (first_stage and i == 0):
          prompt = deep[i - 1 if first_stage else i].expand(b, -1, -1)
          x = torch.cat((prompt, x[:, p:]), dim=1)
      x = block(x)
    return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
    self.norm = nn.LayerNorm(dim)

  def forward(self, x):
    return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
  """Returns (pooled features, logits) on NCHW images; `prompts` > 0 makes it KMnP/vpt's
  PromptedSwinTransformer with LOCATION "prepend" (and DEEP with `deep`), in eval mode."""

  def __init__(self, image_size=224, patch=4, embed_dim=128, depths=(2, 2, 18, 2),
               heads=(4, 8, 16, 32), window=7, num_classes=0, prompts=0, deep=False):
    super().__init__()
    self.deep = deep
    self.patch_embed = PatchEmbed(patch, embed_dim)
    side = image_size // patch
    self.layers = nn.ModuleList([
        BasicLayer(embed_dim * 2 ** i, side // 2 ** i, depths[i], heads[i], window,
                   i < len(depths) - 1, prompts) for i in range(len(depths))])
    width = embed_dim * 2 ** (len(depths) - 1)
    self.norm = nn.LayerNorm(width)
    self.head = nn.Linear(width, num_classes) if num_classes else None
    if prompts:
      self.prompt_embeddings = nn.Parameter(torch.zeros(1, prompts, embed_dim))
      if deep:
        for i, depth in enumerate(depths):
          setattr(self, f"deep_prompt_embeddings_{i}", nn.Parameter(torch.zeros(
              depth - 1 if i == 0 else depth, prompts, embed_dim * 2 ** i)))

  def forward(self, x):
    x = self.patch_embed(x)
    if hasattr(self, "prompt_embeddings"):
      x = torch.cat((self.prompt_embeddings.expand(x.shape[0], -1, -1), x), dim=1)
    for i, layer in enumerate(self.layers):
      x = layer(x, getattr(self, f"deep_prompt_embeddings_{i}") if self.deep else None)
    features = self.norm(x).mean(dim=1)
    return features, (self.head(features) if self.head is not None else features)


def randomize(model, seed: int):
  """Non-trivial random weights (biases and LayerNorm scales away from 0 and 1), float64."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator).double()
      if name.endswith("norm.weight") or ".norm1.weight" in name or ".norm2.weight" in name:
        param.copy_(1.0 + 0.2 * noise)
      elif "prompt" in name:
        param.copy_(0.5 * noise)
      else:
        param.copy_(0.05 * noise)
  return model.double().eval()


def save_checkpoint(model, path: str):
  """The backbone as the Swin authors publish it: {"model": state dict} with the derived buffers
  (relative_position_index, attn_mask) in it; prompts are not part of such a file."""
  state = {k: v.float() for k, v in model.state_dict().items() if "prompt" not in k}
  torch.save({"model": state}, path)
