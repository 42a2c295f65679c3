"""The reference training loop restated in PyTorch, for step-parity tests of the `paper` recipe.

Written from the facts in docs/protocol.md, not from vpt_jax: the ViT of the VPT code bases
(ChengHan111/VPT-or-FT src/models/vit_backbones/vit.py: pre-norm blocks, separate q/k/v Linears,
exact GELU, LayerNorm eps 1e-6, dropout after the position embedding and in the MLP) with
KMnP/vpt's deep prompts ([CLS, prompts, patches], each layer's prompts replacing the previous
layer's outputs), the parameter groups of src/solver/optimizer.py (SGD with coupled decay except
`last_layer.bias`; for full fine-tuning its HuggingFace-style AdamW with decay 0.01 on every name
without "bias", or SGD without decay when wd == 0), a LambdaLR stepped once per epoch with
WarmupCosineSchedule's lambda, and mean cross-entropy per batch.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
  def __init__(self, width, heads, mlp_dim, dropout):
    super().__init__()
    self.heads = heads
    self.attention_norm = torch.nn.LayerNorm(width, eps=1e-6)
    self.query, self.key, self.value, self.out = (torch.nn.Linear(width, width) for _ in range(4))
    self.ffn_norm = torch.nn.LayerNorm(width, eps=1e-6)
    self.fc1, self.fc2 = torch.nn.Linear(width, mlp_dim), torch.nn.Linear(mlp_dim, width)
    self.dropout = torch.nn.Dropout(dropout)

  def forward(self, x):
    n, t, d = x.shape
    h = self.attention_norm(x)
    split = lambda y: y.view(n, t, self.heads, d // self.heads).transpose(1, 2)
    q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
    x = x + self.out((weights @ v).transpose(1, 2).reshape(n, t, d))
    h = self.dropout(self.fc1(self.ffn_norm(x)))
    return x + self.dropout(self.fc2(self.dropout(F.gelu(h))))


class PromptedViT(torch.nn.Module):
  """A ViT with an optional set of deep prompts: prompt_embeddings for the first layer,
  deep_prompt_embeddings for the others, as KMnP/vpt names them."""

  def __init__(self, width, depth, heads, mlp_dim, patch, tokens, num_classes, prompt_tokens=0,
               dropout=0.0):
    super().__init__()
    self.patch_embeddings = torch.nn.Conv2d(3, width, patch, stride=patch)
    self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, width))
    self.position_embeddings = torch.nn.Parameter(torch.zeros(1, tokens, width))
    self.embedding_dropout = torch.nn.Dropout(dropout)
    self.layer = torch.nn.ModuleList(Block(width, heads, mlp_dim, dropout) for _ in range(depth))
    self.encoder_norm = torch.nn.LayerNorm(width, eps=1e-6)
    self.last_layer = torch.nn.Linear(width, num_classes)
    self.prompt_tokens = prompt_tokens
    if prompt_tokens:
      self.prompt_embeddings = torch.nn.Parameter(torch.zeros(1, prompt_tokens, width))
      self.deep_prompt_embeddings = torch.nn.Parameter(
          torch.zeros(depth - 1, prompt_tokens, width))

  def forward(self, images):  # NCHW
    x = self.patch_embeddings(images).flatten(2).transpose(1, 2)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.embedding_dropout(x + self.position_embeddings)
    p = self.prompt_tokens
    for i, block in enumerate(self.layer):
      if p:
        prompts = (self.prompt_embeddings if i == 0 else self.deep_prompt_embeddings[i - 1:i])
        rest = x[:, 1:] if i == 0 else x[:, 1 + p:]
        x = torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), rest], dim=1)
      x = block(x)
    return self.last_layer(self.encoder_norm(x)[:, 0])


def from_flax(params: dict, heads: int, prompt_tokens: int, dropout: float = 0.0) -> PromptedViT:
  """The torch model holding `params` (vpt_jax's tree, '/'-joined keys, NumPy arrays)."""
  kernel = params["embedding/kernel"]
  patch, width = kernel.shape[0], kernel.shape[-1]
  depth = len({k.split("/")[1] for k in params if k.startswith("Transformer/encoderblock_")})
  mlp_dim = params["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1]
  tokens = params["Transformer/posembed_input/pos_embedding"].shape[1]
  num_classes = params["head/kernel"].shape[1]
  model = PromptedViT(width, depth, heads, mlp_dim, patch, tokens, num_classes, prompt_tokens,
                      dropout)
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32))
  state = {"patch_embeddings.weight": t(kernel.transpose(3, 2, 0, 1)),
           "patch_embeddings.bias": t(params["embedding/bias"]), "cls_token": t(params["cls"]),
           "position_embeddings": t(params["Transformer/posembed_input/pos_embedding"]),
           "encoder_norm.weight": t(params["Transformer/encoder_norm/scale"]),
           "encoder_norm.bias": t(params["Transformer/encoder_norm/bias"]),
           "last_layer.weight": t(params["head/kernel"].T), "last_layer.bias": t(params["head/bias"])}
  for i in range(depth):
    b, o = f"Transformer/encoderblock_{i}/", f"layer.{i}."
    attention = b + "MultiHeadDotProductAttention_0/"
    for name in ("query", "key", "value"):
      state[o + f"{name}.weight"] = t(params[attention + f"{name}/kernel"].reshape(width, -1).T)
      state[o + f"{name}.bias"] = t(params[attention + f"{name}/bias"].reshape(-1))
    state[o + "out.weight"] = t(params[attention + "out/kernel"].reshape(-1, width).T)
    state[o + "out.bias"] = t(params[attention + "out/bias"])
    for norm, ours in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_1")):
      state[o + f"{norm}.weight"] = t(params[b + f"{ours}/scale"])
      state[o + f"{norm}.bias"] = t(params[b + f"{ours}/bias"])
    for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      state[o + f"{fc}.weight"] = t(params[b + f"MlpBlock_0/{dense}/kernel"].T)
      state[o + f"{fc}.bias"] = t(params[b + f"MlpBlock_0/{dense}/bias"])
  if prompt_tokens:
    prompts = params["prompt/embeddings"]
    state["prompt_embeddings"], state["deep_prompt_embeddings"] = t(prompts[:1]), t(prompts[1:])
  model.load_state_dict(state)
  return model


def to_flax_names(model: PromptedViT) -> dict[str, np.ndarray]:
  """The model's parameters under vpt_jax's '/'-joined names and layouts (for comparison)."""
  s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  width = s["cls_token"].shape[-1]
  heads = model.layer[0].heads
  out = {"embedding/kernel": s["patch_embeddings.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": s["patch_embeddings.bias"], "cls": s["cls_token"],
         "Transformer/posembed_input/pos_embedding": s["position_embeddings"],
         "Transformer/encoder_norm/scale": s["encoder_norm.weight"],
         "Transformer/encoder_norm/bias": s["encoder_norm.bias"],
         "head/kernel": s["last_layer.weight"].T, "head/bias": s["last_layer.bias"]}
  for i in range(len(model.layer)):
    b, o = f"Transformer/encoderblock_{i}/", f"layer.{i}."
    attention = b + "MultiHeadDotProductAttention_0/"
    for name in ("query", "key", "value"):
      out[attention + f"{name}/kernel"] = s[o + f"{name}.weight"].T.reshape(width, heads, -1)
      out[attention + f"{name}/bias"] = s[o + f"{name}.bias"].reshape(heads, -1)
    out[attention + "out/kernel"] = s[o + "out.weight"].T.reshape(heads, -1, width)
    out[attention + "out/bias"] = s[o + "out.bias"]
    for norm, ours in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_1")):
      out[b + f"{ours}/scale"], out[b + f"{ours}/bias"] = (s[o + f"{norm}.weight"],
                                                           s[o + f"{norm}.bias"])
    for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      out[b + f"MlpBlock_0/{dense}/kernel"] = s[o + f"{fc}.weight"].T
      out[b + f"MlpBlock_0/{dense}/bias"] = s[o + f"{fc}.bias"]
  if model.prompt_tokens:
    out["prompt/embeddings"] = np.concatenate([s["prompt_embeddings"],
                                               s["deep_prompt_embeddings"]])
  return out


class HfAdamW(torch.optim.Optimizer):
  """The AdamW of VPT-or-FT's src/solver/optimizer.py (HuggingFace's): eps added to sqrt(v)
  before bias correction, correction folded into the step size, decoupled decay applied to the
  weights after the Adam step."""

  def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
    super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      beta1, beta2 = group["betas"]
      for p in group["params"]:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state["step"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        state["m"].mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
        state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
        denom = state["v"].sqrt().add_(group["eps"])
        step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
        p.addcdiv_(state["m"], denom, value=-step_size)
        if group["weight_decay"] > 0.0:
          p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def optimizer(model: PromptedViT, method: str, lr: float, weight_decay: float):
  """The reference's optimizer and parameter groups for `method` (what trains: see trainable)."""
  named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
  if method == "full" and weight_decay > 0:
    return HfAdamW([{"params": [p for n, p in named if "bias" not in n], "weight_decay": 0.01},
                    {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0}], lr=lr)
  if method == "full":
    return torch.optim.SGD([p for _, p in named], lr, momentum=0.9)
  return torch.optim.SGD([{"params": [p], "weight_decay": 0.0 if "last_layer.bias" in n
                           else weight_decay} for n, p in named], lr, momentum=0.9)


def freeze_for(model: PromptedViT, method: str) -> None:
  for name, p in model.named_parameters():
    trains = {"full": True, "mixed": True, "linear": name.startswith("last_layer"),
              "vpt_deep": name.startswith("last_layer") or "prompt" in name}[method]
    p.requires_grad_(trains)


def warmup_cosine_lambda(warmup_epochs: int, epochs: int):
  """KMnP/vpt src/solver/lr_scheduler.py WarmupCosineSchedule (cycles 0.5), in epochs."""
  def factor(epoch):
    if epoch < warmup_epochs:
      return float(epoch) / float(max(1.0, warmup_epochs))
    progress = float(epoch - warmup_epochs) / float(max(1, epochs - warmup_epochs))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
  return factor


def train(model: PromptedViT, method: str, lr: float, weight_decay: float, epochs: int,
          warmup_epochs: int, batches) -> list[float]:
  """Trains on `batches` (per epoch, a list of (NCHW images, labels) torch tensors); the loss of
  every step."""
  freeze_for(model, method)
  opt = optimizer(model, method, lr, weight_decay)
  scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(warmup_epochs, epochs))
  model.train()
  losses = []
  for epoch in range(epochs):
    for images, labels in batches[epoch]:
      opt.zero_grad()
      loss = F.cross_entropy(model(images), labels)
      loss.backward()
      opt.step()
      losses.append(float(loss))
    scheduler.step()  # Once per epoch, after its batches (src/engine/trainer.py).
  return losses
