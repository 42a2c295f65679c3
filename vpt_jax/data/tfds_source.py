"""The TFDS data source: VTAB's tasks read from TensorFlow Datasets builders.

Importing this module imports TensorFlow; `vpt_jax.data.sources` imports it only when a task's
examples must really be decoded (a cache miss or a streamed split).

Resizing: "tf1_bilinear" is what the VPT code bases run (tensorflow.compat.v1's tf.image.resize:
bilinear, align_corners=False, half_pixel_centers=False; KMnP/vpt src/data/datasets/tf_dataset.py),
"bilinear" is TensorFlow 2's (half-pixel centres). Both are rounded to uint8 for the cache, which
the VPT code does not do: at most 0.5/255 per pixel in [0, 1] units (docs/vtab1k.md).
"""

import contextlib
import io
import logging
import os
from typing import Iterator

import numpy as np

from vpt_jax.utils import quiet

tf = quiet.tensorflow()  # Before TFDS and the demo's builder, which import it too.
import tensorflow_datasets as tfds

from vpt_jax.data import demo  # noqa: F401  (registers the mini_vtab builder)
from vpt_jax.data import many_shot, pipeline, shifts
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.utils import files

# TensorFlow only feeds the host pipeline; it must not take the accelerators' memory.
tf.config.set_visible_devices([], "GPU")
# TFDS warns that a dataset it is about to generate has no dataset_info.json yet: nothing a user
# can act on.
logging.getLogger("absl").addFilter(lambda record: "has no dataset_info.json" not in record.getMessage())


def preparation_lock(data_dir: str, builder_name: str):
  """One process at a time prepares a dataset (others wait, then find it prepared)."""
  return files.exclusive(os.path.join(data_dir, ".vpt_jax_locks",
                                      builder_name.replace("/", "_").replace(":", "_") + ".lock"))


def builder(task: tasks_lib.Task, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The task's prepared TFDS builder; fails at once (no download attempt) if it is not prepared."""
  data_dir = data_dir or pipeline.default_data_dir()
  result = tfds.builder(task.builder, data_dir=data_dir)
  if not result.is_prepared() and task.generated:
    with preparation_lock(data_dir, task.builder):
      result = tfds.builder(task.builder, data_dir=data_dir)  # Another process may have done it.
      if not result.is_prepared():
        print(f"Generating {task.builder} in {data_dir} (offline, once)...", flush=True)
        # TFDS's own size banner and progress bars (escape codes in a log) say nothing more.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
          result.download_and_prepare()
  if not result.is_prepared():
    raise pipeline.DataNotPreparedError(
        f"Task {task.name} ({task.builder}) is not prepared in {data_dir}; prepare it with: "
        + pipeline.PREPARE_COMMAND.format(task=task.name, data_dir=data_dir))
  return result


def split_sizes(dataset_builder) -> dict[str, int]:
  return {name: info.num_examples for name, info in dataset_builder.info.splits.items()}


def resize(image, resolution: int, method: str):
  """(H, W, C) image -> (R, R, C) float32."""
  if method == "tf1_bilinear":  # The op behind tf.compat.v1.image.resize's default.
    return tf.raw_ops.ResizeBilinear(images=image[None], size=(resolution, resolution),
                                     align_corners=False, half_pixel_centers=False)[0]
  if method == "bilinear":
    return tf.image.resize(image, (resolution, resolution), method="bilinear")
  if method == "bicubic":  # Square: CIFAR-100's 32 x 32 images (PETL_Vision's many-shot sets).
    return tf.image.resize(image, (resolution, resolution), method="bicubic")
  if method in pipeline.RESIZE_METHODS:
    raise ValueError(f"data.resize={method!r} is made by the image-folder sources (PIL); with "
                     "data.source=tfds use tf1_bilinear, bilinear or bicubic.")
  raise ValueError(f"data.resize={method!r} must be one of {', '.join(pipeline.RESIZE_METHODS)}.")


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
  # The same images, corrupted: keyed by their position, so deterministic.
  return shifts.shifted(ds, shift, resolution) if shift else ds


def prepare(task: tasks_lib.Task, data_dir: str | None) -> None:
  builder(task, data_dir)


def version(task: tasks_lib.Task, data_dir: str | None) -> str:
  """The prepared dataset's name and version as the cache names it ("dtd_3.0.1")."""
  return builder(task, data_dir).info.full_name.replace("/", "_")


def _in_torchvision_order(task, dataset_builder, split: str, resolution: int,
                          resize_method: str) -> Iterator[dict]:
  """CIFAR-100's training set in torchvision's order, which PETL_Vision's index files count:
  TFDS shuffles the examples it writes, but keeps each one's position in the original
  train.bin as its "id" ("train_00017"). That train.bin (the binary release) lists the images in
  the order of the Python release torchvision reads is assumed here, not checked (docs/
  protocol.md); a folder source in torchvision's order avoids the assumption."""
  preprocess = preprocess_fn(task, resolution, resize_method)
  ds = dataset_builder.as_dataset(split=split, shuffle_files=False).map(
      lambda example: {**preprocess(example), "id": example["id"]},
      num_parallel_calls=tf.data.AUTOTUNE)
  ordered = sorted(ds.as_numpy_iterator(), key=lambda example: example["id"])
  expected = [f"train_{i:05d}".encode() for i in range(len(ordered))]
  if [example["id"] for example in ordered] != expected:
    raise ValueError(f"{task.builder} in {dataset_builder.data_dir}: its training examples' ids "
                     "are not train_00000 .. in order, so torchvision's order cannot be restored;"
                     " read CIFAR-100 from a folder in torchvision's order (data.source=folder).")
  for example in ordered:
    yield {"image": example["image"], "label": example["label"]}


def examples(task: tasks_lib.Task, subset: str, resolution: int, data_dir: str | None,
             resize_method: str, shift: str | None = None) -> Iterator[dict]:
  """The subset's examples in order: {"image": (R, R, 3) uint8, "label": int32}."""
  dataset_builder = builder(task, data_dir)
  split = tasks_lib.split_for(task, subset, split_sizes(dataset_builder))
  if task.many_shot and subset == many_shot.PARENT and not shift:
    return _in_torchvision_order(task, dataset_builder, split, resolution, resize_method)
  return _dataset(dataset_builder, split, task, resolution, resize_method,
                  shift).as_numpy_iterator()


def batches(task: tasks_lib.Task, subset: str, resolution: int, batch_size: int,
            data_dir: str | None, resize_method: str,
            shift: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """The subset in batches of `batch_size` (the last one short), decoded ahead."""
  dataset_builder = builder(task, data_dir)
  split = tasks_lib.split_for(task, subset, split_sizes(dataset_builder))
  ds = _dataset(dataset_builder, split, task, resolution, resize_method, shift).batch(batch_size)
  return ds.prefetch(2).as_numpy_iterator()
