"""Input pipeline: a data source -> uint8 images at the model resolution.

Small train sets (train800val200, k-shot, data-scale) are decoded and resized once, cached on disk
as uint8 arrays and then served from device memory (`vpt_jax.data.device`). Test splits are
streamed in fixed-size, padded and masked batches, never held in memory whole. Decoding is the
source's (`vpt_jax.data.sources`; TFDS for VTAB-1k): a cached subset is read without it.
"""

import glob
import logging
import os
import random
import time
from typing import Iterator

import numpy as np

from vpt_jax.data import many_shot, shifts, sources
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.utils import files

PREPARE_COMMAND = "python launch/prepare_data.py --tasks={task} --data_dir={data_dir}"


class DataNotPreparedError(RuntimeError):
  """A task's data is not on disk; the message has the command that prepares it."""


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"),
                                                      "tensorflow_datasets"))


# tf1_bilinear, bilinear: TensorFlow's kernels (tfds_source; folder_source restates them in
# NumPy); short_side: torchvision's Resize to the shorter side and the centre square, with PIL
# (the image-folder sources only; KMnP/vpt's FGVC transform); squash_bicubic: torchvision's
# Resize((R, R), bicubic), PETL_Vision's few-shot ImageNet (image-folder sources only); bicubic:
# PETL_Vision's many-shot Resize(256, bicubic), PIL's (shorter side, centre square) in the folder
# sources, TensorFlow's (Keys a = -0.5, half-pixel centres, not antialiased: these sets are
# upsampled) to a square in the TFDS source.
RESIZE_METHODS = ("tf1_bilinear", "bilinear", "short_side", "squash_bicubic", "bicubic")


def even_separate_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
  """Positions of up to k examples per class, as ChengHan111/VPT-or-FT's DATA.EVEN_SEPARETE
  (src/data/datasets/tf_dataset.py): Python's random seeded with `seed`, classes in the order
  they first appear, random.sample of min(k, count) positions within each, grouped by class."""
  rng = random.Random(seed)
  by_class = {}
  for position, label in enumerate(labels.tolist()):
    by_class.setdefault(label, []).append(position)
  chosen = []
  for positions in by_class.values():
    chosen += rng.sample(positions, min(len(positions), k))
  return np.asarray(chosen, np.int64)


def _task_cache_dir(cache_dir: str | None, task: tasks_lib.Task) -> str:
  # A custom folder's task name holds its path: one directory level, no separators.
  return os.path.join(cache_dir or files.cache_dir("arrays"),
                      task.name.replace(os.sep, "_").replace(":", "_"))


def _cache_path(cache_dir: str | None, task: tasks_lib.Task, version: str, subset: str,
                resolution: int, resize_method: str) -> str:
  return os.path.join(_task_cache_dir(cache_dir, task),
                      f"{version}_{subset}_{resolution}px_{resize_method}.npz")


_said: set[str] = set()  # Notices already printed by this process (each run checks again).


def _once(line: str, log) -> None:
  if line not in _said:
    _said.add(line)
    log(line)


def check_data(task: tasks_lib.Task, source: str = "tfds", data_dir: str | None = None,
               cache_dir: str | None = None, subsets=(), log=print) -> None:
  """Refuses bad data before anything trains, in one line naming the file (lists.BadDataError):
  the source's lists, a custom folder's layout and splits (vpt_jax/data/layouts.py; `subsets`,
  the run's train and eval subsets, must exist) and every image decoded. The decoding is done
  once per data version (lists, image sizes and mtimes, carving): a marker file in the array
  cache remembers it. Nothing for TFDS, whose data were checked when prepared. `log` prints the
  one notice line (skipped non-image files)."""
  data_source = sources.get(source)
  if not data_source.image_files:
    return
  reader = data_source.reader()
  version = reader.check(task, data_dir, tuple(subsets), lambda line: _once(line, log))
  marker = os.path.join(_task_cache_dir(cache_dir, task), f"{version}_decoded")
  if os.path.exists(marker):
    return
  started = time.time()
  count = reader.decode_all(task, data_dir)
  files.write_text(marker, f"{count} images decoded in {time.time() - started:.1f}s\n")


def _read_cache(path: str) -> tuple[np.ndarray, np.ndarray] | None:
  if not os.path.exists(path):
    return None
  try:
    arrays = files.read_npz(path)
    return arrays["images"], arrays["labels"]
  except (files.DamagedFileError, KeyError) as e:  # A cache is rebuilt, never trusted.
    logging.warning("Data cache %s is damaged (%s); rebuilding it.", path, e)
    os.unlink(path)
    return None


def _cached_without_source(source: sources.Source, task: tasks_lib.Task, subset: str,
                           resolution: int, data_dir: str | None, cache_dir: str | None,
                           resize_method: str) -> tuple[np.ndarray, np.ndarray] | None:
  """The cached subset, found without the source's libraries: by the version prepared on disk,
  or, where no data is prepared at all (arrays copied to a machine without the dataset), by the
  one cache file of that subset."""
  version = source.prepared_version(task, data_dir or default_data_dir())
  if version is not None:
    return _read_cache(_cache_path(cache_dir, task, version, subset, resolution, resize_method))
  candidates = glob.glob(_cache_path(cache_dir, task, "*", subset, resolution, resize_method))
  return _read_cache(candidates[0]) if len(candidates) == 1 else None


def cached_arrays(task: tasks_lib.Task, subset: str, resolution: int, data_dir: str | None = None,
                  cache_dir: str | None = None, resize_method: str = "bilinear",
                  source: str = "tfds") -> tuple[np.ndarray, np.ndarray] | None:
  """The subset's arrays if they are cached (e.g. a test split cached by prepare_data.py
  --cache_arrays), else None; never decodes."""
  return _cached_without_source(sources.get(source), task, subset, resolution, data_dir,
                                cache_dir, resize_method)


def ensure_prepared(task: tasks_lib.Task, data_dir: str | None = None,
                    source: str = "tfds") -> None:
  """Generates a generated task's data once; fails at once, with the command that prepares it,
  for data that is not on disk. Prepared data is recognised without the source's libraries."""
  data_source = sources.get(source)
  if data_source.prepared_version(task, data_dir or default_data_dir()) is None:
    _reader_of_unprepared(data_source, task, data_dir).prepare(task, data_dir)


def _reader_of_unprepared(data_source: sources.Source, task: tasks_lib.Task, data_dir: str | None):
  """The reader that generates a generated task; for data nobody prepared, the error that says
  how, raised before the reader's libraries load (they print banners before any error line), or
  the reader's own where it says what is missing."""
  if not task.generated and not data_source.reports_missing:
    data_dir = data_dir or default_data_dir()
    raise DataNotPreparedError(
        f"Task {task.name} ({task.builder}) is not prepared in {data_dir}; prepare it with: "
        + PREPARE_COMMAND.format(task=task.name, data_dir=data_dir))
  return data_source.reader()


def load_arrays(task: tasks_lib.Task, subset: str, resolution: int, data_dir: str | None = None,
                cache_dir: str | None = None, resize_method: str = "bilinear",
                source: str = "tfds") -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, R, R, 3), labels int32 (N,)) of a small subset, cached on disk.

  The cache is keyed by task, data version, subset, resolution and resize method, and written
  atomically. A k-shot subset is drawn from its (cached) source subset.
  """
  if many_shot.uses_parent(task, subset):  # Mai et al.'s split files index one parent set.
    images, labels = load_arrays(many_shot.parent_task(task), many_shot.PARENT, resolution,
                                 data_dir, cache_dir, resize_method, source)
    chosen = many_shot.indices(task, subset, labels)
    return images[chosen], labels[chosen]
  if kshot := tasks_lib.parse_kshot(subset):
    k, parent, seed = kshot
    images, labels = load_arrays(task, parent, resolution, data_dir, cache_dir, resize_method,
                                 source)
    chosen = even_separate_indices(labels, k, seed)
    return images[chosen], labels[chosen]
  data_source = sources.get(source)
  if (cached := _cached_without_source(data_source, task, subset, resolution, data_dir,
                                       cache_dir, resize_method)) is not None:
    return cached
  if data_source.prepared_version(task, data_dir or default_data_dir()) is None:
    reader = _reader_of_unprepared(data_source, task, data_dir)
  else:
    reader = data_source.reader()
  cache = _cache_path(cache_dir, task, reader.version(task, data_dir), subset, resolution,
                      resize_method)
  if (cached := _read_cache(cache)) is not None:
    return cached
  started = time.time()
  images, labels = [], []
  for example in reader.examples(task, subset, resolution, data_dir, resize_method):
    images.append(example["image"])
    labels.append(example["label"])
  if not images:
    raise ValueError(f"Subset {subset} of {task.name} is empty.")
  images, labels = np.stack(images), np.asarray(labels, np.int32)
  files.write_npz(cache, {"images": images, "labels": labels})
  logging.info("Cached %s/%s at %dpx: %d images in %.1fs -> %s", task.name, subset, resolution,
               len(images), time.time() - started, cache)
  return images, labels


def eval_batches(task: tasks_lib.Task, subset: str, resolution: int, batch_size: int,
                 data_dir: str | None = None, resize_method: str = "bilinear",
                 shift: str | None = None, source: str = "tfds") -> Iterator[dict[str, np.ndarray]]:
  """Streams a split in batches of exactly `batch_size`; the last is zero-padded, `mask` False
  on padding, so every example counts exactly once. `shift`: its corrupted copy (shifts.py)."""
  if shift:
    shifts.parse(shift)  # A misspelt shift fails before any data is read.
  reader = sources.get(source).reader()
  for batch in reader.batches(task, subset, resolution, batch_size, data_dir, resize_method, shift):
    n = len(batch["label"])
    mask = np.arange(batch_size) < n
    if n < batch_size:
      pad = lambda x: np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
      batch = {key: pad(value) for key, value in batch.items()}
    yield {**batch, "mask": mask}
