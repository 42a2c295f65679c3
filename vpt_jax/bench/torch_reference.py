"""The PyTorch side of the benchmark: a timm ViT, fully fine-tuned or with VPT-deep prompts as
the VPT reference code inserts them, trained with SGD; eager and torch.compile.

Imports torch and timm lazily: they are optional (`available()` says whether they are here).
"""

import importlib.util
import statistics
import time

_TIMM_NAMES = {"Ti": "vit_tiny_patch{p}_224", "S": "vit_small_patch{p}_224",
               "B": "vit_base_patch{p}_224", "L": "vit_large_patch{p}_224"}


def available() -> bool:
  """torch and timm import here (timm also needs a torchvision built for the installed torch)."""
  if any(importlib.util.find_spec(m) is None for m in ("torch", "timm")):
    return False
  try:
    import timm  # noqa: F401  (the import itself is the check)
  except Exception:  # e.g. a torchvision that does not match torch.
    return False
  return True


def versions() -> str:
  import timm
  import torch
  return f"torch {torch.__version__}, timm {timm.__version__}"


def build(variant: str, depth, image_size: int, num_classes: int, method: str,
          prompt_tokens: int):
  """The timm model of `method`; a VPT-deep model's frozen ViT is `.vit`, its prompts `.prompts`
  (layers, tokens, width), sequence [CLS, prompts, patches] as in this project's ViT."""
  import timm
  import torch
  size, patch = variant.split("/")
  # Google's ViTs use the tanh GELU (timm's default is the exact one): the same model on both sides.
  kwargs = dict(pretrained=False, num_classes=num_classes, img_size=image_size,
                act_layer="gelu_tanh")
  if depth is not None:
    kwargs["depth"] = depth
  vit = timm.create_model(_TIMM_NAMES[size].format(p=patch), **kwargs)
  if method == "full":
    return vit
  if method != "vpt_deep":
    raise ValueError(f"The PyTorch reference has full and vpt_deep, not {method!r}.")

  class VptDeep(torch.nn.Module):
    """Frozen timm ViT; before block i, the prompt slots get layer i's own prompts."""

    def __init__(self):
      super().__init__()
      self.vit = vit
      for parameter in vit.parameters():
        parameter.requires_grad_(False)
      for parameter in vit.head.parameters():
        parameter.requires_grad_(True)
      width, blocks = vit.embed_dim, len(vit.blocks)
      bound = (6.0 / (3 * int(patch) ** 2 + width)) ** 0.5
      self.prompts = torch.nn.Parameter(torch.empty(blocks, prompt_tokens, width).uniform_(
          -bound, bound))
      self.prompt_dropout = torch.nn.Dropout(0.1)  # As the VPT reference code and this project.

    def forward(self, images):
      x = self.vit.norm_pre(self.vit._pos_embed(self.vit.patch_embed(images)))
      n = x.shape[0]
      for i, block in enumerate(self.vit.blocks):
        prompts = self.prompt_dropout(self.prompts[i].expand(n, -1, -1))
        rest = x[:, 1:] if i == 0 else x[:, 1 + prompt_tokens:]
        x = block(torch.cat([x[:, :1], prompts, rest], dim=1))
      return self.vit.head(self.vit.norm(x)[:, 0])

  return VptDeep()


def measure(variant: str, depth, image_size: int, method: str, batch: int, dtype: str,
            num_classes: int = 100, prompt_tokens: int = 50, steps: int = 20, warmup: int = 3,
            compile_model: bool = False) -> dict:
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = build(variant, depth, image_size, num_classes, method, prompt_tokens).to(device)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9, weight_decay=1e-4)
  forward = torch.compile(model) if compile_model else model
  images = torch.randn(batch, 3, image_size, image_size, device=device)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  started = time.perf_counter()
  step()  # Includes torch.compile's compilation.
  if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
  first_step = time.perf_counter() - started
  times = []
  for i in range(warmup + steps):
    started = time.perf_counter()
    step()
    if device == "cuda":
      torch.cuda.synchronize()
    if i >= warmup:
      times.append(time.perf_counter() - started)
  step_seconds = statistics.median(times)
  vit = model.vit if method == "vpt_deep" else model
  return {
      "framework": "torch.compile" if compile_model else "torch eager", "variant": variant,
      "depth": depth, "image_size": image_size, "method": method, "batch": batch, "dtype": dtype,
      "attention": "sdpa" if getattr(vit.blocks[0].attn, "fused_attn", False) else "explicit",
      "step_ms": 1e3 * step_seconds, "step_ms_min": 1e3 * min(times),
      "images_per_s": batch / step_seconds, "compile_s": first_step if compile_model else None,
      "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
      "trainable_parameters": sum(p.numel() for p in trainable), "steps_timed": steps,
  }
