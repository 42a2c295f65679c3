"""Input pipeline: TFDS -> uint8 images at the model resolution.

Small train sets (train800val200, k-shot, data-scale) are decoded and resized once, cached on disk
as uint8 arrays and then served from device memory (`vpt_jax.data.device`). Test splits are
streamed in fixed-size, padded and masked batches, never held in memory whole.
"""

import logging
import os
import time
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vpt_jax import files
from vpt_jax.data import demo  # noqa: F401  (registers the mini_vtab builder)
from vpt_jax.data import tasks as tasks_lib

# TensorFlow only feeds the host pipeline; it must not take the accelerators' memory.
tf.config.set_visible_devices([], "GPU")

PREPARE_COMMAND = "python launch/prepare_data.py --tasks={task} --data_dir={data_dir}"


class DataNotPreparedError(RuntimeError):
  """A task's TFDS data is not on disk; the message has the command that prepares it."""


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"),
                                                      "tensorflow_datasets"))


def builder(task: tasks_lib.Task, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The task's prepared TFDS builder; fails at once (no download attempt) if it is not prepared."""
  data_dir = data_dir or default_data_dir()
  result = tfds.builder(task.builder, data_dir=data_dir)
  if not result.is_prepared() and task.generated:
    logging.info("Generating %s in %s (offline, once).", task.builder, data_dir)
    result.download_and_prepare()
  if not result.is_prepared():
    raise DataNotPreparedError(
        f"Task {task.name} ({task.builder}) is not prepared in {data_dir}; prepare it with: "
        + PREPARE_COMMAND.format(task=task.name, data_dir=data_dir))
  return result


def split_sizes(dataset_builder) -> dict[str, int]:
  return {name: info.num_examples for name, info in dataset_builder.info.splits.items()}


def preprocess_fn(task: tasks_lib.Task, resolution: int):
  """TFDS example -> {"image": (R, R, 3) uint8, "label": int32}: 3 channels, bilinear, no crop."""
  def preprocess(example):
    image = example[task.image_key]
    if task.binary_image:
      image = image * 255
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    image = tf.image.resize(image, (resolution, resolution), method="bilinear")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return {"image": image, "label": tf.cast(task.label(example), tf.int32)}
  return preprocess


def _dataset(dataset_builder, split: str, task, resolution: int) -> tf.data.Dataset:
  ds = dataset_builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(preprocess_fn(task, resolution), num_parallel_calls=tf.data.AUTOTUNE)


def kshot_indices(labels: np.ndarray, k: int, num_classes: int, seed: int) -> np.ndarray:
  """Sorted positions of k examples per class, chosen at random but fixed by `seed`."""
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    candidates = np.flatnonzero(labels == label)
    if len(candidates) < k:
      raise ValueError(f"Only {len(candidates)} examples of class {label} in the k-shot pool; "
                       f"{k}-shot needs {k} of every class.")
    chosen.append(rng.choice(candidates, size=k, replace=False))
  return np.sort(np.concatenate(chosen))


def _kshot_dataset(task, dataset_builder, k, seed, resolution, pool_size) -> tf.data.Dataset:
  pool = task.train.take(min(pool_size, task.train.size(split_sizes(dataset_builder))))
  label_ds = dataset_builder.as_dataset(split=pool, shuffle_files=False,
                                        decoders={task.image_key: tfds.decode.SkipDecoding()})
  labels = np.fromiter((int(x) for x in label_ds.map(task.label).as_numpy_iterator()), np.int64)
  chosen = tf.constant(kshot_indices(labels, k, task.num_classes, seed))
  examples = dataset_builder.as_dataset(split=pool, shuffle_files=False).enumerate()
  examples = examples.filter(lambda i, _: tf.reduce_any(tf.equal(i, chosen)))
  return examples.map(lambda _, example: preprocess_fn(task, resolution)(example))


def load_arrays(task_name: str, subset: str, resolution: int, data_dir: str | None = None,
                cache_dir: str | None = None, kshot_pool: int = 20000) -> tuple[np.ndarray, ...]:
  """(images uint8 (N, R, R, 3), labels int32 (N,)) of a small subset, cached on disk.

  The cache is keyed by task, TFDS version, subset and resolution, and written atomically.
  """
  task = tasks_lib.get(task_name)
  dataset_builder = builder(task, data_dir)
  version = dataset_builder.info.full_name.replace("/", "_")
  cache = os.path.join(cache_dir or files.cache_dir("arrays"), task.name,
                       f"{version}_{subset}_{resolution}px.npz")
  if os.path.exists(cache):
    arrays = files.read_npz(cache)
    return arrays["images"], arrays["labels"]

  started = time.time()
  if kshot := tasks_lib.parse_kshot(subset):
    ds = _kshot_dataset(task, dataset_builder, *kshot, resolution, kshot_pool)
  else:
    split = tasks_lib.split_for(task, subset, split_sizes(dataset_builder))
    ds = _dataset(dataset_builder, split, task, resolution)
  images, labels = [], []
  for example in ds.as_numpy_iterator():
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
                 data_dir: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Streams a split in batches of exactly `batch_size`; the last is zero-padded, `mask` False
  on padding, so every example counts exactly once."""
  task = tasks_lib.get(task_name)
  dataset_builder = builder(task, data_dir)
  split = tasks_lib.split_for(task, subset, split_sizes(dataset_builder))
  ds = _dataset(dataset_builder, split, task, resolution).batch(batch_size)
  for batch in ds.prefetch(2).as_numpy_iterator():
    n = len(batch["label"])
    mask = np.arange(batch_size) < n
    if n < batch_size:
      pad = lambda x: np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
      batch = {key: pad(value) for key, value in batch.items()}
    yield {**batch, "mask": mask}

