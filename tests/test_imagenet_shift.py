"""Few-shot ImageNet and its shifted test sets (PETL_Vision's lists), the -A/-R class masks, the
on-device RandAugment and random erasing, the imagenet_shift recipe and study."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vpt_jax.data import imagenet_source, lists, pipeline
from vpt_jax.data import tasks as tasks_lib

# A handful of ImageNet's 1000 classes: 6 (stingray) and 11 (goldfinch) are in ImageNet-A's 200
# (positions 0 and 1 there), 1 (goldfish) and 2 in ImageNet-R's (positions 0 and 1).
CLASSES = (1, 2, 6, 11)
SUBSET_POSITIONS = {"imagenet_a": {6: 0, 11: 1}, "imagenet_r": {1: 0, 2: 1}}


def _jpeg(path, rng):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  height, width = rng.integers(12, 30, 2)
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, "JPEG")


def write_imagenet(root, seed=0, per_class=(3, 1, 2)):
  """<root>/annotations/<set>/<list> in PETL_Vision's formats, images under <root> at the
  paths its lists use (the train and val lists from ImageNet's train folder)."""
  rng = np.random.default_rng(seed)
  listed = {}
  for split, n in zip(("train_shot_100_seed_1992", "val_size_10_seed_1992", "val_meta.list"),
                      per_class):
    lines = []
    for c in CLASSES:
      for i in range(n):
        folder = "val" if split == "val_meta.list" else f"train/n{c:08d}"
        path = f"imagenet/images/{folder}/{split[:5]}_{c}_{i}.JPEG"
        _jpeg(os.path.join(root, path), rng)
        lines.append(f"{path} {c}")
    listed[("imagenet", split)] = lines
  for folder, kept in (("imagenet-v2", CLASSES), ("imagenet-s", CLASSES),
                       ("imagenet-a", (6, 11)), ("imagenet-r", (1, 2))):
    name = {"imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r"}.get(folder)
    lines = []
    for c in kept:
      for i in range(2):
        path = f"{folder}/n{c:08d}/a photo {i}.jpg"  # A space in the name, as -A's have.
        _jpeg(os.path.join(root, path), rng)
        lines.append(f"{path} {SUBSET_POSITIONS[name][c] if name else c}")
    listed[(folder, "val_meta.list")] = lines
  for (folder, split), lines in listed.items():
    os.makedirs(os.path.join(root, "annotations", folder), exist_ok=True)
    with open(os.path.join(root, "annotations", folder, split), "w") as f:
      f.write("".join(line + "\n" for line in lines))
  return str(root)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  return write_imagenet(tmp_path_factory.mktemp("imagenet"))


def test_tasks_lists_and_class_masks(imagenet_dir):
  names = tasks_lib.expand("imagenet+imagenet_shifts")
  assert names == ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
  imagenet, a, r = (tasks_lib.get(n) for n in ("imagenet", "imagenet_a", "imagenet_r"))
  assert (imagenet.num_classes, a.num_classes, r.num_classes) == (1000, 200, 200)
  assert imagenet.class_names[:2] == ("tench", "goldfish") and len(imagenet.class_names) == 1000
  # PETL_Vision's lists label -A's first class (n01498041, stingray) 0: 1000-way index 6.
  assert a.class_subset[:3] == (6, 11, 13) and r.class_subset[:3] == (1, 2, 4)
  assert a.class_names[0] == "stingray" and r.class_names[0] == "goldfish"
  assert len(set(a.class_subset)) == 200 and list(a.class_subset) == sorted(a.class_subset)
  assert tasks_lib.phase_subsets(imagenet, "final") == ("train", "test")
  assert tasks_lib.phase_subsets(imagenet, "search") == ("train", "val")
  train = imagenet_source.entries(imagenet, "train", imagenet_dir)
  assert [e.label for e in train] == [c for c in CLASSES for _ in range(3)]
  assert train[0].path == os.path.join(imagenet_dir, "imagenet/images/train/n00000001/train_1_0.JPEG")
  shifted = imagenet_source.entries(a, "test", imagenet_dir)
  assert [e.label for e in shifted] == [0, 0, 1, 1] and shifted[0].path.endswith("a photo 0.jpg")
  images, labels = pipeline.load_arrays(r, "test", 24, imagenet_dir, os.path.join(imagenet_dir, "c"),
                                        "squash_bicubic", source="imagenet")
  assert images.shape == (4, 24, 24, 3) and labels.tolist() == [0, 0, 1, 1]
  assert lists.imagenet_version(imagenet, imagenet_dir).startswith("imagenet_")


def test_bad_lists_are_one_line_errors(tmp_path):
  root = write_imagenet(tmp_path / "data", per_class=(1, 1, 1))
  folder = os.path.join(root, "annotations", "imagenet-a")
  listed = open(os.path.join(folder, "val_meta.list")).read().splitlines()
  cases = [(listed + [listed[0]], "is listed twice (first at line 1)", 5),
           (listed[:1] + ["imagenet-a/x.jpg 200"], "label 200 of imagenet-a/x.jpg is out of "
                                                     "range [0, 200)", 2),
           (listed[:2] + ["imagenet-a/x.jpg"], "expected 'relative/path label'", 3)]
  for lines, message, line in cases:
    with open(os.path.join(folder, "val_meta.list"), "w") as f:
      f.write("\n".join(lines) + "\n")
    with pytest.raises(lists.BadDataError) as error:
      imagenet_source.entries(tasks_lib.get("imagenet_a"), "test", root)
    assert str(error.value).startswith(f"{folder}/val_meta.list, line {line}: ")
    assert message in str(error.value) and "\n" not in str(error.value)
  os.unlink(os.path.join(root, "annotations", "imagenet", "val_size_10_seed_1992"))
  with pytest.raises(pipeline.DataNotPreparedError, match="val_size_10_seed_1992 does not exist"):
    imagenet_source.entries(tasks_lib.get("imagenet"), "val", root)


def test_class_mask_excludes_outputs_outside_the_subset():
  """The highest logit at a class outside ImageNet-A's 200 must not be predicted: the 200
  outputs are the logits, in the subset's order (PETL_Vision's outputs[:, A_CLASS_SUBLIST_MASK])."""
  from vpt_jax.training import steps
  subset = tasks_lib.get("imagenet_a").class_subset

  class Fixed:  # A "model" whose logits are its input.
    def apply(self, variables, images, example_mask=None):
      return images, None
  logits = np.zeros((2, 1000), np.float32)
  logits[:, 0] = 10.0  # tench: not one of -A's classes.
  logits[0, subset[5]] = 3.0
  logits[1, subset[7]] = 2.0
  labels = np.array([5, 6])
  sums, kept = steps.make_eval_step(Fixed(), subset)(None, jnp.asarray(logits), labels,
                                                     jnp.ones(2, bool))
  assert kept.shape == (2, 200) and int(sums["correct"]) == 1  # Example 0: 5; example 1: 7 != 6.
  full, _ = steps.make_eval_step(Fixed())(None, jnp.asarray(logits), labels, jnp.ones(2, bool))
  assert int(full["correct"]) == 0
