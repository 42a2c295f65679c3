"""timm's RandAugment and random erasing as pure JAX functions of (image, key): the training
augmentation of Mai et al.'s few-shot ImageNet (OSU-MLB/PETL_Vision data/dataset/few_shot.py:
timm create_transform(auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, re_mode='pixel',
re_count=1, interpolation='bicubic')), run on the device inside the train step.

Each example's key comes from (the run's key, the epoch, the example's index) (device.example_keys),
so a resumed run draws the very same augmentations. RandAugment (timm/data/auto_augment.py
rand_augment_transform, RandAugment, AugmentOp): `num_ops` draws of one op each, uniformly with
replacement from 15 ops; each applied with probability 0.5, at a magnitude drawn from
N(m, mstd) (uniform on [0, m] when mstd > 100) clipped to [0, 10]; geometric and enhance ops
negate their argument with probability 0.5; geometric ops fill with the normalisation's mean
(timm's img_mean, round(255 x mean)) and sample bicubically (create_transform passes its
interpolation to RandAugment). Random erasing (timm/data/random_erasing.py RandomErasing, after
normalisation): with probability `prob`, one rectangle of area U(0.02, 1/3) of the image and
log-uniform aspect in (0.3, 1/0.3), the first of 10 tries that fits, placed uniformly, filled with
N(0, 1) per pixel and channel ('pixel' mode).

Which ops give PIL's numbers and which do not: docs/protocol.md ("RandAugment on the device") and
tests/test_imagenet_shift.py, which measures them against Pillow.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS (inc1), in their order.
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
       "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
       "TranslateYRel")
OPS_INCREASING = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                  "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                  "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                  "TranslateXRel", "TranslateYRel")
MAX_LEVEL = 10.0  # timm's _LEVEL_DENOM: magnitudes are clipped to [0, 10].
OP_PROB = 0.5  # rand_augment_ops: AugmentOp(prob=0.5).
FILL = (128, 128, 128)  # timm's _FILL, for normalisations without a mean.


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """A parsed timm RandAugment string, e.g. "rand-m9-mstd0.5-inc1"."""
  magnitude: float = 10.0
  num_ops: int = 2
  magnitude_std: float = 0.0  # inf: uniform on [0, magnitude].
  increasing: bool = False

  @property
  def ops(self) -> tuple[str, ...]:
    return OPS_INCREASING if self.increasing else OPS


def parse(text: str) -> RandAugment | None:
  """timm's rand_augment_transform string ("rand" then -m<int>, -n<int>, -mstd<float>,
  -inc<int>); "" or None: no RandAugment. Anything else (weights "w", "mmax") is refused."""
  if not text:
    return None
  parts = text.split("-")
  if parts[0] != "rand":
    raise ValueError(f"data.rand_augment={text!r} must be a timm RandAugment string such as "
                     "'rand-m9-mstd0.5-inc1' (or '' for none).")
  fields = {}
  for part in parts[1:]:
    match = re.fullmatch(r"(mstd|inc|m|n)(\d.*)", part)
    try:
      key, value = match.group(1), float(match.group(2))
    except (AttributeError, ValueError):
      raise ValueError(f"data.rand_augment={text!r}: cannot read {part!r}; the sections are "
                       "m<magnitude>, n<ops>, mstd<std>, inc<0|1>.") from None
    fields[key] = value
  std = fields.get("mstd", 0.0)
  # timm: `if bool(val)` on the string, so any inc section selects the increasing ops.
  return RandAugment(magnitude=fields.get("m", 10.0), num_ops=int(fields.get("n", 2)),
                     magnitude_std=math.inf if std > 100 else std, increasing="inc" in fields)


# ---------------------------------------------------------------------------------------------
# The ops, on float32 (H, W, 3) images holding integers in [0, 255].

def _truncate(x):
  """PIL's float -> uint8 store: clipped to [0, 255], the fraction dropped."""
  return jnp.floor(jnp.clip(x, 0.0, 255.0))


def blend(degenerate, image, factor):
  """Image.blend(degenerate, image, factor) (ImageEnhance's enhance): Pillow's float32
  formula. Compiled, XLA contracts the multiply-add into one fused multiply-add (its single
  rounding), so where Pillow's product rounds onto an integer the result may be one level lower."""
  return _truncate(degenerate + jnp.float32(factor) * (image - degenerate))


def luma(image):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, in integers."""
  rgb = image.astype(jnp.int32)
  return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
          ).astype(jnp.float32)


def auto_contrast(image, *_):
  """ImageOps.autocontrast (cutoff 0): each channel's [min, max] stretched to [0, 255]."""
  low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
  scale = 255.0 / jnp.maximum(high - low, 1.0)
  stretched = _truncate(image * scale - low * scale)
  return jnp.where(high > low, stretched, image)


def equalize(image, *_):
  """ImageOps.equalize: per channel, lut[i] = (step // 2 + pixels below i) // step with step =
  (pixels - count of the brightest level present) // 255; unchanged if step is 0."""
  def channel(values):
    counts = jnp.bincount(values.reshape(-1).astype(jnp.int32), length=256)
    last = counts[255 - jnp.argmax(counts[::-1] > 0)]
    step = (jnp.sum(counts) - last) // 255
    below = jnp.cumsum(counts) - counts
    lut = jnp.minimum((step // 2 + below) // jnp.maximum(step, 1), 255)
    return jnp.where(step > 0, lut[values.astype(jnp.int32)].astype(jnp.float32), values)
  return jnp.stack([channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def invert(image, *_):
  return 255.0 - image


def posterize(image, bits):
  """ImageOps.posterize: keep the `bits` high bits (timm: 8 or more bits is the image)."""
  shift = jnp.clip(8 - bits, 0, 8).astype(jnp.int32)
  kept = (image.astype(jnp.int32) >> shift) << shift
  return kept.astype(jnp.float32)


def solarize(image, threshold):
  """ImageOps.solarize: values >= threshold inverted."""
  return jnp.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, add, threshold=128):
  """timm's solarize_add: values below threshold raised by `add` (at most 255)."""
  return jnp.where(image < threshold, jnp.minimum(255.0, image + add), image)


def color(image, factor):
  """ImageEnhance.Color: blend with the image's grey (L) version."""
  return blend(jnp.broadcast_to(luma(image)[..., None], image.shape), image, factor)


def contrast(image, factor):
  """ImageEnhance.Contrast: blend with a flat image at the rounded mean of L."""
  mean = jnp.floor(jnp.mean(luma(image)) + 0.5)
  return blend(jnp.full_like(image, mean), image, factor)


def brightness(image, factor):
  """ImageEnhance.Brightness: blend with black."""
  return blend(jnp.zeros_like(image), image, factor)


def smooth(image):
  """ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, scale 13), rounded; the border
  pixels kept (ImagingFilter copies them)."""
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = image.shape[:2]
  total = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) + 4 * image
  inner = _truncate(total / 13.0 + 0.5)
  rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  border = (rows == 0) | (rows == h - 1) | (cols == 0) | (cols == w - 1)
  return jnp.where(border, image, inner)


def sharpness(image, factor):
  """ImageEnhance.Sharpness: blend with the smoothed image."""
  return blend(smooth(image), image, factor)


def _cubic_weights(d):
  """Pillow's affine bicubic (Geometry.c BICUBIC, a = -1) weights of the 4 neighbours."""
  d2, d3 = d * d, d * d * d
  return jnp.stack([-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, -d2 + d3], axis=-1)


def affine(image, matrix, fill):
  """Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill): output pixel (x, y) takes
  the input at (a, b, c, d, e, f) . (x + 0.5, y + 0.5, 1) in pixel-centre coordinates; outside
  the image the fill; inside, bicubic over the 4 x 4 neighbours (indices clamped at the edges),
  the result clipped and truncated to an integer."""
  h, w = image.shape[:2]
  a, b, c, d, e, f = matrix
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
  src_x, src_y = a * xs + b * ys + c, d * xs + e * ys + f
  inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
  x0, y0 = jnp.floor(src_x - 0.5), jnp.floor(src_y - 0.5)
  wx, wy = _cubic_weights(src_x - 0.5 - x0), _cubic_weights(src_y - 0.5 - y0)
  offsets = jnp.arange(-1, 3)
  cols = jnp.clip(x0.astype(jnp.int32)[..., None] + offsets, 0, w - 1)  # (H, W, 4)
  rows = jnp.clip(y0.astype(jnp.int32)[..., None] + offsets, 0, h - 1)
  # Pillow interpolates each of the 4 rows along x, then the 4 results along y.
  along_x = jnp.einsum("hwjic,hwi->hwjc", image[rows[..., :, None], cols[..., None, :]], wx)
  value = jnp.einsum("hwjc,hwj->hwc", along_x, wy)
  return jnp.where(inside[..., None], _truncate(value), jnp.asarray(fill, jnp.float32))


def rotation(degrees, h: int, w: int):
  """Image.rotate's matrix: counter-clockwise about the centre (w / 2, h / 2), same size."""
  angle = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  return (cos, sin, -cos * cx - sin * cy + cx, -sin, cos, sin * cx - cos * cy + cy)


# The affine matrices of timm's geometric ops, of (argument, image height, width).
_MATRICES = {
    "Rotate": rotation,
    "ShearX": lambda factor, h, w: (1.0, factor, 0.0, 0.0, 1.0, 0.0),
    "ShearY": lambda factor, h, w: (1.0, 0.0, 0.0, factor, 1.0, 0.0),
    # timm's translate_x_rel / translate_y_rel: by the fraction of the width / height.
    "TranslateXRel": lambda fraction, h, w: (1.0, 0.0, fraction * w, 0.0, 1.0, 0.0),
    "TranslateYRel": lambda fraction, h, w: (1.0, 0.0, 0.0, 0.0, 1.0, fraction * h),
}


def rotate(image, degrees, fill):
  """Image.rotate(degrees, BICUBIC, fillcolor=fill)."""
  return affine(image, rotation(degrees, *image.shape[:2]), fill)


def shear_x(image, factor, fill):
  return affine(image, _MATRICES["ShearX"](factor, *image.shape[:2]), fill)


def shear_y(image, factor, fill):
  return affine(image, _MATRICES["ShearY"](factor, *image.shape[:2]), fill)


def translate_x(image, fraction, fill):
  return affine(image, _MATRICES["TranslateXRel"](fraction, *image.shape[:2]), fill)


def translate_y(image, fraction, fill):
  return affine(image, _MATRICES["TranslateYRel"](fraction, *image.shape[:2]), fill)


# timm's LEVEL_TO_ARG: (magnitude in [0, 10], sign +-1) -> the op's argument.
def _level(m):
  return m / MAX_LEVEL


def _enhance(m, sign):
  return _level(m) * 1.8 + 0.1


def _enhance_increasing(m, sign):
  return jnp.maximum(0.1, 1.0 + sign * _level(m) * 0.9)


def _posterize_bits(m, sign):
  return jnp.floor(_level(m) * 4)


_OPS = {  # name: (op, level -> argument or None, geometric (takes the fill))
    "AutoContrast": (auto_contrast, None, False),
    "Equalize": (equalize, None, False),
    "Invert": (invert, None, False),
    "Rotate": (rotate, lambda m, s: s * _level(m) * 30.0, True),
    "Posterize": (posterize, _posterize_bits, False),
    "PosterizeIncreasing": (posterize, lambda m, s: 4 - _posterize_bits(m, s), False),
    "Solarize": (solarize, lambda m, s: jnp.floor(_level(m) * 256), False),
    "SolarizeIncreasing": (solarize, lambda m, s: 256 - jnp.floor(_level(m) * 256), False),
    "SolarizeAdd": (solarize_add, lambda m, s: jnp.floor(_level(m) * 110), False),
    "Color": (color, _enhance, False), "ColorIncreasing": (color, _enhance_increasing, False),
    "Contrast": (contrast, _enhance, False),
    "ContrastIncreasing": (contrast, _enhance_increasing, False),
    "Brightness": (brightness, _enhance, False),
    "BrightnessIncreasing": (brightness, _enhance_increasing, False),
    "Sharpness": (sharpness, _enhance, False),
    "SharpnessIncreasing": (sharpness, _enhance_increasing, False),
    "ShearX": (shear_x, lambda m, s: s * _level(m) * 0.3, True),
    "ShearY": (shear_y, lambda m, s: s * _level(m) * 0.3, True),
    "TranslateXRel": (translate_x, lambda m, s: s * _level(m) * 0.45, True),
    "TranslateYRel": (translate_y, lambda m, s: s * _level(m) * 0.45, True),
}


def apply_op(name: str, image, magnitude, sign, fill=FILL):
  """One timm op at `magnitude` (0..10) with `sign` (+1, -1: the random negation)."""
  op, level, geometric = _OPS[name]
  args = () if level is None else (level(jnp.float32(magnitude), jnp.float32(sign)),)
  return op(image, *args, fill) if geometric else op(image, *args)


def _layer(x, index, magnitude, sign, ops: tuple[str, ...], fill):
  """Op `index` of `ops` on x. Every candidate is computed (under vmap a switch would select
  among all branches anyway), but the geometric ops share one bicubic resampling: their matrix
  is chosen first."""
  h, w = x.shape[:2]
  matrix, outputs = jnp.eye(2, 3).reshape(-1), []
  for i, name in enumerate(ops):
    op, level, geometric = _OPS[name]
    if geometric:
      chosen = jnp.stack([jnp.asarray(v, jnp.float32)
                          for v in _MATRICES[name](level(magnitude, sign), h, w)])
      matrix = jnp.where(index == i, chosen, matrix)
      outputs.append(None)
    else:
      outputs.append(apply_op(name, x, magnitude, sign))
  resampled = affine(x, tuple(matrix), fill)
  return jnp.stack([resampled if out is None else out for out in outputs])[index]


def rand_augment(image, key, spec: RandAugment, fill=FILL):
  """One uint8 (H, W, 3) image through RandAugment, by `key` alone. All of its random numbers
  come from one draw (threefry under vmap is what costs compile time)."""
  x = image.astype(jnp.float32)
  # Per layer: which op, whether it applies, the sign, the magnitude's noise.
  draws = jax.random.uniform(key, (spec.num_ops, 4))
  for layer in range(spec.num_ops):
    pick, apply, negate, noise = draws[layer]
    index = jnp.minimum(jnp.floor(pick * len(spec.ops)).astype(jnp.int32), len(spec.ops) - 1)
    if math.isinf(spec.magnitude_std):
      magnitude = noise * spec.magnitude
    elif spec.magnitude_std > 0:  # N(0, 1) from the uniform, as jax.random.normal makes it.
      normal = jnp.sqrt(2.0) * jax.scipy.special.erfinv(
          jnp.clip(2.0 * noise - 1.0, -1.0 + 1e-7, 1.0 - 1e-7))
      magnitude = spec.magnitude + spec.magnitude_std * normal
    else:
      magnitude = jnp.float32(spec.magnitude)
    magnitude = jnp.clip(magnitude, 0.0, MAX_LEVEL)
    sign = jnp.where(negate < 0.5, -1.0, 1.0)
    changed = _layer(x, index, magnitude, sign, spec.ops, fill)
    x = jnp.where(apply < OP_PROB, changed, x)
  return x.astype(jnp.uint8)


def erase(image, key, prob: float, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3), tries: int = 10):
  """timm's RandomErasing(prob, mode='pixel', max_count=1) of one normalised float (H, W, C)
  image: with probability `prob`, the first of `tries` rectangles that fits is filled with N(0, 1)
  per pixel and channel."""
  h, w = image.shape[:2]
  uniform_key, fill_key = jax.random.split(key)
  draws = jax.random.uniform(uniform_key, (2 * tries + 3,))  # One draw for all the choices.
  target = (area[0] + (area[1] - area[0]) * draws[:tries]) * (h * w)
  log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
  ratio = jnp.exp(log_low + (log_high - log_low) * draws[tries:2 * tries])
  heights = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)  # int(round(...)).
  widths = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
  fits = (widths < w) & (heights < h)
  first = jnp.argmax(fits)
  height, width = heights[first], widths[first]
  # random.randint(0, h - height): both ends included.
  top = jnp.floor(draws[-3] * (h - height + 1)).astype(jnp.int32)
  left = jnp.floor(draws[-2] * (w - width + 1)).astype(jnp.int32)
  rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
  erased = inside & fits.any() & (draws[-1] < prob)
  return jnp.where(erased, jax.random.normal(fill_key, image.shape, image.dtype), image)


def fill_of(normalization: str) -> tuple[int, int, int]:
  """timm's img_mean for RandAugment's fill: round(255 x the normalisation's mean)."""
  from vpt_jax.data import device
  mean = {"imagenet": device._IMAGENET_MEAN, "clip": device._CLIP_MEAN}.get(normalization)
  return FILL if mean is None else tuple(min(255, round(255 * m)) for m in mean)
