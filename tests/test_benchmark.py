"""The benchmark harness on the CPU: a tiny model, a few steps, figures checked, no timings."""

import json
import subprocess
import sys

import pytest

from vpt_jax import benchmark, torch_reference
from vpt_jax.models import vit

from test_train import REPO


@pytest.mark.parametrize("method, xla_gflops", [("full", 105.78), ("vpt_deep", 91.45),
                                                ("linear", 35.26)])
def test_analytic_flops_match_xla_on_b16(method, xla_gflops):
  # XLA's cost analysis of the compiled B/16 train step (224 px, 100 classes, 50 prompt tokens),
  # measured once on this machine's CPU (compiling B/16 takes minutes, so it is not redone here).
  flops = benchmark.analytic_flops(vit.decode_variant("B/16"), 224, 100, method, 50)
  assert flops / 1e9 == pytest.approx(xla_gflops, rel=0.01)


def test_peak_table():
  class Device:
    device_kind = "NVIDIA H100 80GB HBM3"
  assert benchmark.peak_flops(Device(), "bfloat16") == 989.4e12
  Device.device_kind = "NVIDIA H100 PCIe"
  assert benchmark.peak_flops(Device(), "bfloat16") == 756e12
  Device.device_kind = "cpu"
  assert benchmark.peak_flops(Device(), "float32") is None


def test_harness_runs_on_cpu(tmp_path):
  process = subprocess.run(
      [sys.executable, "launch/benchmark.py", "--variant=Ti/16", "--depth=1", "--image_size=32",
       "--batch=8", "--steps=2", "--prompt_tokens=4", "--torch=none", "--peak_tflops=1",
       f"--out_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  [json_file] = tmp_path.glob("*.json")
  report = json.loads(json_file.read_text())
  assert report["meta"]["platform"] == "cpu" and report["meta"]["variant"] == "Ti/16"
  rows = {r["method"]: r for r in report["rows"]}
  assert set(rows) == {"full", "vpt_deep", "linear"}
  for row in rows.values():
    assert row["xla_gflops_per_image"] == pytest.approx(row["gflops_per_image"], rel=0.1)
    assert row["images_per_s"] == pytest.approx(8 / (row["step_ms"] / 1e3))
    assert row["mfu"] == pytest.approx(row["gflops_per_image"] * 1e9 * row["images_per_s"] / 1e12)
    assert row["compile_s"] > 0 and row["steps_timed"] == 2
  assert rows["linear"]["trainable_parameters"] == 192 * 100 + 100
  assert rows["vpt_deep"]["trainable_parameters"] == 192 * 100 + 100 + 1 * 4 * 192
  markdown = json_file.with_suffix(".md").read_text()
  assert "| jax | vpt_deep | 8 | float32 |" in markdown


@pytest.mark.skipif(not torch_reference.available(), reason="torch and timm are not installed")
def test_torch_reference_matches_the_method():
  rows = {m: torch_reference.measure("Ti/16", 1, 32, m, 4, "float32", num_classes=10,
                                     prompt_tokens=3, steps=1, warmup=0)
          for m in ("full", "vpt_deep")}
  assert rows["vpt_deep"]["trainable_parameters"] == 1 * 3 * 192 + 192 * 10 + 10
  assert rows["full"]["trainable_parameters"] > 100 * rows["vpt_deep"]["trainable_parameters"]
  assert all(r["images_per_s"] > 0 for r in rows.values())
