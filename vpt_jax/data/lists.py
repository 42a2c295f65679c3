"""Split lists of image folders, read and checked without decoding an image (numpy, PIL and
TensorFlow free, so tasks and sources can read them at import-light cost).

Two formats:
  txt   "relative/path label" lines (NOAH's get_vtab1k.py, PETL_Vision's ImageFilelist): VTAB-1k
        folders (train800.txt, val200.txt, train800val200.txt, test.txt) and custom folders
        (train.txt, val.txt, test.txt; their layouts and splits are vpt_jax/data/layouts.py's).
  json  {"relative/path": class_id, ...} (KMnP/vpt src/data/datasets/json_dataset.py): FGVC
        folders (train.json, val.json, test.json, train_<percentage>.json).

Every defect is a `BadDataError` of one line naming the file and line: a malformed line, a label
out of range, an image listed twice, an empty list, a missing image (found when it is decoded).
A version (the array cache's key) hashes the lists and each listed image's size and mtime.
"""

import dataclasses
import glob
import hashlib
import json
import os

from vpt_jax.data import tasks as tasks_lib


class BadDataError(ValueError):
  """A split list or one of its images is wrong; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Entry:
  path: str  # The image, absolute.
  label: int  # Contiguous, in [0, classes).
  where: str  # "list file, line N", for errors about the image.


# The lists of each subset, by format; "trainval" is train followed by val.
TXT_VTAB = {"train800": ("train800.txt",), "val200": ("val200.txt",),
            "train800val200": ("train800val200.txt",), "test": ("test.txt",)}
# Few-shot ImageNet and its shifted test sets: OSU-MLB/PETL_Vision's list files
# (data/dataset/few_shot.py, data/annotations/<folder>/), "relative/path label" lines whose paths
# start at its --data_path; -A's and -R's labels are positions in their 200 classes.
TXT_IMAGENET = {"train": ("train_shot_100_seed_1992",), "val": ("val_size_10_seed_1992",),
                "test": ("val_meta.list",)}
TXT_IMAGENET_SHIFT = {"test": ("val_meta.list",)}
IMAGENET_ANNOTATIONS = "annotations"  # <data_dir>/annotations/<folder>/<list>.
# Many-shot: the parent training set the split files index, and the test set (vpt_jax/data/
# many_shot.py); RESISC45's are PETL_Vision's lists, CIFAR-100's a folder in torchvision's order.
TXT_MANY_SHOT = {"train_all": ("train.txt",), "test": ("test.txt",)}
JSON_FGVC = {"train": ("train.json",), "val": ("val.json",), "test": ("test.json",),
             "trainval": ("train.json", "val.json")}


def task_dir(task: tasks_lib.Task, data_dir: str | None, first_list: str) -> str:
  """The folder of a task's lists: a custom task's own path; else `data_dir` itself when it
  holds the lists (one dataset's folder, as KMnP/vpt's DATA.DATAPATH), or its subfolder named as
  the task's folder (NOAH's vtab-1k/<name>/ layout)."""
  if task.folder and os.path.isabs(task.folder):
    return task.folder
  if data_dir is None:
    raise BadDataError(f"Task {task.name} is read from an image folder: set "
                       "--config.data.data_dir to the folder that holds it.")
  if os.path.exists(os.path.join(data_dir, first_list)):
    return data_dir
  return os.path.join(data_dir, task.folder or task.name)


def list_files(task: tasks_lib.Task, formats: dict, subset: str) -> tuple[str, ...]:
  """The list files of `subset` (names inside the task's folder)."""
  if subset in formats:
    return formats[subset]
  if formats is JSON_FGVC and subset.startswith("train_"):  # KMnP/vpt DATA.PERCENTAGE < 1.
    return (f"{subset}.json",)
  raise ValueError(f"Subset {subset!r} of {task.name} is not in its image folder, which holds "
                   f"{', '.join(formats)}" + (" and train_<percentage>" if formats is JSON_FGVC
                                              else "") + ".")


def _line_of(text: str, position: int) -> int:
  return text.count("\n", 0, position) + 1


def read_txt(path: str, root: str, classes: int | None) -> list[Entry]:
  """Entries of a "relative/path label" list; `classes` None: labels are only checked >= 0."""
  entries, seen = [], {}
  with open(path) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    parts = line.strip().rsplit(maxsplit=1)
    where = f"{path}, line {number}"
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
      raise BadDataError(f"{where}: expected 'relative/path label', got {line.strip()!r}.")
    name, label = parts[0], int(parts[1])
    _check_entry(name, label, classes, where, seen)
    entries.append(Entry(os.path.join(root, name), label, where))
  if not entries:
    raise BadDataError(f"{path}, line 1: the list is empty.")
  return entries


def _check_entry(name: str, label: int, classes: int | None, where: str, seen: dict) -> None:
  if label < 0 or (classes is not None and label >= classes):
    raise BadDataError(f"{where}: label {label} of {name} is out of range [0, "
                       f"{classes if classes is not None else 'classes'}).")
  if name in seen:
    raise BadDataError(f"{where}: {name} is listed twice (first at line {seen[name]}).")
  seen[name] = where.rsplit(" ", 1)[-1]


def read_json_pairs(path: str) -> tuple[list[tuple[str, object, int]], str]:
  """[(image, class id, line)] of a KMnP/vpt split file, in its order, and its text."""
  with open(path) as f:
    text = f.read()
  try:
    pairs = json.loads(text, object_pairs_hook=lambda pairs: pairs)
  except json.JSONDecodeError as e:
    raise BadDataError(f"{path}, line {e.lineno}: not JSON ({e.msg}).") from None
  if not isinstance(pairs, list) or not all(isinstance(p, tuple) for p in pairs):
    raise BadDataError(f"{path}, line 1: expected an object mapping image paths to class ids.")
  out, position = [], 0
  for name, class_id in pairs:
    key = json.dumps(name)
    found = text.find(key, position)  # Keys appear in order: search after the last one.
    line = _line_of(text, found if found >= 0 else position)
    position = found + len(key) if found >= 0 else position
    out.append((name, class_id, line))
  if not out:
    raise BadDataError(f"{path}, line 1: the list is empty.")
  return out, text


def class_ids(path: str) -> list:
  """The sorted class ids of a split file: KMnP/vpt's contiguous ids are their positions."""
  pairs, _ = read_json_pairs(path)
  try:
    return sorted({class_id for _, class_id, _ in pairs})
  except TypeError:
    raise BadDataError(f"{path}, line 1: class ids of different types cannot be sorted.") from None


def read_json(path: str, root: str, ids: list, classes: int) -> list[Entry]:
  """Entries of a split file, labelled by the position of their class id in `ids` (train.json's
  sorted ids: the VPT code's per-split contiguous ids whenever every split has every class)."""
  if len(ids) != classes:
    raise BadDataError(f"{path}, line 1: train.json has {len(ids)} classes, the task {classes}.")
  contiguous = {class_id: i for i, class_id in enumerate(ids)}
  entries, seen = [], {}
  pairs, _ = read_json_pairs(path)
  for name, class_id, line in pairs:
    where = f"{path}, line {line}"
    if class_id not in contiguous:
      raise BadDataError(f"{where}: class id {class_id!r} of {name} is not one of train.json's "
                         f"{classes} (its label would be out of range).")
    _check_entry(name, contiguous[class_id], classes, where, seen)
    entries.append(Entry(os.path.join(root, name), contiguous[class_id], where))
  return entries


def stat_into(digest, path: str) -> None:
  """Adds an image's path, size and mtime (nanoseconds) to `digest`: a stat, no reading; a
  missing image hashes as such (it is reported when decoded)."""
  try:
    stat = os.stat(path)
    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  except OSError:
    digest.update(f"{path}\0missing\n".encode())


def listed_paths(path: str, root: str) -> list[str]:
  """The images a list file names (absolute), read leniently: a malformed list is reported by
  its reader, the version only needs what it names."""
  if path.endswith(".json"):
    try:
      return [os.path.join(root, str(name)) for name, _, _ in read_json_pairs(path)[0]]
    except BadDataError:
      return []
  with open(path) as f:
    return [os.path.join(root, line.strip().rsplit(maxsplit=1)[0]) for line in f if line.strip()]


def identity(directory: str, names, root: str | None = None) -> str:
  """A hash of the list files `names` in `directory` that exist and of each image they name
  (its size and mtime, under `root`; None: the lists alone): the array cache's version, so an
  edited list or a rewritten image is a new version."""
  digest = hashlib.sha256()
  for name in sorted(set(names)):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      digest.update(name.encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read())
      for image in listed_paths(path, root) if root is not None else ():
        stat_into(digest, image)
  return digest.hexdigest()[:16]


def txt_formats(task: tasks_lib.Task) -> dict:
  if task.group == tasks_lib.MANY_SHOT:
    return TXT_MANY_SHOT
  return TXT_VTAB


def txt_dir(task: tasks_lib.Task, data_dir: str | None) -> str:
  """The folder of the task's lists: for RESISC45's many-shot sets PETL_Vision's resisc/ split
  folder (its paths start at the image folder, data.data_dir); else the task's own folder."""
  if task.many_shot and task.many_shot[0] == "resisc45":
    from vpt_jax.data import many_shot
    return many_shot.split_dir(task)
  return task_dir(task, data_dir, next(iter(txt_formats(task).values()))[0])


def image_root(task: tasks_lib.Task, data_dir: str | None) -> str:
  """Where the lists' relative paths start."""
  if task.many_shot and task.many_shot[0] == "resisc45":
    if data_dir is None:
      raise BadDataError(f"Task {task.name}: set --config.data.data_dir to the NWPU-RESISC45 "
                         "image folder (its class folders) that PETL_Vision's lists name.")
    return data_dir
  return txt_dir(task, data_dir)


def json_dir(task: tasks_lib.Task, data_dir: str | None) -> str:
  return task_dir(task, data_dir, "train.json")


def json_names(folder: str) -> set[str]:
  return {"train.json", "val.json", "test.json"} | {
      os.path.basename(p) for p in glob.glob(os.path.join(folder, "train_*.json"))}


def _version(prefix: str, folder: str, names: set[str], needed, root: str) -> str | None:
  if not all(os.path.exists(os.path.join(folder, name)) for name in needed):
    return None
  return f"{prefix}_{identity(folder, names, root)}"


def txt_version(task: tasks_lib.Task, data_dir: str | None) -> str | None:
  """"folder_<hash of the lists and their images' sizes and mtimes>", or None when a list is
  missing (nothing is prepared). A custom folder's is its resolved splits' (layouts.version)."""
  if task.group == tasks_lib.CUSTOM:
    from vpt_jax.data import layouts  # It reads lists; lists need it only here.
    try:
      return layouts.version(task)
    except BadDataError:  # Reported, in one line, by the reader's prepare.
      return None
  try:
    folder, root = txt_dir(task, data_dir), image_root(task, data_dir)
  except BadDataError:
    return None
  names = {name for names in txt_formats(task).values() for name in names}
  return _version("folder", folder, names, names, root)


def json_version(task: tasks_lib.Task, data_dir: str | None) -> str | None:
  """"json_<hash of the split files and their images' sizes and mtimes>", or None when train,
  val or test is missing."""
  try:
    folder = json_dir(task, data_dir)
  except BadDataError:
    return None
  return _version("json", folder, json_names(folder), ("train.json", "val.json", "test.json"),
                  os.path.join(folder, task.image_dir))


def imagenet_formats(task: tasks_lib.Task) -> dict:
  return TXT_IMAGENET if task.name == "imagenet" else TXT_IMAGENET_SHIFT


def imagenet_dirs(task: tasks_lib.Task, data_dir: str | None) -> tuple[str, str]:
  """(the folder of the task's list files, the folder their image paths start at): PETL_Vision's
  data/annotations/<folder>/ placed at <data_dir>/annotations/<folder>/, images under <data_dir>
  (its --data_path)."""
  if data_dir is None:
    raise BadDataError(f"Task {task.name} is read from PETL_Vision's list files: set "
                       "--config.data.data_dir to the folder that holds annotations/ and the "
                       "images (its --data_path).")
  return os.path.join(data_dir, IMAGENET_ANNOTATIONS, task.folder), data_dir


def imagenet_version(task: tasks_lib.Task, data_dir: str | None) -> str | None:
  """"imagenet_<hash of the list files and their images' sizes and mtimes>", or None when one
  is missing."""
  try:
    folder, root = imagenet_dirs(task, data_dir)
  except BadDataError:
    return None
  names = {name for names in imagenet_formats(task).values() for name in names}
  return _version("imagenet", folder, names, names, root)
