"""The FGVC data source: KMnP/vpt's JSON split files (src/data/datasets/json_dataset.py).

A dataset folder (data.data_dir, or <data_dir>/<task>) holds train.json, val.json, test.json
(and train_<percentage>.json, KMnP/vpt's DATA.PERCENTAGE) mapping image paths, relative to the
task's image directory, to class ids. Labels are the positions of the class ids in train.json's
sorted ids: KMnP/vpt's contiguous ids (it sorts each split's own ids, the same map whenever every
split has every class; a split with a class train.json lacks is an error here, not a silent
relabelling). Images are decoded and resized as `folder_source` does (the FGVC recipe's
short_side: torchvision's Resize(256) and the centre 256 x 256 square).
"""

import os
from typing import Iterator

import numpy as np

from vpt_jax.data import folder_source, lists, pipeline
from vpt_jax.data import tasks as tasks_lib


def entries(task: tasks_lib.Task, subset: str, data_dir: str | None) -> list[lists.Entry]:
  folder = lists.json_dir(task, data_dir)
  names = lists.list_files(task, lists.JSON_FGVC, subset)
  for name in ("train.json",) + names:
    if not os.path.exists(os.path.join(folder, name)):
      raise pipeline.DataNotPreparedError(
          f"Task {task.name}: {os.path.join(folder, name)} does not exist (KMnP/vpt's FGVC "
          "splits, README 'Datasets preperation', in the dataset's folder: set "
          "--config.data.data_dir to it).")
  ids = lists.class_ids(os.path.join(folder, "train.json"))
  images = os.path.join(folder, task.image_dir)
  return [entry for name in names
          for entry in lists.read_json(os.path.join(folder, name), images, ids, task.num_classes)]


def prepare(task: tasks_lib.Task, data_dir: str | None) -> None:
  """Folders are made elsewhere: fails, saying what is missing or wrong in the lists."""
  for subset in ("train", "val", "test"):
    entries(task, subset, data_dir)


def version(task: tasks_lib.Task, data_dir: str | None) -> str:
  """The split files' content hash ("json_<16 hex>")."""
  prepare(task, data_dir)
  return lists.json_version(task, data_dir)


def examples(task: tasks_lib.Task, subset: str, resolution: int, data_dir: str | None,
             resize_method: str, shift: str | None = None) -> Iterator[dict]:
  return folder_source.examples_of(entries, task, subset, resolution, data_dir, resize_method,
                                   shift)


def batches(task: tasks_lib.Task, subset: str, resolution: int, batch_size: int,
            data_dir: str | None, resize_method: str,
            shift: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  return folder_source.batches_of(entries, task, subset, resolution, batch_size, data_dir,
                                  resize_method, shift)
