"""Shifted test sets made on the machine: common corruptions at fixed severities.

A shift is named "<corruption>:<severity>" (severity 1-5), e.g. "gaussian_noise:3". It acts on
each test image after decoding and resizing (uint8 at the model resolution), inside the same
tf.data pipeline as the clean split, so a shifted split is the clean one with only the corruption
added. Randomness (the noise) comes from a stateless generator keyed by (seed, example index):
the same shifted copy on every machine, run and batch size. The image-folder sources shift their
PIL-decoded images through the same tf.data map (`shifted_examples`), so a folder's shifted copy
equals the TFDS source's for the same decoded images. TensorFlow is imported by the functions
that build the corruption, so naming and checking shifts needs none.

Severities follow ImageNet-C (Hendrycks & Dietterich 2019, its corruption code's constants),
with the blur's sigma scaled from 224 px to the model resolution.
"""

import math

SEVERITIES = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # Std. of additive noise, [0, 1] units.
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),  # Sigma in pixels at 224 px.
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # Distance to the mean grey kept.
    "jpeg": (25, 18, 15, 10, 7),  # JPEG quality.
}
CORRUPTIONS = tuple(SEVERITIES)
DEFAULT_SHIFTS = tuple(f"{name}:3" for name in CORRUPTIONS)


def parse(shift: str) -> tuple[str, int]:
  """"gaussian_noise:3" -> ("gaussian_noise", 3), or a ValueError that lists the valid names."""
  name, _, severity = shift.partition(":")
  if name not in SEVERITIES or severity not in ("1", "2", "3", "4", "5"):
    raise ValueError(f"Shift {shift!r} must be <corruption>:<severity 1-5> with a corruption "
                     f"among {', '.join(CORRUPTIONS)} (e.g. gaussian_noise:3).")
  return name, int(severity)


def _gaussian_kernel(sigma: float):
  import tensorflow as tf
  radius = max(1, math.ceil(3 * sigma))
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * (x / sigma) ** 2)
  return kernel / tf.reduce_sum(kernel)


def _blur(image, sigma: float):
  """Separable Gaussian blur of an (H, W, 3) float image, borders reflected."""
  import tensorflow as tf
  kernel = _gaussian_kernel(sigma)
  radius = (kernel.shape[0] - 1) // 2
  radius = min(radius, image.shape[0] - 1, image.shape[1] - 1)
  kernel = kernel[(kernel.shape[0] - 1) // 2 - radius:(kernel.shape[0] - 1) // 2 + radius + 1]
  kernel = kernel / tf.reduce_sum(kernel)
  x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
  rows = tf.tile(tf.reshape(kernel, (-1, 1, 1, 1)), (1, 1, 3, 1))
  x = tf.nn.depthwise_conv2d(x, rows, strides=(1, 1, 1, 1), padding="VALID")
  cols = tf.tile(tf.reshape(kernel, (1, -1, 1, 1)), (1, 1, 3, 1))
  return tf.nn.depthwise_conv2d(x, cols, strides=(1, 1, 1, 1), padding="VALID")[0]


def corrupt_fn(shift: str, resolution: int, seed: int = 0):
  """(example index, uint8 (R, R, 3) image) -> the corrupted uint8 image."""
  import tensorflow as tf
  name, severity = parse(shift)
  value = SEVERITIES[name][severity - 1]

  def corrupt(index, image):
    if name == "jpeg":
      return tf.image.adjust_jpeg_quality(image, value)
    x = tf.cast(image, tf.float32) / 255.0
    if name == "gaussian_noise":
      key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
      x = x + value * tf.random.stateless_normal(tf.shape(x), seed=key)
    elif name == "gaussian_blur":
      x = _blur(x, value * resolution / 224)
    else:  # contrast
      mean = tf.reduce_mean(x)
      x = (x - mean) * value + mean
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
  return corrupt


def shifted(ds, shift: str, resolution: int, seed: int = 0):
  """A tf.data dataset of {"image": uint8, ...} examples with each image corrupted, keyed by its
  position in the dataset (deterministic)."""
  import tensorflow as tf
  corrupt = corrupt_fn(shift, resolution, seed)
  return ds.enumerate().map(lambda i, ex: {**ex, "image": corrupt(i, ex["image"])},
                            num_parallel_calls=tf.data.AUTOTUNE)


def shifted_examples(examples, shift: str, resolution: int):
  """{"image": (R, R, 3) uint8, "label": int32} examples decoded elsewhere (the image-folder
  sources), shifted by the same tf.data map as the TFDS source's; TensorFlow on the host only."""
  from vpt_jax.utils import quiet
  tf = quiet.tensorflow()
  try:
    tf.config.set_visible_devices([], "GPU")  # It must not take the accelerators' memory.
  except RuntimeError:  # Already initialised (by the TFDS source, which did the same).
    pass
  spec = {"image": tf.TensorSpec((resolution, resolution, 3), tf.uint8),
          "label": tf.TensorSpec((), tf.int32)}
  ds = tf.data.Dataset.from_generator(lambda: examples, output_signature=spec)
  return shifted(ds, shift, resolution).as_numpy_iterator()
