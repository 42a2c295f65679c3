"""Classifying image files with a finished run (launch/predict.py): each image decoded and resized
as the run's evaluation did (vpt_jax/data/folder_source.py), normalised and centre-cropped on the
device, in batches of one fixed shape (the last one padded) so that one program compiles; the
top-k classes and their probabilities per image, in a CSV. A folder whose subfolders are class
names is a labelled set: its accuracy and confusion matrix come too."""

import concurrent.futures
import csv
import dataclasses
import os

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from vpt_jax.data import folder_source
from vpt_jax.inference.run import FinishedRun
from vpt_jax.study import plots, run_report

# File name endings PIL can open (it decodes by content; this only chooses which files to try).
IMAGE_SUFFIXES = tuple(sorted({s.lower() for s in Image.registered_extensions()}))


class InputError(ValueError):
  """Inputs that name no image at all."""


@dataclasses.dataclass(frozen=True)
class Inputs:
  paths: list[str]  # In the order given; a folder's images sorted by path.
  labels: list[int] | None  # Class indices when every input is a labelled folder, else None.
  unlabelled_reason: str = ""  # Why there are no labels ("" when there are, or none were sought).


def _folder_images(folder: str) -> list[str]:
  found = []
  for root, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, n) for n in sorted(names)
              if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")]
  return found


def _labelled(folder: str, images: list[str], class_names: list[str]) -> tuple[list[int] | None, str]:
  """Class indices from each image's first subfolder when those subfolders are class names."""
  index = {name: i for i, name in enumerate(class_names)}
  tops = [os.path.relpath(p, folder).split(os.sep) for p in images]
  if any(len(parts) < 2 for parts in tops):
    return None, f"{folder} holds images outside class subfolders"
  unknown = sorted({parts[0] for parts in tops} - set(index))
  if unknown:
    return None, f"subfolder {unknown[0]!r} of {folder} is not one of the run's class names"
  return [index[parts[0]] for parts in tops], ""


def collect(inputs: list[str], class_names: list[str]) -> Inputs:
  """The image files of `inputs` (files, and folders searched recursively); labels when every
  input is a folder of class subfolders."""
  if not inputs:
    raise InputError("Give one or more images or folders to classify.")
  paths, labels, reason = [], [], ""
  for item in inputs:
    if os.path.isdir(item):
      found = _folder_images(item)
      if not found:
        raise InputError(f"{item} holds no image files (looked for {', '.join(IMAGE_SUFFIXES[:6])}, ...).")
      folder_labels, why = _labelled(item, found, class_names)
      reason = reason or why
      labels = None if folder_labels is None or labels is None else labels + folder_labels
      paths += found
    elif os.path.exists(item):
      paths.append(item)
      labels, reason = None, reason or f"{item} is a single file"
    else:
      raise InputError(f"{item}: no such file or folder.")
  return Inputs(paths, labels, reason if labels is None else "")


def _load(path: str, size: int, resize: str) -> np.ndarray | str:
  """(size, size, 3) uint8 as the run's evaluation resized it, or why the file cannot be read."""
  try:
    with Image.open(path) as image:
      return folder_source.resize(image.convert("RGB"), size, resize)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@dataclasses.dataclass(frozen=True)
class Predictions:
  paths: list[str]  # The images classified, in input order.
  logits: np.ndarray  # (N, classes) float32.
  labels: np.ndarray | None  # (N,) class indices of a labelled folder, else None.
  skipped: list[tuple[str, str]]  # (path, why) of each file that could not be read.

  @property
  def probabilities(self) -> np.ndarray:
    z = np.exp(self.logits - self.logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def classify(run: FinishedRun, inputs: Inputs, batch_size: int = 64, progress: bool = True) -> Predictions:
  """Logits of every readable image of `inputs`; one compiled program for every batch."""
  prep = run.preprocessing
  apply = jax.jit(lambda params, images: run.model.apply({"params": params}, prep.prepare(images))[0])
  params = jax.device_put(run.params)
  kept, logits, skipped = [], [], []
  labels = [] if inputs.labels is not None else None
  starts = range(0, len(inputs.paths), batch_size)
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    for start in tqdm(starts, desc="predict", unit="batch", disable=None if progress else True):
      chunk = inputs.paths[start:start + batch_size]
      loaded = list(pool.map(lambda p: _load(p, prep.stored_size, prep.resize), chunk))
      images = []
      for offset, (path, image) in enumerate(zip(chunk, loaded)):
        if isinstance(image, str):
          skipped.append((path, image))
          continue
        kept.append(path)
        images.append(image)
        if labels is not None:
          labels.append(inputs.labels[start + offset])
      if not images:
        continue
      batch = np.zeros((batch_size,) + images[0].shape, np.uint8)
      batch[:len(images)] = np.stack(images)
      logits.append(np.asarray(apply(params, batch), np.float32)[:len(images)])
  logits = np.concatenate(logits) if logits else np.zeros((0, run.num_classes), np.float32)
  return Predictions(kept, logits, None if labels is None else np.asarray(labels, np.int64), skipped)


def csv_header(top_k: int) -> list[str]:
  columns = ["path"]
  for rank in range(1, top_k + 1):
    columns += [f"top{rank}_label", f"top{rank}_class", f"top{rank}_probability"]
  return columns + ["true_label", "true_class", "correct"]


def write_csv(path: str, predictions: Predictions, class_names: list[str], top_k: int) -> None:
  """One row per image: its path, the top-k labels, class names and probabilities (highest
  first) and, for a labelled folder, the true class and whether top-1 is right."""
  top_k = min(top_k, len(class_names))
  probabilities = predictions.probabilities
  order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    header = csv_header(top_k)
    writer.writerow(header if predictions.labels is not None else header[:-3])
    for row, (image, ranked) in enumerate(zip(predictions.paths, order)):
      cells = [image]
      for label in ranked:
        cells += [int(label), class_names[label], f"{probabilities[row, label]:.6f}"]
      if predictions.labels is not None:
        true = int(predictions.labels[row])
        cells += [true, class_names[true], int(ranked[0] == true)]
      writer.writerow(cells)


def confusion_text(matrix: np.ndarray, class_names: list[str], width: int = 12) -> str:
  """The confusion matrix as a table (rows: true class, columns: predicted), names cut to `width`."""
  names = [name[:width] for name in class_names]
  cell = max(width, len(str(int(matrix.max(initial=0)))) + 1)
  lines = [" " * cell + "".join(f"{n:>{cell}}" for n in names) + "   <- predicted"]
  lines += [f"{n:>{cell}}" + "".join(f"{int(c):>{cell}}" for c in row) for n, row in zip(names, matrix)]
  return "\n".join(lines)


def evaluate(predictions: Predictions, class_names: list[str], png_path: str, title: str) -> dict:
  """Accuracy and the confusion matrix of a labelled folder (also drawn to `png_path`)."""
  matrix = run_report.confusion_matrix(predictions.logits, predictions.labels, len(class_names))
  plots.confusion(matrix, class_names, png_path, title)
  return {"accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)), "matrix": matrix,
          "figure": png_path}


def summary(run: FinishedRun, predictions: Predictions, csv_path: str, inputs: Inputs,
            evaluation: dict | None, max_listed: int = 10) -> list[str]:
  """What the command prints after the CSV is written."""
  lines = [f"{len(predictions.paths)} images classified by {run.workdir} ({run.method}, "
           f"{run.num_classes} classes, {run.preprocessing.resolution} px) -> {csv_path}"]
  if predictions.skipped:
    lines.append(f"{len(predictions.skipped)} files skipped (they cannot be read as images):")
    lines += [f"  {path}: {why}" for path, why in predictions.skipped[:max_listed]]
    if len(predictions.skipped) > max_listed:
      lines.append(f"  ... and {len(predictions.skipped) - max_listed} more")
  if len(predictions.paths):
    top = np.argmax(predictions.logits, axis=1)
    counts = np.bincount(top, minlength=run.num_classes)
    common = ", ".join(f"{run.class_names[i]} {counts[i]}" for i in np.argsort(-counts, kind="stable")[:5]
                       if counts[i])
    lines.append(f"Top-1 classes: {common}")
  if evaluation is not None:
    lines.append(f"Accuracy {100 * evaluation['accuracy']:.2f}% on {len(predictions.paths)} labelled "
                 f"images (the run's own {run.accuracy['split']} accuracy: "
                 f"{100 * run.accuracy['accuracy']:.2f}%); confusion matrix -> {evaluation['figure']}")
    if run.num_classes <= 20:
      lines.append(confusion_text(evaluation["matrix"], run.class_names))
  elif inputs.unlabelled_reason:
    lines.append(f"No accuracy: {inputs.unlabelled_reason} (a folder whose subfolders are class "
                 "names is scored).")
  return lines
