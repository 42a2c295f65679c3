"""The PyTorch side of the benchmark: a timm ViT, fully fine-tuned or with VPT-deep prompts as
the VPT reference code inserts them, trained as the `paper` recipe trains them (full: AdamW with
decay 0.01, dropout 0.1; VPT-deep: SGD with momentum 0.9, prompt dropout 0.1; the exact GELU);
eager and torch.compile with a static batch.

Run it in a process of its own, never after JAX has taken the GPU's memory (JAX preallocates 75%
of it when its backend starts):

  python -m vpt_jax.bench.torch_reference --out=rows.jsonl --batches=128,64 [--compile]

Imports torch and timm lazily: they are optional (`available()` says whether they are here).
"""

import argparse
import importlib.util
import statistics
import time

from vpt_jax.bench import rows as rows_lib

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
          prompt_tokens: int, gelu_approximate: bool = True, dropout: float = 0.0,
          prompt_dropout: float = 0.1):
  """The timm model of `method`; a VPT-deep model's frozen ViT is `.vit`, its prompts `.prompts`
  (layers, tokens, width), sequence [CLS, prompts, patches] as in this project's ViT.
  `gelu_approximate` and `dropout` as vit.Model's: dropout after the position embedding and in
  the MLP, none on the attention branch (the recipe's attn_out_dropout=0)."""
  import timm
  import torch
  size, patch = variant.split("/")
  kwargs = dict(pretrained=False, num_classes=num_classes, img_size=image_size,
                act_layer="gelu_tanh" if gelu_approximate else "gelu", pos_drop_rate=dropout,
                proj_drop_rate=dropout)
  if depth is not None:
    kwargs["depth"] = depth
  if size in _TIMM_NAMES:
    vit = timm.create_model(_TIMM_NAMES[size].format(p=patch), **kwargs)
  else:  # A size timm does not name (the dry run's "mu"): timm's ViT class at vit.py's geometry.
    from timm.models.vision_transformer import VisionTransformer
    from vpt_jax.models import vit as vit_lib
    width = vit_lib._WIDTH[size]
    kwargs.pop("pretrained")
    kwargs["act_layer"] = torch.nn.GELU if not gelu_approximate else (
        lambda: torch.nn.GELU(approximate="tanh"))
    vit = VisionTransformer(patch_size=int(patch), embed_dim=width, num_heads=vit_lib._HEADS[size],
                            mlp_ratio=vit_lib._MLP_DIM[size] / width,
                            **{"depth": vit_lib._DEPTH[size], **kwargs})
  for block in vit.blocks:  # timm's proj_drop_rate also drops the attention output.
    block.attn.proj_drop = torch.nn.Identity()
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
      self.prompt_dropout = torch.nn.Dropout(prompt_dropout)

    def forward(self, images):
      x = self.vit.norm_pre(self.vit._pos_embed(self.vit.patch_embed(images)))
      n = x.shape[0]
      for i, block in enumerate(self.vit.blocks):
        prompts = self.prompt_dropout(self.prompts[i].expand(n, -1, -1))
        rest = x[:, 1:] if i == 0 else x[:, 1 + prompt_tokens:]
        x = block(torch.cat([x[:, :1], prompts, rest], dim=1))
      return self.vit.head(self.vit.norm(x)[:, 0])

  return VptDeep()


# The recipe's step per method (vpt_jax.bench.benchmark.recipe_step holds the JAX side's).
RECIPE = {"full": dict(dropout=0.1, optimizer="adamw", lr=0.001 * 128 / 256, weight_decay=0.01),
          "vpt_deep": dict(dropout=0.0, optimizer="sgd", lr=0.5 * 64 / 256, weight_decay=1e-4)}


def _optimizer(name: str, parameters, lr: float, weight_decay: float, cuda: bool):
  import torch
  # Fused kernels on a GPU: the fastest PyTorch has, so the comparison is against its best.
  if name == "adamw":
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=cuda)
  return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=cuda)


def measure(variant: str, depth, image_size: int, method: str, batch: int, dtype: str,
            num_classes: int = 100, prompt_tokens: int = 50, steps: int = 20, warmup: int = 3,
            compile_model: bool = False, rounds: int = 3) -> dict:
  """Times the recipe's train step of `method` in PyTorch. torch.compile compiles for this batch
  alone (dynamic=False, and no automatic dynamic shapes): a second batch size gets its own static
  graph, never a recompiled dynamic one. Each round dispatches `steps` steps and waits once."""
  import torch
  import torch._dynamo
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  recipe = RECIPE[method]
  model = build(variant, depth, image_size, num_classes, method, prompt_tokens,
                gelu_approximate=False, dropout=recipe["dropout"]).to(device)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = _optimizer(recipe["optimizer"], trainable, recipe["lr"], recipe["weight_decay"],
                         device == "cuda")
  if compile_model:
    torch._dynamo.reset()
    torch._dynamo.config.automatic_dynamic_shapes = False
  forward = torch.compile(model, dynamic=False) if compile_model else model
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

  def synchronize():
    if device == "cuda":
      torch.cuda.synchronize()

  started = time.perf_counter()
  step()  # Includes torch.compile's compilation.
  synchronize()
  first_step = time.perf_counter() - started
  for _ in range(warmup):
    step()
  synchronize()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()  # This row's own peak, not an earlier row's.
  seconds = []
  for _ in range(rounds):
    started = time.perf_counter()
    for _ in range(steps):
      loss = step()
    synchronize()
    seconds.append((time.perf_counter() - started) / steps)
  if not torch.isfinite(loss).item():
    raise rows_lib.NonFiniteLoss(f"loss {loss.item()} after {1 + warmup + steps * rounds} steps")
  step_seconds = statistics.median(seconds)
  vit = model.vit if method == "vpt_deep" else model
  return {
      "framework": "torch.compile" if compile_model else "torch eager", "variant": variant,
      "depth": depth, "image_size": image_size, "method": method, "batch": batch, "dtype": dtype,
      "prompt_tokens": prompt_tokens if method == "vpt_deep" else None,
      "attention": "sdpa" if getattr(vit.blocks[0].attn, "fused_attn", False) else "explicit",
      "optimizer": recipe["optimizer"],
      "step_ms": 1e3 * step_seconds, "step_ms_min": 1e3 * min(seconds),
      "images_per_s": batch / step_seconds, "compile_s": first_step if compile_model else None,
      "program_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
      "trainable_parameters": sum(p.numel() for p in trainable), "steps_timed": steps * rounds,
  }


def run_rows(out: str, variant: str, depth, image_size: int, dtype: str, methods: list[str],
             batches: list[int], compile_model: bool, prompt_tokens: int, steps: int,
             step_name: str | None = None) -> None:
  """Measures every (method, batch), appending each row (or its named failure) to `out` as it
  comes; `step_name` (the device check's step) goes into each row as "step"."""
  import torch
  for method in methods:
    for batch in batches:
      fields = {"framework": "torch.compile" if compile_model else "torch eager",
                "method": method, "batch": batch, "dtype": dtype, "variant": variant,
                "depth": depth, "prompt_tokens": prompt_tokens if method == "vpt_deep" else None}
      started = time.perf_counter()
      try:
        row = measure(variant, depth, image_size, method, batch, dtype,
                      prompt_tokens=prompt_tokens, steps=steps, compile_model=compile_model)
      except Exception as e:  # Named and saved; the next row runs.
        row = rows_lib.error_row(fields, e)
      row["wall_s"] = time.perf_counter() - started
      if step_name:
        row["step"] = step_name
      row["versions"] = versions()
      rows_lib.append_row(out, row)
      print(f"{row['framework']} {method} b{batch}: "
            + (f"{row['images_per_s']:.1f} images/s" if "error" not in row
               else f"FAILED ({row['error_kind']}) {row['error']}"), flush=True)
      if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="PyTorch rows, in a process of their own.")
  parser.add_argument("--out", required=True, help="JSON-lines file the rows are appended to.")
  parser.add_argument("--variant", default="B/16")
  parser.add_argument("--depth", type=int, default=None)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--methods", default="full,vpt_deep")
  parser.add_argument("--batches", default="128,64")
  parser.add_argument("--prompt_tokens", type=int, default=50)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--compile", action="store_true", help="torch.compile, static batch.")
  parser.add_argument("--step", default=None, help="The device check's step these rows belong to.")
  args = parser.parse_args(argv)
  if not available():
    raise SystemExit("error: the PyTorch rows need torch and timm (pip install torch timm).")
  run_rows(args.out, args.variant, args.depth, args.image_size, args.dtype,
           args.methods.split(","), [int(b) for b in args.batches.split(",")], args.compile,
           args.prompt_tokens, args.steps, args.step)


if __name__ == "__main__":
  main()
