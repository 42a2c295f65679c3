"""Train sets that live in device memory: shuffled and batched on the device, inside the jit.

A VTAB-1k train set is 1,000 images (150 MB as uint8 at 224 px), so it is put on the device once;
every step then gathers its batch from an on-device permutation, with no host work per step.
"""

import jax
import jax.numpy as jnp

# Per-channel statistics, in [0, 1] pixel units.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# CLIP's pre-training statistics (openai/CLIP clip.py _transform; open_clip's OPENAI_DATASET_MEAN).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = ("imagenet", "inception", "clip", "unit")


def normalize(images, mode: str):
  """uint8 images -> float32. "imagenet": (x/255 - mean) / std, as the VPT code did;
  "inception": x/127.5 - 1, in [-1, 1], as Google's ViT fine-tuning did; "clip": as "imagenet"
  with CLIP's mean and std; "unit": x/255, in [0, 1] (PETL_Vision's VTAB-1k inputs, normalized:
  False)."""
  x = images.astype(jnp.float32)
  if mode == "imagenet":
    return (x / 255.0 - jnp.asarray(_IMAGENET_MEAN)) / jnp.asarray(_IMAGENET_STD)
  if mode == "clip":
    return (x / 255.0 - jnp.asarray(_CLIP_MEAN)) / jnp.asarray(_CLIP_STD)
  if mode == "inception":
    return x / 127.5 - 1.0
  if mode == "unit":
    return x / 255.0
  raise ValueError(f"Unknown normalization {mode!r}; use one of {NORMALIZATIONS}.")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Every example once per epoch: the last batch is short when the batch size does not divide
  the set (as the VPT code's loader, drop_last=False: 1,000 images at batch 64 are 16 steps), and
  a set smaller than the batch is one short batch (one-shot sets, small data-scale sizes)."""
  if num_examples < 1:
    raise ValueError("The training set is empty.")
  return -(-num_examples // batch_size)


def epoch_permutation(rng, epoch, num_examples: int):
  return jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)


def take_batch(images, labels, permutation, step_in_epoch, batch_size: int, flip_rng=None,
               crop_size: int | None = None, crop_rng=None, epoch=None, crop_flip: bool = False):
  """The `step_in_epoch`-th batch of the permuted set, and a mask that is False on the padding
  of a short last batch (shapes stay fixed, so one compiled step serves); optional flips.
  `crop_size`: a random crop of every example (and with `crop_flip` a random flip) keyed by
  (`crop_rng`, `epoch`, the example's index in the set), see `crop_and_flip`."""
  positions = step_in_epoch * batch_size + jnp.arange(batch_size)
  indices = permutation[positions % permutation.shape[0]]
  batch_images, batch_labels = images[indices], labels[indices]
  if crop_size is not None:
    batch_images = crop_and_flip(batch_images, example_keys(crop_rng, epoch, indices), crop_size,
                                 crop_flip)
  elif flip_rng is not None:
    flip = jax.random.bernoulli(flip_rng, 0.5, (batch_size, 1, 1, 1))
    batch_images = jnp.where(flip, batch_images[:, :, ::-1], batch_images)
  return batch_images, batch_labels, positions < permutation.shape[0]


def example_keys(rng, epoch, indices):
  """A key per example from (the run's key, the epoch, the example's index in the training set)
  alone: the same augmentation whatever the batch size, the pack, or the step a run resumed at."""
  epoch_key = jax.random.fold_in(rng, epoch)
  return jax.vmap(lambda index: jax.random.fold_in(epoch_key, index))(indices)


def crop_and_flip(images, keys, size: int, flip: bool):
  """KMnP/vpt's FGVC training transform after its resize (src/data/transforms.py): a size x size
  crop at offsets uniform over every position (torchvision RandomCrop: randint(0, H - size + 1)),
  then, with `flip`, a horizontal flip with probability 1/2 (RandomHorizontalFlip(0.5))."""
  def one(image, key):
    crop_key, flip_key = jax.random.split(key)
    top, left = (jax.random.randint(k, (), 0, extent - size + 1)
                 for k, extent in zip(jax.random.split(crop_key), image.shape[:2]))
    patch = jax.lax.dynamic_slice(image, (top, left, 0), (size, size, image.shape[2]))
    return jnp.where(jax.random.bernoulli(flip_key) & flip, patch[:, ::-1], patch)
  return jax.vmap(one)(images, keys)


def center_crop(images, size: int | None):
  """The centre size x size of a batch (torchvision CenterCrop's offsets, round((H - size) / 2));
  None or the batch's own size: the batch as it is."""
  if size is None or images.shape[1:3] == (size, size):
    return images
  top, left = (int(round((extent - size) / 2.0)) for extent in images.shape[1:3])
  return images[:, top:top + size, left:left + size]


def batch_keys(rng, epoch, permutation, step_in_epoch, batch_size: int, purpose: int):
  """Per-example keys of `take_batch`'s batch for one more augmentation: (the run's key, the
  epoch, the example's index) folded with `purpose`, so the crop's keys stay as they were."""
  positions = step_in_epoch * batch_size + jnp.arange(batch_size)
  keys = example_keys(rng, epoch, permutation[positions % permutation.shape[0]])
  return jax.vmap(lambda key: jax.random.fold_in(key, purpose))(keys)


def rand_augment_batch(images, keys, spec, fill):
  """timm's RandAugment (vpt_jax/data/augment.py) of each uint8 image by its key."""
  from vpt_jax.data import augment
  return jax.vmap(lambda image, key: augment.rand_augment(image, key, spec, fill))(images, keys)


def erase_batch(images, keys, prob: float):
  """timm's RandomErasing ('pixel' mode, one rectangle) of each normalised image by its key."""
  from vpt_jax.data import augment
  return jax.vmap(lambda image, key: augment.erase(image, key, prob))(images, keys)
