"""One finished run's report, in its own folder (<run>/report/): what a researcher opens after a
run. Per-class accuracy (CSV and Markdown), the confusion matrix and the training curves (PNG),
all from what the run saved: its evaluation logits and its metrics rows.
"""

import os

import numpy as np

from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import plots, report
from vpt_jax.training import artifacts, metrics
from vpt_jax.utils import files

DIRECTORY = "report"


def class_names(task: str, num_classes: int) -> list[str]:
  """The task's readable class names where its record has them (a custom folder's class
  folders or classes.txt), else the label numbers."""
  try:
    names = tasks_lib.get(task).class_names
  except ValueError:  # A custom folder that moved since the run: its labels still read.
    names = None
  return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


def confusion_matrix(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts (true class, predicted class) of the argmax of `logits`."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels.astype(np.int64), np.argmax(logits, axis=1)), 1)
  return matrix


def per_class_rows(matrix: np.ndarray, names: list[str]) -> list[dict]:
  rows = []
  for label, (name, counts) in enumerate(zip(names, matrix)):
    total = int(counts.sum())
    rows.append({"label": label, "class": name, "examples": total, "correct": int(counts[label]),
                 "accuracy": round(100 * counts[label] / total, 2) if total else None})
  return rows


def _markdown(result: dict, split: str, rows: list[dict], figures: list[str]) -> str:
  accuracy = result.get(f"{split}_accuracy")
  lines = [f"# {tasks_lib.short_name(result['task'])} / {result['method']} / seed {result['seed']}",
           "", f"Task `{result['task']}`; {split} top-1 {100 * accuracy:.2f}% on "
           f"{result['eval_examples']} images; trained on {result['train_subset']}.", ""]
  if rows:
    lines += ["| label | class | examples | correct | accuracy (%) |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['class']} | {r['examples']} | {r['correct']} | "
              f"{'—' if r['accuracy'] is None else r['accuracy']} |" for r in rows]
    lines.append("")
  lines += [f"![{name}]({name})" for name in figures]
  return "\n".join(lines) + "\n"


def write(run_dir: str) -> str:
  """Writes <run_dir>/report/ (report.md, per_class.csv, confusion.png, curves.png as the run's
  files allow); returns the report.md path."""
  result = files.read_json(os.path.join(run_dir, "result.json"))
  split = "test" if "test_accuracy" in result else "val"
  out_dir = os.path.join(run_dir, DIRECTORY)
  os.makedirs(out_dir, exist_ok=True)
  title = f"{tasks_lib.short_name(result['task'])} / {result['method']} ({split})"
  figures, rows = [], []
  logits_path = os.path.join(run_dir, result.get("predictions", ""))
  if result.get("predictions") and os.path.exists(logits_path):
    arrays = files.read_npz(logits_path)
    logits, labels = arrays["logits"].astype(np.float32), arrays["labels"]
    matrix = confusion_matrix(logits, labels, logits.shape[1])
    names = class_names(result["task"], logits.shape[1])
    rows = per_class_rows(matrix, names)
    files.write_text(os.path.join(out_dir, "per_class.csv"), report.csv_text(rows))
    plots.confusion(matrix, names, os.path.join(out_dir, "confusion.png"), title)
    figures.append("confusion.png")
  stage_rows = metrics.read(artifacts.stage_dirs(run_dir)[-1])
  if stage_rows:
    plots.training_curves(stage_rows, os.path.join(out_dir, "curves.png"), title)
    figures.append("curves.png")
  path = os.path.join(out_dir, "report.md")
  files.write_text(path, _markdown(result, split, rows, figures))
  return path
