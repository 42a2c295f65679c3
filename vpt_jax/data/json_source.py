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


READER = folder_source.ListReader(entries, lambda task: ("train", "val", "test"), lists.json_version)
prepare, version, examples, batches = READER.prepare, READER.version, READER.examples, READER.batches
check, decode_all = READER.check, READER.decode_all
