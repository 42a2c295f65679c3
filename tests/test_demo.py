"""The offline demo: generated tasks, deterministic pre-training, and a shortened demo run."""

import re
import subprocess
import sys

import numpy as np
import pytest

from vpt_jax.checkpoints import pretrained
from vpt_jax.utils import files
from vpt_jax.data import pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit

from test_train import REPO

BACKBONE = REPO / "vpt_jax" / "assets" / "demo_vit_ti8_depth2.npz"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  return str(tmp_path_factory.mktemp("demo_tfds"))


def test_demo_tasks_are_generated_offline_through_tfds(demo_data, tmp_path):
  for name in tasks_lib.DEMO_TASKS:
    task = tasks_lib.get(name)
    images, labels = pipeline.load_arrays(tasks_lib.get(name), "train800", 32, demo_data, str(tmp_path))
    assert images.shape == (800, 32, 32, 3) and images.dtype == np.uint8
    counts = np.bincount(labels, minlength=task.num_classes)
    assert len(counts) == task.num_classes and counts.min() > 0.5 * 800 / task.num_classes
    assert images.std() > 10  # Not blank.
  assert [tasks_lib.get(n).group for n in tasks_lib.DEMO_TASKS] == [
      "natural", "specialized", "structured", "structured", "structured"]
  # Generated once: the same examples on a second machine (here: a second data directory).
  again, _ = pipeline.load_arrays(tasks_lib.get("demo_count"), "train800", 32, str(tmp_path / "other_tfds"),
                                  str(tmp_path / "other_cache"))
  first, _ = pipeline.load_arrays(tasks_lib.get("demo_count"), "train800", 32, demo_data, str(tmp_path))
  np.testing.assert_array_equal(again, first)


def test_committed_backbone_loads_like_a_google_checkpoint():
  assert BACKBONE.stat().st_size <= 5 * 2 ** 20
  raw = pretrained.read(str(BACKBONE))
  assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in raw
  assert pretrained.describe(raw) == dict(variant="Ti/8", pool_type="tok", num_classes=6,
                                           representation_size=None, depth=2)
  model = vit.Model(num_classes=10, variant="Ti/8", depth=2)
  params = pretrained.load(str(BACKBONE), model, image_size=32)
  np.testing.assert_array_equal(params["embedding"]["kernel"], raw["embedding/kernel"])


def run(script, *args, cwd=REPO):
  process = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                           cwd=cwd, timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  return process.stdout


def test_pretraining_is_deterministic(demo_data, tmp_path):
  outputs = []
  for attempt in ("a", "b"):
    out = tmp_path / f"{attempt}.npz"
    run("launch/pretrain.py", "--config=configs/demo_pretrain.py", f"--out={out}",
        f"--workdir={tmp_path / attempt}", f"--config.data.data_dir={demo_data}",
        f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.train_subset=train800",
        "--config.data.eval_subset=val200", "--config.optim.epochs=1",
        "--config.optim.warmup_epochs=0", "--config.eval_every_epochs=0")
    outputs.append(files.read_npz(str(out)))
  assert outputs[0].keys() == outputs[1].keys()
  for key in outputs[0]:
    np.testing.assert_array_equal(outputs[0][key], outputs[1][key], err_msg=key)


def test_shortened_demo(demo_data, tmp_path):
  stdout = run("launch/main.py", "--config=configs/demo.py:task=demo_digits+demo_location",
               f"--workdir={tmp_path / 'demo'}", f"--config.data.data_dir={demo_data}",
               f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.optim.epochs=5",
               "--config.eval_shifts=('gaussian_noise:3','contrast:3')")
  table, shifted = stdout.split("Shifted test sets")
  rows = {line.split("|")[1].strip(): line for line in table.splitlines()
          if line.startswith("| ")}
  shift_rows = {line.split("|")[1].strip(): line for line in shifted.splitlines()
                if line.startswith("| ")}
  assert {"vpt_deep", "full", "chance"} <= set(rows)
  assert "| method | clean | gaussian_noise:3 | contrast:3 |" in shifted
  for method in ("vpt_deep", "full"):
    cells = [c.strip() for c in rows[method].split("|")[2:4]]
    accuracies = [float(c.split(" ± ")[0]) for c in cells]
    assert accuracies[0] > 1.5 * 10.0, (method, accuracies)  # digits; chance 10%
    assert accuracies[1] > 1.5 * 16.7, (method, accuracies)  # location; chance 16.7%
    # The shift table's clean column is the mean of the method's two test accuracies.
    clean, *corrupted = [float(c) for c in shift_rows[method].split("|")[2:-1]]
    assert clean == pytest.approx(sum(accuracies) / 2, abs=0.06)
    assert len(corrupted) == 2 and all(0 <= c <= 100 for c in corrupted)
  assert re.search(r"Total wall time \d+s", stdout)
  # The README command again: reported from the finished runs, not retrained.
  again = run("launch/main.py", "--config=configs/demo.py:task=demo_digits+demo_location",
              f"--workdir={tmp_path / 'demo'}", f"--config.data.data_dir={demo_data}",
              f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.optim.epochs=5",
              "--config.eval_shifts=('gaussian_noise:3','contrast:3')")
  assert "already holds a finished run" in again
  assert rows["vpt_deep"] in again
