"""VTAB-1k image folders against the TFDS splits they claim to hold (prepare_data.py --check).

Shared folders are written from TFDS by scripts (NOAH's get_vtab1k.py saves JPEGs) and passed
around; they can lack classes (task_adaptation issue 21: SUN397), hold other examples or other
labels. Each subset is read from both in order: counts, labels, classes present, and the images
after decoding and resizing as a run would see them.
"""

import itertools

import numpy as np

from vpt_jax.data import folder_source, lists, tfds_source
from vpt_jax.data import tasks as tasks_lib

SUBSETS = tuple(lists.TXT_VTAB)


def _classes(labels: list[int], num_classes: int) -> str:
  missing = sorted(set(range(num_classes)) - set(labels))
  return f"{len(missing)} of {num_classes} classes absent" + (
      f" ({', '.join(map(str, missing[:10]))}{', ...' if len(missing) > 10 else ''})"
      if missing else "")


def compare_subset(task: tasks_lib.Task, subset: str, folder_dir: str, tfds_dir: str,
                   resolution: int, resize: str) -> list[str]:
  """What differs in one subset; [] when nothing does."""
  entries = folder_source.entries(task, subset, folder_dir)
  ours = folder_source.decoded(entries, resolution, resize)
  theirs = tfds_source.examples(task, subset, resolution, tfds_dir, resize)
  labels, reference_labels, wrong_labels, differing, largest = [], [], [], 0, 0
  for entry, mine, reference in itertools.zip_longest(entries, ours, theirs):
    if mine is not None:
      labels.append(int(mine["label"]))
    if reference is not None:
      reference_labels.append(int(reference["label"]))
    if mine is None or reference is None:
      continue
    if mine["label"] != reference["label"]:
      wrong_labels.append(f"{entry.where} has {int(mine['label'])}, TFDS "
                          f"{int(reference['label'])}")
    difference = np.abs(mine["image"].astype(np.int16) - reference["image"].astype(np.int16))
    differing += bool(difference.any())
    largest = max(largest, int(difference.max()))
  out = []
  if len(labels) != len(reference_labels):
    out.append(f"{subset}: {len(labels)} examples in the folder, {len(reference_labels)} in TFDS")
  if wrong_labels:
    out.append(f"{subset}: {len(wrong_labels)} labels differ (first: {wrong_labels[0]})")
  coverage, reference_coverage = (_classes(x, task.num_classes) for x in (labels, reference_labels))
  if coverage != reference_coverage:
    out.append(f"{subset}: folder {coverage}; TFDS {reference_coverage}")
  if differing:
    out.append(f"{subset}: {differing} of {min(len(labels), len(reference_labels))} images differ "
               f"after decoding and resizing to {resolution} px ({resize}), by up to {largest}/255"
               " (JPEG files cannot equal TFDS's pixels)")
  return out


def compare(task: tasks_lib.Task, folder_dir: str, tfds_dir: str, resolution: int = 224,
            resize: str = "tf1_bilinear") -> list[str]:
  """What differs between a task's image folder and its TFDS splits, subset by subset."""
  return [line for subset in SUBSETS
          for line in compare_subset(task, subset, folder_dir, tfds_dir, resolution, resize)]
