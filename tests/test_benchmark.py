"""The benchmark harness on the CPU: a tiny model, a few steps, figures checked, no timings."""

import json
import subprocess
import sys

import pytest

from vpt_jax.bench import benchmark, torch_reference
from vpt_jax.models import vit

from test_train import REPO


@pytest.mark.parametrize("method, xla_gflops", [("full", 105.78), ("vpt_deep", 91.45),
                                                ("linear", 35.26)])
def test_analytic_flops_match_xla_on_b16(method, xla_gflops):
  # XLA's cost analysis of the compiled B/16 train step (224 px, 100 classes, 50 prompt tokens),
  # measured once on this machine's CPU (compiling B/16 takes minutes, so it is not redone here).
  flops = benchmark.analytic_flops(vit.decode_variant("B/16"), 224, 100, method, 50)
  assert flops / 1e9 == pytest.approx(xla_gflops, rel=0.01)


def modules_imported_by(modules: str, names: tuple[str, ...]) -> list[str]:
  """Which of `names` a fresh process has loaded after `import <modules>`."""
  code = f"import sys; import {modules}; print(sorted(m for m in {names!r} if m in sys.modules))"
  process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
  assert process.returncode == 0, process.stderr[-2000:]
  return eval(process.stdout.strip())


def test_the_benchmark_needs_no_tensorflow():
  # GPU images often carry jax and torch but not TensorFlow or TFDS (too large to bring along).
  assert modules_imported_by("vpt_jax.bench.benchmark, vpt_jax.bench.torch_reference", (
      "tensorflow", "tensorflow_datasets", "ml_collections", "tqdm", "orbax")) == []


def test_peak_table():
  class Device:
    device_kind = "NVIDIA H100 80GB HBM3"
  assert benchmark.peak_flops(Device(), "bfloat16") == 989.4e12
  Device.device_kind = "NVIDIA H100 PCIe"
  assert benchmark.peak_flops(Device(), "bfloat16") == 756e12
  Device.device_kind = "NVIDIA H200"
  assert benchmark.peak_flops(Device(), "bfloat16") == 989.4e12
  Device.device_kind = "cpu"
  assert benchmark.peak_flops(Device(), "float32") is None
  assert benchmark.is_target_device("NVIDIA H200") and benchmark.is_target_device("NVIDIA H100 PCIe")
  assert not benchmark.is_target_device("NVIDIA A100-SXM4-80GB")


@pytest.mark.parametrize("method", ["full", "vpt_deep", "linear", "lora", "partial_k"])
def test_the_benchmarked_step_is_the_paper_recipes(method):
  from vpt_jax.training import recipes
  recipe = recipes.paper(method, "svhn", {})
  step = benchmark.recipe_step(method)
  for field in ("dropout", "attn_out_dropout", "gelu_approximate", "head_init"):
    assert step["model"][field] == recipe["model"][field], field
  applied = recipe["optim"].get("applied_weight_decay", recipe["optim"]["weight_decay"])
  assert step["optim"] == {"name": recipe["optim"]["name"], "base_lr": recipe["optim"]["base_lr"],
                           "weight_decay": applied, "momentum": recipe["optim"]["momentum"],
                           "decay_rules": recipe["optim"]["decay_rules"]}
  assert step["normalization"] == recipe["data"]["normalization"]
  if "prompt_dropout" in recipe["method_kwargs"]:
    assert step["prompt_dropout"] == recipe["method_kwargs"]["prompt_dropout"]
  assert step["model"]["gelu_approximate"] is False  # The VPT code bases' exact GELU.


def _run_harness(tmp_path, *flags):
  process = subprocess.run(
      [sys.executable, "launch/benchmark.py", "--variant=Ti/16", "--depth=1", "--image_size=32",
       "--batch=8", "--steps=2", "--prompt_tokens=4", "--torch=none", "--peak_tflops=1",
       f"--out_dir={tmp_path}", *flags], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  return process


def test_harness_runs_on_cpu(tmp_path):
  _run_harness(tmp_path, "--pack=2")
  [json_file] = tmp_path.glob("*.json")
  report = json.loads(json_file.read_text())
  # The rows were saved one by one as they were measured, and the page was rebuilt from them.
  lines = json_file.with_suffix(".jsonl").read_text().splitlines()
  assert [json.loads(line)["method"] for line in lines] == [r["method"] for r in report["rows"]]
  assert report["meta"]["platform"] == "cpu" and report["meta"]["variant"] == "Ti/16"
  assert report["meta"]["measured_peak_tflops"] > 0
  packed = {r["method"]: r for r in report["rows"] if r.get("pack", 1) == 2}
  rows = {r["method"]: r for r in report["rows"] if r.get("pack", 1) == 1}
  assert set(rows) == set(packed) == {"full", "vpt_deep", "linear"}
  for method, row in packed.items():  # Two runs per step: twice the images of one.
    assert row["images_per_s"] == pytest.approx(2 * 8 / (row["step_ms"] / 1e3))
    assert row["speedup_of_packing"] == pytest.approx(
        row["images_per_s"] / rows[method]["images_per_s"])
    assert row["trainable_parameters"] == rows[method]["trainable_parameters"]
    # The compiled step's own memory: two runs' state take more than one's.
    assert row["program_memory_gb"] > rows[method]["program_memory_gb"] > 0
  for row in rows.values():
    assert row["xla_gflops_per_image"] == pytest.approx(row["gflops_per_image"], rel=0.1)
    assert row["images_per_s"] == pytest.approx(8 / (row["step_ms"] / 1e3))
    assert row["mfu"] == pytest.approx(row["gflops_per_image"] * 1e9 * row["images_per_s"] / 1e12)
    assert row["mfu_measured_peak"] == pytest.approx(
        row["mfu"] / report["meta"]["measured_peak_tflops"])
    assert row["compile_s"] > 0 and row["steps_timed"] == 6
    assert row["attention"] == "explicit"  # "auto" on a CPU.
  assert [rows[m]["optimizer"] for m in ("full", "vpt_deep", "linear")] == ["hf_adamw", "sgd", "sgd"]
  assert "peak_memory_gb" not in rows["full"]  # No process-lifetime peak posing as a row's.
  assert rows["linear"]["trainable_parameters"] == 192 * 100 + 100
  assert rows["vpt_deep"]["trainable_parameters"] == 192 * 100 + 100 + 1 * 4 * 192
  markdown = json_file.with_suffix(".md").read_text()
  assert "Packed runs' images/s over one run at a time: full b8 x2:" in markdown
  assert "| jax | vpt_deep (4 prompts) | 8 | float32 | explicit |" in markdown
  assert "- NOT met: VPT-deep images/s >= 1.15x" in markdown or "- met: VPT-deep" in markdown
  assert "for orientation only" in markdown


def test_a_failing_row_is_saved_with_its_error_and_the_next_one_runs(tmp_path):
  # cuDNN attention in float32 is refused (vit.check_attention) for every JAX row: each row is
  # saved with that error; none stops the run.
  _run_harness(tmp_path, "--attention_impl=cudnn", "--methods=full,linear")
  [jsonl] = tmp_path.glob("*.jsonl")
  rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
  assert [r["method"] for r in rows] == ["full", "linear"]
  assert all(r["error_kind"] == "ValueError" and "needs a bfloat16" in r["error"] for r in rows)
  assert "FAILED (ValueError)" in jsonl.with_suffix(".md").read_text()


@pytest.mark.skipif(not torch_reference.available(), reason="torch and timm are not installed")
def test_torch_reference_matches_the_method():
  rows = {m: torch_reference.measure("Ti/16", 1, 32, m, 4, "float32", num_classes=10,
                                     prompt_tokens=3, steps=1, warmup=0)
          for m in ("full", "vpt_deep")}
  assert rows["vpt_deep"]["trainable_parameters"] == 1 * 3 * 192 + 192 * 10 + 10
  assert rows["full"]["trainable_parameters"] > 100 * rows["vpt_deep"]["trainable_parameters"]
  assert all(r["images_per_s"] > 0 for r in rows.values())


def _row(method, batch, images_per_s, framework="jax", mfu=None):
  return {"framework": framework, "method": method, "batch": batch, "prompt_tokens": 50,
          "images_per_s": images_per_s, "mfu": mfu}


def test_targets_are_judged_at_batch_128_against_the_faster_pytorch():
  rows = [_row("full", 64, 900.0, mfu=0.6), _row("full", 128, 1000.0, mfu=0.52),
          _row("vpt_deep", 128, 1250.0), _row("linear", 128, 5000.0),
          _row("full", 128, 700.0, "torch eager"), _row("full", 128, 600.0, "torch.compile"),
          _row("vpt_deep", 128, 800.0, "torch eager"), _row("vpt_deep", 128, 900.0, "torch.compile")]
  checks = {name.split(" (")[0]: (value, met) for name, value, met in benchmark.targets(rows)}
  assert checks == {
      "full fine-tuning MFU >= 50%": ("52.0%", True),
      "VPT-deep images/s >= 1.15x full fine-tuning's": ("1.25x", True),
      "full images/s >= 1.5x PyTorch's": ("1.43x", False),    # 1000 / 700 (eager is faster)
      "vpt_deep images/s >= 1.5x PyTorch's": ("1.39x", False)}  # 1250 / 900 (compile)
  assert [c[2] for c in benchmark.targets(rows, batch=64)] == [True]
  assert benchmark.targets([_row("full", 16, 10.0)]) == []  # No MFU without a known peak.
  failed = dict(_row("vpt_deep", 128, None), error="RuntimeError: x", error_kind="oom")
  assert len(benchmark.targets(rows[:2] + [failed])) == 1  # A failed row answers nothing.


def test_targets_are_judged_on_an_h200():
  rows = [_row("full", 128, 1000.0, mfu=0.52), _row("vpt_deep", 128, 1250.0)]
  meta = dict(variant="B/16", depth=None, image_size=224, dtype="bfloat16", prompt_tokens=50,
              device="NVIDIA H200")
  text = benchmark.targets_text(meta, rows)
  assert "- met: full fine-tuning MFU >= 50%: 52.0%" in text and "orientation" not in text
  assert "orientation only" in benchmark.targets_text({**meta, "device": "NVIDIA A100"}, rows)


def test_results_are_never_overwritten(tmp_path):
  first = benchmark.free_stem(str(tmp_path / "out"), "2026-11-21_NVIDIA H100 80GB HBM3")
  assert first == str(tmp_path / "out" / "2026-11-21_NVIDIA-H100-80GB-HBM3")
  open(first + ".md", "w").close()
  second = benchmark.free_stem(str(tmp_path / "out"), "2026-11-21_NVIDIA H100 80GB HBM3")
  assert second == first + "_2"
  open(second + ".json", "w").close()
  assert benchmark.free_stem(str(tmp_path / "out"), "2026-11-21_NVIDIA H100 80GB HBM3") == (
      first + "_3")


@pytest.mark.skipif(not torch_reference.available(), reason="torch and timm are not installed")
@pytest.mark.parametrize("method", ["full", "vpt_deep"])
def test_torch_reference_computes_this_projects_model(tmp_path, method):
  # Same weights (exported in Google's layout, which timm loads) and same prompts: same logits,
  # so the PyTorch rows time the very model the JAX rows do.
  import jax
  import numpy as np
  import torch
  from vpt_jax.checkpoints import pretrained
  prompt_tokens = 3 if method == "vpt_deep" else 0
  model = vit.Model(num_classes=10, variant="Ti/16", depth=2, prompt_tokens=prompt_tokens,
                    prompt_deep=True)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape) + x
                                        for k, x in zip(keys, leaves)])
  with jax.default_matmul_precision("highest"):
    expected, _ = model.apply({"params": params}, images)
  backbone = {k: v for k, v in params.items() if k != "prompt"}
  pretrained.export_npz(backbone, str(tmp_path / "weights.npz"))
  reference = torch_reference.build("Ti/16", 2, 32, 10, method, prompt_tokens)
  (reference.vit if method == "vpt_deep" else reference).load_pretrained(
      str(tmp_path / "weights.npz"))
  if method == "vpt_deep":
    reference.prompts.data = torch.from_numpy(np.array(params["prompt"]["embeddings"]))
  reference.eval()
  with torch.no_grad():
    logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(logits, np.asarray(expected), atol=1e-4)
  assert np.abs(np.asarray(expected)).max() > 0.1
