"""Download and prepare VTAB-1k datasets through TFDS; ends with a table of which tasks are ready.

  python launch/prepare_data.py --tasks=all                       # or dtd,svhn or a group name
  python launch/prepare_data.py --tasks=all --status_only         # only report, download nothing
  python launch/prepare_data.py --tasks=resisc45 --manual_dir=DIR # after placing the files by hand
  python launch/prepare_data.py --tasks=all --check=vtab-1k       # an image folder against TFDS

The data directory defaults to $TFDS_DATA_DIR, else ~/tensorflow_datasets. Exits with status 1
when a requested task is not ready.
"""

import sys

from absl import flags, logging

from vpt_jax.utils import cli
from vpt_jax.data import pipeline, prepare
from vpt_jax.data import tasks as tasks_lib

_TASKS = flags.DEFINE_string("tasks", "all", "'all', a group, or task names joined by , or +.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "Where manually downloaded files are (default: TFDS's).")
_STATUS_ONLY = flags.DEFINE_bool("status_only", False, "Report readiness without downloading.")
_CACHE_SUBSETS = flags.DEFINE_list(
    "cache_subsets", [], "Also decode these subsets of the ready tasks into the array cache "
    "(e.g. test,train800val200), so that runs read them without TensorFlow or the dataset.")
_RESOLUTION = flags.DEFINE_integer("resolution", 224, "With --cache_subsets: image size.")
_RESIZE = flags.DEFINE_enum("resize", "tf1_bilinear", list(pipeline.RESIZE_METHODS),
                            "With --cache_subsets: resize method (the recipe's: tf1_bilinear "
                            "for paper, bilinear for google).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "With --cache_subsets: array cache "
                                 "(default $VPT_JAX_CACHE/arrays).")
_CHECK = flags.DEFINE_string(
    "check", None, "A VTAB-1k image folder (NOAH's layout, <folder>/<task>/train800.txt ...): "
    "compare each task it holds with the prepared TFDS splits (counts, labels, classes, images "
    "after decoding and resizing to --resolution with --resize) and print what differs; "
    "downloads nothing.")


def check(names: list[str], folder: str, data_dir: str) -> int:
  """Prints what differs per task held both in `folder` and in TFDS; returns how many differ."""
  from vpt_jax.data import folder_check, sources
  differing = 0
  for name in names:
    task = tasks_lib.get(name)
    if sources.get("folder").prepared_version(task, folder) is None:
      print(f"{name}: not in {folder}")
      continue
    if sources.get("tfds").prepared_version(task, data_dir) is None:
      print(f"{name}: not prepared in TFDS ({data_dir}); nothing to compare")
      continue
    with cli.errors(ValueError, pipeline.DataNotPreparedError):
      lines = folder_check.compare(task, folder, data_dir, _RESOLUTION.value, _RESIZE.value)
    differing += bool(lines)
    print(f"{name}: " + ("the same counts, labels, classes and images" if not lines else
                         "differs:\n  " + "\n  ".join(lines)))
  return differing


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # TFDS logs every lookup; the table says what matters.
  try:
    names = tasks_lib.expand(_TASKS.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  data_dir = _DATA_DIR.value or pipeline.default_data_dir()
  if _CHECK.value:
    sys.exit(1 if check([n for n in names if n in tasks_lib.VTAB_TASKS], _CHECK.value,
                        data_dir) else 0)
  rows = prepare.prepare(names, data_dir, _MANUAL_DIR.value, download=not _STATUS_ONLY.value)
  print(f"\nData directory: {data_dir}\n" + prepare.table(rows))
  ready = sum(r.status == "ready" for r in rows)
  print(f"\n{ready} of {len(rows)} tasks ready.")
  for row in rows:
    for subset in _CACHE_SUBSETS.value if row.status == "ready" else ():
      with cli.errors(ValueError, pipeline.DataNotPreparedError):
        images, _ = pipeline.load_arrays(tasks_lib.get(row.task), subset, _RESOLUTION.value,
                                         data_dir, _CACHE_DIR.value, _RESIZE.value)
      print(f"Cached {row.task}/{subset}: {len(images)} images at {_RESOLUTION.value} px.")
  sys.exit(0 if ready == len(rows) else 1)


if __name__ == "__main__":
  cli.run(main)
