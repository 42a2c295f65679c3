"""The image-folder data sources: images decoded with PIL from split lists (vpt_jax/data/lists.py).

`folder` reads VTAB-1k as NOAH's get_vtab1k.py writes it (and PETL_Vision reads it):
<data_dir>/<task>/{train800,val200,train800val200,test}.txt, and custom folders (task=folder:
<path>) in the layouts of vpt_jax/data/layouts.py. `json_source` reads FGVC through the same
decoding. Shifted test copies (eval_shifts) are shifts.py's transforms of the decoded images,
the same as the TFDS source makes of the same images (TensorFlow is imported for them only).

Resizing, by data.resize, the same numbers as the TFDS source gives for the same decoded image:
  tf1_bilinear, bilinear  TensorFlow's ResizeBilinear kernel without and with half-pixel centres,
                          restated in NumPy float32 (`tf_bilinear`), rounded to uint8.
  short_side              torchvision's Resize(R) on a PIL image (PIL's bilinear filter, the
                          shorter side to R, aspect kept), then the centre R x R square
                          (CenterCrop's rounding): KMnP/vpt src/data/transforms.py before its crop.
  bicubic                 the same with PIL's bicubic filter: PETL_Vision's many-shot Resize(256,
                          bicubic) (data/dataset/cifar100.py, resisc.py); its sets are square.
  squash_bicubic          torchvision's Resize((R, R), bicubic) on a PIL image, aspect not kept
                          (PETL_Vision data/dataset/few_shot.py's ImageNet evaluation transform).
No TensorFlow is imported here otherwise.
"""

import concurrent.futures
import dataclasses
import os
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from vpt_jax.data import layouts, lists, pipeline, shifts
from vpt_jax.data import tasks as tasks_lib

_CHUNK = 256  # Images decoded at once (bounds the memory of a streamed split).


def _weights(in_size: int, out_size: int, half_pixel_centers: bool):
  """TensorFlow's compute_interpolation_weights: float32 source positions, the lower index
  clamped at 0, the upper (the position's ceiling) at the edge."""
  scale = np.float32(in_size) / np.float32(out_size)
  out = np.arange(out_size, dtype=np.float32)
  position = (out + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel_centers else out * scale
  floor = np.floor(position)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
  return lower, upper, (position - floor).astype(np.float32)


def tf_bilinear(image: np.ndarray, size: int, half_pixel_centers: bool) -> np.ndarray:
  """(H, W, C) -> (size, size, C) float32 as TensorFlow's ResizeBilinear computes it
  (compute_lerp: each row interpolated along x, then the two rows along y)."""
  x = image.astype(np.float32)
  y_lower, y_upper, y_lerp = _weights(image.shape[0], size, half_pixel_centers)
  x_lower, x_upper, x_lerp = _weights(image.shape[1], size, half_pixel_centers)
  x_lerp = x_lerp[None, :, None]
  rows_lower, rows_upper = x[y_lower], x[y_upper]
  top = rows_lower[:, x_lower] + (rows_lower[:, x_upper] - rows_lower[:, x_lower]) * x_lerp
  bottom = rows_upper[:, x_lower] + (rows_upper[:, x_upper] - rows_upper[:, x_lower]) * x_lerp
  return top + (bottom - top) * y_lerp[:, None, None]


def short_side(image: Image.Image, size: int, kernel=Image.BILINEAR) -> np.ndarray:
  """torchvision Resize(size) (the shorter side to `size`, the longer int(size * long / short))
  with PIL's `kernel` (bilinear unless given), then the centre size x size square."""
  width, height = image.size
  if width <= height:
    new = (size, int(size * height / width))
  else:
    new = (int(size * width / height), size)
  if new != image.size:
    image = image.resize(new, kernel)
  left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)))


def resize(image: Image.Image, resolution: int, method: str) -> np.ndarray:
  """A decoded RGB image -> (R, R, 3) uint8."""
  if method == "short_side":
    return short_side(image, resolution)
  if method == "bicubic":
    return short_side(image, resolution, Image.BICUBIC)
  if method == "squash_bicubic":  # torchvision Resize((R, R), interpolation=3) on a PIL image.
    return np.asarray(image if image.size == (resolution, resolution)
                      else image.resize((resolution, resolution), Image.BICUBIC))
  if method in ("tf1_bilinear", "bilinear"):
    resized = tf_bilinear(np.asarray(image), resolution, method == "bilinear")
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)
  raise ValueError(f"data.resize={method!r} must be one of {', '.join(pipeline.RESIZE_METHODS)}.")


def decode(entry: lists.Entry) -> Image.Image:
  """The entry's image in RGB (torchvision's default_loader: PIL, convert("RGB"))."""
  try:
    with Image.open(entry.path) as image:
      return image.convert("RGB")
  except FileNotFoundError:
    raise lists.BadDataError(f"{entry.where}: image {entry.path} is missing.") from None
  except (UnidentifiedImageError, OSError) as e:
    raise lists.BadDataError(f"{entry.where}: image {entry.path} cannot be decoded ({e}).") from None


def entries(task: tasks_lib.Task, subset: str, data_dir: str | None) -> list[lists.Entry]:
  """The subset's images and labels, in list order."""
  if task.group == tasks_lib.CUSTOM:
    return layouts.entries(task, subset)
  folder = lists.txt_dir(task, data_dir)
  names = lists.list_files(task, lists.txt_formats(task), subset)
  for name in names:
    if not os.path.exists(os.path.join(folder, name)):
      raise pipeline.DataNotPreparedError(f"Task {task.name}: {os.path.join(folder, name)} does "
                                          "not exist" + _HOW.get(task.group, _HOW[None]))
  root = lists.image_root(task, data_dir)
  return [entry for name in names
          for entry in lists.read_txt(os.path.join(folder, name), root, task.num_classes)]


_HOW = {None: " (write VTAB-1k's folders with NOAH's get_vtab1k.py, or use data.source=tfds).",
        tasks_lib.MANY_SHOT: " (RESISC45: config.data.split_dir is PETL_Vision's data/annotations;"
                             " CIFAR-100 from a folder: train.txt lists its 50,000 training "
                             "images in torchvision's order, test.txt the test set)."}


def decoded(items: list[lists.Entry], resolution: int, resize_method: str) -> Iterator[dict]:
  """{"image": (R, R, 3) uint8, "label": int32} of `items`, in order, decoded by a few threads
  (PIL releases the interpreter while it decodes and resizes)."""
  convert = lambda entry: resize(decode(entry), resolution, resize_method)
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    for start in range(0, len(items), _CHUNK):
      chunk = items[start:start + _CHUNK]
      for entry, image in zip(chunk, pool.map(convert, chunk)):
        yield {"image": image, "label": np.int32(entry.label)}


def subsets(task: tasks_lib.Task):
  """The subsets `prepare` checks: a custom folder's splits, else the task's list files'."""
  return layouts.subsets(task) if task.group == tasks_lib.CUSTOM else lists.txt_formats(task)


def _decodes(entry: lists.Entry) -> None:
  """Decodes the whole image (a truncated file fails here, not mid-training) and keeps nothing."""
  decode(entry)


@dataclasses.dataclass(frozen=True)
class ListReader:
  """The reader functions (vpt_jax/data/sources.py) of a source whose subsets are lists of image
  files: `entries(task, subset, data_dir)` reads and checks one subset's list, `subsets(task)`
  names the subsets `prepare` checks, `content_version(task, data_dir)` hashes the lists and
  their images' sizes and mtimes. Images are decoded, resized and shifted here."""
  entries: Callable[[tasks_lib.Task, str, str | None], list[lists.Entry]]
  subsets: Callable[[tasks_lib.Task], Iterable[str]]
  content_version: Callable[[tasks_lib.Task, str | None], str]

  def prepare(self, task: tasks_lib.Task, data_dir: str | None) -> None:
    """Folders are made elsewhere: fails, saying what is missing or wrong in the lists."""
    for subset in self.subsets(task):
      self.entries(task, subset, data_dir)

  def version(self, task: tasks_lib.Task, data_dir: str | None) -> str:
    """The lists' content hash (e.g. "folder_<16 hex>"): edited lists are a new cache entry."""
    self.prepare(task, data_dir)
    return self.content_version(task, data_dir)

  def check(self, task: tasks_lib.Task, data_dir: str | None, subsets_used=(), log=print) -> str:
    """Every check short of decoding (the lists, a custom folder's splits across each other and
    the subsets the run uses); returns the data's version."""
    self.prepare(task, data_dir)
    if task.group == tasks_lib.CUSTOM:
      layouts.check(task, subsets_used, log)
    return self.content_version(task, data_dir)

  def decode_all(self, task: tasks_lib.Task, data_dir: str | None) -> int:
    """Decodes every image of every subset once (a few threads, as `decoded`): a corrupt,
    truncated or missing one is a one-line BadDataError naming it. Returns the image count."""
    unique = {entry.path: entry for subset in self.subsets(task)
              for entry in self.entries(task, subset, data_dir)}
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
      for _ in pool.map(_decodes, unique.values()):
        pass
    return len(unique)

  def examples(self, task: tasks_lib.Task, subset: str, resolution: int, data_dir: str | None,
               resize_method: str, shift: str | None = None) -> Iterator[dict]:
    images = decoded(self.entries(task, subset, data_dir), resolution, resize_method)
    return shifts.shifted_examples(images, shift, resolution) if shift else images

  def batches(self, task: tasks_lib.Task, subset: str, resolution: int, batch_size: int,
              data_dir: str | None, resize_method: str,
              shift: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    images, labels = [], []
    for example in self.examples(task, subset, resolution, data_dir, resize_method, shift):
      images.append(example["image"])
      labels.append(example["label"])
      if len(labels) == batch_size:
        yield {"image": np.stack(images), "label": np.asarray(labels, np.int32)}
        images, labels = [], []
    if labels:
      yield {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


READER = ListReader(entries, subsets, lists.txt_version)
prepare, version, examples, batches = READER.prepare, READER.version, READER.examples, READER.batches
check, decode_all = READER.check, READER.decode_all
