"""The VPT code's side network for Sidetune (KMnP/vpt src/models/vit_models.py `setup_side` and
`forward`): torchvision's AlexNet `features` and `avgpool` (AdaptiveAvgPool2d((6, 6))) on the same
normalised images the frozen ViT sees, flattened in PyTorch's (channel, row, column) order to
256 x 6 x 6 = 9216 features. The model (vit.Model) projects them to the ViT's width (a bias-free
Linear) and mixes them with the ViT's features by a learned weight sigmoid(alpha), alpha from 0.

Parameters conv_0 ... conv_4 are torchvision's features.0, .3, .6, .8, .10 (checkpoint reader:
vpt_jax/checkpoints/alexnet.py).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's AlexNet features: (out channels, kernel, stride, padding), a 3x3 / 2 max-pool after
# the first, second and last convolution; every convolution is followed by a ReLU.
ALEXNET_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
POOLED_AFTER = (0, 1, 4)
POOL_SIZE = 6  # AdaptiveAvgPool2d((6, 6)).
FEATURES = ALEXNET_CONVS[-1][0] * POOL_SIZE * POOL_SIZE  # 9216: side_projection's input.
MIN_IMAGE_SIZE = 63  # Smaller images leave the last max-pool nothing to pool (torch raises too).


def _adaptive_average(size: int, out: int) -> np.ndarray:
  """(out, size) averaging matrix of PyTorch's adaptive average pooling along one axis: output i
  averages inputs floor(i size / out) .. ceil((i + 1) size / out) - 1."""
  matrix = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def _torch_conv_init(fan_in: int):
  """PyTorch's Conv2d default (kaiming_uniform_(a=sqrt(5)) and its bias rule): U(+-1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class AlexNetFeatures(nn.Module):
  """features + avgpool + flatten of torchvision's AlexNet: (N, H, W, 3) -> (N, 9216)."""
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, images):
    if min(images.shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(f"sidetune's AlexNet needs images of at least {MIN_IMAGE_SIZE} px, got "
                       f"{images.shape[1]}x{images.shape[2]}: raise data.resolution.")
    x = images
    for i, (channels, kernel, stride, padding) in enumerate(ALEXNET_CONVS):
      init = _torch_conv_init(kernel * kernel * x.shape[-1])
      x = nn.Conv(channels, (kernel, kernel), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)), dtype=self.dtype,
                  kernel_init=init, bias_init=init, name=f"conv_{i}")(x)
      x = nn.relu(x)
      if i in POOLED_AFTER:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    rows = jnp.asarray(_adaptive_average(x.shape[1], POOL_SIZE), x.dtype)
    cols = jnp.asarray(_adaptive_average(x.shape[2], POOL_SIZE), x.dtype)
    x = jnp.einsum("ih,nhwc,jw->ncij", rows, x, cols)  # PyTorch's NCHW, so flatten matches .view.
    return x.reshape(x.shape[0], -1)


# nn.Linear's default initialisation (kaiming_uniform_(a=sqrt(5))): side_projection's.
TORCH_LINEAR = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
