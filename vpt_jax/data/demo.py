"""mini_vtab: small offline tasks in VTAB's three groups, made on this machine (no download).

A TFDS builder, so the demo goes through exactly the data path of the real tasks. Configs:
  shapes       the pre-training source task: which of 6 shapes (any colour, size, place)
  digits       natural: scikit-learn's real 8x8 handwritten digits, upscaled and tinted
  gratings     specialized: spatial frequency of a noisy sinusoidal texture (5 classes)
  count        structured: how many objects, 1 to 6 (like clevr_count)
  location     structured: horizontal position of one object, 6 bins (like dsprites_loc)
  orientation  structured: orientation of a bar, 8 bins over 180 degrees (like dsprites_ori)
Every image is 32x32 RGB; each split is generated from its own fixed seed.
"""

import numpy as np
import tensorflow_datasets as tfds

SIZE = 32
SPLITS = {"train": 1000, "validation": 300, "test": 500}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")

_yy, _xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
  dx, dy = _xx - cx, _yy - cy
  if shape == "disc":
    return dx ** 2 + dy ** 2 <= r ** 2
  if shape == "square":
    return (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
  if shape == "triangle":
    return (dy <= r * 0.7) & (dy >= 2 * np.abs(dx) - r)
  if shape == "cross":
    return ((np.abs(dx) <= r * 0.3) | (np.abs(dy) <= r * 0.3)) & (np.abs(dx) <= r) & (
        np.abs(dy) <= r)
  if shape == "ring":
    return (dx ** 2 + dy ** 2 <= r ** 2) & (dx ** 2 + dy ** 2 >= (0.55 * r) ** 2)
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= r
  raise ValueError(shape)


def _canvas(rng):
  background = rng.uniform(0, 90, size=3)
  image = np.broadcast_to(background, (SIZE, SIZE, 3)).copy()
  return image + rng.normal(0, 6, size=image.shape)


def _paint(image, mask, rng):
  image[mask] = rng.uniform(120, 255, size=3)


def _finish(image):
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _shapes_example(rng):
  label = int(rng.integers(len(_SHAPES)))
  image = _canvas(rng)
  r = rng.uniform(5, 10)
  _paint(image, _mask(_SHAPES[label], *rng.uniform(r, SIZE - r, size=2), r), rng)
  return image, label


def _count_example(rng):
  count = int(rng.integers(1, 7))
  image = _canvas(rng)
  centres = []
  while len(centres) < count:  # Objects do not touch, so every one can be counted.
    c = rng.uniform(3.5, SIZE - 3.5, size=2)
    if all(np.hypot(*(c - o)) > 7.5 for o in centres):
      centres.append(c)
  for c in centres:
    _paint(image, _mask(_SHAPES[int(rng.integers(len(_SHAPES)))], *c, 3.2), rng)
  return image, count - 1


def _location_example(rng):
  label = int(rng.integers(6))
  image = _canvas(rng)
  width = (SIZE - 8) / 6
  cx = 4 + (label + rng.uniform(0.1, 0.9)) * width
  _paint(image, _mask(_SHAPES[int(rng.integers(len(_SHAPES)))], cx, rng.uniform(4, SIZE - 4),
                      3.5), rng)
  return image, label


def _orientation_example(rng):
  label = int(rng.integers(8))
  angle = np.pi * (label + rng.uniform(0.1, 0.9)) / 8
  image = _canvas(rng)
  cx, cy = rng.uniform(12, 20, size=2)
  along = (_xx - cx) * np.cos(angle) + (_yy - cy) * np.sin(angle)
  across = -(_xx - cx) * np.sin(angle) + (_yy - cy) * np.cos(angle)
  _paint(image, (np.abs(along) <= 11) & (np.abs(across) <= 1.6), rng)
  return image, label


def _gratings_example(rng):
  label = int(rng.integers(5))
  frequency = (1.5 + 1.1 * label + rng.uniform(-0.3, 0.3)) / SIZE
  angle = rng.uniform(0, np.pi)
  phase = rng.uniform(0, 2 * np.pi)
  wave = np.sin(2 * np.pi * frequency * (_xx * np.cos(angle) + _yy * np.sin(angle)) + phase)
  tint = rng.uniform(0.4, 1.0, size=3)
  image = 128 + 90 * wave[..., None] * tint + rng.normal(0, 25, size=(SIZE, SIZE, 3))
  return image, label


def _digits(split: str):
  from sklearn import datasets  # The data ships inside the package: no download.
  digits = datasets.load_digits()
  order = np.random.default_rng(0).permutation(len(digits.images))
  bounds = {"train": (0, 1000), "validation": (1000, 1297), "test": (1297, 1797)}[split]
  rng = np.random.default_rng(_SPLIT_SEEDS[split] + 100)
  for index in order[bounds[0]:bounds[1]]:
    small = digits.images[index] / 16.0  # 8x8 in [0, 1]
    big = np.kron(small, np.ones((4, 4)))  # 32x32
    tint = rng.uniform(0.5, 1.0, size=3)
    image = 20 + 220 * big[..., None] * tint + rng.normal(0, 5, size=(SIZE, SIZE, 3))
    yield _finish(image), int(digits.target[index])


_GENERATORS = {"shapes": _shapes_example, "count": _count_example,
               "location": _location_example, "orientation": _orientation_example,
               "gratings": _gratings_example}
NUM_CLASSES = {"shapes": 6, "digits": 10, "gratings": 5, "count": 6, "location": 6,
               "orientation": 8}
_SOURCE_SPLITS = {"train": 10000, "validation": 1000, "test": 1000}


class MiniVtab(tfds.core.GeneratorBasedBuilder):
  """Small offline tasks for the demo; see the module docstring."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=name)
                     for name in NUM_CLASSES]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES[self.builder_config.name]),
        }), supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    sizes = _SOURCE_SPLITS if self.builder_config.name == "shapes" else SPLITS
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, n):
    name = self.builder_config.name
    if name == "digits":
      examples = _digits(split)
    else:
      rng = np.random.default_rng([_SPLIT_SEEDS[split], list(NUM_CLASSES).index(name)])
      examples = ((_finish(image), label) for image, label in
                  (_GENERATORS[name](rng) for _ in range(n)))
    for index, (image, label) in enumerate(examples):
      yield f"{split}_{index}", {"image": image, "label": label}
