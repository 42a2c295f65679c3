"""The train and eval steps: pure functions of pytrees, and the jit-compiled train step.

Only the trainable subtree is differentiated: for VPT the frozen weights' gradients (x^T dy)
are never formed, which is where prompt tuning saves compute. Nothing here needs TensorFlow, so
the benchmark runs on machines that have only jax, flax and optax.
"""

import jax
import jax.numpy as jnp
import optax

from vpt_jax.training import optim, sharding
from vpt_jax.utils import paths
from vpt_jax.data import augment as augment_lib
from vpt_jax.data import device
from vpt_jax.models import peft


def _has_running_statistics(trainable) -> bool:
  return any(path.rsplit("/", 1)[-1] in peft.RUNNING_STATISTICS for path in paths.flatten(trainable))


def make_train_step(model, tx):
  """`mask` (False on padding) makes the loss the mean over the real examples of a short batch.
  BatchNorm's running averages in `trainable` (mlp_k) are replaced by the values the forward
  computes; a model without them runs the plain step."""
  def train_step(trainable, opt_state, frozen, images, labels, rng, mask=None):
    weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    statistics = _has_running_statistics(trainable)  # Static: the tree's structure.

    def loss_fn(trainable):
      params = paths.merge(trainable, frozen)
      if statistics:
        (logits, _), updated = model.apply(
            {"params": params}, images, train=True, rngs={"dropout": rng}, example_mask=mask,
            mutable=[peft.STATISTICS_UPDATES])
        updated = updated[peft.STATISTICS_UPDATES]
      else:
        (logits, _), updated = model.apply({"params": params}, images, train=True,
                                           rngs={"dropout": rng}, example_mask=mask), None
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.sum(losses * weights) / jnp.sum(weights), (logits, updated)

    (loss, (logits, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    if statistics:
      trainable = paths.merge(trainable, updated)
    accuracy = jnp.sum((jnp.argmax(logits, -1) == labels) * weights) / jnp.sum(weights)
    return trainable, opt_state, {"loss": loss, "accuracy": accuracy}

  return train_step


def make_eval_step(model, class_subset: tuple[int, ...] | None = None):
  """(sums of loss and correct predictions over the examples where `mask` is True (padding is
  not), the batch's logits). `class_subset`: only the outputs at these indices are the logits
  (label i is output class_subset[i]), the others excluded before loss and argmax, as
  PETL_Vision engine/trainer.py scores ImageNet-A and -R (outputs[:, A_CLASS_SUBLIST_MASK])."""
  def eval_step(params, images, labels, mask):
    logits, _ = model.apply({"params": params}, images, example_mask=mask)
    if class_subset is not None:
      logits = logits[:, jnp.asarray(class_subset)]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return {"loss_sum": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}, logits

  return eval_step


def make_device_step(model, tx, mesh, batch_size: int,
                     normalization: str, flip: bool = False, crop_size: int | None = None,
                     augment: str | None = None, vertical_flip: bool = False,
                     rand_augment: str = "", random_erasing: float = 0.0):
  """The step on device-resident data: (trainable, opt_state, frozen, images, labels,
  rows, permutation, extent, step, train_rng, flip_rng) -> (trainable, opt_state, metrics).

  The whole uint8 train set and the epoch's permutation are device arrays: the step gathers its
  own batch, normalises it and splits it over the data axis. Random keys are arguments, so runs
  with other seeds reuse the compiled step. So are `extent` (int32 [examples, steps per epoch])
  and `rows` (int32, the row of `images` that holds each of the run's examples): a search run on
  train800 and a final run on train800val200 share the step and the train800val200 array.
  `crop_size`: the set is stored larger and each
  example is randomly cropped (and flipped, with `flip`) by a key of `flip_rng`, the epoch and
  its index (device.take_batch), as `augment` says (a random crop, RandomResizedCrop, or the
  centre), with a vertical flip too where `vertical_flip`. `rand_augment` (timm's string, e.g.
  "rand-m9-mstd0.5-inc1") and `random_erasing` (its probability) then augment each example by
  keys of the same (`flip_rng`, epoch, index), RandAugment before and erasing after the
  normalisation, as timm's transform orders them (vpt_jax/data/augment.py).
  """
  ra_spec = augment_lib.parse(rand_augment)
  ra_fill = augment_lib.fill_of(normalization)
  batch = sharding.batch_sharded(mesh)
  train_step = make_train_step(model, tx)

  def step_fn(trainable, opt_state, frozen, images, labels, rows, permutation, extent, step,
              train_rng, flip_rng):
    examples, steps_per_epoch = extent[0], extent[1]
    batch_images, batch_labels, mask = device.take_batch(
        images, labels, permutation, step % steps_per_epoch, batch_size,
        jax.random.fold_in(flip_rng, step) if flip and crop_size is None else None,
        crop_size=crop_size, crop_rng=flip_rng, epoch=step // steps_per_epoch, crop_flip=flip,
        augment=augment, vertical_flip=vertical_flip, num_examples=examples, rows=rows)
    keys = lambda purpose: device.batch_keys(flip_rng, step // steps_per_epoch, permutation,
                                             step % steps_per_epoch, batch_size, purpose, examples)
    if ra_spec is not None:
      batch_images = device.rand_augment_batch(batch_images, keys(1), ra_spec, ra_fill)
    batch_images = device.normalize(batch_images, normalization)
    if random_erasing:
      batch_images = device.erase_batch(batch_images, keys(2), random_erasing)
    batch_images = jax.lax.with_sharding_constraint(batch_images, batch)
    batch_labels = jax.lax.with_sharding_constraint(batch_labels, batch)
    mask = jax.lax.with_sharding_constraint(mask, batch)
    return train_step(trainable, opt_state, frozen, batch_images, batch_labels,
                      jax.random.fold_in(train_rng, step), mask)

  return step_fn


def jit_step(step_fn, mesh, state_shardings, packed: bool = False):
  """`step_fn` compiled with its state donated (updated in place). `packed`: K runs at once, the
  trainable state, permutation and keys of each stacked on a leading axis (vmap), the frozen
  backbone and the train set shared."""
  trainable_sharding, opt_sharding, frozen_sharding = state_shardings
  replicated = sharding.replicated(mesh)
  if packed:
    step_fn = jax.vmap(step_fn, in_axes=(0, 0, None, None, None, None, 0, None, None, 0, 0),
                       axis_name=optim.PACK_AXIS)
  return jax.jit(
      step_fn, donate_argnums=(0, 1),
      in_shardings=(trainable_sharding, opt_sharding, frozen_sharding, replicated, replicated,
                    replicated, replicated, replicated, replicated, replicated, replicated),
      out_shardings=(trainable_sharding, opt_sharding, replicated))


def jit_pack_step(step_fn, mesh, state_shardings, members: int):
  """The step of a pack of `members` runs, whose metrics have a leading axis of `members`. More
  than one: their trainable state, optimizer state, permutations and keys stacked on a leading
  axis (vmap), the frozen backbone and the train set shared. One: the plain step, so a single run
  is the very program it always was, and the optimizer's own branches (GaLore's projector
  refresh) stay branches."""
  if members > 1:
    return jit_step(step_fn, mesh, state_shardings, packed=True)

  def single_fn(*args):
    trainable, opt_state, metrics = step_fn(*args)
    return trainable, opt_state, jax.tree.map(lambda x: x[None], metrics)

  return jit_step(single_fn, mesh, state_shardings)


def build_train_step(model, tx, mesh, state_shardings, batch_size: int,
                     normalization: str, flip: bool = False, crop_size: int | None = None,
                     augment: str | None = None, vertical_flip: bool = False):
  """The jit-compiled step of `make_device_step` (see there)."""
  return jit_step(make_device_step(model, tx, mesh, batch_size, normalization,
                                   flip, crop_size, augment, vertical_flip), mesh,
                  state_shardings)
