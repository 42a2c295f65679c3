"""vpt_jax: Visual Prompt Tuning vs full fine-tuning of Google's ViTs, in JAX."""

__version__ = "0.1.0"
