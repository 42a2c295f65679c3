"""A researcher's own image folder (task=folder:<path>): its layout, its splits and classes, and
the checks that refuse bad data before anything trains. numpy, PIL and TensorFlow free.

Layouts, recognised in this order:
  lists          train.txt, val.txt, test.txt: "relative/path label" lines, labels 0..N-1, and
                 classes.txt (one number, or one class name a line in label order; else the
                 largest label + 1 classes).
  json           train.json, val.json, test.json: {"relative/path": class id} (KMnP/vpt's FGVC
                 files), any number of classes: labels are the positions of train.json's sorted
                 ids, class names those ids when they are strings (else classes.txt's).
  class_folders  <root>/train/<class>/<image>, optional val/ and test/ alike (torchvision's
                 ImageFolder): class names are train/'s sorted folder names, labels their indices.
  tree           <root>/<class>/<image>: one tree, carved into train, val and test.

Missing splits (Task.splits: config.data.val_fraction, test_fraction, split_seed, evaluate_on):
a missing val split is carved from train; a tree is carved into test, val and train; a missing
test split is an error unless evaluate_on="val". Carving is stratified and seeded: each class's
images, sorted by path, are shuffled by random.Random("<seed>:<label>"); the first
round(n x test_fraction) go to test, the next round(n x val_fraction) to val (at least one each
while the class keeps one training image), the rest stay in train, in their original order. The
resolved splits are what the array cache's version hashes, with each image's size and mtime.

Non-image files: in the folder layouts a file whose extension is not an image's is skipped and
counted in one notice (`check`); hidden files (.DS_Store) are skipped silently. A list or JSON
file naming one is an error: a list is the user's own statement of what the images are.
Refused with one line naming the file: an empty class folder, an image outside the folder
(../x.jpg, an absolute path), a class or label in val or test that train lacks, a class (of
classes.txt or a label gap) without training images, the same image in two splits.
"""

import dataclasses
import hashlib
import os
import random

from vpt_jax.data import lists
from vpt_jax.data import tasks as tasks_lib

LISTS, JSON, CLASS_FOLDERS, TREE = "lists", "json", "class_folders", "tree"
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                    ".webp")
EXPECTED = ("expected train.txt/val.txt/test.txt ('relative/path label' lines, e.g. "
            "'cats/001.jpg 0'), train.json/val.json/test.json ({\"relative/path\": class id}), "
            "train/<class>/<image> (optional val/ and test/ alike) or <class>/<image>")


@dataclasses.dataclass(frozen=True)
class Splits:
  """A folder's resolved splits: the entries of each split it has, which were carved, and the
  non-image files the walk skipped."""
  entries: dict[str, list[lists.Entry]]
  carved: tuple[str, ...] = ()
  skipped: tuple[str, ...] = ()


def _visible(names) -> list[str]:
  return sorted(name for name in names if not name.startswith("."))


def _subfolders(folder: str) -> list[str]:
  return [name for name in _visible(os.listdir(folder)) if os.path.isdir(os.path.join(folder, name))]


def is_image(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def detect(root: str) -> str:
  """The layout of a folder, or a one-line error naming the layouts it may have."""
  if any(os.path.exists(os.path.join(root, f"{split}.txt")) for split in SPLITS):
    return LISTS
  if any(os.path.exists(os.path.join(root, f"{split}.json")) for split in SPLITS):
    return JSON
  split_folders = [split for split in SPLITS if os.path.isdir(os.path.join(root, split))]
  if split_folders:
    if "train" not in split_folders:
      raise lists.BadDataError(f"task=folder:{root} has {'/, '.join(split_folders)}/ but no train/:"
                               f" {EXPECTED}.")
    return CLASS_FOLDERS
  if _subfolders(root):
    return TREE
  raise lists.BadDataError(f"task=folder:{root}: no dataset layout recognised; {EXPECTED}.")


def _read_classes_file(root: str) -> tuple[int, tuple[str, ...] | None] | None:
  """classes.txt's (count, names), None when the folder has none."""
  path = os.path.join(root, "classes.txt")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  if len(lines) == 1 and lines[0].isdigit():
    return int(lines[0]), None
  return len(lines), tuple(lines)


def classes(root: str, layout: str) -> tuple[int, tuple[str, ...] | None]:
  """(class count, class names or None) of a folder, read without walking its images."""
  if layout in (CLASS_FOLDERS, TREE):
    names = _subfolders(os.path.join(root, "train") if layout == CLASS_FOLDERS else root)
    if not names:
      raise lists.BadDataError(f"{os.path.join(root, 'train')}: no class folders; {EXPECTED}.")
    return len(names), tuple(names)
  from_file = _read_classes_file(root)
  if layout == JSON:
    ids = lists.class_ids(_json_train(root))
    if from_file and from_file[0] != len(ids):
      raise lists.BadDataError(f"{os.path.join(root, 'classes.txt')}: {from_file[0]} classes, but "
                               f"train.json has {len(ids)} class ids.")
    names = tuple(ids) if all(isinstance(i, str) for i in ids) else None
    return len(ids), (from_file[1] if from_file and from_file[1] else names)
  if from_file:
    return from_file
  labels = [entry.label for split in SPLITS if os.path.exists(os.path.join(root, f"{split}.txt"))
            for entry in lists.read_txt(os.path.join(root, f"{split}.txt"), root, None)]
  return max(labels) + 1, None


def _json_train(root: str) -> str:
  path = os.path.join(root, "train.json")
  if not os.path.exists(path):
    raise lists.BadDataError(f"task=folder:{root} has no train.json (val and test are carved from "
                             "or checked against train).")
  return path


def _inside(root: str, entry: lists.Entry) -> None:
  """Listed images stay inside the folder (no ../ or absolute paths) and are images."""
  if not os.path.normpath(entry.path).startswith(os.path.join(root, "")):
    raise lists.BadDataError(f"{entry.where}: {entry.path} is outside the folder {root}: list "
                             "paths relative to it.")
  if not is_image(entry.path):
    raise lists.BadDataError(f"{entry.where}: {entry.path} is not an image (its extension is none"
                             f" of {' '.join(IMAGE_EXTENSIONS)}).")


def _read_lists(task: tasks_lib.Task, extension: str) -> dict[str, list[lists.Entry]]:
  root = task.folder
  if not os.path.exists(os.path.join(root, f"train.{extension}")):
    raise lists.BadDataError(f"task=folder:{root} has no train.{extension} (val and test are "
                             "carved from or checked against train).")
  ids = lists.class_ids(os.path.join(root, "train.json")) if extension == "json" else None
  out = {}
  for split in SPLITS:
    path = os.path.join(root, f"{split}.{extension}")
    if os.path.exists(path):
      out[split] = (lists.read_json(path, root, ids, task.num_classes) if ids is not None
                    else lists.read_txt(path, root, task.num_classes))
      for entry in out[split]:
        _inside(root, entry)
  return out


def _walk_class(folder: str, where: str, skipped: list[str]) -> list[str]:
  """The images under a class folder (recursively, sorted); other files go to `skipped`."""
  images = []
  for directory, subdirs, names in os.walk(folder, followlinks=True):
    subdirs[:] = _visible(subdirs)
    for name in _visible(names):
      path = os.path.join(directory, name)
      (images if is_image(path) else skipped).append(path)
  if not images:
    raise lists.BadDataError(f"{where}: the class folder {folder} holds no image (extensions "
                             f"{' '.join(IMAGE_EXTENSIONS)}): add images or remove it.")
  return sorted(images)


def _walk_split(folder: str, class_names: tuple[str, ...], skipped: list[str],
                train: bool) -> list[lists.Entry]:
  """Entries of <folder>/<class>/...: labels are positions in `class_names` (train's folders)."""
  labels = {name: i for i, name in enumerate(class_names)}
  out = []
  for name in _visible(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
      if is_image(path):
        raise lists.BadDataError(f"{path}: an image outside any class folder; move it into "
                                 f"{folder}/<class>/.")
      skipped.append(path)
      continue
    if name not in labels:
      raise lists.BadDataError(f"{path}: class {name!r} is not among the training classes (no "
                               f"train/{name}/); a class needs training images.")
    where = f"class folder {path}" if train else f"class folder {path} ({os.path.basename(folder)})"
    out += [lists.Entry(image, labels[name], where) for image in _walk_class(path, where, skipped)]
  return out


def _walk(task: tasks_lib.Task) -> tuple[dict[str, list[lists.Entry]], list[str]]:
  root, skipped = task.folder, []
  if task.layout == TREE:
    return {"train": _walk_split(root, task.class_names, skipped, True)}, skipped
  out = {}
  for split in SPLITS:
    folder = os.path.join(root, split)
    if os.path.isdir(folder):
      out[split] = _walk_split(folder, task.class_names, skipped, split == "train")
      if not out[split]:
        raise lists.BadDataError(f"{folder}: no class folder with images; {EXPECTED}.")
  return out, skipped


def _counts(n: int, fractions: tuple[float, ...]) -> list[int]:
  """Images of a class of `n` that go to each carved split: round(n x fraction), at least one
  where the fraction is positive, while one image stays in train (the later splits give first)."""
  counts = [max(1, int(n * f + 0.5)) if f > 0 else 0 for f in fractions]
  for i in reversed(range(len(counts))):
    counts[i] -= min(counts[i], max(0, sum(counts) - (n - 1)))
  return counts


def carve(entries: list[lists.Entry], fractions: dict[str, float],
          seed: int) -> dict[str, list[lists.Entry]]:
  """`entries` split by class into the splits of `fractions` (in its order) and "train"."""
  chosen = {}
  by_class = {}
  for entry in entries:
    by_class.setdefault(entry.label, []).append(entry.path)
  for label, paths in sorted(by_class.items()):
    order = sorted(paths)
    random.Random(f"{seed}:{label}").shuffle(order)
    start = 0
    for split, count in zip(fractions, _counts(len(order), tuple(fractions.values()))):
      chosen.update(dict.fromkeys(order[start:start + count], split))
      start += count
  out = {split: [] for split in ("train", *fractions)}
  for entry in entries:
    out[chosen.get(entry.path, "train")].append(entry)
  return out


def read(task: tasks_lib.Task) -> Splits:
  """A custom folder's splits: read, and carved where one is missing."""
  if task.layout in (LISTS, JSON):
    found, skipped = _read_lists(task, "txt" if task.layout == LISTS else "json"), []
  else:
    found, skipped = _walk(task)
  fractions = {}
  if task.layout == TREE and task.splits.test_fraction > 0:
    fractions["test"] = task.splits.test_fraction
  if "val" not in found:
    fractions["val"] = task.splits.val_fraction
  if not fractions:
    return Splits(found, (), tuple(skipped))
  carved = carve(found["train"], fractions, task.splits.seed)
  for split in fractions:
    if not carved[split]:
      raise lists.BadDataError(
          f"task=folder:{task.folder}: carving {split} (data.{split}_fraction="
          f"{fractions[split]}) from {len(found['train'])} training images leaves it empty: raise "
          "the fraction or add images.")
  return Splits({**found, **carved}, tuple(fractions), tuple(skipped))


def _missing_test(task: tasks_lib.Task) -> str:
  what = {LISTS: "no test.txt", JSON: "no test.json", CLASS_FOLDERS: "no test/ folder",
          TREE: "data.test_fraction=0"}[task.layout]
  return (f"task=folder:{task.folder} has no test split ({what}): add one, or set "
          "--config.data.evaluate_on=val to train on train and evaluate on val.")


def subsets(task: tasks_lib.Task) -> tuple[str, ...]:
  """The splits the folder has (val always: carved where missing; test where it has one)."""
  has_test = (task.splits.test_fraction > 0 if task.layout == TREE else
              os.path.exists(os.path.join(task.folder, "test" + {LISTS: ".txt", JSON: ".json"}.get(
                  task.layout, ""))))
  return ("train", "val", "test") if has_test else ("train", "val")


def entries(task: tasks_lib.Task, subset: str) -> list[lists.Entry]:
  """One subset's images and labels: train, val, test, or trainval (train then val)."""
  if subset not in ("train", "val", "test", "trainval"):
    raise ValueError(f"Subset {subset!r} of {task.name} is not in its folder, which holds train, "
                     "val, test and trainval.")
  found = read(task).entries
  if subset == "test" and "test" not in found:
    raise lists.BadDataError(_missing_test(task))
  return found["train"] + found["val"] if subset == "trainval" else found[subset]


def version(task: tasks_lib.Task) -> str:
  """"folder_<hash>" of the resolved splits: each image's path, label, split, size and mtime
  (a stat, no reading), so edited lists, other carving settings or a rewritten image are a new
  version."""
  digest = hashlib.sha256(task.layout.encode())
  for split, items in sorted(read(task).entries.items()):
    for entry in items:
      digest.update(f"{split}\0{entry.label}\0".encode())
      lists.stat_into(digest, entry.path)
  return f"folder_{digest.hexdigest()[:16]}"


def _check_classes(task: tasks_lib.Task, found: dict[str, list[lists.Entry]]) -> None:
  """Every val and test label is a training class, and every class has training images."""
  trained = {entry.label for entry in found["train"]}
  for split in ("val", "test"):
    for entry in found.get(split, ()):
      if entry.label not in trained:
        raise lists.BadDataError(f"{entry.where}: label {entry.label} of {entry.path} has no "
                                 f"training image ({split} data of a class the model never learns).")
  for label in range(task.num_classes):
    if label not in trained:  # A name of classes.txt, or a gap in the labels of train.txt.
      named = f" ({task.class_names[label]})" if task.class_names else ""
      listed = "classes.txt" if _read_classes_file(task.folder) else "train.txt"
      raise lists.BadDataError(f"{os.path.join(task.folder, listed)}: class {label}{named} has no "
                               "training image: add images to train or remove the class.")


def _check_disjoint(found: dict[str, list[lists.Entry]]) -> None:
  first = {}
  for split in SPLITS:
    for entry in found.get(split, ()):
      path = os.path.normpath(entry.path)
      if path in first and first[path][0] != split:
        raise lists.BadDataError(f"{entry.where}: {entry.path} is also in {first[path][0]} "
                                 f"({first[path][1]}): a split must not hold another's images.")
      first.setdefault(path, (split, entry.where))


def check(task: tasks_lib.Task, subsets_used=(), log=print) -> None:
  """The checks across a folder's splits (the subsets a run uses must exist: a missing test
  split is an error here); one notice line counts the skipped non-image files."""
  resolved = read(task)
  if "test" in subsets_used and "test" not in resolved.entries:
    raise lists.BadDataError(_missing_test(task))
  _check_disjoint(resolved.entries)
  _check_classes(task, resolved.entries)
  log(describe(task, resolved))
  if resolved.skipped:
    log(f"task=folder:{task.folder}: skipped {len(resolved.skipped)} non-image file(s) among the "
        f"images (first: {resolved.skipped[0]}).")


_LAYOUT_NAMES = {LISTS: "list files", JSON: "JSON lists", CLASS_FOLDERS: "class subfolders",
                 TREE: "one class tree"}


def describe(task: tasks_lib.Task, resolved: Splits) -> str:
  """One line: the folder's layout, classes and split sizes, and what was carved with which
  settings, e.g. "task=folder:/data/pets: one class tree, 2 classes; train 60, val 20, test 20
  (test and val carved: data.test_fraction=0.2, val_fraction=0.2, split_seed=0)"."""
  sizes = ", ".join(f"{split} {len(resolved.entries[split])}" for split in SPLITS
                    if split in resolved.entries)
  line = (f"task=folder:{task.folder}: {_LAYOUT_NAMES[task.layout]}, {task.num_classes} classes; "
          f"{sizes}")
  if resolved.carved:
    fractions = ", ".join(f"{split}_fraction={getattr(task.splits, split + '_fraction')}"
                          for split in resolved.carved)
    line += (f" ({' and '.join(resolved.carved)} carved: data.{fractions}, "
             f"split_seed={task.splits.seed})")
  return line + "."


def write_split_lists(task: tasks_lib.Task, data_dir: str | None, directory: str) -> list[str]:
  """Writes a custom folder's resolved splits into `directory` as train.txt, val.txt and test.txt
  ("relative/path label" lines, relative to the task's folder) and classes.txt (the class names,
  else the count), so a run's carved splits can be read and reproduced; returns the files
  written, none for other tasks (their lists are already files). `data_dir` is unused by custom
  folders, whose path is their own."""
  del data_dir
  if task.group != tasks_lib.CUSTOM:
    return []
  os.makedirs(directory, exist_ok=True)
  written = []
  for split, items in read(task).entries.items():
    written.append(os.path.join(directory, f"{split}.txt"))
    with open(written[-1], "w") as f:
      f.writelines(f"{os.path.relpath(e.path, task.folder)} {e.label}\n" for e in items)
  written.append(os.path.join(directory, "classes.txt"))
  with open(written[-1], "w") as f:
    f.write("".join(f"{name}\n" for name in task.class_names) if task.class_names
            else f"{task.num_classes}\n")
  return written
