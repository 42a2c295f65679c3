"""Input pipeline: TFDS -> uint8 images at the model resolution.

Small train sets (train800val200, k-shot, data-scale) are decoded and resized once, cached on disk
as uint8 arrays and then served from device memory (`vpt_jax.data.device`). Test splits are
streamed in fixed-size, padded and masked batches, never held in memory whole.

Resizing: "tf1_bilinear" is what the VPT code bases run (tensorflow.compat.v1's tf.image.resize:
bilinear, align_corners=False, half_pixel_centers=False; KMnP/vpt src/data/datasets/tf_dataset.py),
"bilinear" is TensorFlow 2's (half-pixel centres). Both are rounded to uint8 for the cache, which
the VPT code does not do: at most 0.5/255 per pixel in [0, 1] units (docs/vtab1k.md).
"""

import logging
import os
import random
import time
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vpt_jax.utils import files
from vpt_jax.data import demo  # noqa: F401  (registers the mini_vtab builder)
from vpt_jax.data import shifts
from vpt_jax.data import tasks as tasks_lib

# TensorFlow only feeds the host pipeline; it must not take the accelerators' memory.
tf.config.set_visible_devices([], "GPU")

PREPARE_COMMAND = "python launch/prepare_data.py --tasks={task} --data_dir={data_dir}"


class DataNotPreparedError(RuntimeError):
  """A task's TFDS data is not on disk; the message has the command that prepares it."""


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"),
                                                      "tensorflow_datasets"))


def preparation_lock(data_dir: str, builder_name: str):
  """One process at a time prepares a dataset (others wait, then find it prepared)."""
  return files.exclusive(os.path.join(data_dir, ".vpt_jax_locks",
                                      builder_name.replace("/", "_").replace(":", "_") + ".lock"))


def builder(task: tasks_lib.Task, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The task's prepared TFDS builder; fails at once (no download attempt) if it is not prepared."""
  data_dir = data_dir or default_data_dir()
  result = tfds.builder(task.builder, data_dir=data_dir)
  if not result.is_prepared() and task.generated:
    with preparation_lock(data_dir, task.builder):
      result = tfds.builder(task.builder, data_dir=data_dir)  # Another process may have done it.
      if not result.is_prepared():
        logging.info("Generating %s in %s (offline, once).", task.builder, data_dir)
        result.download_and_prepare()
  if not result.is_prepared():
    raise DataNotPreparedError(
        f"Task {task.name} ({task.builder}) is not prepared in {data_dir}; prepare it with: "
        + PREPARE_COMMAND.format(task=task.name, data_dir=data_dir))
  return result


def split_sizes(dataset_builder) -> dict[str, int]:
  return {name: info.num_examples for name, info in dataset_builder.info.splits.items()}


RESIZE_METHODS = ("tf1_bilinear", "bilinear")


def resize(image, resolution: int, method: str):
  """(H, W, C) image -> (R, R, C) float32."""
  if method == "tf1_bilinear":  # The op behind tf.compat.v1.image.resize's default.
    return tf.raw_ops.ResizeBilinear(images=image[None], size=(resolution, resolution),
                                     align_corners=False, half_pixel_centers=False)[0]
  if method == "bilinear":
    return tf.image.resize(image, (resolution, resolution), method="bilinear")
  raise ValueError(f"data.resize={method!r} must be one of {', '.join(RESIZE_METHODS)}.")


def preprocess_fn(task: tasks_lib.Task, resolution: int, resize_method: str = "bilinear"):
  """TFDS example -> {"image": (R, R, 3) uint8, "label": int32}: 3 channels, resized, no crop."""
  def preprocess(example):
    image = example[task.image_key]
    if task.binary_image:
      image = image * 255
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    image = resize(image, resolution, resize_method)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return {"image": image, "label": tf.cast(task.label(example), tf.int32)}
  return preprocess


def _dataset(dataset_builder, split: str, task, resolution: int, resize_method: str,
             shift: str | None = None):
  ds = dataset_builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(preprocess_fn(task, resolution, resize_method), num_parallel_calls=tf.data.AUTOTUNE)
  if shift:  # The same images, corrupted: keyed by their position, so deterministic.
    corrupt = shifts.corrupt_fn(shift, resolution)
    ds = ds.enumerate().map(lambda i, ex: {**ex, "image": corrupt(i, ex["image"])},
                            num_parallel_calls=tf.data.AUTOTUNE)
  return ds


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


def load_arrays(task_name: str, subset: str, resolution: int, data_dir: str | None = None,
                cache_dir: str | None = None,
                resize_method: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, R, R, 3), labels int32 (N,)) of a small subset, cached on disk.

  The cache is keyed by task, TFDS version, subset, resolution and resize method, and written
  atomically. A k-shot subset is drawn from its (cached) source subset.
  """
  if kshot := tasks_lib.parse_kshot(subset):
    k, source, seed = kshot
    images, labels = load_arrays(task_name, source, resolution, data_dir, cache_dir,
                                 resize_method)
    chosen = even_separate_indices(labels, k, seed)
    return images[chosen], labels[chosen]
  task = tasks_lib.get(task_name)
  dataset_builder = builder(task, data_dir)
  version = dataset_builder.info.full_name.replace("/", "_")
  cache = os.path.join(cache_dir or files.cache_dir("arrays"), task.name,
                       f"{version}_{subset}_{resolution}px_{resize_method}.npz")
  if os.path.exists(cache):
    try:
      arrays = files.read_npz(cache)
      return arrays["images"], arrays["labels"]
    except (files.DamagedFileError, KeyError) as e:  # A cache is rebuilt, never trusted.
      logging.warning("Data cache %s is damaged (%s); rebuilding it.", cache, e)
      os.unlink(cache)

  started = time.time()
  split = tasks_lib.split_for(task, subset, split_sizes(dataset_builder))
  images, labels = [], []
  for example in _dataset(dataset_builder, split, task, resolution,
                          resize_method).as_numpy_iterator():
    images.append(example["image"])
    labels.append(example["label"])
  if not images:
    raise ValueError(f"Subset {subset} of {task.name} is empty.")
  images, labels = np.stack(images), np.asarray(labels, np.int32)
  files.write_npz(cache, {"images": images, "labels": labels})
  logging.info("Cached %s/%s at %dpx: %d images in %.1fs -> %s", task.name, subset, resolution,
               len(images), time.time() - started, cache)
  return images, labels


def eval_batches(task_name: str, subset: str, resolution: int, batch_size: int,
                 data_dir: str | None = None, resize_method: str = "bilinear",
                 shift: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Streams a split in batches of exactly `batch_size`; the last is zero-padded, `mask` False
  on padding, so every example counts exactly once. `shift`: its corrupted copy (shifts.py)."""
  task = tasks_lib.get(task_name)
  if shift:
    shifts.parse(shift)  # A misspelt shift fails before any data is read.
  dataset_builder = builder(task, data_dir)
  split = tasks_lib.split_for(task, subset, split_sizes(dataset_builder))
  ds = _dataset(dataset_builder, split, task, resolution, resize_method, shift).batch(batch_size)
  for batch in ds.prefetch(2).as_numpy_iterator():
    n = len(batch["label"])
    mask = np.arange(batch_size) < n
    if n < batch_size:
      pad = lambda x: np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
      batch = {key: pad(value) for key, value in batch.items()}
    yield {**batch, "mask": mask}

