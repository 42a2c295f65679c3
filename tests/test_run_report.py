"""What a user sees of a run: the command's output piped to a file, the tables and figures at the
top of its workdir, each run's report, and errors that leave nothing behind."""

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from vpt_jax.study import plots, report, run_report
from vpt_jax.utils import files

from test_train import REPO


def write_folder(root, classes=("red", "green", "blue"), sizes=(("train", 30), ("val", 9),
                                                                  ("test", 15))):
  """A custom folder in the list-file layout: 40 px images whose colour is their class."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in sizes:
    os.makedirs(root / "images" / split, exist_ok=True)
    lines = []
    for i in range(n):
      label = i % len(classes)
      pixels = rng.integers(0, 60, (40, 40, 3))
      pixels[..., label % 3] += 150
      Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / split / f"{i}.png")
      lines.append(f"images/{split}/{i}.png {label}")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
  (root / "classes.txt").write_text("\n".join(classes) + "\n")
  return root


def _main(*args, cwd=REPO, env_cache=None):
  env = dict(os.environ, VPT_JAX_CACHE=str(env_cache)) if env_cache else None
  return subprocess.run([sys.executable, "launch/main.py", *args], capture_output=True, text=True,
                        cwd=cwd, timeout=900, env=env)


def _png(path):
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and min(image.shape[:2]) > 100, image.shape
  assert np.ptp(image[..., :3]) > 0.5  # Not blank.
  return image


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory):
  """Two methods on a custom folder through the README's command, output piped as in CI."""
  tmp = tmp_path_factory.mktemp("own")
  folder = write_folder(tmp / "my flowers")
  process = _main(f"--config=configs/demo.py:task=folder:{folder},method=linear+vpt_deep",
                  f"--workdir={tmp / 'runs'}", "--config.optim.epochs=2",
                  "--config.optim.warmup_epochs=1", "--config.eval_shifts=()",
                  env_cache=tmp / "cache")
  assert process.returncode == 0, process.stderr[-3000:]
  return tmp / "runs", process


def test_a_multi_run_command_on_a_folder_reads_well(folder_runs):
  workdir, process = folder_runs
  out = process.stdout
  # Run folders by the folder's short name; the full task stays in each config.json.
  for method in ("linear", "vpt_deep"):
    config = files.read_json(workdir / "my_flowers" / method / "config.json")
    assert config["task"].startswith("folder:/") and config["task"].endswith("my flowers")
  assert sorted(os.listdir(workdir)) == ["comparison.png", "my_flowers", "results.csv",
                                         "results.md"]
  # Piped: one plain line per epoch, no bar, no escape codes, no library banners.
  assert out.count("my_flowers linear epoch ") == 2 and "my_flowers vpt_deep epoch 2/2: loss" in out
  assert "\x1b" not in out + process.stderr and "\r" not in process.stderr
  for banner in ("oneDNN", "absl::InitializeLog", "dataset_info.json", "Traceback"):
    assert banner not in out + process.stderr, banner
  # The table: the short name as the column, no VTAB group columns, saved at the top.
  table = (workdir / "results.md").read_text()
  assert "| method | my_flowers | Wins vs FT | Tuned/Total % | Time (s) |" in table
  assert "Natural" not in table and table.split("| method")[1] in out
  rows = list(csv_rows(workdir / "results.csv"))
  results = {m: files.read_json(workdir / "my_flowers" / m / "result.json")
             for m in ("linear", "vpt_deep")}
  for row in rows[:2]:
    assert float(row["my_flowers"]) == pytest.approx(100 * results[row["method"]]["test_accuracy"])
  _png(workdir / "comparison.png")


def csv_rows(path):
  import csv
  with open(path) as f:
    yield from csv.DictReader(f)


def test_each_run_has_its_report(folder_runs):
  workdir, _ = folder_runs
  run_dir = workdir / "my_flowers" / "linear"
  per_class = list(csv_rows(run_dir / "report" / "per_class.csv"))
  arrays = files.read_npz(str(run_dir / "test_logits.npz"))
  predicted = np.argmax(arrays["logits"].astype(np.float32), axis=1)
  assert [r["class"] for r in per_class] == ["red", "green", "blue"]  # classes.txt's names.
  for label, row in enumerate(per_class):
    mine = arrays["labels"] == label
    assert int(row["examples"]) == mine.sum() == 5
    assert int(row["correct"]) == (predicted[mine] == label).sum()
  _png(run_dir / "report" / "confusion.png")
  _png(run_dir / "report" / "curves.png")
  text = (run_dir / "report" / "report.md").read_text()
  assert "| 0 | red | 5 |" in text and "![confusion.png](confusion.png)" in text


def test_report_py_reads_a_main_py_folder(folder_runs, tmp_path):
  workdir, _ = folder_runs
  text = report.write(str(workdir), str(tmp_path / "report"))
  assert "No finished final runs yet" not in text
  assert "| linear |" in text and "| vpt_deep |" in text and "my_flowers" in text


def test_a_single_run_ends_with_one_line(folder_runs, tmp_path):
  workdir, _ = folder_runs
  folder = workdir.parent / "my flowers"
  process = _main(f"--config=configs/demo.py:task=folder:{folder},method=linear",
                  f"--workdir={tmp_path / 'one'}", "--config.optim.epochs=2",
                  "--config.optim.warmup_epochs=1", "--config.eval_shifts=()",
                  env_cache=workdir.parent / "cache")
  assert process.returncode == 0, process.stderr[-3000:]
  last = process.stdout.strip().splitlines()[-1]
  result = files.read_json(tmp_path / "one" / "result.json")
  assert last == (f"my_flowers / linear / seed 0: test accuracy {100 * result['test_accuracy']:.1f}% "
                  f"in {result['wall_seconds']:.0f}s. Run folder: {tmp_path / 'one'} (report: "
                  f"{tmp_path / 'one' / 'report' / 'report.md'}).")
  assert "{" not in process.stdout  # No result JSON dump.
  # Images decoded fresh (a new cache) take time, and the result says how much.
  fresh = _main(f"--config=configs/demo.py:task=folder:{folder},method=linear",
                f"--workdir={tmp_path / 'fresh'}", "--config.optim.epochs=2",
                "--config.optim.warmup_epochs=1", "--config.eval_shifts=()",
                env_cache=tmp_path / "fresh_cache")
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  assert files.read_json(tmp_path / "fresh" / "result.json")["time_seconds"]["data"] > 0


def test_a_refused_checkpoint_leaves_no_workdir(folder_runs, tmp_path):
  workdir, _ = folder_runs
  folder = workdir.parent / "my flowers"
  process = _main(f"--config=configs/demo.py:task=folder:{folder},method=linear",
                  f"--workdir={tmp_path / 'refused'}", "--config.model.variant=S/8",
                  env_cache=workdir.parent / "cache")
  assert process.returncode == 1
  assert len(process.stderr.strip().splitlines()) == 1, process.stderr
  assert not (tmp_path / "refused").exists()


def test_figures_draw_their_values(tmp_path):
  matrix = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 0]])
  drawn = plots.confusion(matrix, ["a", "b", "c"], str(tmp_path / "c.png"), "t")
  np.testing.assert_allclose(drawn, [[0.75, 0.25, 0], [0, 0.5, 0.5], [1, 0, 0]])
  _png(tmp_path / "c.png")
  rows = [{"epoch": e, "train_loss_running": 2.0 / e, "train_accuracy_running": 0.1 * e,
           "learning_rate": 0.01 * e, **({"eval_loss": 1.0, "eval_accuracy": 0.5} if e == 3 else {})}
          for e in (1, 2, 3)]
  series = plots.training_curves(rows, str(tmp_path / "curves.png"), "t")
  assert series["train_loss_running"] == ([1, 2, 3], [2.0, 1.0, 2.0 / 3])
  assert series["train_accuracy_running"][1] == pytest.approx([10, 20, 30])
  assert series["eval_accuracy"] == ([3], [50.0]) and series["learning_rate"][1] == [0.01, 0.02, 0.03]
  _png(tmp_path / "curves.png")
  cells = {("dtd", "full"): report.Cell([60.0, 62.0], 100), ("dtd", "vpt_deep"): report.Cell([65.0], 1)}
  assert plots.comparison(cells, str(tmp_path / "bars.png"), "t") == {("dtd", "full"): 61.0,
                                                                       ("dtd", "vpt_deep"): 65.0}
  _png(tmp_path / "bars.png")
  assert run_report.per_class_rows(matrix, ["a", "b", "c"])[1] == {
      "label": 1, "class": "b", "examples": 4, "correct": 2, "accuracy": 50.0}


def test_loss_curves_of_a_sweep_with_its_own_seeds(tmp_path):
  """Sweeps name final runs by their seeds (seed42, seed44, ...): the figure takes the first."""
  for method in ("full", "vpt_deep"):
    for seed in (44, 42):
      workdir = tmp_path / "vtab1k" / "dtd" / method / "final" / f"seed{seed}"
      workdir.mkdir(parents=True)
      with open(workdir / "metrics.jsonl", "w") as f:
        for epoch in (1, 2, 3):
          f.write(json.dumps({"step": epoch, "epoch": epoch, "train_loss": seed / epoch,
                              "eval_loss": 1.0}) + "\n")
  drawn = plots.loss_curves(str(tmp_path), str(tmp_path / "loss.png"))
  assert [r["train_loss"] for r in drawn["dtd"]["full"]] == [42.0, 21.0, 14.0]
  _png(tmp_path / "loss.png")


def test_loss_curves_of_runs_without_per_epoch_evaluation(tmp_path):
  """A sweep's final runs that never evaluated per epoch (the default) still get their training
  curves, from the running loss every epoch logs; the test curve is drawn only where logged."""
  workdir = tmp_path / "vtab1k" / "demo_count" / "full" / "final" / "seed42"
  workdir.mkdir(parents=True)
  with open(workdir / "metrics.jsonl", "w") as f:
    for epoch, loss in ((1, 3.0), (2, 2.0)):
      f.write(json.dumps({"step": epoch, "epoch": epoch, "train_loss_running": loss,
                          "train_accuracy_running": 0.5, "learning_rate": 0.1}) + "\n")
    f.write(json.dumps({"step": 2, "test_accuracy": 0.5}) + "\n")  # A row without an epoch.
  drawn = plots.loss_curves(str(tmp_path), str(tmp_path / "loss.png"))
  assert drawn == {"demo_count": {"full": [{"epoch": 1, "train_loss": 3.0, "eval_loss": None},
                                           {"epoch": 2, "train_loss": 2.0, "eval_loss": None}]}}
  _png(tmp_path / "loss.png")


def test_a_class_folder_tree_is_carved_recorded_and_refused_when_damaged(tmp_path):
  """One <class>/<image> tree: carved into train/val/test, the lists written into the run
  folder; a truncated image stops the next run in one line before any workdir exists."""
  from PIL import Image
  rng = np.random.default_rng(2)
  for label, name in enumerate(("daisy", "rose", "tulip")):
    (tmp_path / "tree" / name).mkdir(parents=True)
    for i in range(10):
      pixels = rng.integers(0, 80, (36, 44, 3))
      pixels[..., label] += 160
      Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "tree" / name / f"{i}.jpg")
  args = ("--config.optim.epochs=2", "--config.optim.warmup_epochs=1", "--config.eval_shifts=()")
  process = _main(f"--config=configs/demo.py:task=folder:{tmp_path / 'tree'},method=linear",
                  f"--workdir={tmp_path / 'run'}", *args, env_cache=tmp_path / "cache")
  assert process.returncode == 0, process.stderr[-3000:]
  splits = {name: (tmp_path / "run" / "splits" / f"{name}.txt").read_text().splitlines()
            for name in ("train", "val", "test")}
  assert {name: len(lines) for name, lines in splits.items()} == {"train": 18, "val": 6, "test": 6}
  assert (tmp_path / "run" / "splits" / "classes.txt").read_text().split() == ["daisy", "rose",
                                                                               "tulip"]
  result = files.read_json(tmp_path / "run" / "result.json")
  assert result["eval_examples"] == 6 and result["train_subset"] == "trainval"
  assert [r["class"] for r in csv_rows(tmp_path / "run" / "report" / "per_class.csv")] == [
      "daisy", "rose", "tulip"]
  damaged = tmp_path / "tree" / "rose" / "3.jpg"
  damaged.write_bytes(damaged.read_bytes()[:100])
  process = _main(f"--config=configs/demo.py:task=folder:{tmp_path / 'tree'},method=linear",
                  f"--workdir={tmp_path / 'again'}", *args, env_cache=tmp_path / "cache")
  assert process.returncode == 1
  assert process.stderr.strip().splitlines() == [
      f"error: class folder {tmp_path / 'tree' / 'rose'}: image {damaged} cannot be decoded "
      "(Truncated File Read)."], process.stderr
  assert not (tmp_path / "again").exists()
