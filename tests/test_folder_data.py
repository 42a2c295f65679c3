"""Image-folder and FGVC JSON sources on folders the tests write (real PNG/JPEG decoding): the
NumPy restatement of TensorFlow's resizes, folder arrays equal to TFDS arrays for the same
images, --check, custom folders, KMnP/vpt's JSON splits, bad input, the on-device FGVC crops and
a whole FGVC run through launch/main.py."""

import json
import re
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import fake_tfds
from vpt_jax.data import device, folder_check, folder_source, lists, pipeline, tfds_source
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.training import recipes

from test_train import REPO

RNG_SHAPES = [(20, 24), (31, 17), (8, 40), (64, 48), (33, 33)]


@pytest.mark.parametrize("method", ["tf1_bilinear", "bilinear"])
def test_numpy_resize_equals_tensorflow(method):
  rng = np.random.default_rng(0)
  for trial in range(12):
    height, width = rng.integers(3, 200, 2)
    size = int(rng.choice([16, 32, 224, 57]))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(tfds_source.resize(image, size, method))
    np.testing.assert_array_equal(folder_source.tf_bilinear(image, size, method == "bilinear"),
                                  expected)


def random_dtd_example(index, split):
  rng = np.random.default_rng(index * 7 + fake_tfds.SPLIT_IDS[split])
  height, width = RNG_SHAPES[index % len(RNG_SHAPES)]
  return {"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
          "label": (index * 5 + fake_tfds.SPLIT_IDS[split]) % 47, "file_name": f"{index}.png"}


def write_folder_from_tfds(task, tfds_dir, root, fmt="png"):
  """NOAH's get_vtab1k.py, lossless: <root>/<task>/images/<subset>/NNNNNN.png and the lists."""
  import tensorflow_datasets as tfds
  folder = os.path.join(root, task.folder or task.name)
  builder = tfds_source.builder(task, tfds_dir)
  for subset, (list_name,) in lists.TXT_VTAB.items():
    split = tasks_lib.split_for(task, subset, tfds_source.split_sizes(builder))
    os.makedirs(os.path.join(folder, "images", subset), exist_ok=True)
    with open(os.path.join(folder, list_name), "w") as f:
      for i, example in enumerate(tfds.as_numpy(builder.as_dataset(split=split,
                                                                    shuffle_files=False))):
        path = f"images/{subset}/{i:06d}.{fmt}"
        Image.fromarray(example["image"]).save(os.path.join(folder, path))
        f.write(f"{path} {example['label']}\n")
  return folder


@pytest.fixture(scope="module")
def random_dtd(tmp_path_factory):
  """dtd with random images of several sizes in TFDS, and the same images in an image folder."""
  tfds_dir = str(tmp_path_factory.mktemp("tfds_random"))
  fake_tfds.prepare("dtd:3.*.*", tfds_dir, {"train": 810, "validation": 205, "test": 23},
                    random_dtd_example)
  root = str(tmp_path_factory.mktemp("vtab-1k"))
  write_folder_from_tfds(tasks_lib.get("dtd"), tfds_dir, root)
  return tfds_dir, root


@pytest.mark.parametrize("resize", ["tf1_bilinear", "bilinear"])
def test_folder_arrays_equal_tfds_arrays(random_dtd, tmp_path, resize):
  tfds_dir, root = random_dtd
  task = tasks_lib.get("dtd")
  for subset in ("train800val200", "test"):
    images, labels = pipeline.load_arrays(task, subset, 32, tfds_dir, str(tmp_path / "a"), resize)
    folder_images, folder_labels = pipeline.load_arrays(task, subset, 32, root, str(tmp_path / "b"),
                                                        resize, source="folder")
    assert folder_images.dtype == np.uint8 and folder_images.shape == images.shape
    np.testing.assert_array_equal(folder_images, images)
    np.testing.assert_array_equal(folder_labels, labels)
  cached = os.listdir(tmp_path / "b" / "dtd")
  assert all(name.startswith("folder_") for name in cached) and len(cached) == 2
  # A cached folder subset is found again without decoding; an edited list is a new version.
  version = pipeline.sources.get("folder").prepared_version(task, root)
  assert version == folder_source.version(task, root)
  assert pipeline.cached_arrays(task, "test", 32, root, str(tmp_path / "b"), resize,
                                "folder") is not None


def test_check_reports_what_differs(random_dtd, tmp_path):
  tfds_dir, root = random_dtd
  task = tasks_lib.get("dtd")
  assert folder_check.compare(task, root, tfds_dir, 32) == []
  copy = tmp_path / "copy"
  subprocess.run(["cp", "-r", root, str(copy)], check=True)
  test_list = copy / "dtd" / "test.txt"
  lines = test_list.read_text().splitlines()
  path, label = lines[3].rsplit(" ", 1)
  lines[3] = f"{path} {(int(label) + 1) % 47}"
  test_list.write_text("\n".join(lines[:-1]) + "\n")  # One label changed, the last line dropped.
  image = copy / "dtd" / "images" / "val200" / "000000.png"
  Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(image)
  report = folder_check.compare(task, str(copy), tfds_dir, 32)
  assert report[0] == "val200: 1 of 200 images differ after decoding and resizing to 32 px " \
      "(tf1_bilinear), by up to " + report[0].split("by up to ")[1]
  assert any(line.startswith("test: 22 examples in the folder, 23 in TFDS") for line in report)
  assert any(line.startswith(f"test: 1 labels differ (first: {test_list}, line 4 has")
             for line in report)
  done = subprocess.run([sys.executable, "launch/prepare_data.py", "--tasks=dtd", f"--check={copy}",
                         f"--data_dir={tfds_dir}", "--resolution=32"], cwd=REPO, text=True,
                        capture_output=True, timeout=300)
  assert done.returncode == 1 and "dtd: differs:" in done.stdout and "1 labels differ" in done.stdout


def write_images(folder, names, rng, fmt):
  for name in names:
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    height, width = rng.integers(20, 60, 2)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path,
                                                                                    format=fmt)


def custom_folder(root, rng, counts=None):
  counts = counts or {"train": 9, "val": 4, "test": 5}
  for split, n in counts.items():
    names = [f"pics/{split}_{i}.jpg" for i in range(n)]
    write_images(root, names, rng, "JPEG")
    (root / f"{split}.txt").write_text("".join(f"{name} {i % 3}\n" for i, name in enumerate(names)))
  return root


def test_custom_folder_task(tmp_path):
  folder = custom_folder(tmp_path / "my data", np.random.default_rng(1))
  name = f"folder:{folder}"
  assert tasks_lib.expand(f"dtd+{name}") == ["dtd", name]
  task = tasks_lib.get(name)
  assert task.num_classes == 3 and task.sources == ("folder",)
  (folder / "classes.txt").write_text("cat\ndog\nbird\nfish\n")
  assert tasks_lib.get(name).num_classes == 4
  images, labels = pipeline.load_arrays(task, "trainval", 16, None, str(tmp_path / "c"),
                                        "bilinear", source="folder")
  assert images.shape == (13, 16, 16, 3) and labels.tolist() == [i % 3 for i in range(9)] + [
      0, 1, 2, 0]
  with Image.open(folder / "pics" / "train_0.jpg") as image:
    decoded = np.asarray(image.convert("RGB"))
  np.testing.assert_array_equal(images[0], np.clip(np.round(folder_source.tf_bilinear(
      decoded, 16, True)), 0, 255).astype(np.uint8))
  resolved = recipes.resolve(__import__("configs.vtab", fromlist=["x"]).get_config(
      f"task={name},method=linear"))
  assert (resolved.data.source, resolved.data.train_subset, resolved.data.eval_subset) == (
      "folder", "trainval", "test")


def test_bad_lists_are_one_line_errors_naming_file_and_line(tmp_path):
  rng = np.random.default_rng(2)
  folder = custom_folder(tmp_path / "bad", rng)
  task = tasks_lib.get(f"folder:{folder}")
  train = folder / "train.txt"
  good = train.read_text()

  def error(text, subset="train"):
    train.write_text(text)
    with pytest.raises(lists.BadDataError) as raised:
      list(folder_source.examples(task, subset, 16, None, "bilinear"))
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, ValueError)
    return message

  lines = good.splitlines()
  assert error("\n".join(lines[:2] + ["pics/gone.jpg 1"]) + "\n") == \
      f"{train}, line 3: image {folder}/pics/gone.jpg is missing."
  assert error("\n".join(lines[:1] + ["pics/train_1.jpg 3"]) + "\n").startswith(
      f"{train}, line 2: label 3 of pics/train_1.jpg is out of range [0, 3)")
  assert error("\n".join(lines[:3] + [lines[1]]) + "\n") == \
      f"{train}, line 4: pics/train_1.jpg is listed twice (first at line 2)."
  assert error("\n") == f"{train}, line 1: the list is empty."
  assert error("pics/train_1.jpg\n").startswith(f"{train}, line 1: expected 'relative/path label'")
  (folder / "pics" / "train_0.jpg").write_bytes(b"not an image")
  assert error(good).startswith(f"{train}, line 1: image {folder}/pics/train_0.jpg cannot be decoded")


def write_vpt_fgvc(root, rng, classes=200, per_class=(1, 1, 1), image_dir="images"):
  """A KMnP/vpt FGVC folder: JPEGs under `image_dir`, {train,val,test}.json with class ids that are
  neither contiguous nor from 0 (sorted order makes them contiguous)."""
  ids = [3 * c + 7 for c in range(classes)]
  for split, n in zip(("train", "val", "test"), per_class):
    mapping = {f"{c:03d}.Class/{split}_{k}.jpg": ids[c] for c in range(classes) for k in range(n)}
    write_images(os.path.join(root, image_dir), mapping, rng, "JPEG")
    (root / f"{split}.json").write_text(json.dumps(mapping))
  return ids


def test_fgvc_json_lists(tmp_path):
  rng = np.random.default_rng(3)
  folder = tmp_path / "CUB_200_2011"
  ids = write_vpt_fgvc(folder, rng, per_class=(2, 1, 1))
  task = tasks_lib.get("cub")
  entries = pipeline.sources.get("json").reader().entries(task, "train", str(folder))
  assert len(entries) == 400 and [e.label for e in entries[:4]] == [0, 0, 1, 1]
  assert entries[2].path == str(folder / "images" / "001.Class" / "train_0.jpg")
  # train_<percentage>.json (DATA.PERCENTAGE), labelled by train.json's ids.
  (folder / "train_0.1.json").write_text(json.dumps({"001.Class/train_0.jpg": ids[1]}))
  images, labels = pipeline.load_arrays(task, "train_0.1", 40, str(folder), str(tmp_path / "c"),
                                        "short_side", source="json")
  assert images.shape == (1, 40, 40, 3) and labels.tolist() == [1]
  # Found from a folder holding one per task, by the task's name.
  assert lists.json_dir(task, str(tmp_path)) == str(tmp_path / "cub")
  # Bad input: a class id train.json lacks, a duplicate key, an empty split, a missing image.
  test = folder / "test.json"
  test.write_text('{\n"001.Class/test_0.jpg": 10,\n"002.Class/test_0.jpg": 1000\n}')
  with pytest.raises(lists.BadDataError, match=rf"^{test}, line 3: class id 1000 of "):
    pipeline.sources.get("json").reader().entries(task, "test", str(folder))
  test.write_text('{\n"001.Class/test_0.jpg": 7,\n"001.Class/test_0.jpg": 7\n}')
  with pytest.raises(lists.BadDataError, match=rf"^{test}, line 3: 001.Class/test_0.jpg is listed "
                     "twice"):
    pipeline.sources.get("json").reader().entries(task, "test", str(folder))
  test.write_text("{}")
  with pytest.raises(lists.BadDataError, match=rf"^{test}, line 1: the list is empty"):
    pipeline.sources.get("json").reader().entries(task, "test", str(folder))
  test.write_text('{"001.Class/none.jpg": 7}')
  with pytest.raises(lists.BadDataError, match=rf"^{test}, line 1: image .*none.jpg is missing"):
    list(pipeline.sources.get("json").reader().examples(task, "test", 40, str(folder), "short_side"))


def test_short_side_is_torchvision_resize_then_centre_square():
  image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (50, 80, 3), dtype=np.uint8))
  out = folder_source.short_side(image, 32)
  expected = np.asarray(image.resize((51, 32), Image.BILINEAR))[:, 10:42]  # int(32*80/50) = 51.
  np.testing.assert_array_equal(out, expected)


def test_fgvc_crops_are_keyed_by_epoch_and_example():
  images = jax.numpy.asarray(np.random.default_rng(5).integers(0, 256, (10, 12, 12, 3),
                                                               dtype=np.uint8))
  labels = jax.numpy.arange(10)
  permutation = jax.numpy.asarray([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
  rng = jax.random.PRNGKey(0)
  crops = {}
  for batch_size in (4, 10):
    for step in range(-(-10 // batch_size)):
      batch, batch_labels, mask = device.take_batch(images, labels, permutation, step, batch_size,
                                                    crop_size=8, crop_rng=rng, epoch=2,
                                                    crop_flip=True)
      for image, label, real in zip(np.asarray(batch), np.asarray(batch_labels), np.asarray(mask)):
        if real:
          crops.setdefault(int(label), []).append(image)
  for label, seen in crops.items():  # The same crop whatever the batch it fell in.
    np.testing.assert_array_equal(seen[0], seen[1])
  keys = device.example_keys(rng, 2, jax.numpy.arange(10))
  windows = set()
  for index in range(10):
    full = np.asarray(images[index])
    crop = crops[index][0]
    found = [(top, left, flipped) for top in range(5) for left in range(5) for flipped in (0, 1)
             if np.array_equal((full[:, ::-1] if flipped else full)[top:top + 8, left:left + 8]
                               if not flipped else full[top:top + 8, left:left + 8][:, ::-1], crop)]
    assert found, index
    windows.add(found[0][:2])
  assert len(windows) > 3  # Offsets vary over the examples.
  other_epoch = device.crop_and_flip(images, device.example_keys(rng, 3, jax.numpy.arange(10)), 8,
                                     True)
  assert not np.array_equal(np.asarray(other_epoch), np.asarray(device.crop_and_flip(images, keys, 8,
                                                                                      True)))
  centre = device.center_crop(images, 8)
  np.testing.assert_array_equal(np.asarray(centre), np.asarray(images)[:, 2:10, 2:10])


def test_fgvc_recipe_is_the_vpt_codes():
  from configs import fgvc
  vpt = recipes.resolve(fgvc.get_config("task=stanford_cars"))
  assert (vpt.data.source, vpt.data.resize, vpt.data.crop_from, vpt.data.flip) == (
      "json", "short_side", 256, True)
  assert (vpt.optim.batch_size, vpt.optim.warmup_epochs, vpt.optim.epochs) == (128, 10, 100)
  assert vpt.optim.base_lr * 128 / 256 == pytest.approx(0.001)  # configs/prompt/cars.yaml.
  assert vpt.method_kwargs.prompt_tokens == 200 and vpt.sweep.base_lrs == recipes.FGVC_PROMPT_LRS
  assert (vpt.data.train_subset, vpt.data.eval_subset) == ("train", "test")
  full = recipes.resolve(fgvc.get_config("task=stanford_cars,method=full,phase=search"))
  assert (full.optim.batch_size, full.optim.warmup_epochs, full.optim.name) == (384, 5, "hf_adamw")
  assert full.optim.base_lr * 384 / 256 == pytest.approx(0.0375)
  assert (full.data.train_subset, full.data.eval_subset) == ("train", "val")
  linear = recipes.resolve(fgvc.get_config("task=cub,method=linear"))
  assert linear.optim.batch_size == 1024 and linear.sweep.base_lrs == recipes.FGVC_LINEAR_LRS
  with pytest.raises(ValueError, match="data.source='tfds' must be a source that reads task cub"):
    recipes.resolve(fgvc.get_config("task=cub").unlock()
                    .__class__(dict(fgvc.get_config("task=cub").to_dict(),
                                    data={**fgvc.get_config("task=cub").data.to_dict(),
                                          "source": "tfds"})))


def test_fgvc_trains_and_evaluates_through_main(tmp_path, tiny_backbone):
  folder = tmp_path / "CUB_200_2011"
  write_vpt_fgvc(folder, np.random.default_rng(6))
  done = subprocess.run(
      [sys.executable, "launch/main.py", "--config=configs/fgvc.py:task=cub",
       f"--config.data.data_dir={folder}", f"--workdir={tmp_path / 'run'}",
       f"--config.backbone={tiny_backbone}", "--config.model.variant=Ti/16",
       "--config.model.depth=2", "--config.data.resolution=32", "--config.data.crop_from=40",
       "--config.optim.epochs=2", "--config.optim.warmup_epochs=1",
       "--config.optim.batch_size=64", "--config.eval_batch_size=64",
       f"--config.data.cache_dir={tmp_path / 'cache'}"],
      cwd=REPO, text=True, capture_output=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["eval_examples"] == 200 and 0 <= result["test_accuracy"] <= 1
  cached = sorted(os.listdir(tmp_path / "cache" / "cub"))
  version = lists.json_version(tasks_lib.get('cub'), str(folder))
  # The training arrays, and the marker that every listed image of this version decoded once.
  assert cached == [f"{version}_decoded", f"{version}_train_40px_short_side.npz"]


def test_fgvc_sweep_selects_and_reports_with_the_published_rows(tmp_path, tiny_backbone):
  folder = tmp_path / "CUB_200_2011"
  write_vpt_fgvc(folder, np.random.default_rng(7))
  common = [f"--config.data.data_dir={folder}", f"--config.backbone={tiny_backbone}",
            "--config.model.variant=Ti/16", "--config.model.depth=2",
            "--config.data.resolution=32", "--config.data.crop_from=40", "--config.optim.epochs=2",
            "--config.optim.warmup_epochs=1", "--config.optim.batch_size=64",
            "--config.eval_batch_size=64", f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.sweep.base_lrs=(0.5, 0.1)", "--config.sweep.weight_decays=(0.0,)",
            "--config.sweep.seeds=1"]
  done = subprocess.run([sys.executable, "launch/sweep.py", "--config=configs/fgvc.py:task=cub",
                         f"--sweep_dir={tmp_path / 'sweep'}", *common], cwd=REPO, text=True,
                        capture_output=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  searched = sorted(os.listdir(tmp_path / "sweep" / "fgvc" / "cub" / "vpt_deep" / "search"))
  assert searched == ["lr0.1_wd0", "lr0.5_wd0"]
  final = json.loads((tmp_path / "sweep/fgvc/cub/vpt_deep/final").glob("seed*/result.json")
                     .__next__().read_text())
  assert (final["train_subset"], final["eval_subset"], final["eval_examples"]) == (
      "train", "test", 200)
  report = subprocess.run([sys.executable, "launch/report.py", f"--sweep_dir={tmp_path / 'sweep'}",
                           "--published"], cwd=REPO, text=True, capture_output=True, timeout=600)
  assert report.returncode == 0, report.stderr[-3000:]
  assert "## fgvc: test top-1" in report.stdout
  assert re.search(r"\| vpt_deep \(.*\) \| 88\.5 \|", report.stdout)  # The VPT paper's CUB row.
