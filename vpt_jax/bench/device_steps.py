"""The device check's JAX steps, each run in a child process by device_check.py: versions, the
correctness gate, the measured matmul peak and the train-step rows. Every row is appended to
<out>/rows.jsonl the moment it exists, with the step's name."""

import dataclasses
import importlib
import os
import time

from vpt_jax.bench import rows as rows_lib

# The real check (B/16 at 224 px in bfloat16 on one GPU) and its CPU dry run (a tiny model, same
# code paths, float32 rows where bfloat16 only slows a CPU down).
FULL_SIZE = dict(variant="B/16", depth=None, image_size=224, dtype="bfloat16", batches=(128, 64),
                 prompts=(50, 200), steps=10, pack=4, matmul=8192,
                 gate=dict(model=dict(variant="B/16", depth=2, image_size=224), batch=32,
                           attention_shape=(8, 12, 64), learn_steps=30,
                           pack_methods=("vpt_deep", "full"),
                           learn_lrs=dict(full=0.01, vpt_deep=2.0)))
DRY_RUN = dict(variant="mu/8", depth=1, image_size=16, dtype="float32", batches=(8, 4),
               prompts=(4, 8), steps=2, pack=4, matmul=256,
               gate=dict(model=dict(variant="mu/8", depth=1, image_size=16), batch=8,
                         attention_shape=(1, 2, 16), learn_steps=12, pack_methods=("vpt_deep",),
                         learn_lrs=dict(full=0.05, vpt_deep=5.0)))


def _emit(out: str, step: str):
  path = os.path.join(out, "rows.jsonl")

  def emit(row: dict) -> None:
    row = {"step": step, **row}
    rows_lib.append_row(path, row)
    shown = {k: v for k, v in row.items() if k not in ("losses", "versions")}
    print(shown, flush=True)
  return emit


def versions(out: str, plan: dict) -> None:
  """Library versions, CUDA and cuDNN (JAX's and PyTorch's), the device, the XLA flags in force."""
  row = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
  for name in ("torch", "timm", "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "chex"):
    try:  # torch before jax: its CUDA libraries load before JAX's backend starts.
      row[name.split(".")[0]] = importlib.import_module(name).__version__
    except Exception as e:  # A missing optional package is a fact to record, not a failure.
      row[name.split(".")[0]] = f"missing ({type(e).__name__})"
  import jax
  from jax._src.lib import cuda_versions  # None without JAX's CUDA plugin.
  device = jax.devices()[0]
  row.update(device=device.device_kind, platform=device.platform, devices=jax.device_count())
  if cuda_versions is not None and device.platform == "gpu":
    row["cudnn"] = cuda_versions.cudnn_get_version()
    row["cuda"] = cuda_versions.cuda_runtime_get_version()
  if "torch" in row and not row["torch"].startswith("missing"):
    import torch
    row["torch_cuda"] = torch.version.cuda
    row["torch_cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
  _emit(out, "versions")(row)


def gate_step(out: str, plan: dict) -> None:
  from vpt_jax.bench import gate
  settings = plan["gate"]
  gate.run({**settings["model"], "prompt_tokens": plan["prompts"][0], "attention_impl": "auto"},
           settings["batch"], settings["attention_shape"], settings["learn_steps"],
           _emit(out, "gate"), settings["pack_methods"], settings["learn_lrs"])


def matmul_peak(out: str, plan: dict) -> None:
  from vpt_jax.bench import benchmark
  dtype = "bfloat16" if plan["dtype"] == "bfloat16" else "float32"
  flops = benchmark.measure_matmul_peak(dtype, plan["matmul"])
  _emit(out, "matmul_peak")({"dtype": dtype, "size": plan["matmul"], "tflops": flops / 1e12})


def _attention_impl(out: str) -> str | None:
  """"auto" (cuDNN on a GPU in bfloat16) unless the gate found the fused kernel wrong or broken
  here: then the explicit path, so that the speed rows still measure something true."""
  for row in rows_lib.read_rows(os.path.join(out, "rows.jsonl")):
    if row.get("check", "").startswith("attention") and (row.get("severe") or "error" in row):
      return None
  return "auto"


def _speed_rows(out: str, plan: dict, step: str, settings: list[dict]) -> None:
  from vpt_jax.bench import benchmark
  peak_rows = [r for r in rows_lib.read_rows(os.path.join(out, "rows.jsonl"))
               if r.get("step") == "matmul_peak" and "tflops" in r]
  measured_peak = peak_rows[-1]["tflops"] * 1e12 if peak_rows else None
  emit = _emit(out, step)
  attention_impl = _attention_impl(out)
  for fields in settings:
    setting = benchmark.Setting(plan["variant"], plan["depth"], plan["image_size"],
                                dtype=plan["dtype"], attention_impl=attention_impl, **fields)
    started = time.perf_counter()
    try:
      row = benchmark.measure(setting, steps=plan["steps"], measured_peak=measured_peak)
    except Exception as e:  # Named (oom, nan, compile_error...) and saved; the next row runs.
      row = rows_lib.error_row({**dataclasses.asdict(setting), "framework": "jax"}, e)
    row["wall_s"] = time.perf_counter() - started
    emit(row)


def speed(name: str):
  """The train-step rows of step `name` (see device_check.PLAN for the order)."""
  def rows(out: str, plan: dict) -> None:
    large, small = plan["batches"]
    prompts, many_prompts = plan["prompts"]
    settings = {
        "jax_b128": [dict(method="full", batch=large, prompt_tokens=prompts),
                     dict(method="vpt_deep", batch=large, prompt_tokens=prompts)],
        "jax_b64": [dict(method="full", batch=small, prompt_tokens=prompts),
                    dict(method="vpt_deep", batch=small, prompt_tokens=prompts)],
        "vpt200": [dict(method="vpt_deep", batch=large, prompt_tokens=many_prompts)],
        "pack": [dict(method="vpt_deep", batch=small, prompt_tokens=prompts, pack=plan["pack"])],
    }[name]
    _speed_rows(out, plan, name, settings)
  return rows


STEPS = {"versions": versions, "gate": gate_step, "matmul_peak": matmul_peak,
         **{name: speed(name) for name in ("jax_b128", "jax_b64", "vpt200", "pack")}}


def run(name: str, out: str, dry_run: bool) -> None:
  STEPS[name](out, DRY_RUN if dry_run else FULL_SIZE)
