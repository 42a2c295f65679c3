"""The device check's driver: a plan of steps, each run in a child process under its own time
limit, their rows appended to <out>/rows.jsonl as they are measured, steps skipped (with the
reason recorded) when the overall budget runs short, and a Markdown summary rebuilt from the rows.

Standard library only: the driver must never start JAX itself (JAX takes 75% of the GPU's memory
when its backend starts, and the PyTorch step needs that memory), and it runs where TensorFlow
and ml_collections are absent. The steps' bodies are in device_steps.py.
"""

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time

from vpt_jax.bench import rows as rows_lib

ROWS = "rows.jsonl"
SUMMARY = "summary.md"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What the GPU image lacks that the mini sweep imports: pure-Python, so it can be carried.
VENDORED = ("ml_collections",)
# cuDNN versions as cudnnGetVersion() reports them (9.15.1 -> 91501); see vit.py for the fault.
CUDNN_FIXED = 91501
CUDNN_WORKAROUND = "--xla_gpu_enable_command_buffer=-CUDNN,-CUSTOM_CALL"


@dataclasses.dataclass(frozen=True)
class Step:
  name: str
  limit_s: int  # Its own time limit; it is skipped when less than `min_s` of the budget is left.
  min_s: int
  kind: str = "jax"  # "jax": device_steps in a child; "torch": torch_reference; "sweep".


PLAN = (
    Step("versions", 60, 10), Step("gate", 150, 40), Step("matmul_peak", 40, 10),
    Step("jax_b128", 150, 40), Step("torch_eager", 100, 30, "torch"), Step("jax_b64", 120, 40),
    Step("vpt200", 90, 30), Step("pack", 100, 30), Step("torch_compile", 180, 60, "torch"),
    Step("mini_sweep", 150, 40, "sweep"))


def versions_row(out: str) -> dict:
  for row in rows_lib.read_rows(os.path.join(out, ROWS)):
    if row.get("step") == "versions" and "error" not in row:
      return row
  return {}


def xla_flags_for(cudnn_version: int | None, flags: str) -> str:
  """XLA_FLAGS with cuDNN calls kept out of command buffers when cuDNN has the fault."""
  if not cudnn_version or cudnn_version >= CUDNN_FIXED or "xla_gpu_enable_command_buffer" in flags:
    return flags
  return f"{flags} {CUDNN_WORKAROUND}".strip()


def _child_env(out: str, prepared: str | None) -> dict:
  env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  if prepared:  # After the image's own packages: a vendored copy only fills what is missing.
    env["VPT_JAX_VENDORED_SITE"] = os.path.abspath(os.path.join(prepared, "site"))
    env["VPT_JAX_CACHE"] = os.path.abspath(os.path.join(prepared, "cache"))
    env["TFDS_DATA_DIR"] = os.path.abspath(os.path.join(prepared, "tfds"))
  cudnn = versions_row(out).get("cudnn")
  env["XLA_FLAGS"] = xla_flags_for(cudnn, env.get("XLA_FLAGS", ""))
  return env


def _command(step: Step, args) -> list[str]:
  if step.kind == "torch":
    batches = "8,4" if args.dry_run else "128,64"
    if step.name == "torch_compile":
      batches = batches.split(",")[0]
    command = [sys.executable, "-m", "vpt_jax.bench.torch_reference",
               f"--out={os.path.join(args.out, ROWS)}", f"--batches={batches}",
               f"--steps={3 if args.dry_run else 10}", "--prompt_tokens=4" if args.dry_run
               else "--prompt_tokens=50", f"--step={step.name}"]
    if args.dry_run:
      command += ["--variant=mu/8", "--depth=1", "--image_size=16", "--dtype=float32"]
    return command + (["--compile"] if step.name == "torch_compile" else [])
  if step.kind == "sweep":
    return [sys.executable, "-c", _SWEEP_LAUNCHER, os.path.join(REPO, "launch", "sweep.py"),
            "--config=configs/demo.py:task=demo_count,method=vpt_deep",
            "--config.sweep.seeds=2", "--config.sweep.weight_decays=(0.0001,)",
            f"--sweep_dir={os.path.join(args.out, 'mini_sweep')}"]
  return [sys.executable, os.path.join(REPO, "launch", "device_check.py"), f"--step={step.name}",
          f"--out={args.out}"] + (["--dry_run"] if args.dry_run else [])


# Runs launch/sweep.py with the vendored packages (if any) after the image's own on sys.path.
_SWEEP_LAUNCHER = ("import os, runpy, sys; site = os.environ.get('VPT_JAX_VENDORED_SITE'); "
                   "site and sys.path.append(site); sys.argv = sys.argv[1:]; "
                   "runpy.run_path(sys.argv[0], run_name='__main__')")


def _skip_reason(step: Step, args, left: float) -> str | None:
  if left < step.min_s:
    return f"skipped: {left:.0f}s of the budget left, the step needs at least {step.min_s}s"
  if step.kind == "torch" and not all(importlib.util.find_spec(m) for m in ("torch", "timm")):
    return "skipped: torch or timm is not installed"
  if step.kind == "sweep" and args.dry_run:
    return ("skipped: --dry_run (the sweep itself is tested by the suite; its demo data and "
            "ml_collections come from --prepare)")
  vendored = bool(args.prepared) and os.path.isdir(os.path.join(args.prepared, "site",
                                                                 "ml_collections"))
  if step.kind == "sweep" and not (importlib.util.find_spec("ml_collections") or vendored):
    return "skipped: ml_collections is missing here and no --prepared directory carries it"
  return None


def _sweep_row(process_output: str) -> dict:
  """The sweep's own summary line, "Wall time ...: data ..., compile ... (N compilations, ...)"."""
  lines = [line for line in process_output.splitlines() if line.startswith("Wall time ")]
  row = {"summary_line": lines[-1]} if lines else {}
  if lines and (match := re.search(r"\((\d+) compilations?", lines[-1])):
    row["compilations"] = int(match.group(1))
  return row


def run_step(step: Step, args, limit: float) -> None:
  """One step in its child process; a timeout or crash becomes a row naming it."""
  started = time.perf_counter()
  log = os.path.join(args.out, f"{step.name}.log")
  env = _child_env(args.out, args.prepared)
  try:
    with open(log, "w") as f:
      process = subprocess.run(_command(step, args), stdout=f, stderr=subprocess.STDOUT,
                               cwd=REPO, env=env, timeout=limit)
    status = process.returncode
  except subprocess.TimeoutExpired:
    status = None
  with open(log) as f:
    output = f.read()
  wall = time.perf_counter() - started
  print(output, end="", flush=True)
  if step.kind == "sweep":
    row = {"step": step.name, "wall_s": wall, **_sweep_row(output)}
    if status != 0:
      row.update(_failure(status, output, limit))
    rows_lib.append_row(os.path.join(args.out, ROWS), row)
  elif status != 0:
    rows_lib.append_row(os.path.join(args.out, ROWS),
                        {"step": step.name, "wall_s": wall, **_failure(status, output, limit)})


def _failure(status: int | None, output: str, limit: float) -> dict:
  if status is None:
    return {"error_kind": "timeout", "error": f"ran past its {limit:.0f}s limit"}
  errors = [line for line in output.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
  last = errors[-1] if errors else (output.strip().splitlines() or ["no output"])[-1]
  kind = ("oom" if re.search(r"RESOURCE_EXHAUSTED|[Oo]ut of memory", last) else
          "missing_package" if "ModuleNotFoundError" in last else "process_failed")
  return {"error_kind": kind, "error": f"exit status {status}: {last[:300]}"}


def run(args) -> int:
  """The whole plan within `args.budget` seconds; then the summary. Exit status 0 even when
  checks fail: the rows and the summary say what failed."""
  os.makedirs(args.out, exist_ok=True)
  started = time.perf_counter()
  only = set(args.only.split(",")) if args.only else None
  for step in PLAN:
    if only and step.name not in only:
      continue
    left = args.budget - (time.perf_counter() - started)
    reason = _skip_reason(step, args, left)
    print(f"== {step.name} (t={time.perf_counter() - started:.0f}s, {left:.0f}s left)", flush=True)
    if reason:
      rows_lib.append_row(os.path.join(args.out, ROWS), {"step": step.name, "skipped": reason})
      print(reason, flush=True)
      continue
    run_step(step, args, min(step.limit_s, left - 5))
  text = summarize(args.out)
  print(f"\n{text}", flush=True)
  return 0


def prepare(directory: str, vendored=VENDORED) -> list[str]:
  """On a CPU machine with the project installed: copies the pure-Python packages the GPU image
  lacks into <directory>/site, and builds the demo task's data and array caches under
  <directory>/cache and <directory>/tfds by running the mini sweep once here. Returns what was
  copied."""
  site = os.path.join(directory, "site")
  os.makedirs(site, exist_ok=True)
  copied = []
  for name in vendored:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
      raise SystemExit(f"error: {name} is not installed here (pip install {name}), so it cannot "
                       "be carried.")
    source = spec.submodule_search_locations[0]
    if any(f.endswith((".so", ".pyd")) for _, _, names in os.walk(source) for f in names):
      raise SystemExit(f"error: {name} has compiled extensions; only pure-Python packages can "
                       "be carried to another Python.")
    shutil.copytree(source, os.path.join(site, name), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*_test.py", "tests"))
    copied.append(name)
  env = {**os.environ, "VPT_JAX_CACHE": os.path.join(directory, "cache"),
         "TFDS_DATA_DIR": os.path.join(directory, "tfds"),
         "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
  command = [sys.executable, os.path.join(REPO, "launch", "sweep.py"),
             "--config=configs/demo.py:task=demo_count,method=vpt_deep", "--config.sweep.seeds=2",
             "--config.sweep.weight_decays=(0.0001,)", "--config.compilation_cache=off",
             f"--sweep_dir={os.path.join(directory, 'prepare_sweep')}"]
  process = subprocess.run(command, cwd=REPO, env=env)
  if process.returncode:
    raise SystemExit(f"error: the mini sweep failed here (exit status {process.returncode}); the "
                     "device check would fail the same way.")
  # The final runs' test split, as arrays: on the GPU image it cannot be streamed (no TFDS).
  command = [sys.executable, os.path.join(REPO, "launch", "prepare_data.py"), "--tasks=demo_count",
             f"--data_dir={env['TFDS_DATA_DIR']}", "--cache_subsets=test", "--resolution=32",
             "--resize=tf1_bilinear"]
  if subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL).returncode:
    raise SystemExit("error: caching the demo's test split failed (see the lines above).")
  shutil.rmtree(os.path.join(directory, "prepare_sweep"), ignore_errors=True)
  return copied


def summarize(out: str) -> str:
  """<out>/summary.md from the rows alone (usable after a run that was cut short)."""
  from vpt_jax.bench import benchmark  # Imports JAX; called after the steps, or alone.
  rows = rows_lib.read_rows(os.path.join(out, ROWS))
  versions = versions_row(out)
  lines = ["# Device check", ""]
  if versions:
    lines += [", ".join(f"{k} {versions[k]}" for k in (
        "device", "jax", "jaxlib", "flax", "optax", "torch", "timm", "cuda", "cudnn",
        "torch_cudnn", "xla_flags") if versions.get(k) is not None), ""]
  checks = [r for r in rows if "check" in r]
  if checks:
    lines += ["## Correctness gate", "", "| check | result | value |", "|---|---|---|"]
    for r in checks:
      result = "PASS" if r.get("ok") else (f"FAIL ({r['error_kind']})" if "error" in r else "FAIL")
      value = r.get("error") or (f"{r['value']:.3g}" if isinstance(r.get("value"), float) else "")
      lines.append(f"| {r['check']} | {result} | {value} |")
    lines.append("")
  speed = [r for r in rows if "framework" in r]
  benchmark.add_ratios(speed)
  peak = next((r for r in rows if r.get("step") == "matmul_peak" and "tflops" in r), None)
  if speed:
    lines += ["## Speed", "", (f"Measured {peak['dtype']} matmul peak: {peak['tflops']:.3g} "
                               "TFLOP/s.\n" if peak else "") + benchmark.markdown(speed), ""]
    packing = [f"{r['method']} b{r['batch']} x{r['pack']}: {r['speedup_of_packing']:.2f}x"
               for r in speed if "speedup_of_packing" in r]
    if packing:
      lines += ["Packed runs' images/s over one run at a time: " + "; ".join(packing) + ".", ""]
  jax_rows = [r for r in speed if r["framework"] == "jax" and "error" not in r]
  if jax_rows and versions:
    meta = {"variant": jax_rows[0]["variant"], "depth": jax_rows[0]["depth"],
            "image_size": jax_rows[0]["image_size"], "dtype": jax_rows[0]["dtype"],
            "prompt_tokens": min(r["prompt_tokens"] for r in jax_rows),
            "device": versions.get("device", "")}
    lines.append(benchmark.targets_text(meta, speed))
  other = [r for r in rows if "skipped" in r or ("error" in r and "framework" not in r
                                                 and "check" not in r) or "summary_line" in r]
  if other:
    lines += ["## Steps skipped, failed or summarised", ""]
    lines += [f"- {r['step']}: " + (r.get("skipped") or r.get("summary_line") or "")
              + (f" FAILED ({r['error_kind']}): {r['error']}" if "error" in r else "")
              + (f" (wall {r['wall_s']:.0f}s)" if "wall_s" in r else "") for r in other]
  text = "\n".join(lines).rstrip() + "\n"
  with open(os.path.join(out, SUMMARY), "w") as f:
    f.write(text)
  return text
