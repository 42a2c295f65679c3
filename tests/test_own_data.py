"""A researcher's own image folder (task=folder:<path>, vpt_jax/data/layouts.py) on tiny images
the tests write: each layout's splits, labels and class names, seeded stratified carving, the
one-line refusals of bad data, the decode-once check, stale images, shifted folder test copies."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fake_tfds
from vpt_jax.data import layouts, lists, pipeline, shifts
from vpt_jax.data import tasks as tasks_lib

CLASSES = ("owl", "cat", "dog")  # Not sorted: class names and labels follow sorted folder names.


def image(path, seed=0, size=8, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, format=fmt)
  return pixels


def class_tree(root, per_class, classes=CLASSES):
  for c, name in enumerate(classes):
    for i in range(per_class):
      image(os.path.join(root, name, f"{i}.png"), seed=100 * c + i)


def task_of(root, **settings):
  return tasks_lib.with_data_settings(tasks_lib.get(f"folder:{root}"), settings)


def sizes(task):
  return {split: len(items) for split, items in layouts.read(task).entries.items()}


def per_class(items):
  return np.bincount([e.label for e in items]).tolist()


def one_line(call):
  with pytest.raises(lists.BadDataError) as raised:
    call()
  message = str(raised.value)
  assert "\n" not in message
  return message


def check(task, subsets=("trainval", "test"), cache=None, log=print):
  pipeline.check_data(task, "folder", None, cache, subsets, log)


def test_class_folders_with_val_and_test(tmp_path):
  for split, n in (("train", 4), ("val", 2), ("test", 3)):
    class_tree(tmp_path / split, n)
  task = task_of(tmp_path)
  assert (task.layout, task.num_classes, task.class_names) == ("class_folders", 3, ("cat", "dog", "owl"))
  assert sizes(task) == {"train": 12, "val": 6, "test": 9}
  train = layouts.entries(task, "train")
  assert per_class(train) == [4, 4, 4]
  assert all(os.path.basename(os.path.dirname(e.path)) == task.class_names[e.label] for e in train)
  assert len(layouts.entries(task, "trainval")) == 18
  assert tasks_lib.phase_subsets(task, "search") == ("train", "val")
  assert tasks_lib.phase_subsets(task, "final") == ("trainval", "test")
  check(task, cache=str(tmp_path / "cache"))


def test_val_carved_from_train_is_stratified_seeded_and_reproducible(tmp_path):
  class_tree(tmp_path / "train", 10)
  class_tree(tmp_path / "test", 2)
  task = task_of(tmp_path, val_fraction=0.2)
  first = layouts.read(task)
  assert first.carved == ("val",) and sizes(task) == {"train": 24, "val": 6, "test": 6}
  assert per_class(first.entries["val"]) == [2, 2, 2] and per_class(first.entries["train"]) == [8] * 3
  assert layouts.read(task) == first  # Reproducible.
  train, val = ({e.path for e in first.entries[s]} for s in ("train", "val"))
  assert not train & val and len(train | val) == 30
  other = layouts.read(task_of(tmp_path, val_fraction=0.2, split_seed=1)).entries["val"]
  assert {e.path for e in other} != val and per_class(other) == [2, 2, 2]
  assert layouts.version(task) != layouts.version(task_of(tmp_path, val_fraction=0.2, split_seed=1))
  assert sizes(task_of(tmp_path, val_fraction=0.5))["val"] == 15
  # Small classes: at least one to val while one image stays in train.
  assert layouts._counts(2, (0.1,)) == [1] and layouts._counts(1, (0.1,)) == [0]
  assert layouts._counts(2, (0.2, 0.2)) == [1, 0] and layouts._counts(3, (0.2, 0.2)) == [1, 1]


def test_single_tree_is_carved_into_train_val_and_test(tmp_path):
  class_tree(tmp_path, 10)
  (tmp_path / "README.md").write_text("my photos")  # A loose non-image file at the top.
  task = task_of(tmp_path, val_fraction=0.2, test_fraction=0.3)
  assert (task.layout, task.class_names) == ("tree", ("cat", "dog", "owl"))
  resolved = layouts.read(task)
  assert resolved.carved == ("test", "val") and sizes(task) == {"train": 15, "test": 9, "val": 6}
  assert per_class(resolved.entries["test"]) == [3] * 3 and per_class(resolved.entries["val"]) == [2] * 3
  paths = [e.path for split in resolved.entries.values() for e in split]
  assert len(set(paths)) == len(paths) == 30
  notices = []
  check(task, cache=str(tmp_path / "cache"), log=notices.append)
  assert notices == [f"task=folder:{tmp_path}: one class tree, 3 classes; train 15, val 6, test 9 (test and "
                     "val carved: data.test_fraction=0.3, val_fraction=0.2, split_seed=0).",
                     f"task=folder:{tmp_path}: skipped 1 non-image file(s) among the images (first: "
                     f"{tmp_path}/README.md)."]
  assert layouts.subsets(task_of(tmp_path, test_fraction=0.0)) == ("train", "val")


def test_json_lists_with_seven_string_classes(tmp_path):
  names = [f"species_{c}" for c in "gfedcba"]
  for split, n in (("train", 3), ("test", 1)):
    mapping = {}
    for c, name in enumerate(names):
      for i in range(n):
        path = f"imgs/{split}_{c}_{i}.jpg"
        image(str(tmp_path / path), seed=c * 10 + i, fmt="JPEG")
        mapping[path] = name
    (tmp_path / f"{split}.json").write_text(json.dumps(mapping))
  task = task_of(tmp_path, val_fraction=0.34)
  assert (task.layout, task.num_classes, task.class_names) == ("json", 7, tuple(sorted(names)))
  assert sizes(task) == {"train": 14, "val": 7, "test": 7}
  test = layouts.entries(task, "test")
  assert [task.class_names[e.label] for e in test] == names
  check(task, cache=str(tmp_path / "cache"))


def test_list_files_keep_their_behaviour(tmp_path):
  for split, n in (("train", 6), ("val", 3), ("test", 3)):
    names = [f"pics/{split}_{i}.png" for i in range(n)]
    for i, name in enumerate(names):
      image(str(tmp_path / name), seed=i)
    (tmp_path / f"{split}.txt").write_text("".join(f"{name} {i % 3}\n" for i, name in enumerate(names)))
  task = task_of(tmp_path)
  assert (task.layout, task.num_classes, task.class_names) == ("lists", 3, None)
  (tmp_path / "classes.txt").write_text("a\nb\nc\n")
  task = task_of(tmp_path)
  assert task.class_names == ("a", "b", "c") and sizes(task) == {"train": 6, "val": 3, "test": 3}
  assert [e.label for e in layouts.entries(task, "val")] == [0, 1, 2]
  check(task, cache=str(tmp_path / "cache"))
  written = layouts.write_split_lists(task, None, str(tmp_path / "run" / "splits"))
  assert [os.path.basename(p) for p in written] == ["train.txt", "val.txt", "test.txt", "classes.txt"]
  assert (tmp_path / "run" / "splits" / "val.txt").read_text() == (tmp_path / "val.txt").read_text()
  assert (tmp_path / "run" / "splits" / "classes.txt").read_text() == "a\nb\nc\n"
  assert layouts.write_split_lists(tasks_lib.get("dtd"), None, str(tmp_path / "x")) == []


def test_missing_test_is_one_line_unless_val_only(tmp_path):
  class_tree(tmp_path / "train", 5)
  task = task_of(tmp_path)
  assert layouts.subsets(task) == ("train", "val")
  expected = (f"task=folder:{tmp_path} has no test split (no test/ folder): add one, or set "
              "--config.data.evaluate_on=val to train on train and evaluate on val.")
  assert one_line(lambda: check(task)) == expected
  assert one_line(lambda: layouts.entries(task, "test")) == expected
  val_only = task_of(tmp_path, evaluate_on="val")
  assert tasks_lib.phase_subsets(val_only, "final") == ("train", "val")
  check(val_only, tasks_lib.phase_subsets(val_only, "final"), str(tmp_path / "cache"))
  with pytest.raises(ValueError, match="^data.evaluate_on=val is for custom folders"):
    tasks_lib.with_data_settings(tasks_lib.get("dtd"), {"evaluate_on": "val"})
  with pytest.raises(ValueError, match="^data.val_fraction=0.0 and data.test_fraction=0.2 must be"):
    task_of(tmp_path, val_fraction=0.0)


def test_unrecognised_folder_names_the_layouts_and_the_line_format(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(lists.BadDataError) as raised:
    tasks_lib.get(f"folder:{tmp_path}")
  assert str(raised.value) == f"task=folder:{tmp_path}: no dataset layout recognised; {layouts.EXPECTED}."
  assert "'relative/path label'" in layouts.EXPECTED and "\n" not in layouts.EXPECTED


def folders(tmp_path, test=2):
  class_tree(tmp_path / "train", 4)
  class_tree(tmp_path / "test", test)
  return tmp_path


def test_empty_class_folder(tmp_path):
  folders(tmp_path)
  os.makedirs(tmp_path / "train" / "emu")
  (tmp_path / "train" / "emu" / "notes.txt").write_text("x")
  task = task_of(tmp_path)
  assert one_line(lambda: check(task)) == (
      f"class folder {tmp_path}/train/emu: the class folder {tmp_path}/train/emu holds no image "
      f"(extensions {' '.join(layouts.IMAGE_EXTENSIONS)}): add images or remove it.")


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_corrupt_or_truncated_image(tmp_path, damage):
  folders(tmp_path)
  path = tmp_path / "test" / "dog" / "1.png"
  image(str(path), size=64)
  data = path.read_bytes()
  path.write_bytes(b"not an image" if damage == "corrupt" else data[:len(data) // 2])
  message = one_line(lambda: check(task_of(tmp_path), cache=str(tmp_path / "cache")))
  assert message.startswith(f"class folder {tmp_path}/test/dog (test): image {path} cannot be decoded (")


def test_non_images_skipped_in_folders_refused_in_lists(tmp_path):
  folders(tmp_path)
  (tmp_path / "train" / "cat" / "labels.csv").write_text("x")
  notices = []
  check(task_of(tmp_path), cache=str(tmp_path / "cache"), log=notices.append)
  assert notices == [f"task=folder:{tmp_path}: class subfolders, 3 classes; train 9, val 3, test 6 (val "
                     "carved: data.val_fraction=0.2, split_seed=0).",
                     f"task=folder:{tmp_path}: skipped 1 non-image file(s) among the images (first: "
                     f"{tmp_path}/train/cat/labels.csv)."]
  listed = tmp_path / "lists"
  image(str(listed / "a.png"))
  (listed / "b.csv").write_text("x")
  (listed / "train.txt").write_text("a.png 0\nb.csv 0\n")
  assert one_line(lambda: layouts.read(task_of(listed))) == (
      f"{listed}/train.txt, line 2: {listed}/b.csv is not an image (its extension is none of "
      f"{' '.join(layouts.IMAGE_EXTENSIONS)}).")


def test_val_or_test_class_that_train_lacks(tmp_path):
  folders(tmp_path)
  image(str(tmp_path / "test" / "zebra" / "0.png"))
  assert one_line(lambda: check(task_of(tmp_path))) == (
      f"{tmp_path}/test/zebra: class 'zebra' is not among the training classes (no train/zebra/);"
      " a class needs training images.")


def lists_folder(root, train_labels, test_labels, classes_txt=None):
  for split, labels in (("train", train_labels), ("test", test_labels)):
    for i in range(len(labels)):
      image(str(root / f"{split}_{i}.png"), seed=i)
    (root / f"{split}.txt").write_text("".join(f"{split}_{i}.png {label}\n"
                                               for i, label in enumerate(labels)))
  if classes_txt:
    (root / "classes.txt").write_text(classes_txt)
  return task_of(root)


def test_test_label_never_seen_in_training(tmp_path):
  task = lists_folder(tmp_path, [0, 1, 0, 1], [0, 2], "a\nb\nc\n")
  assert one_line(lambda: check(task)) == (
      f"{tmp_path}/test.txt, line 2: label 2 of {tmp_path}/test_1.png has no training image (test "
      "data of a class the model never learns).")


def test_empty_class_named_in_classes_txt(tmp_path):
  task = lists_folder(tmp_path, [0, 1, 0, 1], [0, 1], "a\nb\nc\n")
  assert one_line(lambda: check(task)) == (
      f"{tmp_path}/classes.txt: class 2 (c) has no training image: add images to train or remove "
      "the class.")


@pytest.mark.parametrize("name", ["../outside.png", "/abs/outside.png"])
def test_image_path_outside_the_folder(tmp_path, name):
  root = tmp_path / "data"
  task = lists_folder(root, [0, 1, 0, 1], [0, 1])
  (root / "train.txt").write_text(f"train_0.png 0\n{name} 1\n")
  assert one_line(lambda: check(task)) == (
      f"{root}/train.txt, line 2: {os.path.join(root, name)} is outside the folder {root}: list "
      "paths relative to it.")


def test_same_image_in_two_splits(tmp_path):
  task = lists_folder(tmp_path, [0, 1, 0, 1], [0, 1])
  (tmp_path / "test.txt").write_text("test_0.png 0\ntrain_1.png 1\n")
  assert one_line(lambda: check(task)) == (
      f"{tmp_path}/test.txt, line 2: {tmp_path}/train_1.png is also in train ({tmp_path}/train.txt, "
      "line 2): a split must not hold another's images.")


def test_images_are_decoded_once_per_data_version(tmp_path, monkeypatch):
  folders(tmp_path)
  task, cache = task_of(tmp_path), str(tmp_path / "cache")
  reader = pipeline.sources.get("folder").reader()
  decodes = []
  original = reader.decode_all
  monkeypatch.setattr(reader, "decode_all", lambda *a: decodes.append(1) or original(*a))
  check(task, cache=cache)
  check(task, cache=cache)
  assert len(decodes) == 1
  path = tmp_path / "train" / "cat" / "0.png"
  image(str(path), seed=99)
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  check(task, cache=cache)
  assert len(decodes) == 2


def test_a_rewritten_image_is_a_new_version_and_new_arrays(tmp_path):
  """The stale-image bug: the lists unchanged, an image rewritten with other pixels."""
  task = lists_folder(tmp_path, [0, 1, 0, 1], [0, 1])
  cache = str(tmp_path / "cache")
  version = pipeline.sources.get("folder").prepared_version(task, None)
  old, _ = pipeline.load_arrays(task, "train", 8, None, cache, "bilinear", "folder")
  path = tmp_path / "train_0.png"
  new_pixels = image(str(path), seed=1234)
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  assert pipeline.sources.get("folder").prepared_version(task, None) != version
  new, _ = pipeline.load_arrays(task, "train", 8, None, cache, "bilinear", "folder")
  np.testing.assert_array_equal(new[0], new_pixels)
  assert not np.array_equal(old[0], new[0])
  # The named tasks' list sources too: FGVC's JSON lists (KMnP/vpt's layout).
  cub = tmp_path / "cub"
  image(str(cub / "images" / "a.jpg"), fmt="JPEG")
  for split in ("train", "val", "test"):
    (cub / f"{split}.json").write_text(json.dumps({"a.jpg": 1}))
  before = lists.json_version(tasks_lib.get("cub"), str(cub))
  os.utime(cub / "images" / "a.jpg", ns=(0, 10**9))
  assert lists.json_version(tasks_lib.get("cub"), str(cub)) != before


def test_shifted_folder_test_copies_equal_the_tfds_sources(tmp_path):
  """The same decoded images shifted by a folder task and by the TFDS source."""
  from vpt_jax.data import tfds_source
  tfds_dir, root = str(tmp_path / "tfds"), tmp_path / "vtab" / "dtd"
  make = lambda index, split: {"image": np.random.default_rng(index).integers(
      0, 256, (16, 16, 3), dtype=np.uint8), "label": index % 3, "file_name": f"{index}.png"}
  fake_tfds.prepare("dtd:3.*.*", tfds_dir, {"train": 1, "validation": 1, "test": 5}, make)
  task = tasks_lib.get("dtd")
  os.makedirs(root / "images")
  with open(root / "test.txt", "w") as f:  # In TFDS's order, losslessly (NOAH's get_vtab1k.py).
    for i, example in enumerate(tfds_source.builder(task, tfds_dir).as_dataset(
        split="test", shuffle_files=False).as_numpy_iterator()):
      Image.fromarray(example["image"]).save(root / "images" / f"{i}.png")
      f.write(f"images/{i}.png {example['label']}\n")
  for shift in shifts.DEFAULT_SHIFTS:
    ours = list(pipeline.eval_batches(task, "test", 16, 4, str(tmp_path / "vtab"), "bilinear",
                                      shift, "folder"))
    theirs = list(pipeline.eval_batches(task, "test", 16, 4, tfds_dir, "bilinear", shift, "tfds"))
    for mine, reference in zip(ours, theirs, strict=True):
      for key in ("image", "label", "mask"):
        np.testing.assert_array_equal(mine[key], reference[key])
  clean = next(pipeline.eval_batches(task, "test", 16, 4, str(tmp_path / "vtab"), "bilinear",
                                     None, "folder"))
  assert not np.array_equal(clean["image"], ours[0]["image"])


def test_a_folder_run_without_shifts_imports_no_tensorflow(tmp_path):
  folders(tmp_path)
  script = (f"import sys; from vpt_jax.data import pipeline, tasks; t = tasks.get('folder:{tmp_path}');"
            "t = tasks.with_data_settings(t, {});"
            f"pipeline.check_data(t, 'folder', None, '{tmp_path}/cache', ('trainval', 'test'));"
            f"pipeline.load_arrays(t, 'trainval', 8, None, '{tmp_path}/cache', 'bilinear', 'folder');"
            "list(pipeline.eval_batches(t, 'test', 8, 4, None, 'bilinear', None, 'folder'));"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
