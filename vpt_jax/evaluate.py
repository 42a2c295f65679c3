"""Loss and accuracy over a whole split, every example exactly once (padding is masked out)."""

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import sharding, steps
from vpt_jax.data import device, pipeline


class Evaluator:
  """Compiled once per model; evaluates a streamed split or the device-resident train set."""

  def __init__(self, mesh: jax.sharding.Mesh, model, normalization: str):
    self._mesh = mesh
    eval_step = steps.make_eval_step(model)
    self._step = jax.jit(lambda params, images, labels, mask: eval_step(
        params, device.normalize(images, normalization), labels, mask))
    self._gather = jax.jit(lambda images, labels, indices: (images[indices], labels[indices]),
                           out_shardings=sharding.batch_sharded(mesh))

  @staticmethod
  def _finish(sums) -> dict:
    sums = jax.device_get(sums)
    count = int(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
            "examples": count}

  def stream(self, params, task: str, subset: str, resolution: int, batch_size: int,
             data_dir: str | None, resize_method: str = "bilinear") -> dict:
    sums = None
    put = lambda x: sharding.put_batch(self._mesh, x)
    for batch in pipeline.eval_batches(task, subset, resolution, batch_size, data_dir,
                                       resize_method):
      out = self._step(params, put(batch["image"]), put(batch["label"]), put(batch["mask"]))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return self._finish(sums)

  def arrays(self, params, images, labels, batch_size: int) -> dict:
    n = images.shape[0]
    sums = None
    for start in range(0, n, batch_size):
      indices = np.arange(start, start + batch_size)
      mask = indices < n
      batch_images, batch_labels = self._gather(images, labels, np.minimum(indices, n - 1))
      out = self._step(params, batch_images, batch_labels, sharding.put_batch(self._mesh, mask))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return self._finish(sums)
