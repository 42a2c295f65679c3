"""OSU-MLB/PETL_Vision's VPT and LoRA on a small timm-style ViT, restated in PyTorch for the tests of
vit.Model's PETL_Vision forms (tests/test_petl_vpt_lora.py).

Written from PETL_Vision's code at 245d262, not from vpt_jax: model/vision_transformer.py
`forward_features` (a prompt set from `VPT.retrieve_prompt(idx)` is put before every token, the
class token included, ahead of block idx, and its outputs are cut off after that block), model/
vpt.py (prompt_layer 1 for shallow, `vpt_layer` for deep in the last blocks; `retrieve_prompt`
shifts the index by depth - vpt_layer), model/attention.py (one qkv Linear, the LoRA updates added
to q, k, v after the reshape) and model/lora.py (lora_a: dim -> bottleneck, lora_b: bottleneck ->
3 dim, both without bias, dropout 0.1 on the input, scaled by merge_factor). `carry=True` is the
KMnP/vpt form instead (prompts after the class token once, carried through every block), for the
`paper` recipe's VPT-shallow. timm's ViT is what PETL_Vision subclasses; timm cannot be installed
beside the CPU torch of the test extra (docs/checkpoints.md), so the block is restated too: pre-norm,
LayerNorm eps 1e-6, exact GELU, class-token pooling after the final norm.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


class LoRA(torch.nn.Module):
  """model/lora.py: the q, k, v updates of one shared down-projection."""

  def __init__(self, dim, heads, bottleneck, merge_factor=1.0):
    super().__init__()
    self.heads, self.merge_factor = heads, merge_factor
    self.lora_drop = torch.nn.Dropout(p=0.1)
    self.lora_a = torch.nn.Linear(dim, bottleneck, bias=False)
    torch.nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
    self.lora_b = torch.nn.Linear(bottleneck, dim * 3, bias=False)
    torch.nn.init.zeros_(self.lora_b.weight)

  def forward(self, x, q, k, v):
    n, t, c = x.shape
    delta = self.lora_b(self.lora_a(self.lora_drop(x)))
    dq, dk, dv = delta.reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q + self.merge_factor * dq, k + self.merge_factor * dk, v + self.merge_factor * dv


class Block(torch.nn.Module):
  def __init__(self, width, heads, mlp_dim, lora_bottleneck=0):
    super().__init__()
    self.heads = heads
    self.norm1, self.norm2 = torch.nn.LayerNorm(width, eps=1e-6), torch.nn.LayerNorm(width, eps=1e-6)
    self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
    self.fc1, self.fc2 = torch.nn.Linear(width, mlp_dim), torch.nn.Linear(mlp_dim, width)
    self.lora = LoRA(width, heads, lora_bottleneck) if lora_bottleneck else None

  def attention(self, x):
    n, t, c = x.shape
    q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
    if self.lora is not None:
      q, k, v = self.lora(x, q, k, v)
    weights = torch.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(n, t, c))

  def forward(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PetlViT(torch.nn.Module):
  """`vpt_mode` None, "shallow" or "deep"; `vpt_layer` as PETL_Vision's (None: every block)."""

  def __init__(self, width, depth, heads, mlp_dim, patch, tokens, num_classes, vpt_mode=None,
               vpt_num=0, vpt_layer=None, lora_bottleneck=0, carry=False):
    super().__init__()
    self.patch_embed = torch.nn.Conv2d(3, width, patch, stride=patch)
    self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = torch.nn.Parameter(torch.zeros(1, tokens, width))
    self.blocks = torch.nn.ModuleList(Block(width, heads, mlp_dim, lora_bottleneck) for _ in range(depth))
    self.norm = torch.nn.LayerNorm(width, eps=1e-6)
    self.head = torch.nn.Linear(width, num_classes)
    self.depth, self.vpt_mode, self.vpt_num, self.vpt_layer, self.carry = (
        depth, vpt_mode, vpt_num, vpt_layer, carry)
    if vpt_mode:
      prompt_layer = 1 if vpt_mode == "shallow" else (vpt_layer or depth)
      self.prompt_embeddings = torch.nn.Parameter(torch.zeros(prompt_layer, vpt_num, width))

  def retrieve_prompt(self, index, batch):
    """model/vpt.py retrieve_prompt (eval mode: no prompt dropout)."""
    if self.vpt_layer:
      index -= self.depth - self.vpt_layer
      if index < 0:
        return None
    if index < len(self.prompt_embeddings):
      return self.prompt_embeddings[index].expand(batch, -1, -1)
    return None

  def forward(self, images):  # NCHW
    x = self.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    if self.carry:  # KMnP/vpt's VPT-shallow: [CLS, prompts, patches] through every block.
      x = torch.cat([x[:, :1], self.prompt_embeddings[0].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    for idx, block in enumerate(self.blocks):
      prompt = self.retrieve_prompt(idx, x.shape[0]) if self.vpt_mode and not self.carry else None
      if prompt is not None:
        x = torch.cat([prompt, x], dim=1)
      x = block(x)
      if prompt is not None:
        x = x[:, self.vpt_num:]
    return self.head(self.norm(x)[:, 0])


def from_flax(params: dict, heads: int, **options) -> PetlViT:
  """The torch model holding `params` (vpt_jax's tree, '/'-joined keys, NumPy arrays)."""
  kernel = params["embedding/kernel"]
  patch, width = kernel.shape[0], kernel.shape[-1]
  depth = len({k.split("/")[1] for k in params if k.startswith("Transformer/encoderblock_")})
  mlp_dim = params["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1]
  tokens = params["Transformer/posembed_input/pos_embedding"].shape[1]
  model = PetlViT(width, depth, heads, mlp_dim, patch, tokens, params["head/kernel"].shape[1], **options)
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32))
  state = {"patch_embed.weight": t(kernel.transpose(3, 2, 0, 1)), "patch_embed.bias": t(params["embedding/bias"]),
           "cls_token": t(params["cls"]), "pos_embed": t(params["Transformer/posembed_input/pos_embedding"]),
           "norm.weight": t(params["Transformer/encoder_norm/scale"]),
           "norm.bias": t(params["Transformer/encoder_norm/bias"]),
           "head.weight": t(params["head/kernel"].T), "head.bias": t(params["head/bias"])}
  for i in range(depth):
    b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    attention = b + "MultiHeadDotProductAttention_0/"
    names = ("query", "key", "value")
    state[o + "qkv.weight"] = t(np.concatenate([params[attention + f"{n}/kernel"].reshape(width, -1).T
                                                for n in names]))
    state[o + "qkv.bias"] = t(np.concatenate([params[attention + f"{n}/bias"].reshape(-1) for n in names]))
    state[o + "proj.weight"] = t(params[attention + "out/kernel"].reshape(-1, width).T)
    state[o + "proj.bias"] = t(params[attention + "out/bias"])
    for norm, ours in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
      state[o + f"{norm}.weight"] = t(params[b + f"{ours}/scale"])
      state[o + f"{norm}.bias"] = t(params[b + f"{ours}/bias"])
    for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      state[o + f"{fc}.weight"] = t(params[b + f"MlpBlock_0/{dense}/kernel"].T)
      state[o + f"{fc}.bias"] = t(params[b + f"MlpBlock_0/{dense}/bias"])
    if attention + "lora_down" in params:
      state[o + "lora.lora_a.weight"] = t(params[attention + "lora_down"].T)
      state[o + "lora.lora_b.weight"] = t(params[attention + "lora_up"].T)
  if "prompt/embeddings" in params:
    state["prompt_embeddings"] = t(params["prompt/embeddings"])
  model.load_state_dict(state)
  return model.eval()
