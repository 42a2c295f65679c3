"""Train-step speed of the tuning methods: time, images/s, FLOPs, MFU, memory, compile time.

The step measured is the one training runs (`steps.make_device_step` + `steps.jit_step`: device-
resident uint8 data, on-device batching, donated state, gradients only for trainable parameters)
with the optimizer, dropout, GELU and prompt settings of the `paper` recipe (`recipe_step`).
Rows are appended to a JSON-lines file the moment they exist (`append_row`), so a run cut short
keeps what it measured; a failing row is a row too, its error named (`error_row`).
"""

import dataclasses
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import methods, models
from vpt_jax.bench import rows
from vpt_jax.training import optim, recipes, sharding
from vpt_jax.utils import paths
from vpt_jax.training import steps as train_steps
from vpt_jax.models import vit

# Dense (no sparsity) peak TFLOP/s per chip by device kind and compute dtype (vendor datasheets);
# most specific names first. float32 matmuls run as TF32 on these GPUs.
PEAK_TFLOPS = {
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "H100 NVL": {"bfloat16": 835.0, "float32": 417.5},
    "H200 NVL": {"bfloat16": 835.0, "float32": 417.5},
    "H100": {"bfloat16": 989.4, "float32": 494.7},  # SXM.
    "H200": {"bfloat16": 989.4, "float32": 494.7},  # SXM: the H100's chip with more memory.
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}
# The devices the speed targets are defined for.
TARGET_DEVICES = ("H100", "H200")


def peak_flops(device, dtype: str) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, peaks in PEAK_TFLOPS.items():
    if name in kind:
      return peaks[dtype] * 1e12
  return None


def is_target_device(device_kind: str) -> bool:
  return any(name in device_kind for name in TARGET_DEVICES)


def measure_matmul_peak(dtype: str = "bfloat16", size: int = 8192, repeats: int = 10) -> float:
  """FLOP/s of a large square matmul on the first device: the rate this device really reaches,
  the second denominator of MFU beside the datasheet's."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  a, b = (jax.random.normal(key, (size, size), jnp.dtype(dtype)) for key in keys)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, b))
  started = time.perf_counter()
  outputs = [matmul(a, b) for _ in range(repeats)]  # Dispatched back to back, waited for once.
  jax.block_until_ready(outputs)
  return 2 * size ** 3 * repeats / (time.perf_counter() - started)


# Methods whose recipe is not one single-stage step with SGD or an AdamW (other optimizers, several
# stages).
_OTHER_RECIPES = ("galore", "vqt", "mixed", "ft_then_pt", "lp_ft")


def recipe_step(method: str) -> dict:
  """The `paper` recipe's step settings of `method` on a VTAB-1k task (svhn): model fields,
  optimizer (its applied weight decay), prompt dropout, input normalisation. Read from the recipe
  itself, which needs neither ml_collections nor TensorFlow."""
  if method in _OTHER_RECIPES:
    raise ValueError(f"The benchmark times single-stage methods trained with SGD or VPT-or-FT's "
                     f"AdamW, not {method!r}.")
  methods.stage_names(method)  # An unknown name fails here, in one line.
  recipe = recipes.paper(method, "svhn", {})
  o = recipe["optim"]
  return dict(
      model={k: recipe["model"][k] for k in ("dropout", "attn_out_dropout", "gelu_approximate",
                                             "head_init")},
      optim=dict(name=o["name"], base_lr=o["base_lr"],
                 weight_decay=o.get("applied_weight_decay", o["weight_decay"]),
                 momentum=o["momentum"], decay_rules=o["decay_rules"]),
      prompt_dropout=recipe["method_kwargs"].get("prompt_dropout", 0.0),
      normalization=recipe["data"]["normalization"])


def _tuned_stage(method: str, depth: int, prompt_tokens: int) -> methods.Method:
  return methods.get(method, depth=depth, prompt_tokens=prompt_tokens,
                     prompt_dropout=recipe_step(method)["prompt_dropout"], lora_rank=8,
                     adapter_dim=64, partial_k=2).tuned_stage


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
  attention_impl: str | None = "auto"  # vit.Model's: "auto" is cuDNN on a GPU in bfloat16.
  remat: bool = False
  pack: int = 1  # Runs trained at once in one compiled step (vmap), as sweep.pack does.
  base_lr: float | None = None  # None: the recipe's (scaled by batch / 256, as it does).


def _stacked_shardings(tree):
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(
      s.mesh, jax.sharding.PartitionSpec(None, *s.spec)), tree)


def build(setting: Setting, data: tuple[np.ndarray, np.ndarray] | None = None):
  """(jitted step, its arguments, model) of `setting`: the recipe's step on `data` (uint8 images,
  int32 labels; default: 4 batches of random images)."""
  if models.is_swin(setting.variant):  # analytic_flops counts a ViT's matmuls.
    raise ValueError(f"The benchmark's FLOPs model is the ViT's, not {setting.variant}'s: count a "
                     "Swin step with vpt_jax/bench/costs.py (XLA's analysis).")
  mesh = sharding.make_mesh()
  recipe = recipe_step(setting.method)
  stage = _tuned_stage(setting.method, vit.decode_variant(setting.variant).depth
                       if setting.depth is None else setting.depth, setting.prompt_tokens)
  model = models.build(num_classes=setting.num_classes, variant=setting.variant,
                       depth=setting.depth, dtype=jnp.bfloat16 if setting.dtype == "bfloat16" else None,
                       attention_impl=setting.attention_impl, remat=setting.remat,
                       **recipe["model"], **stage.model_fields)
  size = setting.image_size
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
  groups = methods.labels(params, stage.rules)
  trainable, frozen = methods.split(params, groups)
  if data is None:
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (4 * setting.batch, size, size, 3), dtype=np.uint8),
            np.arange(4 * setting.batch, dtype=np.int32) % setting.num_classes)
  examples = len(data[1])
  steps_per_epoch = examples // setting.batch
  schedule = optim.warmup_cosine_epochs(1, 100, steps_per_epoch)
  hparams = recipe["optim"]
  tx = optim.make(hparams["name"], methods.split(groups, groups)[0], schedule,
                  momentum=hparams["momentum"], decay_rules=hparams["decay_rules"])
  replicate = ((".*", "replicate"),)
  trainable_sharding = sharding.param_shardings(mesh, trainable, replicate)
  frozen_sharding = sharding.param_shardings(mesh, frozen, replicate)
  opt_sharding = sharding.optimizer_shardings(mesh, tx, jax.eval_shape(tx.init, trainable),
                                              trainable_sharding)
  state_shardings = (trainable_sharding, opt_sharding, frozen_sharding)
  trainable = jax.device_put(trainable, trainable_sharding)
  frozen = jax.device_put(frozen, frozen_sharding)
  peak_lr = optim.learning_rate(setting.base_lr or hparams["base_lr"], setting.batch)
  opt_state = jax.jit(lambda t: optim.set_hyperparams(
      tx.init(t), peak_lr=peak_lr, weight_decay=hparams["weight_decay"]),
      out_shardings=opt_sharding)(trainable)
  replicated = sharding.replicated(mesh)
  images, labels = (sharding.put_global(array, replicated) for array in data)
  permutation = sharding.put_global(np.arange(examples, dtype=np.int32), replicated)
  rng = jax.random.PRNGKey(1)
  step_fn = train_steps.make_device_step(model, tx, mesh, setting.batch, recipe["normalization"])
  extent = sharding.put_global(np.asarray([examples, steps_per_epoch], np.int32), replicated)
  rows = sharding.put_global(np.arange(examples, dtype=np.int32), replicated)
  if setting.pack > 1:
    stacked = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * setting.pack), tree)
    trainable, opt_state = stacked(trainable), stacked(opt_state)
    permutation, rng = stacked(permutation), stacked(rng)
    state_shardings = (_stacked_shardings(trainable_sharding), _stacked_shardings(opt_sharding),
                       frozen_sharding)
  step_fn = train_steps.jit_step(step_fn, mesh, state_shardings, packed=setting.pack > 1)
  args = [trainable, opt_state, frozen, images, labels, rows, permutation, extent, 0, rng, rng]
  return step_fn, args, model


def program_memory_bytes(compiled) -> int | None:
  """What the compiled step itself needs on a device: its arguments, outputs and temporaries,
  less the outputs written into donated arguments. A per-program figure (the allocator's
  peak_bytes_in_use is a process-lifetime maximum: after the first row it shows the largest so
  far)."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def time_steps(compiled, args: list, steps: int, rounds: int = 3) -> tuple[list[float], object]:
  """Seconds per step of `rounds` rounds of `steps` steps each: a round dispatches its steps back
  to back and waits once (blocking on every step would time the host's round trips, not the
  device). Returns (per-step seconds of each round, the last metrics)."""
  trainable, opt_state, *rest = args
  frozen, images, labels, rows, permutation, extent, _, train_rng, flip_rng = rest
  seconds, step, out = [], 0, None
  for _ in range(rounds):
    started = time.perf_counter()
    for _ in range(steps):
      trainable, opt_state, out = compiled(trainable, opt_state, frozen, images, labels,
                                           rows, permutation, extent, step, train_rng, flip_rng)
      step += 1
    jax.block_until_ready(out["loss"])
    seconds.append((time.perf_counter() - started) / steps)
  args[:2] = trainable, opt_state  # The step donated the old ones.
  return seconds, out


def measure(setting: Setting, steps: int = 20, warmup: int = 3, peak: float | None = None,
            measured_peak: float | None = None, rounds: int = 3) -> dict:
  """Compiles and times the train step of `setting` on all local devices; with `pack` > 1 the
  step of that many runs at once (images/s then counts the images of all of them). MFU against
  the datasheet's peak (`peak`, default from PEAK_TFLOPS) and against `measured_peak` (a timed
  matmul's FLOP/s) when given."""
  step_fn, args, model = build(setting)
  started = time.perf_counter()
  try:
    compiled = step_fn.lower(*args).compile()
  except Exception as e:
    raise rows.CompileError(f"{type(e).__name__}: {rows.first_line(e)}") from e
  compile_seconds = time.perf_counter() - started
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  if warmup:
    time_steps(compiled, args, warmup, rounds=1)
  seconds, out = time_steps(compiled, args, steps, rounds)
  if not np.all(np.isfinite(np.asarray(out["loss"]))):
    raise rows.NonFiniteLoss(f"loss {np.asarray(out['loss']).ravel()[:4]} after {warmup + steps * rounds} "
                        "steps")
  step_seconds = statistics.median(seconds)
  arch = model.architecture
  flops = analytic_flops(arch, setting.image_size, setting.num_classes, setting.method,
                         setting.prompt_tokens)
  peak = peak if peak is not None else peak_flops(jax.local_devices()[0], setting.dtype)
  per_device = setting.pack * setting.batch / jax.device_count()
  achieved = flops * per_device / step_seconds
  memory = program_memory_bytes(compiled)
  return {
      **dataclasses.asdict(setting), "framework": "jax",
      "attention": vit.attention_implementation(setting.attention_impl, model.dtype) or "explicit",
      "optimizer": recipe_step(setting.method)["optim"]["name"],
      "step_ms": 1e3 * step_seconds, "step_ms_min": 1e3 * min(seconds),
      "images_per_s": setting.pack * setting.batch / step_seconds,
      "gflops_per_image": flops / 1e9,
      "xla_gflops_per_image": (cost or {}).get("flops", float("nan"))
                              / (setting.pack * setting.batch) / 1e9,
      "mfu": achieved / peak if peak else None,
      "mfu_measured_peak": achieved / measured_peak if measured_peak else None,
      "program_memory_gb": memory / 1e9 if memory is not None else None,
      "compile_s": compile_seconds, "steps_timed": steps * rounds,
      "trainable_parameters": paths.count(args[0]) // setting.pack,
  }


def add_ratios(rows: list[dict], devices: int = 1) -> None:
  """Packing's speed-up over one run, and this project's over PyTorch (whose rows get the same
  model's FLOPs and MFU), per method, batch and prompt count; failed rows are left as they are."""
  ok = [r for r in rows if "error" not in r and r.get("images_per_s")]
  key = lambda r: (r["method"], r["batch"], r.get("prompt_tokens") if r["method"] == "vpt_deep"
                   else None)
  alone = {key(r): r for r in ok if r["framework"] == "jax" and r.get("pack", 1) == 1}
  for r in ok:
    base = alone.get(key(r))
    if base and r["framework"] == "jax" and r.get("pack", 1) > 1:
      r["speedup_of_packing"] = r["images_per_s"] / base["images_per_s"]
    elif base and r["framework"] != "jax":
      r["gflops_per_image"] = base["gflops_per_image"]
      r["speedup_of_jax"] = base["images_per_s"] / r["images_per_s"]
      for field in ("mfu", "mfu_measured_peak"):  # PyTorch on one device, JAX maybe on several.
        if base.get(field) is not None:
          r[field] = base[field] * devices * r["images_per_s"] / base["images_per_s"]


def markdown(rows: list[dict]) -> str:
  header = ("| framework | method | batch | dtype | attention | step (ms) | images/s | "
            "GFLOP/img (model) | GFLOP/img (XLA) | MFU (datasheet) | MFU (measured peak) | "
            "program mem (GB) | compile (s) |")
  lines = [header, "|" + "---|" * 13]
  fmt = lambda v, spec: "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(
      v, spec)
  for r in rows:
    method = r["method"] + (f" x{r['pack']} packed" if r.get("pack", 1) > 1 else "")
    if r.get("prompt_tokens") and r["method"].startswith("vpt"):
      method += f" ({r['prompt_tokens']} prompts)"
    if "error" in r:
      lines.append(f"| {r.get('framework', 'jax')} | {method} | {r.get('batch', '—')} | "
                   f"{r.get('dtype', '—')} | FAILED ({r['error_kind']}): {r['error'][:120]} |"
                   + " |" * 8)
      continue
    lines.append(
        f"| {r['framework']} | {method} | {r['batch']} | {r['dtype']} | "
        f"{r.get('attention', '—')} | "
        f"{fmt(r.get('step_ms'), '.1f')} | {fmt(r.get('images_per_s'), '.1f')} | "
        f"{fmt(r.get('gflops_per_image'), '.2f')} | {fmt(r.get('xla_gflops_per_image'), '.2f')} | "
        f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('mfu_measured_peak'), '.1%')} | "
        f"{fmt(r.get('program_memory_gb'), '.2f')} | {fmt(r.get('compile_s'), '.1f')} |")
  return "\n".join(lines)


# The speed targets, defined for one H100 or H200 at 224 px, batch 128, bfloat16, B/16, 50 prompt
# tokens.
TARGET_MFU_FULL = 0.5
TARGET_VPT_OVER_FULL = 1.15
TARGET_OVER_TORCH = 1.5


def targets(rows: list[dict], batch: int | None = None,
            prompt_tokens: int = 50) -> list[tuple[str, str, bool]]:
  """(target, measured, met) for each target these rows can answer, at `batch` (default: 128 if
  measured, else the largest batch), one run per step, VPT-deep with `prompt_tokens` prompts.
  Against PyTorch, the faster of eager and torch.compile. Failed rows answer nothing."""
  measured = [r for r in rows if "error" not in r and r.get("images_per_s")]
  jax_rows = {(r["method"], r["batch"]): r for r in measured
              if r["framework"] == "jax" and r.get("pack", 1) == 1
              and (r["method"] != "vpt_deep" or r.get("prompt_tokens") == prompt_tokens)}
  if not jax_rows:
    return []
  batches = {b for _, b in jax_rows}
  batch = batch or (128 if 128 in batches else max(batches))
  full, vpt = jax_rows.get(("full", batch)), jax_rows.get(("vpt_deep", batch))
  results = []
  if full and full.get("mfu") is not None:
    measured_peak = (f", {full['mfu_measured_peak']:.1%} of the measured matmul peak"
                     if full.get("mfu_measured_peak") else "")
    results.append((f"full fine-tuning MFU >= {TARGET_MFU_FULL:.0%}",
                    f"{full['mfu']:.1%}{measured_peak}", full["mfu"] >= TARGET_MFU_FULL))
  if full and vpt:
    ratio = vpt["images_per_s"] / full["images_per_s"]
    results.append((f"VPT-deep images/s >= {TARGET_VPT_OVER_FULL}x full fine-tuning's",
                    f"{ratio:.2f}x", ratio >= TARGET_VPT_OVER_FULL))
  for name, row in (("full", full), ("vpt_deep", vpt)):
    torch_rows = [r for r in measured if r["framework"] != "jax" and r["method"] == name
                  and r["batch"] == batch]
    if row and torch_rows:
      best = max(torch_rows, key=lambda r: r["images_per_s"])
      ratio = row["images_per_s"] / best["images_per_s"]
      results.append((f"{name} images/s >= {TARGET_OVER_TORCH}x PyTorch's (best: "
                      f"{best['framework']})", f"{ratio:.2f}x", ratio >= TARGET_OVER_TORCH))
  return results


def targets_text(meta: dict, rows: list[dict]) -> str:
  """The targets section of a page: met or not, or why these rows judge nothing."""
  checks = targets(rows, prompt_tokens=meta.get("prompt_tokens", 50))
  if not checks:
    return ""
  target_setting = (meta["variant"] == "B/16" and not meta.get("depth")
                    and meta["image_size"] == 224 and meta["dtype"] == "bfloat16"
                    and meta.get("prompt_tokens") == 50 and is_target_device(meta["device"]))
  return ("\n## Targets\n\n" + ("" if target_setting else
          "Defined for B/16 on one H100 or H200 at 224 px, bfloat16, 50 prompt tokens; this run "
          "is another setting, so these lines are for orientation only.\n\n")
          + "\n".join(f"- {'met' if met else 'NOT met'}: {name}: {value}"
                       for name, value, met in checks) + "\n")


def report(meta: dict, rows: list[dict]) -> str:
  """The Markdown page of one benchmark run: setting, table, ratios, targets."""
  depth = f" depth {meta['depth']}" if meta.get("depth") else ""
  versions = f"jax {meta['jax']}" + (f", {meta['torch']}" if meta.get("torch") else "")
  peak = (f" Measured {meta['dtype']} matmul peak: {meta['measured_peak_tflops']:.3g} TFLOP/s."
          if meta.get("measured_peak_tflops") else "")
  text = (f"# Train-step benchmark, {meta['device']} x{meta['devices']}, {meta['date']}\n\n"
          f"{meta['variant']}{depth}, {meta['image_size']}px, {meta['dtype']}, "
          f"{meta['prompt_tokens']} prompt tokens, the paper recipe's step, {versions}.{peak}\n\n"
          f"{markdown(rows)}\n")
  speedups = [f"{r['framework']} {r['method']} b{r['batch']}: {r['speedup_of_jax']:.2f}x"
              for r in rows if "speedup_of_jax" in r]
  if speedups:
    text += "\nThis project's images/s over PyTorch's: " + "; ".join(speedups) + ".\n"
  packing = [f"{r['method']} b{r['batch']} x{r['pack']}: {r['speedup_of_packing']:.2f}x"
             for r in rows if "speedup_of_packing" in r]
  if packing:
    text += "\nPacked runs' images/s over one run at a time: " + "; ".join(packing) + ".\n"
  return text + targets_text(meta, rows)


def free_stem(directory: str, name: str) -> str:
  """`directory`/`name` made file-safe, with _2, _3... so that no earlier result is overwritten."""
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(directory, re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-"))
  candidate, n = stem, 1
  while os.path.exists(candidate + ".json") or os.path.exists(candidate + ".md"):
    n += 1
    candidate = f"{stem}_{n}"
  return candidate
