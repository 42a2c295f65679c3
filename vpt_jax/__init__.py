"""vpt_jax: Visual Prompt Tuning vs full fine-tuning of Google's ViTs, in JAX."""

import os

# TensorFlow (TFDS decoding, imported only where a split is decoded) prints its oneDNN and
# absl-initialisation banners at INFO level: start-up noise a user cannot act on. Warnings and
# errors still print; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
