"""Loss and accuracy over a whole split, every example exactly once (padding is masked out);
optionally every example's logits, in the split's order."""

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from vpt_jax.training import sharding, steps
from vpt_jax.data import device, pipeline
from vpt_jax.data import tasks as tasks_lib


class Evaluator:
  """Compiled once per model; evaluates a streamed split or the device-resident train set."""

  def __init__(self, mesh: jax.sharding.Mesh, model, normalization: str,
               crop_size: int | None = None, class_subset: tuple[int, ...] | None = None):
    """`crop_size`: images arrive larger and are centre-cropped to it (data.crop_from).
    `class_subset`: a test set on some of the model's classes (Task.class_subset)."""
    self._mesh = mesh
    eval_step = steps.make_eval_step(model, class_subset)
    prepare = lambda images: device.normalize(device.center_crop(images, crop_size), normalization)
    self._step = jax.jit(lambda params, images, labels, mask: eval_step(
        params, prepare(images), labels, mask)[0])
    # Logits in float16: enough for ensembles and agreement, a quarter of float32's bytes.
    self._step_logits = jax.jit(lambda params, images, labels, mask: jax.tree.map(
        lambda x: x.astype(jnp.float16) if x.ndim == 2 else x,
        eval_step(params, prepare(images), labels, mask)))
    self._gather = jax.jit(lambda images, labels, indices: (images[indices], labels[indices]),
                           out_shardings=sharding.batch_sharded(mesh))

  @staticmethod
  def _finish(sums) -> dict:
    sums = jax.device_get(sums)
    count = int(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
            "examples": count}

  def stream(self, params, task: tasks_lib.Task, subset: str, resolution: int, batch_size: int,
             data_dir: str | None, resize_method: str = "bilinear", keep_logits: bool = False,
             shift: str | None = None, source: str = "tfds") -> dict:
    """Loss, accuracy and example count of a split (with `keep_logits`, also "logits" (N, C)
    float16 and "labels" (N,) in the split's order); `shift` evaluates its corrupted copy
    (data/shifts.py)."""
    sums, logits, labels = None, [], []
    put = lambda x: sharding.put_batch(self._mesh, x)
    for batch in pipeline.eval_batches(task, subset, resolution, batch_size, data_dir,
                                       resize_method, shift=shift, source=source):
      args = (params, put(batch["image"]), put(batch["label"]), put(batch["mask"]))
      if keep_logits:
        out, batch_logits = self._step_logits(*args)
        logits.append(_host(batch_logits)[batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
      else:
        out = self._step(*args)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    result = self._finish(sums)
    if keep_logits:
      result.update(logits=np.concatenate(logits), labels=np.concatenate(labels))
    return result

  def arrays(self, params, images, labels, batch_size: int, keep_logits: bool = False,
             rows: np.ndarray | None = None) -> dict:
    """As `stream`, over device-resident arrays (the last batch repeats the last example, masked
    out); `rows`: only these rows, in this order (a search run's examples in a larger set)."""
    rows = np.arange(images.shape[0]) if rows is None else rows
    n = len(rows)
    sums, logits = None, []
    for start in range(0, n, batch_size):
      indices = np.arange(start, start + batch_size)
      mask = indices < n
      batch_images, batch_labels = self._gather(images, labels, rows[np.minimum(indices, n - 1)])
      args = (params, batch_images, batch_labels, sharding.put_batch(self._mesh, mask))
      if keep_logits:
        out, batch_logits = self._step_logits(*args)
        logits.append(_host(batch_logits)[mask])
      else:
        out = self._step(*args)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    result = self._finish(sums)
    if keep_logits:
      result.update(logits=np.concatenate(logits), labels=np.asarray(jax.device_get(labels))[rows])
    return result


def _host(array: jax.Array) -> np.ndarray:
  """The whole of a batch-sharded array on this host (gathered from the others if need be)."""
  if array.is_fully_addressable:
    return np.asarray(jax.device_get(array))
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
