"""Mai et al.'s many-shot subsets, read from OSU-MLB/PETL_Vision's split files (no code there
draws them, and no seed: they can be read, not regenerated).

PETL_Vision's data/annotations/ (config.data.split_dir points at a copy of it):
  cifar100/cifar100-<size>-trainval_{combined,split_train,split_val}.npy
      int64 indices into CIFAR-100's training set in torchvision's order (data/dataset/
      cifar100.py: Subset(CIFAR100(train=True), indices)); cifar100-500's split files hold five
      rows, one search split each; cifar100-full's combined set is the whole training set
      (the code passes no indices).
  resisc/resisc-<size>_{train,val,combine}.txt, resisc-{225,450}_{train,val}_<i>.txt, train.txt,
  test.txt
      "relative/path label" lines under the NWPU-RESISC45 image folder (data/dataset/resisc.py).

Subset names of a many-shot task: "combined" (PETL_Vision's trainval_combined, the final runs'
training set), "split_train" and "split_val" (its trainval_split, the search), with "_<i>" for
the five search splits of cifar100-500, resisc45-225 and resisc45-450, and "test". The index
files count examples of one parent set, "train_all": CIFAR-100's training set in torchvision's
order (from TFDS, put in that order by its "id" feature, or from a folder whose train.txt lists
it in that order) or RESISC45's train.txt; a subset is that parent's cached arrays, gathered.
CLEVR-distance has no split files: its subsets are VTAB's regions of TFDS's clevr.
"""

import os
import re

import numpy as np

from vpt_jax.data import lists
from vpt_jax.data import tasks as tasks_lib

PARENT = "train_all"
FIVE_SPLITS = {("cifar100", "500"), ("resisc45", "225"), ("resisc45", "450")}
SPLITS = 5
CIFAR_TRAIN = 50000
_SUBSET = re.compile(r"(combined|split_train|split_val)(?:_(\d+))?")
WHERE = ("a copy of OSU-MLB/PETL_Vision's data/annotations folder (git clone "
         "https://github.com/OSU-MLB/PETL_Vision; pass --config.data.split_dir=PETL_Vision/data/"
         "annotations)")
# PETL_Vision's name of each dataset in its split files' names and folders.
_PETL = {"cifar100": ("cifar100", "cifar100"), "resisc45": ("resisc", "resisc")}


def phase_subsets(task: tasks_lib.Task, phase: str, split: int | None) -> tuple[str, str]:
  """(train, eval) subsets: final trains on the combined set and scores the test set; search
  trains on split_train and scores split_val (search split `split` of the sizes that have five,
  0 by default; PETL_Vision trains every grid point on all five and averages, see docs)."""
  five = task.many_shot in FIVE_SPLITS
  if split is not None and not (0 <= split < (SPLITS if five else 1)):
    raise ValueError(f"data.split={split} must be " + (f"0..{SPLITS - 1} (the five search splits "
                     f"of {task.name})" if five else f"0 or unset: {task.name} has one search "
                     "split (cifar100-500, resisc45-225 and resisc45-450 have five)") + ".")
  if phase == "final":
    return "combined", "test"
  suffix = f"_{split or 0}" if five else ""
  return f"split_train{suffix}", f"split_val{suffix}"


def parse(subset: str) -> tuple[str, int | None] | None:
  """(kind, split) of an index-selected subset name, else None."""
  match = _SUBSET.fullmatch(subset)
  return (match.group(1), None if match.group(2) is None else int(match.group(2))) if match else None


def parent_task(task: tasks_lib.Task) -> tasks_lib.Task:
  """The record whose "train_all" every size of a dataset shares (one array cache, not one per
  size)."""
  import dataclasses
  return dataclasses.replace(task, name=f"{task.many_shot[0]}_many_shot")


def uses_parent(task: tasks_lib.Task, subset: str) -> bool:
  """Whether `subset` is gathered from the parent set by a split file (CLEVR's are TFDS regions)."""
  return task.many_shot is not None and task.many_shot[0] in _PETL and parse(subset) is not None


def split_dir(task: tasks_lib.Task) -> str:
  """The dataset's folder of split files inside config.data.split_dir."""
  if not task.split_dir:
    raise lists.BadDataError(f"Task {task.name} reads PETL_Vision's split files: set "
                             f"config.data.split_dir to {WHERE}.")
  folder = os.path.join(os.path.expanduser(task.split_dir), _PETL[task.many_shot[0]][1])
  if not os.path.isdir(folder):
    raise lists.BadDataError(f"{folder} does not exist: config.data.split_dir must be {WHERE}.")
  return folder


def split_file(task: tasks_lib.Task, subset: str) -> str | None:
  """The split file of an index-selected subset (None: cifar100-full's combined set, which is
  the whole training set)."""
  (dataset, size), (kind, split) = task.many_shot, parse(subset)
  five = task.many_shot in FIVE_SPLITS
  if kind != "combined" and five != (split is not None):
    raise ValueError(f"Subset {subset} of {task.name}: " + (
        f"name one of its five search splits, {kind}_0 .. {kind}_{SPLITS - 1}" if five else
        f"it has one search split, {kind}") + ".")
  folder = split_dir(task)
  if dataset == "cifar100":
    if kind == "combined" and size == "full":
      return None
    return os.path.join(folder, f"cifar100-{size}-trainval_{kind}.npy")
  name = {"combined": "combine", "split_train": "train", "split_val": "val"}[kind]
  return os.path.join(folder, f"resisc-{size}_{name}" + (f"_{split}" if split is not None
                                                         else "") + ".txt")


def _missing(path: str) -> lists.BadDataError:
  return lists.BadDataError(f"{path} does not exist: config.data.split_dir must be {WHERE}.")


def _cifar_indices(path: str, split: int | None, parent_size: int) -> np.ndarray:
  try:
    indices = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise _missing(path) from None
  except ValueError as e:
    raise lists.BadDataError(f"{path}: not a NumPy index array ({e}).") from None
  if indices.ndim == 2 and split is not None:  # cifar100-500: one row per search split.
    if not split < indices.shape[0]:
      raise lists.BadDataError(f"{path}: has {indices.shape[0]} splits, split {split} asked for.")
    indices = indices[split]
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise lists.BadDataError(f"{path}: expected one row of integer indices (per split), got "
                             f"shape {indices.shape} of {indices.dtype}.")
  bad = np.flatnonzero((indices < 0) | (indices >= parent_size))
  if bad.size:
    raise lists.BadDataError(f"{path}: index {int(indices[bad[0]])} at position {int(bad[0])} is "
                             f"out of range [0, {parent_size}) of CIFAR-100's training set.")
  return indices.astype(np.int64)


def _list_indices(path: str, parent: str, parent_labels: np.ndarray) -> np.ndarray:
  """Positions in the parent list (train.txt) of a list's images; their labels must agree."""
  try:
    with open(parent) as f:
      names = [line.strip().rsplit(maxsplit=1)[0] for line in f if line.strip()]
  except FileNotFoundError:
    raise _missing(parent) from None
  position = {name: i for i, name in enumerate(names)}
  try:
    entries = lists.read_txt(path, "", None)
  except FileNotFoundError:
    raise _missing(path) from None
  out = []
  for entry in entries:
    if entry.path not in position:
      raise lists.BadDataError(f"{entry.where}: {entry.path} is not in {parent}.")
    index = position[entry.path]
    if index >= len(parent_labels) or parent_labels[index] != entry.label:
      raise lists.BadDataError(f"{entry.where}: label {entry.label} of {entry.path} is not its "
                               f"label in {parent}.")
    out.append(index)
  return np.asarray(out, np.int64)


def indices(task: tasks_lib.Task, subset: str, parent_labels: np.ndarray) -> np.ndarray:
  """Positions in the parent set ("train_all") of the subset's examples, in the split file's
  order."""
  path = split_file(task, subset)
  if path is None:
    return np.arange(len(parent_labels))
  if task.many_shot[0] == "cifar100":
    return _cifar_indices(path, parse(subset)[1], len(parent_labels))
  return _list_indices(path, os.path.join(split_dir(task), "train.txt"), parent_labels)


def tfds_split(task: tasks_lib.Task, subset: str, split_sizes: dict[str, int] | None) -> str:
  """The TFDS split of a subset that TFDS holds whole: CIFAR-100's training set and test split;
  CLEVR's regions as PETL_Vision reads them (data/dataset/clevr.py, data/vtab_datasets/clevr.py):
  combined = VTAB's trainval (TFDS train), split_train = trainval too (its search trains on
  trainval and validates on val, a part of it), split_val = the last 10% of train, test = TFDS
  validation."""
  if subset == "test":
    return task.test
  if subset == PARENT and task.many_shot[0] == "cifar100":
    return "train"
  if task.many_shot[0] == "clevr_dist" and subset in ("combined", "split_train", "split_val"):
    if subset != "split_val":
      return "train"
    if split_sizes is None:
      raise ValueError(f"Subset {subset} of {task.name} needs the dataset's split sizes.")
    return f"train[{90 * split_sizes['train'] // 100}:]"  # TRAIN_SPLIT_PERCENT = 90.
  raise ValueError(f"Unknown subset {subset!r} of {task.name}; use combined, split_train, "
                   "split_val (with _<i> for five-split sizes) or test.")
