"""The 19 VTAB-1k tasks: TFDS builders, where their train/val/test examples come from, labels;
the five FGVC tasks (KMnP/vpt's JSON splits) and custom image folders (task=folder:<path>).

Each task names two regions of its TFDS splits, VTAB's train and validation sets (see
docs/vtab1k.md). VTAB-1k takes the first 800 examples of the train region (train800) and
the first 200 of the validation region (val200); the data-scale protocol takes larger prefixes of
both at 4:1. Label functions map a decoded TFDS example to an int label, in TensorFlow ops (imported when they
run, so the task table itself needs no TensorFlow).
"""

import dataclasses
import os
import re
from typing import Any, Callable

NATURAL, SPECIALIZED, STRUCTURED = "natural", "specialized", "structured"
GROUPS = (NATURAL, SPECIALIZED, STRUCTURED)  # VTAB-1k's.
FGVC, CUSTOM = "fgvc", "custom"
MANY_SHOT = "many_shot"  # Mai et al.'s many-shot sets (vpt_jax/data/many_shot.py).
IMAGENET = "imagenet"  # Few-shot ImageNet-1k and its natural-shift test sets (Mai et al.).
FOLDER_PREFIX = "folder:"


class InfeasibleSubsetError(ValueError):
  """A data-scale size larger than a task's data."""


@dataclasses.dataclass(frozen=True)
class Region:
  """Examples [start, stop) of a TFDS split; stop None means to the end of the split."""
  split: str
  start: int = 0
  stop: int | None = None

  def size(self, split_sizes: dict[str, int]) -> int:
    return (self.stop if self.stop is not None else split_sizes[self.split]) - self.start

  def take(self, n: int) -> str:
    return f"{self.split}[{self.start}:{self.start + n}]" if self.start else f"{self.split}[:{n}]"


@dataclasses.dataclass(frozen=True)
class SplitSettings:
  """How a custom folder's missing splits are carved and what its final run is scored on
  (config.data.val_fraction, test_fraction, split_seed, evaluate_on; vpt_jax/data/layouts.py)."""
  val_fraction: float = 0.2  # Of each class's training images (of a tree's images), to val.
  test_fraction: float = 0.2  # Of each class's images of a single tree, to test.
  seed: int = 0
  evaluate_on: str = "test"  # "val": the final run trains on train and is scored on val.


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  builder: str  # TFDS name with the version VTAB pins, e.g. "cifar100:3.*.*".
  num_classes: int
  group: str
  train: Region
  val: Region
  test: str  # TFDS split string.
  label: Callable[[dict], Any] = lambda example: example["label"]  # In TensorFlow ops.
  image_key: str = "image"
  binary_image: bool = False  # Pixels are 0/1 (dsprites): scaled by 255.
  manual_download: str | None = None  # What the user must place in TFDS's manual_dir, if anything.
  generated: bool = False  # Made on this machine (vpt_jax.data.demo): prepared on first use.
  sources: tuple[str, ...] = ("tfds", "folder")  # The data sources that can read it.
  # Its image folder: inside data.data_dir (NOAH's vtab-1k/<name>/, the task's name when None),
  # or absolute (a custom folder).
  folder: str | None = None
  image_dir: str = ""  # FGVC: where the JSON lists' paths start, inside its folder.
  # Many-shot: (dataset, size) and the folder of PETL_Vision's split files (config.data.split_dir,
  # set on the run's copy of the record).
  many_shot: tuple[str, str] | None = None
  split_dir: str | None = None
  # Readable class names in label order (CLIP zero-shot heads), where known.
  class_names: tuple[str, ...] | None = None
  # A test set on a subset of another task's classes (ImageNet-A, -R: 200 of ImageNet's 1000):
  # the model's outputs at these indices, in this order, are the logits of labels 0, 1, ...;
  # the others are excluded before the argmax (evaluation only).
  class_subset: tuple[int, ...] | None = None
  # A custom folder's layout (vpt_jax/data/layouts.py: lists, json, class_folders, tree) and how
  # its missing splits are carved (set on the run's copy of the record).
  layout: str | None = None
  splits: SplitSettings = SplitSettings()

  @property
  def short_name(self) -> str:
    """The name in tables, progress lines and run folders: a custom folder's base name."""
    return short_name(self.name)


def _bin_of(value, thresholds):
  """Index of the largest threshold below `value`."""
  import tensorflow as tf
  below = tf.cast(tf.constant(thresholds, tf.float32) < tf.cast(value, tf.float32), tf.int64)
  return tf.reduce_sum(below) - 1


def clevr_count(example):
  import tensorflow as tf
  return tf.cast(tf.size(example["objects"]["size"]), tf.int64) - 3


def clevr_dist(example):
  import tensorflow as tf
  nearest = tf.reduce_min(example["objects"]["pixel_coords"][:, 2])
  return _bin_of(nearest, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_dist(example):
  import tensorflow as tf
  objects = example["objects"]
  vehicles = objects["type"] < 3  # car, van, truck
  depths = tf.boolean_mask(objects["location"][:, 2], vehicles)
  nearest = tf.reduce_min(tf.concat([depths, [1000.0]], axis=0))  # No vehicle: the last bin.
  return _bin_of(nearest, [-100.0, 8.0, 20.0, 999.0])


def dsprites_loc(example):
  return example["label_x_position"] // 2  # 32 positions -> 16 bins.


def dsprites_ori(example):
  import tensorflow as tf
  orientation = tf.cast(example["label_orientation"], tf.float32)
  return tf.cast(tf.math.floor(orientation / 2.5), tf.int64)  # 40 orientations -> 16 bins.


_RESISC45_MANUAL = (
    "resisc45 needs NWPU-RESISC45.rar placed by hand in TFDS's manual_dir "
    "(<data_dir>/downloads/manual or --manual_dir): download it from the dataset authors' page "
    "(OneDrive link on the NWPU-RESISC45 website), then rerun prepare_data.")
_RETINOPATHY_MANUAL = (
    "diabetic_retinopathy needs the Kaggle 'Diabetic Retinopathy Detection' files (train.zip.*, "
    "test.zip.*, trainLabels.csv, sample.zip, sampleSubmission.csv, retinopathy_solution.csv) "
    "placed by hand in TFDS's manual_dir (<data_dir>/downloads/manual or --manual_dir): "
    "'kaggle competitions download -c diabetic-retinopathy-detection', then rerun prepare_data.")

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  TASKS[task.name] = task
  return task


for _task in [
    # NOAH's get_vtab1k.py names two folders otherwise: cifar, kitti.
    Task("cifar100", "cifar100:3.*.*", 100, NATURAL, Region("train", 0, 45000),
         Region("train", 45000), "test", folder="cifar"),
    Task("caltech101", "caltech101:3.*.*", 102, NATURAL, Region("train", 0, 2754),
         Region("train", 2754), "test"),
    Task("dtd", "dtd:3.*.*", 47, NATURAL, Region("train"), Region("validation"), "test"),
    Task("oxford_flowers102", "oxford_flowers102:2.*.*", 102, NATURAL, Region("train"),
         Region("validation"), "test"),
    # VTAB pinned 3.*, which TFDS no longer serves; 4.0.0 has the same images and labels.
    Task("oxford_iiit_pet", "oxford_iiit_pet:4.*.*", 37, NATURAL, Region("train", 0, 2944),
         Region("train", 2944), "test"),
    Task("svhn", "svhn_cropped:3.*.*", 10, NATURAL, Region("train", 0, 65931),
         Region("train", 65931), "test"),
    Task("sun397", "sun397/tfds:4.*.*", 397, NATURAL, Region("train"), Region("validation"), "test"),
    Task("patch_camelyon", "patch_camelyon:2.*.*", 2, SPECIALIZED, Region("train"),
         Region("validation"), "test"),
    Task("eurosat", "eurosat/rgb:2.*.*", 10, SPECIALIZED, Region("train", 0, 16200),
         Region("train", 16200, 21600), "train[21600:]"),
    Task("resisc45", "resisc45:3.*.*", 45, SPECIALIZED, Region("train", 0, 18900),
         Region("train", 18900, 25200), "train[25200:]", manual_download=_RESISC45_MANUAL),
    Task("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*", 5,
         SPECIALIZED, Region("train"), Region("validation"), "test",
         manual_download=_RETINOPATHY_MANUAL),
    Task("clevr_count", "clevr:3.*.*", 8, STRUCTURED, Region("train", 0, 63000),
         Region("train", 63000), "validation", label=clevr_count),
    Task("clevr_dist", "clevr:3.*.*", 6, STRUCTURED, Region("train", 0, 63000),
         Region("train", 63000), "validation", label=clevr_dist),
    Task("dmlab", "dmlab:2.0.1", 6, STRUCTURED, Region("train"), Region("validation"), "test"),
    # VTAB used kitti 3.1.0 and 3.2.0 (same splits); TFDS's default is newer.
    Task("kitti_dist", "kitti:3.2.0", 4, STRUCTURED, Region("train"), Region("validation"), "test",
         label=kitti_dist, folder="kitti"),
    Task("dsprites_loc", "dsprites:2.*.*", 16, STRUCTURED, Region("train", 0, 589824),
         Region("train", 589824, 663552), "train[663552:]", label=dsprites_loc, binary_image=True),
    Task("dsprites_ori", "dsprites:2.*.*", 16, STRUCTURED, Region("train", 0, 589824),
         Region("train", 589824, 663552), "train[663552:]", label=dsprites_ori, binary_image=True),
    Task("smallnorb_azi", "smallnorb:2.*.*", 18, STRUCTURED, Region("train"),
         Region("test", 0, 12150), "test[50%:]", label=lambda example: example["label_azimuth"]),
    Task("smallnorb_ele", "smallnorb:2.*.*", 9, STRUCTURED, Region("train"),
         Region("test", 0, 12150), "test[50%:]", label=lambda example: example["label_elevation"]),
]:
  register(_task)

VTAB_TASKS = tuple(TASKS)

# The offline demo's tasks (vpt_jax/data/demo.py), in VTAB's groups; "demo_shapes" is the
# pre-training source task of the demo backbone.
for _name, _classes, _group in [("shapes", 6, None), ("digits", 10, NATURAL),
                                ("gratings", 5, SPECIALIZED), ("count", 6, STRUCTURED),
                                ("location", 6, STRUCTURED), ("orientation", 8, STRUCTURED)]:
  register(Task(f"demo_{_name}", f"mini_vtab/{_name}:1.*.*", _classes, _group or "source",
                Region("train"), Region("validation"), "test", generated=True))
DEMO_TASKS = ("demo_digits", "demo_gratings", "demo_count", "demo_location", "demo_orientation")

# FGVC as KMnP/vpt reads it (src/data/datasets/json_dataset.py, src/data/loader.py): a folder
# with train.json, val.json, test.json; the images under the folder that its dataset class names
# (CUB200Dataset and NabirdsDataset "images", DogsDataset "Images", the others the folder itself).
for _name, _classes, _images in [("cub", 200, "images"), ("nabirds", 555, "images"),
                                 ("oxford_flowers", 102, ""), ("stanford_dogs", 120, "Images"),
                                 ("stanford_cars", 196, "")]:
  register(Task(_name, f"{_name}/{{train,val,test}}.json", _classes, FGVC, Region("train"),
                Region("val"), "test", sources=("json",), image_dir=_images))
FGVC_TASKS = ("cub", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars")


# Few-shot ImageNet as OSU-MLB/PETL_Vision reads it (data/dataset/few_shot.py, "fs-imagenet"):
# PETL_Vision's list files (data/annotations/<folder>/) and its images under data.data_dir (its
# --data_path), read by data.source=imagenet (vpt_jax/data/imagenet_source.py). Train and
# validate on its 100-shot and 10-per-class lists, test on ImageNet's validation set; the shifted
# sets are test sets only, evaluated with a model trained on `imagenet` (launch/robustness.py).
_CLASS_SUBSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets",
                              "imagenet_a_r_classes.json")


def imagenet_class_subsets() -> dict[str, tuple[int, ...]]:
  """{"imagenet_a": the 200 ImageNet-1k label indices of ImageNet-A, "imagenet_r": ...}, kept
  with their WordNet ids in vpt_jax/assets/imagenet_a_r_classes.json (PETL_Vision's
  A_CLASS_SUBLIST and R_CLASS_SUBLIST)."""
  import json
  with open(_CLASS_SUBSETS) as f:
    data = json.load(f)
  return {name: tuple(data[name]["indices"]) for name in ("imagenet_a", "imagenet_r")}


def _imagenet_tasks():
  from vpt_jax.data import imagenet_classes  # Names only; no heavy import.
  names = tuple(imagenet_classes.CLASS_NAMES)
  subsets = imagenet_class_subsets()
  out = [Task("imagenet", "imagenet/{train_shot_100_seed_1992,val_size_10_seed_1992,val_meta.list}",
              1000, IMAGENET, Region("train"), Region("val"), "test", sources=("imagenet",),
              folder="imagenet", class_names=names)]
  for name, folder in (("imagenet_v2", "imagenet-v2"), ("imagenet_sketch", "imagenet-s"),
                       ("imagenet_a", "imagenet-a"), ("imagenet_r", "imagenet-r")):
    subset = subsets.get(name)
    out.append(Task(name, f"{folder}/val_meta.list", len(subset) if subset else 1000, IMAGENET,
                    Region("test"), Region("test"), "test", sources=("imagenet",), folder=folder,
                    class_names=tuple(names[i] for i in subset) if subset else names,
                    class_subset=subset))
  return out


for _task in _imagenet_tasks():
  register(_task)
IMAGENET_SHIFTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
IMAGENET_TASKS = ("imagenet",) + IMAGENET_SHIFTS


# Many-shot (Mai et al., OSU-MLB/PETL_Vision data/dataset/cifar100.py, resisc.py, clevr.py):
# "<dataset>-<size>" as PETL_Vision names its data (cifar100-1k, resisc-225; clevr_dist-full is
# its "clevr"). The subsets are read from its split files (vpt_jax/data/many_shot.py); CIFAR-100
# from TFDS (or a folder in torchvision's order), RESISC45 from its image folder with
# PETL_Vision's lists, CLEVR-distance from TFDS in VTAB's regions (train = all 70,000 examples of
# TFDS's train split, VTAB's "trainval"; val = its last 10%; test = TFDS's validation split).
MANY_SHOT_SIZES = {"cifar100": ("500", "1k", "5k", "10k", "full"),
                   "resisc45": ("225", "450", "900", "2250", "4500", "9000", "full"),
                   "clevr_dist": ("full",)}
for _size in MANY_SHOT_SIZES["cifar100"]:
  register(Task(f"cifar100-{_size}", "cifar100:3.*.*", 100, MANY_SHOT, Region("train"),
                Region("train"), "test", many_shot=("cifar100", _size)))
for _size in MANY_SHOT_SIZES["resisc45"]:
  register(Task(f"resisc45-{_size}", "resisc/{train,test}.txt", 45, MANY_SHOT, Region("train"),
                Region("train"), "test", sources=("folder",), many_shot=("resisc45", _size)))
register(Task("clevr_dist-full", "clevr:3.*.*", 6, MANY_SHOT, Region("train"),
              Region("train", 63000), "validation", label=clevr_dist, sources=("tfds",),
              many_shot=("clevr_dist", "full")))
MANY_SHOT_TASKS = tuple(name for name, task in TASKS.items() if task.group == MANY_SHOT)


def folder_task(path: str) -> Task:
  """A custom dataset in one of the layouts of vpt_jax/data/layouts.py (list files, JSON lists,
  class subfolders with or without val/ and test/, a single class tree), its class count and
  names read without walking its images; the splits' carving settings are the defaults here
  (`with_data_settings` sets a run's)."""
  from vpt_jax.data import layouts  # It reads task records; they do not need it.
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise ValueError(f"task={FOLDER_PREFIX}{path}: no such folder.")
  layout = layouts.detect(path)
  classes, names = layouts.classes(path, layout)
  return Task(FOLDER_PREFIX + path, path, classes, CUSTOM, Region("train"), Region("val"), "test",
              sources=("folder",), folder=path, class_names=names, layout=layout)


def short_name(name: str) -> str:
  """"folder:/data/my flowers/" -> "my_flowers"; any other task name as it is."""
  if not name.startswith(FOLDER_PREFIX):
    return name
  base = os.path.basename(os.path.normpath(name[len(FOLDER_PREFIX):])) or "folder"
  return re.sub(r"[^A-Za-z0-9_.+-]+", "_", base)


def get(name: str) -> Task:
  if name.startswith(FOLDER_PREFIX):
    return folder_task(name[len(FOLDER_PREFIX):])
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; choose one of: {', '.join(TASKS)} (or "
                     f"{FOLDER_PREFIX}<path>).")
  return TASKS[name]


def with_split_dir(task: Task, split_dir: str | None) -> Task:
  """A many-shot task's record with the folder of PETL_Vision's split files (config.data.
  split_dir); any other task as it is."""
  return dataclasses.replace(task, split_dir=split_dir) if task.group == MANY_SHOT else task


EVALUATE_ON = ("test", "val")


def with_data_settings(task: Task, data) -> Task:
  """A custom folder's record with config.data's split settings (val_fraction, test_fraction,
  split_seed, evaluate_on; unset ones keep SplitSettings' defaults); any other task as it is,
  after refusing settings only custom folders have."""
  defaults = SplitSettings()
  settings = SplitSettings(
      float(_or(data.get("val_fraction"), defaults.val_fraction)),
      float(_or(data.get("test_fraction"), defaults.test_fraction)),
      int(_or(data.get("split_seed"), defaults.seed)),
      _or(data.get("evaluate_on"), defaults.evaluate_on))
  if settings.evaluate_on not in EVALUATE_ON:
    raise ValueError(f"data.evaluate_on={settings.evaluate_on!r} must be 'test' or 'val' (a "
                     "folder without a test split).")
  if task.group != CUSTOM:
    if settings.evaluate_on != "test":
      raise ValueError(f"data.evaluate_on=val is for custom folders (task={FOLDER_PREFIX}<path>);"
                       f" {task.name} has its own test split.")
    return task
  if not (0 < settings.val_fraction < 1 and 0 <= settings.test_fraction < 1
          and settings.val_fraction + settings.test_fraction < 1):
    raise ValueError(f"data.val_fraction={settings.val_fraction} and data.test_fraction="
                     f"{settings.test_fraction} must be in (0, 1) and [0, 1), with a sum below 1.")
  return dataclasses.replace(task, splits=settings)


def _or(value, default):
  return default if value is None else value


def by_group(group: str) -> tuple[str, ...]:
  return tuple(name for name in VTAB_TASKS if TASKS[name].group == group)


def expand(spec: str) -> list[str]:
  """Task names from "dtd", "all" (VTAB-1k's 19), a group ("natural", ...), "demo" (the demo's
  five), "fgvc" (FGVC's five), "imagenet_shifts" (ImageNet's four shifted test sets),
  "folder:<path>" (a custom folder) or several of these joined by "+" or "," (a folder's path
  holds neither)."""
  names = []
  for item in filter(None, (s.strip() for s in spec.replace(",", "+").split("+"))):
    if item.startswith(FOLDER_PREFIX):
      names.append(get(item).name)
    elif item == "all":
      names += VTAB_TASKS
    elif item == "demo":
      names += DEMO_TASKS
    elif item == FGVC:
      names += FGVC_TASKS
    elif item == MANY_SHOT:
      names += MANY_SHOT_TASKS
    elif item == "imagenet_shifts":
      names += IMAGENET_SHIFTS
    elif item in GROUPS:
      names += by_group(item)
    elif item in TASKS:
      names.append(item)
    else:
      raise ValueError(f"task={item!r} is not a VTAB-1k, FGVC, many-shot, ImageNet or demo task; "
                       f"choose one of: {', '.join(TASKS)} (or all, demo, fgvc, {MANY_SHOT}, imagenet_shifts, "
                       f"a group: {', '.join(GROUPS)}, "
                       f"{FOLDER_PREFIX}<path>; several joined by +).")
  if not names:
    raise ValueError("No task given: set task=NAME (e.g. task=dtd or task=all).")
  return list(dict.fromkeys(names))


def suite(name: str) -> tuple[str, ...]:
  """The benchmark `name` belongs to: VTAB-1k's 19 tasks, FGVC's five, the demo's five, or a
  custom folder alone."""
  if name in VTAB_TASKS:
    return VTAB_TASKS
  if name in FGVC_TASKS:
    return FGVC_TASKS
  if name in MANY_SHOT_TASKS:
    return MANY_SHOT_TASKS
  if name in IMAGENET_TASKS:  # The shifted sets are evaluation sets: ImageNet is trained alone.
    return ("imagenet",)
  return DEMO_TASKS if name in DEMO_TASKS else (name,)


def default_source(spec: str) -> str:
  """The data source of the tasks `spec` names: the JSON lists for FGVC, the image folder for a
  custom folder, TFDS otherwise (VTAB-1k's image folders are chosen by data.source=folder)."""
  sources = {get(name).sources[0] for name in expand(spec)}
  return sources.pop() if len(sources) == 1 else "tfds"


def phase_subsets(task: Task, phase: str, split: int | None = None) -> tuple[str, str]:
  """(train, eval) subsets of a phase: VTAB-1k's train800 -> val200 and train800val200 -> test;
  FGVC's train -> val and train -> test (KMnP/vpt train.py get_loaders trains FGVC on train.json
  alone), few-shot ImageNet's likewise (PETL_Vision experiment/run.py final_run); a custom
  folder's train -> val and train + val -> test (train -> val with data.evaluate_on=val)."""
  if phase not in ("final", "search"):
    raise ValueError(f"phase={phase!r} must be 'final' or 'search'.")
  if task.group == MANY_SHOT:  # PETL_Vision's trainval_combined -> test, trainval_split.
    from vpt_jax.data import many_shot
    return many_shot.phase_subsets(task, phase, split)
  if task.group in (FGVC, IMAGENET):  # PETL_Vision's final run also trains on train alone.
    return ("train", "test") if phase == "final" else ("train", "val")
  if task.group == CUSTOM:  # evaluate_on="val": a folder without test data, scored on val.
    final = ("train", "val") if task.splits.evaluate_on == "val" else ("trainval", "test")
    return final if phase == "final" else ("train", "val")
  return ("train800val200", "test") if phase == "final" else ("train800", "val200")


# ---------------------------------------------------------------------------------------------
# Named subsets: VTAB-1k's four, data-scale sets and k-shot sets.

_SCALE = re.compile(r"scale(\d+)_(train|val|trainval)")
_SHOT = re.compile(r"(\d+)shot_(?:(train800|val200|train800val200)_)?seed(\d+)")
SUBSETS = ("train800", "val200", "train800val200", "test", "train_full", "val_full",
           "scale<N>_{train,val,trainval}", "<k>shot[_{train800,val200,train800val200}]_seed<s>")


def parse_kshot(subset: str) -> tuple[int, str, int] | None:
  """(k, source subset, seed) of a k-shot subset name, else None: "1shot_val200_seed0" is one
  example per class of val200; "1shot_seed0" takes them from train800."""
  match = _SHOT.fullmatch(subset)
  if not match:
    return None
  return int(match.group(1)), match.group(2) or "train800", int(match.group(3))


def split_for(task: Task, subset: str, split_sizes: dict[str, int] | None = None) -> str:
  """The TFDS split string of a named subset.

  Data-scale subsets `scale<N>_train` / `_val` / `_trainval` hold N / N/4 / 5N/4 examples (train:val
  = 4:1, so scale800 is VTAB-1k), taken from the front of the train and validation regions; they
  need the real `split_sizes` to check that the dataset has that many.
  """
  if task.group == MANY_SHOT:
    from vpt_jax.data import many_shot
    return many_shot.tfds_split(task, subset, split_sizes)
  if subset == "train800":
    return task.train.take(800)
  if subset == "val200":
    return task.val.take(200)
  if subset == "train800val200":
    return f"{task.train.take(800)}+{task.val.take(200)}"
  if subset == "test":
    return task.test
  if subset in ("train_full", "val_full"):  # A whole region (pre-training the demo backbone).
    region = task.train if subset == "train_full" else task.val
    if split_sizes is None:
      raise ValueError(f"Subset {subset} needs the dataset's split sizes: prepare it first.")
    return region.take(region.size(split_sizes))
  if match := _SCALE.fullmatch(subset):
    size, part = int(match.group(1)), match.group(2)
    if size % 4:
      raise ValueError(f"Data-scale size {size} must be a multiple of 4 (train:val = 4:1).")
    n_train, n_val = size, size // 4
    if split_sizes is None:
      raise ValueError("Data-scale subsets need the dataset's split sizes: prepare it first.")
    room_train, room_val = task.train.size(split_sizes), task.val.size(split_sizes)
    if n_train > room_train or n_val > room_val:
      largest = 4 * min(room_train // 4, room_val)
      raise InfeasibleSubsetError(
          f"{task.name} cannot hold data-scale size {size} ({n_train} train + {n_val} val): its "
          f"train region has {room_train} and its validation region {room_val} examples; the "
          f"largest possible size is {largest}.")
    train, val = task.train.take(n_train), task.val.take(n_val)
    return {"train": train, "val": val, "trainval": f"{train}+{val}"}[part]
  raise ValueError(f"Unknown subset {subset!r}; use one of {', '.join(SUBSETS)}.")
