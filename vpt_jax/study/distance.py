"""Data distance: the Fréchet distance between the feature distributions of two image sets.

FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with Gaussian fits of the features.
Features come from a pluggable extractor: the pre-trained ViT's pre-logits by default, or
Inception-v3 (the FID network) when its Keras weights file is given.
"""

from typing import Callable

import jax
import numpy as np

from vpt_jax import checkpoints
from vpt_jax.data import device
from vpt_jax import models

Extractor = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> float (N, D)


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  features = np.asarray(features, np.float64)
  if len(features) < 2:
    raise ValueError("A Fréchet distance needs at least 2 feature vectors per set.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix):
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
  """tr((S_a S_b)^(1/2)) via the symmetric S_a^(1/2) S_b S_a^(1/2): same eigenvalues, no complex
  round-off, stable for rank-deficient covariances."""
  root_a = _sqrt_psd(sigma_a)
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sigma_b @ root_a), 0, None)).sum()
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross)


def features_distance(features_a, features_b) -> float:
  return frechet_distance(*gaussian(features_a), *gaussian(features_b))


def vit_extractor(checkpoint: str, variant: str, resolution: int, normalization: str,
                  batch_size: int = 128, **model_kwargs) -> Extractor:
  """Pre-logits features of the pre-trained ViT or Swin (no head)."""
  model = models.build(num_classes=0, variant=variant, **model_kwargs)
  params = checkpoints.load(checkpoint, model, image_size=resolution)
  forward = jax.jit(lambda images: model.apply(
      {"params": params}, device.normalize(images, normalization))[0])

  def extract(images):
    return np.concatenate([np.asarray(forward(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])
  return extract


def inception_extractor(weights_path: str, batch_size: int = 64) -> Extractor:
  """Inception-v3 pool features (2048-d), the network of FID; needs its Keras weights file
  (include_top=False), e.g. inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5."""
  import os
  import tensorflow as tf
  if not os.path.exists(weights_path):
    raise FileNotFoundError(f"Inception weights {weights_path} not found: place the Keras "
                            "InceptionV3 no-top weights file there, or use the 'vit' extractor.")
  network = tf.keras.applications.InceptionV3(include_top=False, pooling="avg",
                                              weights=weights_path, input_shape=(299, 299, 3))

  def extract(images):
    out = []
    for i in range(0, len(images), batch_size):
      batch = tf.image.resize(tf.cast(images[i:i + batch_size], tf.float32), (299, 299))
      out.append(network(tf.keras.applications.inception_v3.preprocess_input(batch)).numpy())
    return np.concatenate(out)
  return extract

