"""Mai et al.'s many-shot benchmark on generated data: PETL_Vision's split files in their own
formats (CIFAR-100 .npy index arrays, RESISC45 "path label" lists), the on-device
RandomResizedCrop and flips, the recipe's grid, a tiny many-shot sweep and report, and a custom
folder's sweep and report."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import fake_tfds
from configs import many_shot as many_shot_config
from test_folder_data import custom_folder
from test_train import tiny_config
from vpt_jax.data import device, lists, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import executors, plots, report, sweep
from vpt_jax.training import recipes

CIFAR_TRAIN, CIFAR_TEST = 60, 12


def cifar_example(index, split):
  """A flat colour per example (fake_tfds.flat_image) and its original position as TFDS's id."""
  return {"image": fake_tfds.flat_image(index, split, (32, 32, 3)), "label": index % 100,
          "coarse_label": index % 20, "id": f"{split}_{index:05d}"}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
  """TFDS cifar100 (TFDS stores it shuffled) and PETL_Vision-style index files for "1k" and
  "500" (five search splits), written as np.save writes them."""
  tfds_dir = str(tmp_path_factory.mktemp("tfds_cifar"))
  fake_tfds.prepare("cifar100:3.*.*", tfds_dir, {"train": CIFAR_TRAIN, "test": CIFAR_TEST},
                    cifar_example)
  splits = tmp_path_factory.mktemp("annotations")
  folder = splits / "cifar100"
  folder.mkdir()
  rng = np.random.default_rng(0)
  combined = rng.permutation(CIFAR_TRAIN)[:40]
  np.save(folder / "cifar100-1k-trainval_combined.npy", combined)
  np.save(folder / "cifar100-1k-trainval_split_train.npy", combined[:32])
  np.save(folder / "cifar100-1k-trainval_split_val.npy", combined[32:])
  np.save(folder / "cifar100-500-trainval_split_train.npy", rng.integers(0, CIFAR_TRAIN, (5, 8)))
  np.save(folder / "cifar100-500-trainval_split_val.npy", rng.integers(0, CIFAR_TRAIN, (5, 4)))
  return tfds_dir, str(splits)


def _task(name, split_dir):
  return tasks_lib.with_split_dir(tasks_lib.get(name), split_dir)


def test_cifar_index_files_select_torchvision_order(cifar, tmp_path):
  tfds_dir, splits = cifar
  task = _task("cifar100-1k", splits)
  folder = os.path.join(splits, "cifar100")
  for subset, name in (("split_train", "split_train"), ("split_val", "split_val"),
                       ("combined", "combined")):
    images, labels = pipeline.load_arrays(task, subset, 8, tfds_dir, str(tmp_path), "bicubic")
    expected = np.load(os.path.join(folder, f"cifar100-1k-trainval_{name}.npy"))
    # Each image's colour is its position in the original order (TFDS's id), not TFDS's.
    assert [fake_tfds.decode_index(image) for image in images] == expected.tolist()
    assert labels.tolist() == (expected % 100).tolist() and images.shape[1:] == (8, 8, 3)
  rows = np.load(os.path.join(folder, "cifar100-500-trainval_split_val.npy"))
  task500 = _task("cifar100-500", splits)
  for split in (0, 3):
    images, _ = pipeline.load_arrays(task500, f"split_val_{split}", 8, tfds_dir, str(tmp_path),
                                     "bicubic")
    assert [fake_tfds.decode_index(image) for image in images] == rows[split].tolist()
  # The whole training set (cifar100-full's combined set) is the parent, in id order; one cache.
  images, _ = pipeline.load_arrays(_task("cifar100-full", splits), "combined", 8, tfds_dir,
                                   str(tmp_path), "bicubic")
  assert [fake_tfds.decode_index(image) for image in images] == list(range(CIFAR_TRAIN))
  assert os.listdir(tmp_path) == ["cifar100_many_shot"]
  # Subsets and phases as the sweep names them.
  assert tasks_lib.phase_subsets(task500, "search", 2) == ("split_train_2", "split_val_2")
  assert tasks_lib.phase_subsets(task, "final") == ("combined", "test")
  with pytest.raises(ValueError, match="data.split=2 must be 0 or unset: cifar100-1k has one"):
    tasks_lib.phase_subsets(task, "search", 2)


def test_bad_split_files_are_one_line_errors_naming_the_file(cifar, tmp_path):
  tfds_dir, splits = cifar
  bad = tmp_path / "annotations"
  (bad / "cifar100").mkdir(parents=True)
  np.save(bad / "cifar100" / "cifar100-5k-trainval_split_train.npy", np.array([3, 7, 60, 1]))

  def error(name, subset, split_dir):
    with pytest.raises(lists.BadDataError) as raised:
      pipeline.load_arrays(_task(name, split_dir), subset, 8, tfds_dir, str(tmp_path / "c"),
                           "bicubic")
    assert "\n" not in str(raised.value)
    return str(raised.value)

  path = bad / "cifar100" / "cifar100-5k-trainval_split_train.npy"
  assert error("cifar100-5k", "split_train", str(bad)) == (
      f"{path}: index 60 at position 2 is out of range [0, 60) of CIFAR-100's training set.")
  assert error("cifar100-5k", "split_val", str(bad)).startswith(
      f"{bad / 'cifar100' / 'cifar100-5k-trainval_split_val.npy'} does not exist: "
      "config.data.split_dir must be a copy of OSU-MLB/PETL_Vision's data/annotations folder")
  assert "set config.data.split_dir" in error("cifar100-5k", "combined", None)
  config = many_shot_config.get_config("task=cifar100,size=5k")
  with pytest.raises(ValueError, match=r"^data.split_dir=None must be a copy of OSU-MLB/PETL"):
    recipes.resolve(config)


def _png(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def test_resisc_lists_select_their_images_and_labels(tmp_path):
  images_dir, splits = tmp_path / "NWPU-RESISC45", tmp_path / "annotations" / "resisc"
  names = [f"c{i % 3}/img_{i:03d}.png" for i in range(20)]
  for i, name in enumerate(names):
    _png(images_dir / name, 10 * i)
  splits.mkdir(parents=True)
  order = np.random.default_rng(1).permutation(20)
  (splits / "train.txt").write_text("".join(f"{names[i]} {i % 3}\n" for i in order))
  (splits / "test.txt").write_text("".join(f"{names[i]} {i % 3}\n" for i in (0, 1, 2)))
  chosen = [17, 4, 9, 12]
  (splits / "resisc-225_train_1.txt").write_text("".join(f"{names[i]} {i % 3}\n" for i in chosen))
  task = _task("resisc45-225", str(tmp_path / "annotations"))
  images, labels = pipeline.load_arrays(task, "split_train_1", 8, str(images_dir),
                                        str(tmp_path / "c"), "bicubic", source="folder")
  assert images[:, 0, 0, 0].tolist() == [10 * i for i in chosen]
  assert labels.tolist() == [i % 3 for i in chosen]
  test = np.concatenate([b["image"][b["mask"]] for b in pipeline.eval_batches(
      task, "test", 8, 2, str(images_dir), "bicubic", source="folder")])
  assert test[:, 0, 0, 0].tolist() == [0, 10, 20]
  wrong = splits / "resisc-225_val_1.txt"
  wrong.write_text(f"{names[5]} 0\n")
  with pytest.raises(lists.BadDataError, match=rf"^{wrong}, line 1: label 0 of c2/img_005.png is "
                                               "not its label in"):
    pipeline.load_arrays(task, "split_val_1", 8, str(images_dir), str(tmp_path / "c"), "bicubic",
                         source="folder")


def test_cifar_from_a_folder_in_torchvision_order(tmp_path):
  """The way around TFDS's order: a folder whose train.txt lists the training set in
  torchvision's order; the index files count its lines."""
  for i in range(8):
    _png(tmp_path / "cifar" / f"train/{i}.png", 20 * i)
  (tmp_path / "cifar" / "train.txt").write_text("".join(f"train/{i}.png {i % 4}\n"
                                                          for i in range(8)))
  (tmp_path / "cifar" / "test.txt").write_text("train/0.png 0\n")
  (tmp_path / "ann" / "cifar100").mkdir(parents=True)
  np.save(tmp_path / "ann" / "cifar100" / "cifar100-10k-trainval_split_val.npy", np.array([6, 1]))
  images, labels = pipeline.load_arrays(_task("cifar100-10k", str(tmp_path / "ann")), "split_val",
                                        8, str(tmp_path / "cifar"), str(tmp_path / "c"), "bicubic",
                                        source="folder")
  assert images[:, 0, 0, 0].tolist() == [120, 20] and labels.tolist() == [2, 1]


def _ramps(size=40):
  """uint8 image growing by 5 per pixel: along columns in channel 0, along rows in channel 1."""
  ramp = 5 * np.arange(size)
  return np.stack([np.broadcast_to(ramp[None, :], (size, size)),
                   np.broadcast_to(ramp[:, None], (size, size)),
                   np.zeros((size, size))], -1).astype(np.uint8)


def _line(values):
  """(slope, intercept) of values over the inner output positions."""
  inner = np.arange(2, len(values) - 2)  # The kernel reads past the box's edge (PIL's clamps).
  slope, intercept = np.polyfit(inner + 0.5, values[inner], 1)
  assert np.abs(slope * (inner + 0.5) + intercept - values[inner]).max() < 1.5  # Linear.
  return slope, intercept


def test_random_resized_crop_crops_flips_and_is_keyed_by_example():
  size, n = 16, 32
  images, labels = jnp.asarray(np.stack([_ramps()] * n)), jnp.arange(n)
  rng = jax.random.PRNGKey(3)
  batch = jax.jit(lambda permutation, augment: device.take_batch(
      images, labels, permutation, 0, n, crop_size=size, crop_rng=rng, epoch=2, crop_flip=True,
      augment=augment, vertical_flip=True)[0], static_argnums=1)
  out = np.asarray(batch(jnp.arange(n), "random_resized_crop")).astype(float)
  boxes, flips = [], []
  for image in out:
    # A ramp resampled from box [left, left + w) is 5 * (left + (x + 0.5) * w / size - 0.5).
    (sx, bx), (sy, by) = _line(image[8, :, 0]), _line(image[:, 8, 1])
    horizontal, vertical = sx < 0, sy < 0
    w, h = abs(sx) * size / 5, abs(sy) * size / 5
    left = (bx if not horizontal else bx + sx * size) / 5 + 0.5
    top = (by if not vertical else by + sy * size) / 5 + 0.5
    assert -0.5 < left and left + w < 40.5 and -0.5 < top and top + h < 40.5
    assert 0.08 * 1600 - 40 < w * h < 1600 + 40 and 3 / 4 - 0.1 < w / h < 4 / 3 + 0.1
    boxes.append(w)
    flips.append((horizontal, vertical))
  assert min(boxes) < 20 < max(boxes)  # It crops, at scales from (0.08, 1) of the area.
  assert 4 < sum(h for h, _ in flips) < 28 and 4 < sum(v for _, v in flips) < 28
  np.testing.assert_array_equal(out, np.asarray(batch(jnp.arange(n), "random_resized_crop")))
  # An example's view depends on (key, epoch, its index), not on the batch it lands in.
  again = np.asarray(batch(jnp.arange(n)[::-1], "random_resized_crop"))
  np.testing.assert_array_equal(again[::-1], out.astype(np.uint8))
  centre = np.asarray(batch(jnp.arange(n), "center_crop"))
  np.testing.assert_array_equal(centre[0], _ramps()[12:28, 12:28])


def test_recipe_grid_and_schedules():
  expected = {"cifar100-5k": (12, 40, 4), "cifar100-1k": (12, 100, 10),
              "cifar100-500": (60, 100, 10), "resisc45-full": (12, 40, 5),
              "resisc45-450": (60, 100, 10), "clevr_dist-full": (2, 40, 4)}
  for task, (points, epochs, warmup) in expected.items():
    config = many_shot_config.get_config(f"task={task.split('-')[0]},size={task.split('-')[1]}")
    config.data.split_dir = "/petl/annotations"
    planner = sweep.Planner(config)
    runs = planner.search_runs()
    assert len(runs) == points, task
    resolved = recipes.resolve(planner.run_config(runs[-1]))
    assert (resolved.optim.epochs, resolved.optim.warmup_epochs) == (epochs, warmup)
    assert resolved.optim.name == "adamw" and resolved.optim.batch_size == 64
    assert {r.base_lr for r in runs} == {0.0005, 0.001}
    if task != "clevr_dist-full":
      assert {r.weight_decay for r in runs} == {0.0001, 0.001}
      assert {dict(r.extra)["model.drop_path"] for r in runs} == {0.0, 0.1, 0.2}
      assert (resolved.data.crop_from, resolved.data.resolution, resolved.data.resize) == (
          256, 224, "bicubic")
      assert resolved.data.vertical_flip == task.startswith("resisc")
      assert resolved.data.normalization == "inception"
    else:
      assert resolved.model.drop_path == 0.0 and resolved.data.normalization == "imagenet"
  search = recipes.resolve(planner.run_config(runs[0]))  # CLEVR: trains on VTAB's trainval.
  assert (search.data.train_subset, search.data.eval_subset) == ("split_train", "split_val")
  five = sweep.Planner(_with_split_dir(many_shot_config.get_config("task=cifar100,size=500")))
  run = five.search_runs()[7]
  config = recipes.resolve(five.run_config(run))
  assert config.data.augment == "center_crop"  # cifar100.py's search sets use transform_val.
  assert config.data.train_subset == f"split_train_{dict(run.extra)['data.split']}"


def _with_split_dir(config, split_dir="/petl/annotations"):
  config.data.split_dir = split_dir
  return config


def test_search_splits_are_averaged_in_the_selection(tmp_path):
  runs = [sweep.Run("many_shot", "cifar100-500", "lora", "search", lr, 1e-4, 0,
                    (("model.drop_path", 0.0), ("data.split", s)))
          for lr in (0.0005, 0.001) for s in range(2)]
  scores = {(0.0005, 0): 0.9, (0.0005, 1): 0.1, (0.001, 0): 0.6, (0.001, 1): 0.5}
  for run in runs:
    os.makedirs(tmp_path / run.workdir)
    (tmp_path / run.workdir / "result.json").write_text(
        '{"val_accuracy": %s}' % scores[(run.base_lr, dict(run.extra)["data.split"])])
  best = sweep.select_best(str(tmp_path), runs)
  assert best["base_lr"] == 0.001 and best["val_accuracy"] == pytest.approx(0.55)
  assert best["grid"] == {"model.drop_path": 0.0} and best["finished"] == 4


def test_tiny_many_shot_sweep_and_report(cifar, tiny_backbone, tmp_path):
  tfds_dir, splits = cifar
  config = tiny_config(tfds_dir, tiny_backbone, tmp_path, "task=dtd,method=linear", **{
      "data.split_dir": splits, "optim.epochs": 1, "optim.warmup_epochs": 0,
      "optim.batch_size": 16, "sweep.base_lrs": (0.001,), "sweep.weight_decays": (1e-4,),
      "sweep.grid": (("model.drop_path", (0.1,)),), "data.crop_from": 40,
      "sweep.protocol": "many_shot"})
  config.task, config.recipe, config.data.source = "cifar100-1k", "mai", "tfds"
  sweep_dir = str(tmp_path / "sweep")
  planner = sweep.Planner(config, sweep_dir=sweep_dir)
  counts = sweep.run_protocol(sweep_dir, planner, executors.local(planner), log=lambda *_: None)
  assert counts["ran"] == 2
  group = os.path.join(sweep_dir, "many_shot", "cifar100-1k", "linear")
  assert os.listdir(os.path.join(group, "search")) == ["lr0.001_wd0.0001_model.drop_path0.1"]
  final = report.files.read_json(os.path.join(group, "final", "seed42", "result.json"))
  assert (final["train_subset"], final["eval_subset"], final["eval_examples"]) == (
      "combined", "test", CIFAR_TEST)
  text = report.write(sweep_dir, str(tmp_path / "report"), with_published=True)
  assert "## many_shot: test top-1" in text and "| method | cifar100-1k |" in text
  assert "| linear | 8.3 ± 0.0 |" in text and "| linear (released) | 78.05? |" in text
  cells, _, _ = report.collect(sweep_dir)
  curves = report.many_shot.curves(cells["many_shot"])
  assert curves["cifar100"]["linear (released)"] == [(500, 72.85), (1000, 78.05), (50000, 85.34)]
  assert [size for size, _ in curves["cifar100"]["linear"]] == [1000]
  assert plots.many_shot(curves, str(tmp_path / "many_shot.png"))
  assert os.path.getsize(tmp_path / "many_shot.png") > 1000


def test_custom_folder_sweep_and_report(tiny_backbone, tmp_path):
  folder = custom_folder(tmp_path / "my data", np.random.default_rng(3))
  config = tiny_config(None, tiny_backbone, tmp_path, f"task=folder:{folder},method=linear", **{
      "optim.epochs": 1, "optim.warmup_epochs": 0, "sweep.base_lrs": (0.1,),
      "sweep.weight_decays": (0.0,), "sweep.seeds": 1})
  sweep_dir = str(tmp_path / "sweep")
  planner = sweep.Planner(config, sweep_dir=sweep_dir)
  counts = sweep.run_protocol(sweep_dir, planner, executors.local(planner), log=lambda *_: None)
  assert counts["ran"] == 2
  # One directory per task, the folder's path flattened into its name (not nested directories).
  assert os.listdir(os.path.join(sweep_dir, "custom")) == [sweep.task_dir(f"folder:{folder}")]
  text = report.write(sweep_dir, str(tmp_path / "report"))
  assert "## custom: test top-1" in text
  row = next(line for line in text.splitlines() if line.startswith("| linear |"))
  assert 0 <= float(row.split(" | ")[1].split(" ")[0]) <= 100
