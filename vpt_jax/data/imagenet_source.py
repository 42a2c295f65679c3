"""The few-shot ImageNet data source (data.source=imagenet): OSU-MLB/PETL_Vision's list files.

PETL_Vision's "fs-imagenet" (data/dataset/few_shot.py) trains on
data/annotations/imagenet/train_shot_100_seed_1992 (100 images a class), validates on
val_size_10_seed_1992 (10 a class, also from ImageNet's train set) and tests on val_meta.list
(ImageNet's 50,000 validation images); its shifted sets are data/annotations/{imagenet-v2,
imagenet-s,imagenet-a,imagenet-r}/val_meta.list. Each line is "relative/path label" (split at
the last space: ImageNet-A's names hold spaces), the path relative to its --data_path. Here that
folder is data.data_dir, and the lists are read from <data_dir>/annotations/<folder>/ (its
data/annotations/ copied or linked there). ImageNet-A's and -R's labels are positions in their
200 classes (Task.class_subset; the model's 1000 outputs are restricted to those in evaluation).

Images are decoded and resized by `folder_source` (PETL_Vision's evaluation transform is
data.resize=squash_bicubic: torchvision Resize((256, 256), bicubic) on the PIL image, then the
centre 224 crop on the device). Every list defect is one line naming the file and line.
"""

import os

from vpt_jax.data import folder_source, lists, pipeline
from vpt_jax.data import tasks as tasks_lib


def entries(task: tasks_lib.Task, subset: str, data_dir: str | None) -> list[lists.Entry]:
  folder, root = lists.imagenet_dirs(task, data_dir)
  names = lists.list_files(task, lists.imagenet_formats(task), subset)
  for name in names:
    if not os.path.exists(os.path.join(folder, name)):
      raise pipeline.DataNotPreparedError(
          f"Task {task.name}: {os.path.join(folder, name)} does not exist (copy PETL_Vision's "
          f"data/annotations/{task.folder}/ to {folder}, with the images under {root}).")
  return [entry for name in names
          for entry in lists.read_txt(os.path.join(folder, name), root, task.num_classes)]


READER = folder_source.ListReader(entries, lists.imagenet_formats, lists.imagenet_version)
prepare, version, examples, batches = READER.prepare, READER.version, READER.examples, READER.batches
check, decode_all = READER.check, READER.decode_all
