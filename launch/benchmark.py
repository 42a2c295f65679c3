"""Train-step speed per method and batch, this project beside the PyTorch reference.

  python launch/benchmark.py --variant=B/16 --methods=full,vpt_deep,linear --batch=64,128 \
      --dtype=bfloat16                        # on a GPU; writes benchmarks/<date>_<device>.{json,md}
  python launch/benchmark.py                  # without a GPU: Ti/16 of depth 4 on the CPU (~4 min)

Per row: median step time over --steps steps after compilation, images/s, model FLOPs per image
(analytic, and XLA's cost analysis of the compiled step), MFU against the device's dense peak,
peak device memory (compiled buffer sizes where the device reports none), compile time. Where
torch and timm are installed, the same model and batch in PyTorch (timm ViT, full and VPT-deep;
eager and torch.compile) follow. Speed targets live here, never in tests.
"""

import dataclasses
import datetime
import sys

from absl import flags, logging
import jax

from vpt_jax.utils import cli, files
from vpt_jax.bench import benchmark, torch_reference

_VARIANT = flags.DEFINE_string("variant", None, "ViT variant (default: B/16 on GPU, Ti/16 on CPU).")
_DEPTH = flags.DEFINE_integer("depth", None, "Override the depth (default: 4 on CPU).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image size (224: 196 patches at /16).")
_METHODS = flags.DEFINE_list("methods", ["full", "vpt_deep", "linear"], "Tuning methods.")
_BATCH = flags.DEFINE_list("batch", None, "Batch sizes (default: 64,128 on GPU, 16,32 on CPU).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Compute dtype (default: bfloat16 on GPU, float32 on CPU).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 50, "VPT prompt length.")
_ATTENTION = flags.DEFINE_string("attention_impl", "auto",
                                 "auto (cudnn on GPU), none (explicit), xla or cudnn.")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise blocks (large batches).")
_PACK = flags.DEFINE_integer("pack", 1, "Also time K runs packed into one step (sweep.pack=K).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after compilation and warm-up).")
_TORCH = flags.DEFINE_enum("torch", "auto", ["auto", "eager", "both", "none"],
                           "PyTorch reference: auto = eager and torch.compile when installed.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Device peak for MFU, if not in the table.")
_OUT_DIR = flags.DEFINE_string("out_dir", "benchmarks", "Where the JSON and Markdown go.")


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
  attention_impl = {"auto": "cudnn" if gpu else None, "none": None}.get(_ATTENTION.value,
                                                                        _ATTENTION.value)
  peak = _PEAK.value * 1e12 if _PEAK.value else None
  print(f"{device.device_kind} x{jax.device_count()}: {variant}"
        f"{f' depth {depth}' if depth else ''} at {image_size}px, {dtype}, attention "
        f"{attention_impl or 'explicit'}")

  rows = []
  for method in _METHODS.value:
    for batch in batches:
      setting = benchmark.Setting(variant, depth, image_size, method, batch, dtype,
                                  prompt_tokens=_PROMPT_TOKENS.value,
                                  attention_impl=attention_impl, remat=_REMAT.value)
      try:
        row = benchmark.measure(setting, steps=_STEPS.value, peak=peak)
      except Exception as e:  # A fused kernel a device lacks: measure the explicit path instead.
        if attention_impl is None:
          raise
        print(f"  {method} b{batch}: {attention_impl} attention failed ({str(e).splitlines()[0]});"
              " using explicit attention")
        row = benchmark.measure(setting.__class__(**{**setting.__dict__, "attention_impl": None}),
                                steps=_STEPS.value, peak=peak)
      rows.append(row)
      print(benchmark.markdown([row]).splitlines()[-1])
      if _PACK.value > 1:  # The same step for several runs at once (sweep.pack).
        packed = benchmark.measure(dataclasses.replace(
            setting, attention_impl=row["attention_impl"], pack=_PACK.value),
            steps=_STEPS.value, peak=peak)
        packed["speedup_of_packing"] = packed["images_per_s"] / row["images_per_s"]
        rows.append(packed)
        print(benchmark.markdown([packed]).splitlines()[-1])
      modes = {"auto": ("eager", "compile"), "both": ("eager", "compile"), "eager": ("eager",),
               "none": ()}[_TORCH.value]
      if modes and method in ("full", "vpt_deep") and torch_reference.available():
        for mode in modes:
          try:
            torch_row = torch_reference.measure(variant, depth, image_size, method, batch, dtype,
                                                prompt_tokens=_PROMPT_TOKENS.value,
                                                steps=_STEPS.value,
                                                compile_model=mode == "compile")
          except Exception as e:  # Report, do not abort the JAX figures.
            print(f"  torch {mode} {method} b{batch} failed: {str(e).splitlines()[0]}")
            continue
          # Same model, so same FLOPs; PyTorch runs on one device where JAX may use several.
          torch_row["gflops_per_image"] = row["gflops_per_image"]
          if row["mfu"] is not None:
            torch_row["mfu"] = (row["mfu"] * jax.device_count() * torch_row["images_per_s"]
                                / row["images_per_s"])
          torch_row["speedup_of_jax"] = row["images_per_s"] / torch_row["images_per_s"]
          rows.append(torch_row)
          print(benchmark.markdown([torch_row]).splitlines()[-1])
      elif modes and method in ("full", "vpt_deep") and _TORCH.value != "auto":
        sys.exit("error: --torch needs torch and timm installed (pip install torch timm).")

  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  meta = {"date": stamp, "device": device.device_kind, "devices": jax.device_count(),
          "platform": device.platform, "jax": jax.__version__, "variant": variant, "depth": depth,
          "image_size": image_size, "dtype": dtype, "prompt_tokens": _PROMPT_TOKENS.value,
          "attention_requested": attention_impl}
  if any(r["framework"] != "jax" for r in rows):
    meta["torch"] = torch_reference.versions()
  text = benchmark.report(meta, rows)
  stem = benchmark.free_stem(_OUT_DIR.value, f"{stamp}_{device.device_kind}")
  files.write_json(f"{stem}.json", {"meta": meta, "rows": rows})
  files.write_text(f"{stem}.md", text)
  print(f"\n{text}\nwrote {stem}.json and .md")


if __name__ == "__main__":
  cli.run(main)
