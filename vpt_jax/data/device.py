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
NORMALIZATIONS = ("imagenet", "inception", "clip")


def normalize(images, mode: str):
  """uint8 images -> float32. "imagenet": (x/255 - mean) / std, as the VPT code did;
  "inception": x/127.5 - 1, in [-1, 1], as Google's ViT fine-tuning did; "clip": as "imagenet"
  with CLIP's mean and std."""
  x = images.astype(jnp.float32)
  if mode == "imagenet":
    return (x / 255.0 - jnp.asarray(_IMAGENET_MEAN)) / jnp.asarray(_IMAGENET_STD)
  if mode == "clip":
    return (x / 255.0 - jnp.asarray(_CLIP_MEAN)) / jnp.asarray(_CLIP_STD)
  if mode == "inception":
    return x / 127.5 - 1.0
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


def take_batch(images, labels, permutation, step_in_epoch, batch_size: int, flip_rng=None):
  """The `step_in_epoch`-th batch of the permuted set, and a mask that is False on the padding
  of a short last batch (shapes stay fixed, so one compiled step serves); optional flips."""
  positions = step_in_epoch * batch_size + jnp.arange(batch_size)
  indices = permutation[positions % permutation.shape[0]]
  batch_images, batch_labels = images[indices], labels[indices]
  if flip_rng is not None:
    flip = jax.random.bernoulli(flip_rng, 0.5, (batch_size, 1, 1, 1))
    batch_images = jnp.where(flip, batch_images[:, :, ::-1], batch_images)
  return batch_images, batch_labels, positions < permutation.shape[0]
