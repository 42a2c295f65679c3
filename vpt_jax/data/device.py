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


def epoch_permutation(rng, epoch, num_examples: int, capacity: int | None = None):
  """The epoch's order of a set of `num_examples`, padded with zeros to `capacity` entries (the
  rows of the array the set is held in)."""
  order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
  return order if capacity is None else jnp.pad(order, (0, capacity - num_examples))


def take_batch(images, labels, permutation, step_in_epoch, batch_size: int, flip_rng=None,
               crop_size: int | None = None, crop_rng=None, epoch=None, crop_flip: bool = False,
               augment: str | None = None, vertical_flip: bool = False, num_examples=None,
               rows=None):
  """The `step_in_epoch`-th batch of the permuted set, and a mask that is False on the padding
  of a short last batch (shapes stay fixed, so one compiled step serves); optional flips.
  `num_examples` (a runtime value; None: the permutation's length): the set is the first that
  many entries of `permutation`, the rest padding. `rows` (None: the identity): the row of
  `images` that holds each example of the set (a search set held inside its final set).
  `crop_size`: every example is cropped to it, keyed by (`crop_rng`, `epoch`, the example's
  index in the set): by `augment` (AUGMENTATIONS; None is "random_crop"), then flipped
  horizontally with `crop_flip` and vertically with `vertical_flip`, each with probability 1/2."""
  examples = permutation.shape[0] if num_examples is None else num_examples
  positions = step_in_epoch * batch_size + jnp.arange(batch_size)
  indices = permutation[positions % examples]
  held = indices if rows is None else rows[indices]
  batch_images, batch_labels = images[held], labels[held]
  if crop_size is not None:
    keys = example_keys(crop_rng, epoch, indices)
    if augment == "random_resized_crop":
      batch_images = random_resized_crop(batch_images, keys, crop_size, crop_flip, vertical_flip)
    elif augment == "center_crop":  # The evaluation's view (PETL_Vision's CIFAR search runs).
      batch_images = center_crop(batch_images, crop_size)
    else:
      batch_images = crop_and_flip(batch_images, keys, crop_size, crop_flip)
  elif flip_rng is not None:
    flip = jax.random.bernoulli(flip_rng, 0.5, (batch_size, 1, 1, 1))
    batch_images = jnp.where(flip, batch_images[:, :, ::-1], batch_images)
  return batch_images, batch_labels, positions < examples


# data.augment: how a training set held at data.crop_from px becomes data.resolution px.
AUGMENTATIONS = ("random_crop", "random_resized_crop", "center_crop")


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


def resized_crop_box(key, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                     tries: int = 10):
  """(top, left, h, w) of torchvision's RandomResizedCrop.get_params: up to `tries` draws of an
  area fraction uniform in `scale` and a log-uniform aspect ratio, w = round(sqrt(area x
  ratio)), h = round(sqrt(area / ratio)); the first box that fits is placed uniformly
  (randint(0, H - h + 1)); none fits: the central box of the largest in-range aspect ratio. The
  draws are vectorised: the same rule, other random numbers than torch's."""
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(area_key, (tries,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (tries,), minval=jnp.log(ratio[0]),
                                      maxval=jnp.log(ratio[1])))
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits)
  in_ratio = width / height  # Static: the fallback is one box per image shape.
  if in_ratio < ratio[0]:
    fallback = (int(round(width / ratio[0])), width)
  elif in_ratio > ratio[1]:
    fallback = (height, int(round(height * ratio[1])))
  else:
    fallback = (height, width)
  found = fits[first]
  h = jnp.where(found, h[first], fallback[0])
  w = jnp.where(found, w[first], fallback[1])
  top = jnp.where(found, jax.random.randint(top_key, (), 0, height - h + 1), (height - h) // 2)
  left = jnp.where(found, jax.random.randint(left_key, (), 0, width - w + 1), (width - w) // 2)
  return top, left, h, w


def random_resized_crop(images, keys, size: int, horizontal_flip: bool, vertical_flip: bool):
  """PETL_Vision's many-shot training transform (data/dataset/cifar100.py, resisc.py):
  RandomResizedCrop(size) with torchvision's default scale (0.08, 1) and ratio (3/4, 4/3), the box
  resampled to size x size by a Keys cubic (a = -0.5, PIL's bicubic) that widens its support
  when it shrinks (antialiased, as PIL's), then RandomHorizontalFlip and, for RESISC45,
  RandomVerticalFlip, each with probability 1/2. uint8 in, uint8 out (rounded, as PIL's)."""
  def one(image, key):
    box_key, h_key, v_key = jax.random.split(key, 3)
    top, left, h, w = resized_crop_box(box_key, image.shape[0], image.shape[1])
    scale = jnp.stack([size / h, size / w]).astype(jnp.float32)
    translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
    out = jax.image.scale_and_translate(image.astype(jnp.float32), (size, size, image.shape[2]),
                                        (0, 1), scale, translation, method="cubic",
                                        antialias=True)
    out = jnp.clip(jnp.round(out), 0, 255).astype(image.dtype)
    out = jnp.where(jax.random.bernoulli(h_key) & horizontal_flip, out[:, ::-1], out)
    return jnp.where(jax.random.bernoulli(v_key) & vertical_flip, out[::-1], out)
  return jax.vmap(one)(images, keys)


def batch_keys(rng, epoch, permutation, step_in_epoch, batch_size: int, purpose: int,
               num_examples=None):
  """Per-example keys of `take_batch`'s batch for one more augmentation: (the run's key, the
  epoch, the example's index) folded with `purpose`, so the crop's keys stay as they were."""
  positions = step_in_epoch * batch_size + jnp.arange(batch_size)
  examples = permutation.shape[0] if num_examples is None else num_examples
  keys = example_keys(rng, epoch, permutation[positions % examples])
  return jax.vmap(lambda key: jax.random.fold_in(key, purpose))(keys)


def rand_augment_batch(images, keys, spec, fill):
  """timm's RandAugment (vpt_jax/data/augment.py) of each uint8 image by its key."""
  from vpt_jax.data import augment
  return jax.vmap(lambda image, key: augment.rand_augment(image, key, spec, fill))(images, keys)


def erase_batch(images, keys, prob: float):
  """timm's RandomErasing ('pixel' mode, one rectangle) of each normalised image by its key."""
  from vpt_jax.data import augment
  return jax.vmap(lambda image, key: augment.erase(image, key, prob))(images, keys)
