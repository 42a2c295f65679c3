"""Train-step speed of the tuning methods: time, images/s, FLOPs, MFU, memory, compile time.

The step measured is `steps.build_train_step`, the one training runs: device-resident uint8 data,
on-device batching, donated state, gradients only for trainable parameters.
"""

import dataclasses
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import methods
from vpt_jax.training import optim, sharding
from vpt_jax.utils import paths
from vpt_jax.training import steps as train_steps
from vpt_jax.models import vit

# Dense peak TFLOP/s per chip by device kind and compute dtype (vendor datasheets).
PEAK_TFLOPS = {
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "H100": {"bfloat16": 989.4, "float32": 494.7},  # SXM; float32 matmuls run as TF32.
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def peak_flops(device, dtype: str) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, peaks in PEAK_TFLOPS.items():  # Most specific names first.
    if name in kind:
      return peaks[dtype] * 1e12
  return None


def _tuned_stage(method: str, depth: int, prompt_tokens: int) -> methods.Method:
  return methods.get(method, depth=depth, prompt_tokens=prompt_tokens, prompt_dropout=0.1,
                     lora_rank=8, adapter_dim=64, partial_k=2).tuned_stage


def analytic_flops(arch: vit.Architecture, image_size: int, num_classes: int, method: str,
                   prompt_tokens: int) -> float:
  """Model FLOPs of one training example of the stage `method` tunes (a multiply-add is 2 FLOPs).

  A stage that trains the backbone: forward + activation gradients + weight gradients = 3x
  forward. A frozen backbone (VPT and the PEFT family, whose own parameters are negligible here)
  needs the forward and the activation gradients through every block (matmuls 1x, attention 2x
  forward), but no weight gradients and nothing for the patch embedding; a stage that trains only
  the head needs the forward only.
  """
  stage = _tuned_stage(method, arch.depth, prompt_tokens)
  trained_groups = {group for _, group in stage.rules} - {methods.FROZEN}
  patches = (image_size // arch.patch_size[0]) * (image_size // arch.patch_size[1])
  tokens = patches + 1 + (stage.model_fields.get("prompt_tokens") or 0)
  d, m = arch.width, arch.mlp_dim
  matmuls = 2 * tokens * (4 * d * d + 2 * d * m)
  attention = 2 * 2 * tokens * tokens * d
  embedding = 2 * patches * arch.patch_size[0] * arch.patch_size[1] * 3 * d
  head = 2 * d * num_classes
  forward = embedding + arch.depth * (matmuls + attention) + head
  if methods.BACKBONE in trained_groups:
    return 3.0 * forward
  if trained_groups == {"head"}:
    return forward + head
  return forward + arch.depth * (matmuls + 2 * attention) + 2 * head


@dataclasses.dataclass
class Setting:
  variant: str
  depth: int | None
  image_size: int
  method: str
  batch: int
  dtype: str
  num_classes: int = 100
  prompt_tokens: int = 50
  attention_impl: str | None = None
  remat: bool = False
  pack: int = 1  # Runs trained at once in one compiled step (vmap), as sweep.pack does.


def measure(setting: Setting, steps: int = 20, warmup: int = 3, peak: float | None = None) -> dict:
  """Compiles and times the train step of `setting` on all local devices; with `pack` > 1 the
  step of that many runs at once (images/s then counts the images of all of them)."""
  mesh = sharding.make_mesh()
  stage = _tuned_stage(setting.method, vit.decode_variant(setting.variant).depth
                       if setting.depth is None else setting.depth, setting.prompt_tokens)
  model = vit.Model(num_classes=setting.num_classes, variant=setting.variant, depth=setting.depth,
                    dtype=jnp.bfloat16 if setting.dtype == "bfloat16" else None,
                    attention_impl=setting.attention_impl, remat=setting.remat,
                    **stage.model_fields)
  size = setting.image_size
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
  groups = methods.labels(params, stage.rules)
  trainable, frozen = methods.split(params, groups)
  tx = optim.make("sgd", methods.split(groups, groups)[0], optim.warmup_cosine(10, 1000),
                  momentum=0.9)
  trainable_sharding = sharding.param_shardings(mesh, trainable, ((".*", "replicate"),))
  frozen_sharding = sharding.param_shardings(mesh, frozen, ((".*", "replicate"),))
  opt_sharding = sharding.optimizer_shardings(mesh, tx, jax.eval_shape(tx.init, trainable),
                                              trainable_sharding)
  state_shardings = (trainable_sharding, opt_sharding, frozen_sharding)
  trainable = jax.device_put(trainable, trainable_sharding)
  frozen = jax.device_put(frozen, frozen_sharding)
  opt_state = jax.jit(lambda t: optim.set_hyperparams(tx.init(t), peak_lr=0.01, weight_decay=1e-4),
                      out_shardings=opt_sharding)(trainable)
  examples = 4 * setting.batch
  replicated = sharding.replicated(mesh)
  images = sharding.put_global(np.random.default_rng(0).integers(
      0, 256, (examples, size, size, 3), dtype=np.uint8), replicated)
  labels = sharding.put_global(np.arange(examples, dtype=np.int32) % setting.num_classes,
                               replicated)
  permutation = sharding.put_global(np.arange(examples, dtype=np.int32), replicated)
  rng = jax.random.PRNGKey(1)
  step_fn = train_steps.make_device_step(model, tx, mesh, 4, setting.batch, "inception")
  if setting.pack > 1:
    stacked = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * setting.pack), tree)
    trainable, opt_state = stacked(trainable), stacked(opt_state)
    permutation, rng = stacked(permutation), stacked(rng)
    state_shardings = tuple(jax.tree.map(
        lambda s: jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(None, *s.spec)),
        tree) for tree in state_shardings[:2]) + (frozen_sharding,)
  step_fn = train_steps.jit_step(step_fn, mesh, state_shardings, packed=setting.pack > 1)
  args = (trainable, opt_state, frozen, images, labels, permutation, 0, rng, rng)
  started = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  compile_seconds = time.perf_counter() - started
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()

  times = []
  for step in range(warmup + steps):
    started = time.perf_counter()
    trainable, opt_state, out = compiled(trainable, opt_state, frozen, images, labels, permutation,
                                         step, rng, rng)
    jax.block_until_ready(out["loss"])
    if step >= warmup:
      times.append(time.perf_counter() - started)
  if not np.all(np.isfinite(np.asarray(out["loss"]))):
    raise RuntimeError(f"Non-finite loss while benchmarking {setting}.")
  step_seconds = statistics.median(times)
  arch = model.architecture
  flops = analytic_flops(arch, size, setting.num_classes, setting.method, setting.prompt_tokens)
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = peak if peak is not None else peak_flops(jax.local_devices()[0], setting.dtype)
  per_device = setting.batch / jax.device_count()
  return {
      **dataclasses.asdict(setting), "framework": "jax",
      "attention": setting.attention_impl or "explicit",
      "step_ms": 1e3 * step_seconds, "step_ms_min": 1e3 * min(times),
      "images_per_s": setting.pack * setting.batch / step_seconds,
      "gflops_per_image": flops / 1e9,
      "xla_gflops_per_image": (cost or {}).get("flops", float("nan"))
                              / (setting.pack * setting.batch) / 1e9,
      "mfu": setting.pack * flops * per_device / step_seconds / peak if peak else None,
      "peak_memory_gb": stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None,
      "compiled_memory_gb": (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                             + memory.output_size_in_bytes) / 1e9 if memory else None,
      "compile_s": compile_seconds, "steps_timed": steps,
      "trainable_parameters": paths.count(trainable) // setting.pack,
  }


def markdown(rows: list[dict]) -> str:
  header = ("| framework | method | batch | dtype | attention | step (ms) | images/s | "
            "GFLOP/img (model) | GFLOP/img (XLA) | MFU | peak mem (GB) | compile (s) |")
  lines = [header, "|" + "---|" * 12]
  fmt = lambda v, spec: "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(
      v, spec)
  for r in rows:
    memory = r.get("peak_memory_gb") or r.get("compiled_memory_gb")
    method = r["method"] + (f" x{r['pack']} packed" if r.get("pack", 1) > 1 else "")
    lines.append(
        f"| {r['framework']} | {method} | {r['batch']} | {r['dtype']} | "
        f"{r.get('attention', '—')} | "
        f"{fmt(r.get('step_ms'), '.1f')} | {fmt(r.get('images_per_s'), '.1f')} | "
        f"{fmt(r.get('gflops_per_image'), '.2f')} | {fmt(r.get('xla_gflops_per_image'), '.2f')} | "
        f"{fmt(r.get('mfu'), '.1%')} | {fmt(memory, '.2f')} | {fmt(r.get('compile_s'), '.1f')} |")
  return "\n".join(lines)


# The speed targets, defined for one H100 at 224 px, batch 128, bfloat16, B/16, 50 prompt tokens.
TARGET_MFU_FULL = 0.5
TARGET_VPT_OVER_FULL = 1.15
TARGET_OVER_TORCH = 1.5


def targets(rows: list[dict], batch: int | None = None) -> list[tuple[str, str, bool]]:
  """(target, measured, met) for each target these rows can answer, at `batch` (default: 128 if
  measured, else the largest batch). Against PyTorch, the faster of eager and torch.compile."""
  jax_rows = {(r["method"], r["batch"]): r for r in rows if r["framework"] == "jax"}
  if not jax_rows:
    return []
  batches = {b for _, b in jax_rows}
  batch = batch or (128 if 128 in batches else max(batches))
  full, vpt = jax_rows.get(("full", batch)), jax_rows.get(("vpt_deep", batch))
  results = []
  if full and full.get("mfu") is not None:
    results.append((f"full fine-tuning MFU >= {TARGET_MFU_FULL:.0%}", f"{full['mfu']:.1%}",
                    full["mfu"] >= TARGET_MFU_FULL))
  if full and vpt:
    ratio = vpt["images_per_s"] / full["images_per_s"]
    results.append((f"VPT-deep images/s >= {TARGET_VPT_OVER_FULL}x full fine-tuning's",
                    f"{ratio:.2f}x", ratio >= TARGET_VPT_OVER_FULL))
  for name, row in (("full", full), ("vpt_deep", vpt)):
    torch_rows = [r for r in rows if r["framework"] != "jax" and r["method"] == name
                  and r["batch"] == batch]
    if row and torch_rows:
      best = max(torch_rows, key=lambda r: r["images_per_s"])
      ratio = row["images_per_s"] / best["images_per_s"]
      results.append((f"{name} images/s >= {TARGET_OVER_TORCH}x PyTorch's (best: "
                      f"{best['framework']})", f"{ratio:.2f}x", ratio >= TARGET_OVER_TORCH))
  return results


def report(meta: dict, rows: list[dict]) -> str:
  """The Markdown page of one benchmark run: setting, table, ratios, targets."""
  depth = f" depth {meta['depth']}" if meta.get("depth") else ""
  versions = f"jax {meta['jax']}" + (f", {meta['torch']}" if meta.get("torch") else "")
  text = (f"# Train-step benchmark, {meta['device']} x{meta['devices']}, {meta['date']}\n\n"
          f"{meta['variant']}{depth}, {meta['image_size']}px, {meta['dtype']}, "
          f"{meta['prompt_tokens']} prompt tokens, {versions}.\n\n{markdown(rows)}\n")
  speedups = [f"{r['framework']} {r['method']} b{r['batch']}: {r['speedup_of_jax']:.2f}x"
              for r in rows if "speedup_of_jax" in r]
  if speedups:
    text += "\nThis project's images/s over PyTorch's: " + "; ".join(speedups) + ".\n"
  packing = [f"{r['method']} b{r['batch']} x{r['pack']}: {r['speedup_of_packing']:.2f}x"
             for r in rows if "speedup_of_packing" in r]
  if packing:
    text += "\nPacked runs' images/s over one run at a time: " + "; ".join(packing) + ".\n"
  checks = targets(rows)
  if checks:
    target_setting = (meta["variant"] == "B/16" and not meta.get("depth")
                      and meta["image_size"] == 224 and meta["dtype"] == "bfloat16"
                      and meta["prompt_tokens"] == 50 and "H100" in meta["device"])
    text += ("\n## Targets\n\n" + ("" if target_setting else
             "Defined for B/16 on one H100 at 224 px, bfloat16, 50 prompt tokens; this run is "
             "another setting, so these lines are for orientation only.\n\n")
             + "\n".join(f"- {'met' if met else 'NOT met'}: {name}: {value}"
                          for name, value, met in checks) + "\n")
  return text


def free_stem(directory: str, name: str) -> str:
  """`directory`/`name` made file-safe, with _2, _3... so that no earlier result is overwritten."""
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(directory, re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-"))
  candidate, n = stem, 1
  while os.path.exists(candidate + ".json") or os.path.exists(candidate + ".md"):
    n += 1
    candidate = f"{stem}_{n}"
  return candidate
