"""Where the class token looks: last-layer attention and attention rollout over the patch grid."""

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def patch_slice(model) -> slice:
  """Token positions of the patches: after the class token, any register tokens (DINOv2's
  reg4 backbones) and any prompt tokens (vit.Model's order)."""
  start = int(model.has_class_token) + model.register_tokens + model.prompt_tokens
  return slice(start, None)


def last_layer_map(attentions, model, grid: tuple[int, int]) -> np.ndarray:
  """(N, gh, gw): the class token's attention to each patch in the last layer, head-averaged."""
  last = jnp.mean(attentions[-1], axis=1)  # (N, T, T)
  return np.asarray(last[:, 0, patch_slice(model)]).reshape((-1,) + grid)


def rollout_map(attentions, model, grid: tuple[int, int]) -> np.ndarray:
  """Attention rollout (Abnar & Zuidema 2020): head-averaged attention plus the residual identity,
  row-normalised, multiplied through the layers; the class token's row over the patches."""
  joint = None
  for layer in attentions:
    a = jnp.mean(layer, axis=1)
    a = 0.5 * a + 0.5 * jnp.eye(a.shape[-1])
    a = a / a.sum(axis=-1, keepdims=True)
    # VPT-deep swaps the prompt tokens between layers; rollout still follows the token slots.
    joint = a if joint is None else a @ joint
  return np.asarray(joint[:, 0, patch_slice(model)]).reshape((-1,) + grid)


def overlay_figure(images: np.ndarray, maps: dict[str, np.ndarray], out_path: str) -> None:
  """Rows: images; columns: the image, then each named map upsampled over it."""
  names = list(maps)
  fig, axes = plt.subplots(len(images), 1 + len(names), figsize=(2.4 * (1 + len(names)),
                                                                 2.4 * len(images)), squeeze=False)
  for row, image in enumerate(images):
    axes[row, 0].imshow(image)
    for col, name in enumerate(names, start=1):
      heat = maps[name][row]
      heat = (heat - heat.min()) / (np.ptp(heat) + 1e-12)
      axes[row, col].imshow(image)
      axes[row, col].imshow(heat, cmap="jet", alpha=0.5, interpolation="bilinear",
                            extent=(0, image.shape[1], image.shape[0], 0))
      if row == 0:
        axes[row, col].set_title(name, fontsize=9)
    if row == 0:
      axes[row, 0].set_title("image", fontsize=9)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
