"""The device check's CPU dry run: same steps, same row files, a tiny model; values checked."""

import json
import subprocess
import sys

import pytest

from vpt_jax.bench import device_check, rows as rows_lib

from test_train import REPO


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("check")
  process = subprocess.run([sys.executable, "launch/device_check.py", "--dry_run", f"--out={out}"],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
  return out, rows_lib.read_rows(str(out / device_check.ROWS))


def test_the_dry_run_saves_every_step_as_rows(dry_run):
  out, rows = dry_run
  [versions] = [r for r in rows if r["step"] == "versions"]
  assert versions["platform"] == "cpu" and versions["jax"] and versions["flax"]
  checks = {r["check"]: r for r in rows if r["step"] == "gate"}
  assert set(checks) == {"attention_197", "attention_247", "attention_397", "attention_vmap_247",
                         "learn_full", "learn_vpt_deep", "pack_vpt_deep",
                         "bf16_vs_float32_vpt_deep"}
  assert all(r["ok"] for r in checks.values()), checks
  assert all(0 <= checks[f"attention_{t}"]["value"] < 2e-2 for t in (197, 247, 397))
  for method in ("full", "vpt_deep"):  # The loss fell: the last 3 against the first 3.
    losses = checks[f"learn_{method}"]["losses"]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
  assert checks["pack_vpt_deep"]["value"] < 1e-4
  [peak] = [r for r in rows if r["step"] == "matmul_peak"]
  assert peak["tflops"] > 0

  speed = {(r["step"], r["method"], r["prompt_tokens"], r["pack"]): r
           for r in rows if r.get("framework") == "jax"}
  assert set(speed) == {("jax_b128", "full", 4, 1), ("jax_b128", "vpt_deep", 4, 1),
                        ("jax_b64", "full", 4, 1), ("jax_b64", "vpt_deep", 4, 1),
                        ("vpt200", "vpt_deep", 8, 1), ("pack", "vpt_deep", 4, 4)}
  for row in speed.values():
    assert "error" not in row, row
    # The recipe's step: VPT-or-FT's AdamW for full fine-tuning, SGD for VPT-deep.
    assert row["optimizer"] == ("hf_adamw" if row["method"] == "full" else "sgd")
    assert row["images_per_s"] == pytest.approx(row["pack"] * row["batch"] / (row["step_ms"] / 1e3))
    assert row["mfu"] is None  # No datasheet peak for a CPU; the measured one is there.
    assert row["mfu_measured_peak"] == pytest.approx(
        row["gflops_per_image"] * 1e9 * row["images_per_s"] / (peak["tflops"] * 1e12))
    assert row["program_memory_gb"] > 0 and row["compile_s"] > 0 and row["steps_timed"] == 6
    assert row["attention"] == "explicit"  # "auto" on a CPU.
  # More prompts, more tokens, more FLOPs; 4 packed runs count 4 runs' images.
  assert (speed[("vpt200", "vpt_deep", 8, 1)]["gflops_per_image"]
          > speed[("jax_b128", "vpt_deep", 4, 1)]["gflops_per_image"])
  assert speed[("pack", "vpt_deep", 4, 4)]["trainable_parameters"] == (
      speed[("jax_b64", "vpt_deep", 4, 1)]["trainable_parameters"])

  # The PyTorch rows (the test extra has torch and timm): timm's ViT at the dry run's tiny size,
  # each row saved under its step.
  torch_rows = {(r["step"], r["method"], r["batch"]) for r in rows if r.get("framework", "").startswith("torch")
                and "error" not in r and r["images_per_s"] > 0}
  assert torch_rows == {("torch_eager", m, b) for m in ("full", "vpt_deep") for b in (8, 4)} | {
      ("torch_compile", m, 8) for m in ("full", "vpt_deep")}
  skipped = {r["step"]: r["skipped"] for r in rows if "skipped" in r}
  assert skipped["mini_sweep"].startswith("skipped: --dry_run")
  summary = (out / device_check.SUMMARY).read_text()
  assert "| pack_vpt_deep | PASS |" in summary and "| jax | vpt_deep x4 packed (4 prompts) | 4 |" in summary
  assert "Packed runs' images/s over one run at a time: vpt_deep b4 x4:" in summary


def test_a_cut_run_is_summarized_from_its_rows(dry_run, tmp_path):
  out, rows = dry_run
  cut = tmp_path / "cut"
  cut.mkdir()
  text = (out / device_check.ROWS).read_text().splitlines()
  # Killed in the middle of writing the speed rows: the half line is left out.
  (cut / device_check.ROWS).write_text("\n".join(text[:-4]) + "\n" + text[-4][:20])
  process = subprocess.run([sys.executable, "launch/device_check.py", f"--summarize={cut}"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
  assert process.returncode == 0, process.stderr[-2000:]
  assert "## Correctness gate" in process.stdout and "| jax | full | 8 |" in process.stdout
  assert (cut / device_check.SUMMARY).read_text() in process.stdout + "\n"


def test_failures_are_named_by_what_they_are():
  assert rows_lib.error_kind(rows_lib.NonFiniteLoss("loss [nan]")) == "nan"
  assert rows_lib.error_kind(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1GB")) == "oom"
  assert rows_lib.error_kind(rows_lib.CompileError("INTERNAL: ptxas failed")) == "compile_error"
  assert rows_lib.error_kind(rows_lib.CompileError("RESOURCE_EXHAUSTED: while compiling")) == "oom"
  assert rows_lib.error_kind(ModuleNotFoundError("No module named 'timm'")) == "missing_package"
  row = rows_lib.error_row({"method": "full"}, ValueError("first\nsecond"))
  assert row == {"method": "full", "error_kind": "ValueError", "error": "ValueError: first"}


def test_cudnn_before_9_15_1_keeps_its_calls_out_of_command_buffers():
  assert device_check.xla_flags_for(91400, "") == device_check.CUDNN_WORKAROUND
  assert device_check.xla_flags_for(91501, "--a") == "--a"
  assert device_check.xla_flags_for(None, "") == ""  # No GPU.
  chosen = "--xla_gpu_enable_command_buffer="
  assert device_check.xla_flags_for(90100, chosen) == chosen  # The caller's own choice stands.


def test_the_mini_sweep_row_reads_the_sweeps_summary_line():
  output = ("...\nWall time 21.3s: data 0.2s, compile 2.9s, train 16.0s, eval 1.9s, write 0.8s "
            "(3 compilations, 39 programs from the compilation cache)\n")
  row = device_check._sweep_row(output)
  assert row["compilations"] == 3 and row["summary_line"].startswith("Wall time 21.3s")


def test_the_driver_imports_neither_jax_nor_tensorflow():
  code = ("import sys; sys.argv = ['x']; import launch.device_check; "
          "print(json.dumps(sorted(m for m in ('jax', 'tensorflow', 'ml_collections', 'torch') "
          "if m in sys.modules)))")
  process = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                           text=True, cwd=REPO, timeout=120)
  assert process.returncode == 0, process.stderr[-2000:]
  assert json.loads(process.stdout) == []
