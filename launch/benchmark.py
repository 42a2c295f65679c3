"""Train-step speed per method and batch, this project beside the PyTorch reference.

  python launch/benchmark.py --variant=B/16 --methods=full,vpt_deep,linear --batch=64,128 \
      --dtype=bfloat16                        # on a GPU; writes benchmarks/<date>_<device>.*
  python launch/benchmark.py                  # without a GPU: Ti/16 of depth 4 on the CPU (~4 min)

The step timed is the `paper` recipe's (full: VPT-or-FT's AdamW, dropout 0.1; VPT-deep: SGD with
momentum, prompt dropout 0.1; the exact GELU). Per row: step time (median of 3 rounds, each
dispatching --steps steps and waiting once), images/s, model FLOPs per image (analytic, and
XLA's cost analysis), MFU against the datasheet's dense peak and against a measured matmul peak,
the compiled step's own memory, compile time. Each row is appended to <stem>.jsonl when it
exists (a failing row names its error: oom, nan, compile_error...); the .json and .md pages are
rebuilt from those rows at the end. Where torch and timm are installed, the PyTorch rows (timm
ViT, eager and static-batch torch.compile) run first, in a process of their own. Speed targets
live here, never in tests.
"""

import dataclasses
import datetime
import os
import subprocess
import sys

# JAX takes 75% of a GPU's memory when its backend starts unless told not to; the PyTorch rows
# run in a child process beside this one and need that memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import flags, logging  # noqa: E402
import jax  # noqa: E402

from vpt_jax.utils import cli, files  # noqa: E402
from vpt_jax.bench import benchmark, rows as rows_lib, torch_reference  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", None, "ViT variant (default: B/16 on GPU, Ti/16 on CPU).")
_DEPTH = flags.DEFINE_integer("depth", None, "Override the depth (default: 4 on CPU).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image size (224: 196 patches at /16).")
_METHODS = flags.DEFINE_list("methods", ["full", "vpt_deep", "linear"], "Tuning methods.")
_BATCH = flags.DEFINE_list("batch", None, "Batch sizes (default: 64,128 on GPU, 16,32 on CPU).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Compute dtype (default: bfloat16 on GPU, float32 on CPU).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 50, "VPT prompt length.")
_ATTENTION = flags.DEFINE_enum("attention_impl", "auto", ["auto", "none", "xla", "cudnn"],
                               "auto: cuDNN on a GPU in bfloat16, else explicit.")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise blocks (large batches).")
_PACK = flags.DEFINE_integer("pack", 1, "Also time K runs packed into one step (sweep.pack=K).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed round (3 rounds, after warm-up).")
_TORCH = flags.DEFINE_enum("torch", "auto", ["auto", "eager", "both", "none"],
                           "PyTorch reference: auto = eager and torch.compile when installed.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Device peak for MFU, if not in the table.")
_OUT_DIR = flags.DEFINE_string("out_dir", "benchmarks", "Where the JSON and Markdown go.")


def torch_rows(out: str, variant: str, depth, image_size: int, dtype: str, batches: list[int],
               steps: int) -> None:
  """The PyTorch rows, each mode in a child process (its own CUDA context and memory)."""
  modes = {"auto": (False, True), "both": (False, True), "eager": (False,), "none": ()}[_TORCH.value]
  names = [m for m in _METHODS.value if m in torch_reference.RECIPE]
  if not modes or not names:
    return
  if not torch_reference.available():
    if _TORCH.value != "auto":
      sys.exit("error: --torch needs torch and timm installed (pip install torch timm).")
    return
  for compile_model in modes:
    command = [sys.executable, "-m", "vpt_jax.bench.torch_reference", f"--out={out}",
               f"--variant={variant}", f"--image_size={image_size}", f"--dtype={dtype}",
               f"--methods={','.join(names)}", f"--batches={','.join(map(str, batches))}",
               f"--prompt_tokens={_PROMPT_TOKENS.value}", f"--steps={steps}"]
    command += [f"--depth={depth}"] if depth is not None else []
    command += ["--compile"] if compile_model else []
    process = subprocess.run(command)
    if process.returncode:  # The child died outside a row's guard (a crash, a signal).
      rows_lib.append_row(out, {"framework": "torch.compile" if compile_model else "torch eager",
                                "method": ",".join(names), "batch": None,
                                "error_kind": "process_failed",
                                "error": f"exit status {process.returncode}"})


def jax_rows(out: str, settings: list, peak, measured_peak) -> None:
  """Each setting measured (then, with --pack, packed), its row appended as soon as it exists."""
  for setting in settings:
    for pack in sorted({1, _PACK.value}):
      packed = dataclasses.replace(setting, pack=pack)
      try:
        row = benchmark.measure(packed, steps=_STEPS.value, peak=peak, measured_peak=measured_peak)
      except Exception as e:  # Named (oom, nan, compile_error...) and saved; the next row runs.
        row = rows_lib.error_row({**dataclasses.asdict(packed), "framework": "jax"}, e)
      rows_lib.append_row(out, row)
      print(benchmark.markdown([row]).splitlines()[-1], flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  device = jax.devices()[0]
  gpu = device.platform == "gpu"
  variant = _VARIANT.value or ("B/16" if gpu else "Ti/16")
  depth = _DEPTH.value if _DEPTH.value is not None else (None if gpu else 4)
  image_size = _IMAGE_SIZE.value
  batches = [int(b) for b in (_BATCH.value or (["64", "128"] if gpu else ["16", "32"]))]
  dtype = _DTYPE.value or ("bfloat16" if gpu else "float32")
  attention_impl = {"none": None}.get(_ATTENTION.value, _ATTENTION.value)
  try:
    settings = [benchmark.Setting(variant, depth, image_size, method, batch, dtype,
                                  prompt_tokens=_PROMPT_TOKENS.value,
                                  attention_impl=attention_impl, remat=_REMAT.value)
                for method in _METHODS.value for batch in batches]
    for setting in settings:
      benchmark.recipe_step(setting.method)
  except ValueError as e:
    sys.exit(f"error: {e}")
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  stem = benchmark.free_stem(_OUT_DIR.value, f"{stamp}_{device.device_kind}")
  out = f"{stem}.jsonl"
  print(f"{device.device_kind} x{jax.device_count()}: {variant}"
        f"{f' depth {depth}' if depth else ''} at {image_size}px, {dtype}; rows -> {out}")

  torch_rows(out, variant, depth, image_size, dtype, batches, _STEPS.value)
  peak = _PEAK.value * 1e12 if _PEAK.value else None
  measured_peak = benchmark.measure_matmul_peak(dtype, 8192 if gpu else 1024)
  jax_rows(out, settings, peak, measured_peak)

  rows = rows_lib.read_rows(out)
  benchmark.add_ratios(rows, jax.device_count())
  meta = {"date": stamp, "device": device.device_kind, "devices": jax.device_count(),
          "platform": device.platform, "jax": jax.__version__, "variant": variant, "depth": depth,
          "image_size": image_size, "dtype": dtype, "prompt_tokens": _PROMPT_TOKENS.value,
          "attention_requested": _ATTENTION.value, "measured_peak_tflops": measured_peak / 1e12}
  if any(r["framework"] != "jax" and "error" not in r for r in rows):
    meta["torch"] = torch_reference.versions()
  text = benchmark.report(meta, rows)
  files.write_json(f"{stem}.json", {"meta": meta, "rows": rows})
  files.write_text(f"{stem}.md", text)
  print(f"\n{text}\nwrote {stem}.jsonl, .json and .md")


if __name__ == "__main__":
  cli.run(main)
