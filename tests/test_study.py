"""The study: sweeps (selection, resume), reports, plots, data distance, attention maps."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
import scipy.linalg

from vpt_jax.study import attention, distance, executors, plots, published, report, sweep
from vpt_jax import methods
from vpt_jax.training import artifacts, loop, recipes
from vpt_jax.utils import config_lib
from vpt_jax.data import device, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit

from test_train import REPO, TINY_OVERRIDES, vtab_config

SWEEP_OVERRIDES = {**TINY_OVERRIDES, "optim.epochs": 1, "optim.warmup_epochs": 0,
                   "sweep.seeds": 2, "sweep.base_lrs": (0.5, 0.05), "sweep.weight_decays": (0.0,)}


def planner_for(arg, fake_data_dir, tiny_backbone, tmp_path, **extra):
  config = vtab_config.get_config(arg)
  for path, value in {**SWEEP_OVERRIDES, "backbone": tiny_backbone,
                      "data.data_dir": fake_data_dir, "data.cache_dir": str(tmp_path / "cache"),
                      **extra}.items():
    config_lib.set_path(config, path, value)
  return sweep.Planner(config), config


def write_result(sweep_dir, run, **result):
  workdir = pathlib.Path(sweep_dir) / run.workdir
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "result.json").write_text(json.dumps(result))


def test_selection_picks_the_planted_best_and_breaks_ties(tmp_path):
  config = vtab_config.get_config("task=dtd")
  config.sweep.base_lrs, config.sweep.weight_decays = (5.0, 1.0, 0.1), (0.01, 0.0)
  grid = sweep.search_runs("vtab1k", "dtd", "vpt_deep", config.sweep)
  planted = {(5.0, 0.01): 0.50, (5.0, 0.0): 0.61, (1.0, 0.01): 0.61, (1.0, 0.0): 0.40,
             (0.1, 0.01): 0.61, (0.1, 0.0): 0.20}
  for run in grid:
    write_result(tmp_path, run, val_accuracy=planted[(run.base_lr, run.weight_decay)])
  best = sweep.select_best(str(tmp_path), grid)
  assert (best["base_lr"], best["weight_decay"]) == (0.1, 0.01)  # Three tie: smallest lr wins.
  write_result(tmp_path, grid[0], val_accuracy=0.9)
  assert sweep.select_best(str(tmp_path), grid)["base_lr"] == 5.0
  assert [r.seed for r in sweep.final_runs("vtab1k", "dtd", "vpt_deep", best,
                                           recipes.resolve(config).sweep)] == [42, 44, 82, 100, 800]
  with pytest.raises(RuntimeError, match="No grid run of vtab1k/dtd/full finished"):
    sweep.select_best(str(tmp_path), sweep.search_runs("vtab1k", "dtd", "full", config.sweep))


def test_subsets_per_protocol():
  assert sweep.subsets("vtab1k", "search", 0) == ("train800", "val200")
  assert sweep.subsets("vtab1k", "final", 3) == ("train800val200", "test")
  assert sweep.subsets("scale2000", "search", 0) == ("scale2000_train", "scale2000_val")
  assert sweep.subsets("scale2000", "final", 1) == ("scale2000_trainval", "test")
  # One-shot as ChengHan111/VPT-or-FT: 1 per class of train800 / val200 to search, 2 per class of
  # train800val200 for every final seed alike (or per seed, on request), the whole test split.
  assert sweep.subsets("1shot", "search", 0) == ("1shot_train800_seed0", "1shot_val200_seed0")
  # FGVC's tasks have their own splits and setting (KMnP/vpt trains its final runs on train).
  assert sweep.setting_of("vtab1k", "cub") == "fgvc" and sweep.setting_of("vtab1k", "dtd") == "vtab1k"
  assert sweep.subsets("fgvc", "search", 0, task="cub") == ("train", "val")
  assert sweep.subsets("fgvc", "final", 4, task="cub") == ("train", "test")
  with pytest.raises(ValueError, match="use sweep.protocol=vtab1k"):
    sweep.setting_of("scale400", "cub")
  assert sweep.subsets("1shot", "final", 2) == ("2shot_train800val200_seed0", "test")
  assert sweep.subsets("1shot", "final", 2, kshot_per_seed=True) == (
      "2shot_train800val200_seed2", "test")
  config = vtab_config.get_config("task=dtd")
  config.sweep.protocol = "data_scale"
  assert sweep.settings(config.sweep) == ["scale400", "scale800", "scale2000", "scale5000",
                                          "scale10000", "scale20000"]


class Killed(Exception):
  pass


def test_sweep_runs_resumes_and_reports(fake_data_dir, tiny_backbone, tmp_path):
  arg = "task=dtd+smallnorb_azi,method=linear+vpt_deep"
  planner, config = planner_for(arg, fake_data_dir, tiny_backbone, tmp_path)
  assert len(planner.groups()) == 4
  sweep_dir = str(tmp_path / "sweep")
  completed = []
  local = executors.local(planner)

  def runner(run, workdir, log=print, env=None):
    if len(completed) == 5 and not os.environ.get("RESUMED"):
      raise Killed()
    local(run, workdir, log=lambda *_: None)
    completed.append(os.path.relpath(workdir, sweep_dir))

  with pytest.raises(Killed):
    sweep.run_protocol(sweep_dir, planner, runner, log=lambda *_: None)
  assert len(completed) == 5
  os.environ["RESUMED"] = "1"
  try:
    counts = sweep.run_protocol(sweep_dir, planner, runner, log=lambda *_: None)
  finally:
    del os.environ["RESUMED"]
  assert counts == {"skipped": 5, "ran": 11, "failed": 0, "infeasible": 0}
  assert len(completed) == len(set(completed)) == 16  # 4 x (2 grid + 2 seeds), none twice.
  again = sweep.run_protocol(sweep_dir, planner, runner, log=lambda *_: None)
  assert again == {"skipped": 16, "ran": 0, "failed": 0, "infeasible": 0}

  # Each run's config is the config file's for its task and method plus the overrides.
  run_config = json.loads((tmp_path / "sweep/vtab1k/smallnorb_azi/vpt_deep/final/seed44/"
                           "config.json").read_text())
  assert run_config["seed"] == 44 and run_config["data.train_subset"] == "train800val200"
  assert run_config["optim.epochs"] == 1 and run_config["data.eval_subset"] == "test"
  best = json.loads((tmp_path / "sweep/vtab1k/smallnorb_azi/vpt_deep/best.json").read_text())
  assert run_config["optim.base_lr"] == best["base_lr"]

  # The report's numbers, recomputed from the result files.
  cells, failed, unfinished = report.collect(sweep_dir)
  assert failed == [] and unfinished == []
  for (task, method), cell in cells["vtab1k"].items():
    accuracies = [100 * json.loads((tmp_path / f"sweep/vtab1k/{task}/{method}/final/seed{s}/"
                                    "result.json").read_text())["test_accuracy"] for s in (42, 44)]
    assert cell.mean == pytest.approx(np.mean(accuracies))
    assert cell.std == pytest.approx(np.std(accuracies))
  text = report.write(sweep_dir, str(tmp_path / "report"), with_published=True)
  vpt = cells["vtab1k"][("dtd", "vpt_deep")]
  assert f"{vpt.mean:.1f} ± {vpt.std:.1f}" in text
  assert "| vpt_deep (VPT paper) | 65.8 | 32.9 |" in text
  rows = list(csv.DictReader(open(tmp_path / "report" / "vtab1k.csv")))
  linear = next(r for r in rows if r["method"] == "linear" and r["source"] == "this sweep")
  assert float(linear["natural"]) == pytest.approx(cells["vtab1k"][("dtd", "linear")].mean)
  assert float(linear["structured"]) == pytest.approx(
      cells["vtab1k"][("smallnorb_azi", "linear")].mean)

  # A finished run loads back from its workdir and reproduces its test accuracy.
  workdir = tmp_path / "sweep/vtab1k/dtd/vpt_deep/final/seed42"
  model, params, run_config = artifacts.load_trained(str(workdir))
  correct = 0
  for batch in pipeline.eval_batches(tasks_lib.get("dtd"), "test", 32, 16, fake_data_dir):
    logits, aux = model.apply({"params": params}, device.normalize(batch["image"], "imagenet"),
                              return_attention=True)
    correct += int(((np.argmax(logits, -1) == batch["label"]) & batch["mask"]).sum())
  result = json.loads((workdir / "result.json").read_text())
  assert correct / 37 == pytest.approx(result["test_accuracy"])
  maps = attention.rollout_map(aux["attention"], model, (2, 2))
  assert maps.shape == (16, 2, 2)


def test_failed_runs_are_recorded_not_retried(tmp_path):
  config = vtab_config.get_config("task=dtd")
  config.sweep.base_lrs, config.sweep.weight_decays, config.sweep.seeds = (1.0,), (0.0,), 1
  runs_ = sweep.search_runs("vtab1k", "dtd", "vpt_deep", config.sweep)
  calls = []

  def runner(run, workdir, log=print, env=None):
    calls.append(workdir)
    raise loop.NonFiniteLossError("Loss became nan at step 3")
  (tmp_path / runs_[0].workdir).mkdir(parents=True)
  assert sweep.execute(str(tmp_path), runs_, runner, log=lambda *_: None) == \
      {"skipped": 0, "ran": 0, "failed": 1, "infeasible": 0}
  assert sweep.execute(str(tmp_path), runs_, runner, log=lambda *_: None) == \
      {"skipped": 0, "ran": 0, "failed": 1, "infeasible": 0}
  assert len(calls) == 1
  (tmp_path / runs_[0].workdir / "config.json").write_text("{}")
  _, failed, _ = report.collect(str(tmp_path))
  assert failed == ["vtab1k/dtd/vpt_deep/search/lr1_wd0"]


def test_slurm_dry_run_prints_two_dependent_arrays(tmp_path):
  process = subprocess.run(
      [sys.executable, "launch/sweep.py", "--config=configs/vtab.py:task=dtd+svhn,method=vpt_deep",
       f"--sweep_dir={tmp_path}", "--slurm", "--dry_run", "--config.sweep.seeds=3"],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert process.returncode == 0, process.stderr[-2000:]
  out = process.stdout
  assert "#SBATCH --array=0-79" in out  # 2 tasks x 10 lrs x 4 wds
  assert "#SBATCH --array=0-5" in out  # 2 tasks x 3 seeds
  assert "--config.sweep.seeds=3 --phase=final \\\n    --run_index=$SLURM_ARRAY_TASK_ID" in out
  assert "sbatch --dependency=afterok:$search" in out
  assert not (tmp_path / "slurm" / "submit.sh").exists()


def _png_ok(path):
  image = matplotlib.image.imread(path)
  return image.ndim == 3 and image.shape[0] > 100 and np.ptp(image[..., :3]) > 0.5


def test_figures(tmp_path):
  sweep_dir = tmp_path / "sweep"
  for method, offset in (("full", 0.0), ("vpt_deep", 0.3)):
    workdir = sweep_dir / "vtab1k" / "dtd" / method / "final" / "seed0"
    workdir.mkdir(parents=True)
    with open(workdir / "metrics.jsonl", "w") as f:
      for epoch in range(1, 6):
        f.write(json.dumps({"step": epoch, "epoch": epoch, "train_loss": 2.0 / epoch,
                            "eval_loss": 1.5 + offset + 0.1 * epoch}) + "\n")
  assert plots.loss_curves(str(sweep_dir), str(tmp_path / "loss.png"))
  assert _png_ok(tmp_path / "loss.png")

  cells = {f"scale{n}": {("dtd", "full"): report.Cell([40 + n / 100, 42 + n / 100], 100.0),
                         ("dtd", "vpt_deep"): report.Cell([45 + n / 200], 0.5)}
           for n in (400, 800, 2000)}
  assert plots.data_scale(cells, str(tmp_path / "scale.png"))
  assert _png_ok(tmp_path / "scale.png")
  vtab = {("dtd", "full"): report.Cell([60.0], 100), ("dtd", "vpt_deep"): report.Cell([65.0], 1),
          ("svhn", "full"): report.Cell([87.0], 100), ("svhn", "vpt_deep"): report.Cell([78.0], 1)}
  assert plots.distance_chart({"dtd": 30.0, "svhn": 90.0}, vtab, str(tmp_path / "dist.png"))
  assert _png_ok(tmp_path / "dist.png")
  assert not plots.data_scale({"vtab1k": vtab}, str(tmp_path / "none.png"))
  assert not (tmp_path / "none.png").exists()


def test_frechet_distance_matches_scipy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 12))
  b = rng.normal(loc=0.5, scale=1.7, size=(300, 12)) @ rng.normal(size=(12, 12))
  mu_a, s_a = distance.gaussian(a)
  mu_b, s_b = distance.gaussian(b)
  direct = (np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b)
            - 2 * np.trace(scipy.linalg.sqrtm(s_a @ s_b).real))
  assert distance.frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(direct, rel=1e-8)
  assert distance.features_distance(a, a) == pytest.approx(0.0, abs=1e-8)
  assert distance.features_distance(a, a + 2.0) == pytest.approx(12 * 4.0, rel=1e-8)
  with pytest.raises(ValueError, match="at least 2"):
    distance.gaussian(a[:1])


def test_vit_features_distance(fake_data_dir, tiny_backbone, tmp_path):
  extract = distance.vit_extractor(tiny_backbone, "Ti/16", 32, "imagenet", depth=2)
  images, _ = pipeline.load_arrays(tasks_lib.get("dtd"), "train800", 32, fake_data_dir, str(tmp_path))
  gray, _ = pipeline.load_arrays(tasks_lib.get("smallnorb_azi"), "train800", 32, fake_data_dir, str(tmp_path))
  features = extract(images)
  assert features.shape == (800, 192)
  near = distance.features_distance(features[:400], features[400:])
  far = distance.features_distance(features, extract(gray))
  assert 0 < near < far
  with pytest.raises(FileNotFoundError, match="Inception weights"):
    distance.inception_extractor(str(tmp_path / "missing.h5"))


def test_attention_maps():
  model = vit.Model(num_classes=3, variant="Ti/16", depth=2, prompt_tokens=2, prompt_deep=True)
  tokens = 1 + 2 + 4
  identity = [jnp.broadcast_to(jnp.eye(tokens), (1, 3, tokens, tokens))] * 2
  np.testing.assert_allclose(attention.rollout_map(identity, model, (2, 2)), 0.0)
  uniform = [jnp.full((1, 3, tokens, tokens), 1 / tokens)] * 2
  np.testing.assert_allclose(attention.last_layer_map(uniform, model, (2, 2)), 1 / tokens,
                             rtol=1e-6)
  focused = jnp.zeros((1, 3, tokens, tokens)).at[:, :, 0, 5].set(1.0)
  last = attention.last_layer_map([focused], model, (2, 2))
  np.testing.assert_array_equal(last[0], [[0, 0], [1, 0]])
  assert attention.rollout_map([focused], model, (2, 2))[0].argmax() == 2


def test_attention_overlay_png(tmp_path):
  images = (np.random.default_rng(0).uniform(size=(2, 32, 32, 3)) * 255).astype(np.uint8)
  maps = {"full: rollout": np.random.default_rng(1).uniform(size=(2, 2, 2)),
          "vpt_deep: rollout": np.random.default_rng(2).uniform(size=(2, 2, 2))}
  attention.overlay_figure(images, maps, str(tmp_path / "att.png"))
  assert _png_ok(tmp_path / "att.png")


def test_report_command(tmp_path):
  for method, accuracies in (("full", (0.60, 0.64)), ("vpt_deep", (0.70, 0.72))):
    for seed, accuracy in enumerate(accuracies):
      run = sweep.Run("vtab1k", "dtd", method, "final", 0.1, 0.0, seed)
      write_result(tmp_path, run, task="dtd", method=method, test_accuracy=accuracy,
                   tuned_percent=100.0 if method == "full" else 0.5, wall_seconds=10.0)
  (tmp_path / "distances.json").write_text(json.dumps({"dtd": {"distance": 12.5}}))
  process = subprocess.run(
      [sys.executable, "launch/report.py", f"--sweep_dir={tmp_path}", "--published",
       f"--distances={tmp_path / 'distances.json'}"], capture_output=True, text=True, cwd=REPO,
      timeout=300)
  assert process.returncode == 0, process.stderr[-2000:]
  assert ("| vpt_deep | 71.0 ± 1.0 | 71.0 (1/7) | — | — | 71.0 (0/3) | 71.0 (1/19) | 1/1 | 0.50 | "
          "20 |") in process.stdout
  assert "| full | 62.0 ± 2.0 |" in process.stdout
  assert (tmp_path / "report" / "report.md").read_text() in process.stdout
  assert _png_ok(tmp_path / "report" / "data_distance.png")
  assert "no data for" in process.stdout  # No curves and no data-scale runs: said, not drawn.
  missing = subprocess.run([sys.executable, "launch/report.py", "--sweep_dir=/nonexistent"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
  assert missing.returncode == 1 and "run launch/sweep.py first" in missing.stderr


def test_each_method_of_a_combined_sweep_gets_its_own_grid():
  arg = "task=dtd,method=vpt_deep+lp_ft+ft_then_pt"
  planner = sweep.Planner(vtab_config.get_config(arg))
  assert max(planner.sweep_config("dtd", "vpt_deep").base_lrs) == 50.0
  assert planner.sweep_config("dtd", "lp_ft").base_lrs == (0.005, 0.001, 0.0005, 0.0001)
  # FT-then-PT's sweep tunes its prompt stage; its FT stage runs with config.stage_optim.
  assert max(planner.sweep_config("dtd", "ft_then_pt").base_lrs) == 50.0
  with pytest.raises(ValueError, match="A sweep sets seed itself"):
    sweep.Planner(vtab_config.get_config(arg), overrides={"seed": 3})
  run = sweep.Run("vtab1k", "dtd", "vpt_deep", "final", 2.5, 0.001, 4)
  run_config = planner.run_config(run)
  assert (run_config.seed, run_config.optim.base_lr, run_config.data.train_subset) == (
      4, 2.5, "train800val200")


def test_parallel_runs_never_share_a_device(tmp_path):
  import threading
  import time
  config = vtab_config.get_config("task=dtd")
  config.sweep.base_lrs, config.sweep.weight_decays = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01), (0.0,)
  busy, clashes, lock = set(), [], threading.Lock()

  def runner(run, workdir, log=print, env=None):
    device = env["CUDA_VISIBLE_DEVICES"]
    with lock:
      clashes.append(device in busy)
      busy.add(device)
    time.sleep(0.05 if device == "0" else 0.2)  # Device 0 frees up sooner than device 1.
    with lock:
      busy.discard(device)
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(workdir) / "result.json").write_text("{}")

  counts = sweep.execute(str(tmp_path), sweep.search_runs("vtab1k", "dtd", "vpt_deep",
                                                          config.sweep),
                         runner, parallel=2, device_ids=("0", "1"),
                         log=lambda *_: None)
  assert counts["ran"] == 6 and not any(clashes)


def test_processes_sharing_a_device_share_its_memory():
  fraction = lambda env: float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"])
  # Four runs at once on one GPU: each may take a quarter of 90%, not JAX's default 75%.
  one_gpu = [sweep.slot_environment(slot, 4, ("0",)) for slot in range(4)]
  assert {env["CUDA_VISIBLE_DEVICES"] for env in one_gpu} == {"0"}
  assert [fraction(env) for env in one_gpu] == [0.23] * 4 and sum(map(fraction, one_gpu)) < 1
  # Three slots over two GPUs: two share GPU 0, one has GPU 1.
  assert [(e["CUDA_VISIBLE_DEVICES"], fraction(e)) for e in (
      sweep.slot_environment(s, 3, ("0", "1")) for s in range(3))] == [
          ("0", 0.45), ("1", 0.9), ("0", 0.45)]
  assert fraction(sweep.slot_environment(0, 2, ())) == 0.45  # Both see every device.
  assert sweep.slot_environment(0, 1, ()) is None


def test_infeasible_sizes_are_recorded_and_the_sweep_goes_on(tmp_path):
  config = vtab_config.get_config("task=dtd")
  config.sweep.base_lrs, config.sweep.weight_decays, config.sweep.seeds = (1.0,), (0.0,), 1
  config.sweep.protocol, config.sweep.sizes = "data_scale", (400, 20000)
  planner = sweep.Planner(config)

  def runner(run, workdir, log=print, env=None):
    if planner.run_config(run).data.train_subset.startswith("scale20000"):
      raise sweep.tasks_lib.InfeasibleSubsetError("dtd cannot hold data-scale size 20000")
    write_result(tmp_path, sweep.Run(*pathlib.Path(workdir).relative_to(tmp_path).parts[:3],
                                     "search", 1.0, 0.0, 0), val_accuracy=0.5)
    if "final" in workdir:
      pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
      (pathlib.Path(workdir) / "result.json").write_text("{}")

  lines = []
  counts = sweep.run_protocol(str(tmp_path), planner, runner, log=lines.append)
  assert counts == {"skipped": 0, "ran": 2, "failed": 0, "infeasible": 1}
  assert any(line.startswith("SKIPPED final runs of scale20000/dtd/vpt_deep") for line in lines)
  assert json.loads((tmp_path / "scale20000/dtd/vpt_deep/search/lr1_wd0/failed.json")
                    .read_text())["error"].startswith("dtd cannot hold")


def test_slurm_scripts_quote_overrides(tmp_path):
  scripts = executors.slurm_scripts("configs/vtab.py:task=dtd", {"sweep.base_lrs": (1.0, 0.5)},
                                    str(tmp_path / "a b"), 4, 2)
  assert "'--config.sweep.base_lrs=(1.0, 0.5)'" in scripts["search"]
  for text in scripts.values():
    script = tmp_path / "script.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_final_runs_of_an_earlier_selection_are_set_aside_and_rerun(tmp_path):
  # The grid gained a point and the selection moved: the old seeds must not pass for the new ones.
  sweep_dir = str(tmp_path)
  old = sweep.Run("vtab1k", "dtd", "vpt_deep", "final", 1.0, 0.0, 0)
  new = sweep.Run("vtab1k", "dtd", "vpt_deep", "final", 0.5, 0.0, 0)
  workdir = tmp_path / old.workdir
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"optim.base_lr": 1.0, "optim.weight_decay": 0}))
  (workdir / "result.json").write_text(json.dumps({"test_accuracy": 0.25}))
  ran, lines = [], []

  def runner(run, workdir, log, env=None):
    ran.append(run)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"optim.base_lr": run.base_lr, "optim.weight_decay": run.weight_decay}, f)
  assert sweep.execute(sweep_dir, [old], runner) == {
      "skipped": 1, "ran": 0, "failed": 0, "infeasible": 0}  # Same setting: kept as it is.
  counts = sweep.execute(sweep_dir, [new], runner, log=lines.append)
  assert counts == {"skipped": 0, "ran": 1, "failed": 0, "infeasible": 0} and ran == [new]
  kept = tmp_path / "vtab1k/dtd/vpt_deep/superseded/lr1_wd0/seed0/result.json"
  assert json.loads(kept.read_text()) == {"test_accuracy": 0.25}
  assert "moved to vtab1k/dtd/vpt_deep/superseded/lr1_wd0/seed0" in lines[0]
  assert json.loads((workdir / "config.json").read_text())["optim.base_lr"] == 0.5
  cells, _, unfinished = report.collect(sweep_dir)
  assert cells == {} and unfinished == ["vtab1k/dtd/vpt_deep/final/seed0"]


def test_means_say_when_they_miss_tasks_and_published_rows_get_group_means():
  cells = {("dtd", "vpt_deep"): report.Cell([60.0, 62.0], 1.0),
           ("smallnorb_azi", "vpt_deep"): report.Cell([30.0], 1.0)}
  stats = report.summary(cells)["vpt_deep"]
  assert str(stats["groups"]["natural"]) == "61.0 (1/7)"
  assert str(stats["groups"]["specialized"]) == "—"
  assert str(stats["groups"]["structured"]) == "30.0 (1/8)"
  assert str(stats["mean"]) == "45.5 (0/3)" and str(stats["task_mean"]) == "45.5 (2/19)"
  # The demo's five tasks are a complete suite of their own.
  demo = {(t, "full"): report.Cell([50.0], 100.0) for t in tasks_lib.DEMO_TASKS}
  assert str(report.summary(demo)["full"]["mean"]) == "50.0"
  # The VPT paper's VPT-deep row: results.md gives 78.48 / 82.43 / 54.98 and the 19-task mean.
  markdown, rows = report.tables(cells, with_published=True)
  paper = next(r for r in rows if r["source"] == "VPT paper, Table 1")
  # (results.md's means come from the paper's unrounded accuracies: within 0.03 of these.)
  assert [paper[g] for g in ("natural", "specialized", "structured")] == pytest.approx(
      [78.48, 82.43, 54.98], abs=0.03)
  assert paper["mean"] == pytest.approx((78.48 + 82.43 + 54.98) / 3, abs=0.03)
  assert paper["mean_tasks"] == pytest.approx(np.mean(list(published.VPT_PAPER["vpt_deep"].values())))
  assert "| 78.5 | 82.4 | 55.0 | 72.0 | 69.4 |" in markdown


def test_any_config_field_is_an_axis_of_the_grid(tmp_path):
  config = vtab_config.get_config("task=dtd,method=lora")
  config.sweep.base_lrs, config.sweep.weight_decays, config.sweep.seeds = (0.5, 0.1), (0.0,), 2
  config.sweep.grid = (("method_kwargs.lora_rank", (1, 8, 32)),)
  planner = sweep.Planner(config, sweep_dir=str(tmp_path))
  grid = planner.search_runs()
  assert len(grid) == 6 and grid[0].workdir == os.path.join(
      "vtab1k", "dtd", "lora", "search", "lr0.5_wd0_method_kwargs.lora_rank1")
  assert planner.run_config(grid[1]).method_kwargs.lora_rank == 8
  # Planted accuracies: rank 8 and 32 tie at the best; the smaller lr, then the smaller rank wins.
  planted = {(0.5, 1): 0.5, (0.5, 8): 0.7, (0.5, 32): 0.6, (0.1, 1): 0.2, (0.1, 8): 0.7,
             (0.1, 32): 0.7}
  trained = []

  def runner(run, workdir, log=print, env=None):
    trained.append(planner.run_config(run))
    rank = dict(run.extra)["method_kwargs.lora_rank"]
    result = ({"val_accuracy": planted[(run.base_lr, rank)]} if run.phase == "search" else
              {"test_accuracy": 0.5})
    write_result(tmp_path, run, **result)

  lines = []
  counts = sweep.run_protocol(str(tmp_path), planner, runner, log=lines.append)
  assert counts == {"skipped": 0, "ran": 8, "failed": 0, "infeasible": 0}
  best = json.loads((tmp_path / "vtab1k/dtd/lora/best.json").read_text())
  assert (best["base_lr"], best["weight_decay"], best["grid"]) == (
      0.1, 0.0, {"method_kwargs.lora_rank": 8})
  assert "best base_lr=0.1 weight_decay=0 method_kwargs.lora_rank=8" in "\n".join(lines)
  finals = [c for c in trained if c.phase == "final"]
  assert [(c.optim.base_lr, c.method_kwargs.lora_rank) for c in finals] == [(0.1, 8)] * 2
  assert "| vtab1k | dtd | lora | 0.1 | 0 | method_kwargs.lora_rank=8 | 70.0 |" in (
      report.selections_markdown(str(tmp_path)))
  # The default grid keeps the paths of sweeps made before grids had other axes.
  assert sweep.Run("vtab1k", "dtd", "lora", "search", 0.5, 0.0, 0).workdir.endswith("lr0.5_wd0")


def test_a_grid_axis_must_name_a_config_field():
  config = vtab_config.get_config("task=dtd,method=lora")
  config.sweep.grid = (("method_kwargs.lora_rnk", (1, 8)),)
  with pytest.raises(ValueError, match="sweep.grid="):
    recipes.resolve(config)
  config.sweep.grid = (("method_kwargs.lora_rank", (1, 8)),)
  with pytest.raises(ValueError, match="A sweep sets method_kwargs.lora_rank itself"):
    sweep.Planner(config, {"method_kwargs.lora_rank": 4})


def test_every_method_has_a_color_of_its_own():
  colors = [matplotlib.colors.to_hex(plots._color(name)) for name in methods.names()]
  assert len(set(colors)) == len(colors)
  assert plots._color("full") == plots.COLORS["full"]


def test_the_report_reads_both_wise_modes(tmp_path):
  method_dir = tmp_path / "vtab1k" / "dtd" / "lora"
  method_dir.mkdir(parents=True)
  for name, values in (("wise.json", ([0.1, 0.5], [0.3, 0.7])), ("wise_petl.json", ([0.2, 0.4], [0.4, 0.8]))):
    (method_dir / name).write_text(json.dumps({
        "alphas": [0.0, 1.0], "selected_alpha": 1.0,
        "test": {"final/seed0": {"clean": values[0]}, "final/seed1": {"clean": values[1]}}}))
  curves = report.wise_curves(str(tmp_path))
  assert set(curves) == {("vtab1k", "dtd", "lora"), ("vtab1k", "dtd", "lora (merge_petl)")}
  assert curves[("vtab1k", "dtd", "lora")]["test"]["clean"] == pytest.approx([0.2, 0.6])
  assert curves[("vtab1k", "dtd", "lora (merge_petl)")]["test"]["clean"] == pytest.approx([0.3, 0.6])
  assert curves[("vtab1k", "dtd", "lora (merge_petl)")]["runs"] == 2
  assert "| vtab1k | dtd | lora (merge_petl) | 1.0 | 60.0 |" in report._robustness_markdown({}, curves)
