"""The paper's figures from a sweep directory, as PNG files."""

import glob
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from vpt_jax.training import metrics
from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib

COLORS = {"full": "tab:blue", "vpt_deep": "tab:orange", "vpt_shallow": "tab:green",
          "linear": "tab:gray", "mixed": "tab:purple", "ft_then_pt": "tab:brown",
          "lp_ft": "tab:pink"}
PROMPT_METHOD = "vpt_deep"


def _save(fig, out_path: str, dpi: int) -> bool:
  fig.tight_layout()
  fig.savefig(out_path, dpi=dpi)
  plt.close(fig)
  return True


def _color(method):
  """The method's color in every plot: its own for the main methods, else one of tab20b's and
  tab20c's (hues tab10's do not use) by its place in the method registry, so two methods never share one."""
  if method in COLORS:
    return COLORS[method]
  others = [name for name in methods.names() if name not in COLORS]
  palette = plt.get_cmap("tab20b").colors + plt.get_cmap("tab20c").colors
  return palette[others.index(method) % len(palette)] if method in others else None


def loss_curves(sweep_dir: str, out_path: str, setting: str = "vtab1k",
                methods=("full", PROMPT_METHOD)) -> dict | bool:
  """Per task, the training loss per epoch of each method's first final run (its smallest seed:
  seed42 under the paper's seeds), and its test loss where the run logged one
  (eval_every_epochs > 0): over-fitting at a glance. The training loss is the epoch's running
  mean (`train_loss_running`, every run logs it), or the loss of an evaluation pass over the
  training set where one was logged (`train_loss`).

  Returns the rows drawn {task: {method: [{"epoch", "train_loss", "eval_loss" (or None)}]}}, or
  False (and draws nothing) when no final run has logged an epoch.
  """
  curves = {}
  seed = lambda workdir: int(re.sub(r"\D", "", os.path.basename(workdir)) or 0)
  for method in methods:
    for group in glob.glob(os.path.join(sweep_dir, setting, "*", method)):
      for workdir in sorted(glob.glob(os.path.join(group, "final", "seed*")), key=seed):
        rows = [{"epoch": r["epoch"], "train_loss": r.get("train_loss", r.get("train_loss_running")),
                 "eval_loss": r.get("eval_loss")}
                for r in metrics.read(workdir) if "epoch" in r]
        rows = [r for r in rows if r["train_loss"] is not None]
        if rows:
          curves.setdefault(os.path.basename(os.path.dirname(group)), {})[method] = rows
          break
  tasks = sorted(curves)
  if not tasks:
    return False
  fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for method, rows in curves[task].items():
      ax.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], "--",
              color=_color(method), label=f"{method} train")
      tested = [r for r in rows if r["eval_loss"] is not None]
      if tested:
        ax.plot([r["epoch"] for r in tested], [r["eval_loss"] for r in tested], "-",
                color=_color(method), label=f"{method} test")
    ax.set_title(task)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=7)
  fig.suptitle("Loss per epoch\ntrain dashed, test solid (where evaluated)", fontsize=9)
  _save(fig, out_path, 110)
  return curves


def data_scale(cells_by_setting: dict, out_path: str) -> bool:
  """Test accuracy against training-set size, one panel per task, one line per method."""
  points = {}
  for setting, cells in cells_by_setting.items():
    match = re.fullmatch(r"scale(\d+)", setting)
    if not match:
      continue
    for (task, method), cell in cells.items():
      points.setdefault(task, {}).setdefault(method, []).append(
          (int(match.group(1)), cell.mean, cell.std))
  tasks = sorted(points)
  if not tasks:
    return False
  fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for method, values in sorted(points[task].items()):
      sizes, means, stds = map(np.asarray, zip(*sorted(values)))
      ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, color=_color(method),
                  label=method)
    ax.set_xscale("log")
    ax.set_title(task)
    ax.set_xlabel("N (search: N train + N/4 val; final: trains on 1.25 N)", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8)
  return _save(fig, out_path, 110)


def distance_chart(distances: dict[str, float], cells: dict, out_path: str,
                   prompt_method: str = PROMPT_METHOD, baseline: str = "full") -> bool:
  """Tasks placed by data distance (x) and task disparity (y: the VTAB group, from objectives
  like pre-training's to structured ones), coloured by the winner of `prompt_method` vs FT."""
  levels = {"natural": 0, "specialized": 1, "structured": 2}
  placed = []
  for task, distance in distances.items():
    if (task, prompt_method) in cells and (task, baseline) in cells:
      winner = prompt_method if cells[(task, prompt_method)].mean > cells[(task, baseline)].mean \
          else baseline
      placed.append((task, distance, levels[tasks_lib.get(task).group], winner))
  if not placed:
    return False
  fig, ax = plt.subplots(figsize=(7, 4))
  for winner in (prompt_method, baseline):
    chosen = [p for p in placed if p[3] == winner]
    if chosen:
      ax.scatter([p[1] for p in chosen], [p[2] for p in chosen], s=70, color=_color(winner),
                 label=f"{winner} wins", edgecolor="black")
  for task, distance, level, _ in placed:
    ax.annotate(task, (distance, level), textcoords="offset points", xytext=(5, 6), fontsize=8)
  ax.set_yticks(list(levels.values()), [g.capitalize() for g in levels])
  ax.set_ylim(-0.5, 2.5)
  ax.set_xlabel("data distance to the pre-training images (Fréchet distance)")
  ax.set_ylabel("task disparity")
  ax.legend()
  return _save(fig, out_path, 110)


def read_distances(path: str) -> dict[str, float]:
  with open(path) as f:
    return {task: value["distance"] for task, value in json.load(f).items()}


def ensembles(analysis: dict, out_path: str) -> bool:
  """Per task: each method's accuracy (mean of seeds), its seed ensemble and the requested
  method ensembles, as bars; beside it the error disagreement matrix averaged over tasks."""
  if not analysis:
    return False
  tasks = list(analysis)
  predictors = list(dict.fromkeys(
      [m for a in analysis.values() for m in a["single"]]
      + [f"{m} (seeds)" for a in analysis.values() for m in a["seed_ensembles"]]
      + [e for a in analysis.values() for e in a["ensembles"]]))
  values = np.full((len(tasks), len(predictors)), np.nan)
  for i, a in enumerate(analysis.values()):
    for j, name in enumerate(predictors):
      if name in a["single"]:
        values[i, j] = a["single"][name]
      elif name.endswith(" (seeds)") and name[:-8] in a["seed_ensembles"]:
        values[i, j] = a["seed_ensembles"][name[:-8]]
      elif name in a["ensembles"]:
        values[i, j] = a["ensembles"][name][0]
  methods = sorted({m for a in analysis.values() for m in a["methods"]})
  matrix = np.full((len(methods), len(methods)), np.nan)
  for a in analysis.values():  # Mean over the tasks where both methods ran.
    stacked = np.full((len(methods), len(methods)), np.nan)
    index = [methods.index(m) for m in a["methods"]]
    stacked[np.ix_(index, index)] = a["disagreement"]
    matrix = np.where(np.isnan(matrix), 0, matrix) + np.nan_to_num(stacked)
  matrix = matrix / len(analysis)
  fig, (bars, heat) = plt.subplots(1, 2, figsize=(6 + 1.2 * len(tasks), 5.5),
                                   gridspec_kw={"width_ratios": [max(2, len(tasks)), 2]})
  width = 0.8 / len(predictors)
  for j, name in enumerate(predictors):
    bars.bar(np.arange(len(tasks)) + j * width, 100 * values[:, j], width, label=name)
  bars.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2)
  bars.set_xticklabels(tasks, rotation=30, ha="right")
  bars.set_ylabel("test top-1 (%)")
  bars.set_title("Methods and prediction ensembles")
  bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
  image = heat.imshow(100 * matrix, cmap="viridis")
  heat.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
  heat.set_yticks(range(len(methods)), methods)
  heat.set_title("Examples where exactly one errs (%)\nmean over tasks")
  fig.colorbar(image, ax=heat, fraction=0.046)
  return _save(fig, out_path, 120)


def robustness(shift_rows: dict, wise_curves: dict, out_path: str) -> bool:
  """Clean vs shifted test accuracy per method (mean over tasks and seeds) and, per WiSE-FT
  (task, method), accuracy along a, clean and shifted."""
  if not shift_rows and not wise_curves:
    return False
  panels = 1 + bool(wise_curves)
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
  left = axes[0, 0]
  methods = sorted(shift_rows)
  columns = list(dict.fromkeys(k for row in shift_rows.values() for k in row))
  width = 0.8 / max(1, len(columns))
  for j, column in enumerate(columns):
    left.bar(np.arange(len(methods)) + j * width,
             [100 * shift_rows[m].get(column, np.nan) for m in methods], width, label=column)
  left.set_xticks(np.arange(len(methods)) + 0.4 - width / 2)
  left.set_xticklabels(methods, rotation=30, ha="right")
  left.set_ylabel("test top-1 (%), mean over tasks")
  left.set_title("Clean vs shifted test sets")
  left.legend(fontsize=7)
  if wise_curves:
    right = axes[0, 1]
    for (task, method), curve in wise_curves.items():
      for name, accuracies in curve["test"].items():
        style = "-" if name == "clean" else ":"
        right.plot(curve["alphas"], 100 * np.asarray(accuracies), style,
                   label=f"{task}/{method} {name}")
      right.axvline(curve["selected_alpha"], color="gray", lw=0.8)
    right.set_xlabel("a in (1 - a) * pre-trained + a * fine-tuned")
    right.set_ylabel("test top-1 (%), mean over seeds")
    right.set_title("WiSE-FT (vertical line: a chosen on val200)")
    right.legend(fontsize=6)
  return _save(fig, out_path, 120)


def many_shot(curves: dict, out_path: str) -> bool:
  """Mai et al.'s many-shot benchmark: test top-1 against the training set's size (log), one
  panel per dataset, one line per method; the authors' released results dashed, hollow markers
  (vpt_jax/study/many_shot.py curves)."""
  datasets = sorted(curves)
  if not datasets:
    return False
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    for label, points in sorted(curves[dataset].items()):
      sizes, accuracies = zip(*points)
      released = label.endswith("(released)")
      method = label.split(" ")[0]
      ax.plot(sizes, accuracies, linestyle="--" if released else "-", marker="o",
              markerfacecolor="none" if released else None, color=_color(method), label=label)
    ax.set_xscale("log")
    ax.set_title(dataset)
    ax.set_xlabel("training examples (the final runs' combined set)", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=7)
  return _save(fig, out_path, 110)


def imagenet_wise(curves: dict, out_path: str) -> bool:
  """Mai et al.'s WiSE-FT figure: ImageNet (ID) top-1 against the mean over ImageNet-V2,
  -Sketch, -A and -R (OOD), one curve per method, a point per alpha (the zero-shot end marked
  with a circle); released curves (labels naming their source) dashed
  (vpt_jax/study/imagenet_shift.py curves)."""
  shifts = tasks_lib.IMAGENET_SHIFTS
  drawable = {label: curve for label, curve in curves.items()
              if "imagenet" in curve and all(name in curve for name in shifts)}
  if not drawable:
    return False
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for label, curve in sorted(drawable.items()):
    ood = np.mean([curve[name] for name in shifts], axis=0)
    released = "(" in label
    line, = ax.plot(curve["imagenet"], ood, "--" if released else "-", marker=".",
                    color=_color(label.split(" ")[0]), label=label)
    ax.plot(curve["imagenet"][0], ood[0], "o", mfc="none", color=line.get_color())
  ax.set_xlabel("ImageNet top-1 (%)")
  ax.set_ylabel("mean OOD top-1 (%): V2, Sketch, A, R")
  ax.set_title("WiSE-FT, a = 0 (circle) .. 1")
  ax.legend(fontsize=6)
  return _save(fig, out_path, 120)


# --- One run's figures (launch/main.py writes them into the run folder) --------------------------

def confusion(matrix: np.ndarray, class_names, out_path: str, title: str) -> np.ndarray:
  """The confusion matrix (rows: true class, columns: predicted), each row as a fraction of its
  class, class names on both axes (every name up to 40 classes, then every n-th); returns the
  fractions drawn."""
  counts = np.asarray(matrix, np.float64)
  drawn = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  n = len(drawn)
  size = min(3 + 0.28 * n, 16)
  fig, ax = plt.subplots(figsize=(size + 1.2, size))
  image = ax.imshow(drawn, cmap="Blues", vmin=0, vmax=1)
  ticks = np.arange(0, n, max(1, -(-n // 40)))
  ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=90, fontsize=7)
  ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=7)
  if n <= 15:  # Small matrices carry their counts.
    for (row, column), count in np.ndenumerate(counts):
      ax.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=7,
              color="white" if drawn[row, column] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
  _save(fig, out_path, 110)
  return drawn


def training_curves(rows: list[dict], out_path: str, title: str) -> dict:
  """Loss, accuracy and learning rate per epoch of one run's metrics rows (the running training
  values of every epoch; train and held-out evaluations where they were logged); returns the
  series drawn, by name."""
  series = {}
  epochs = [r["epoch"] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  panels = ((axes[0], "loss", ("train_loss_running", "train_loss", "eval_loss")),
            (axes[1], "accuracy (%)", ("train_accuracy_running", "train_accuracy", "eval_accuracy")),
            (axes[2], "learning rate", ("learning_rate",)))
  for ax, label, keys in panels:
    for key in keys:
      points = [(r["epoch"], r[key]) for r in rows if key in r]
      if not points:
        continue
      x, y = zip(*points)
      y = [100 * v for v in y] if "accuracy" in key else list(y)
      series[key] = (list(x), y)
      ax.plot(x, y, "-o" if len(points) < 30 else "-", markersize=3,
              label=key.replace("_running", " (running)").replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if len(keys) > 1:
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  _save(fig, out_path, 110)
  return series


def comparison(cells: dict, out_path: str, title: str, task_label=lambda t: t) -> dict:
  """One bar per (task, method) of a multi-run command: accuracy (mean, with the seeds' range
  where there are several), tasks side by side; returns {(task, method): height drawn}."""
  tasks = sorted({t for t, _ in cells}, key=list(tasks_lib.TASKS).index
                 if all(t in tasks_lib.TASKS for t, _ in cells) else str)
  run_methods = list(dict.fromkeys(m for _, m in cells))
  width = 0.8 / len(run_methods)
  fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(tasks) * max(1, len(run_methods) / 2)), 3.6))
  drawn = {}
  for j, method in enumerate(run_methods):
    x = [i + (j - (len(run_methods) - 1) / 2) * width for i, t in enumerate(tasks)
         if (t, method) in cells]
    present = [t for t in tasks if (t, method) in cells]
    heights = [cells[(t, method)].mean for t in present]
    spread = [cells[(t, method)].std for t in present]
    bars = ax.bar(x, heights, width, yerr=spread if any(spread) else None, color=_color(method),
                  label=method)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    drawn.update({(t, method): h for t, h in zip(present, heights)})
  ax.set_xticks(range(len(tasks)), [task_label(t) for t in tasks], rotation=30 if len(tasks) > 4
                else 0, fontsize=8)
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  _save(fig, out_path, 110)
  return drawn
