"""Tables like the paper's, recomputed from the result.json files of a sweep's final runs."""

import collections
import csv
import dataclasses
import glob
import io
import os

import numpy as np

from vpt_jax import files, published
from vpt_jax.data import tasks as tasks_lib

BASELINE = "full"


@dataclasses.dataclass
class Cell:
  accuracies: list[float]  # Percent, one per seed.
  tuned_percent: float
  wall_seconds: float = 0.0  # Summed over seeds.

  @property
  def mean(self) -> float:
    return float(np.mean(self.accuracies))

  @property
  def std(self) -> float:
    return float(np.std(self.accuracies))


def collect(sweep_dir: str):
  """{setting: {(task, method): Cell}} from final runs, plus failed and unfinished run dirs."""
  cells = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", "*", "final", "seed*",
                                            "result.json"))):
    result = files.read_json(path)
    setting = os.path.relpath(path, sweep_dir).split(os.sep)[0]
    key = (result["task"], result["method"])
    cell = cells[setting].setdefault(key, Cell([], result["tuned_percent"]))
    cell.accuracies.append(100 * result["test_accuracy"])
    cell.wall_seconds += result["wall_seconds"]
  failed = sorted(os.path.relpath(os.path.dirname(p), sweep_dir) for p in glob.glob(
      os.path.join(sweep_dir, "*", "*", "*", "*", "*", "failed.json")))
  unfinished = sorted(
      os.path.relpath(os.path.dirname(p), sweep_dir)
      for p in glob.glob(os.path.join(sweep_dir, "*", "*", "*", "*", "*", "config.json"))
      if not os.path.exists(os.path.join(os.path.dirname(p), "result.json"))
      and not os.path.exists(os.path.join(os.path.dirname(p), "failed.json")))
  return dict(cells), failed, unfinished


def _ordered(names, order):
  return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


@dataclasses.dataclass
class Average:
  """A mean over `present` of the `expected` tasks (or groups): partial when some are missing."""
  value: float | None
  present: int
  expected: int

  def __str__(self):
    if self.value is None:
      return "—"
    partial = f" ({self.present}/{self.expected})" if self.present < self.expected else ""
    return f"{self.value:.1f}{partial}"


def _average(values, expected: int) -> Average:
  return Average(float(np.mean(values)) if values else None, len(values), expected)


def summary(cells: dict) -> dict:
  """Per method: group means, the mean of the group means (the VTAB convention), the mean over
  tasks (how other PEFT papers report), wins against full fine-tuning. A mean that misses tasks
  says how many it covers, e.g. "55.5 (1/7)"."""
  tasks = {task for task, _ in cells}
  methods = {method for _, method in cells}
  suite = {member for t in tasks for member in tasks_lib.suite(t)} | tasks
  out = {}
  for method in methods:
    means = {task: cells[(task, method)].mean for task in tasks if (task, method) in cells}
    groups = {}
    for group in tasks_lib.GROUPS:
      members = [t for t in suite if tasks_lib.get(t).group == group]
      groups[group] = _average([means[t] for t in members if t in means], len(members))
    present = [g for g in groups.values() if g.expected]
    complete = [g for g in present if g.present == g.expected]
    values = [g.value for g in present if g.value is not None]
    mean = Average(float(np.mean(values)) if values else None, len(complete), len(present))
    wins = sum(1 for t, v in means.items()
               if (t, BASELINE) in cells and method != BASELINE and v > cells[(t, BASELINE)].mean)
    tuned = [cells[(t, method)].tuned_percent for t in means]
    out[method] = dict(groups=groups, mean=mean, task_mean=_average(list(means.values()),
                                                                     len(suite)),
                       wins=wins, compared=sum((t, BASELINE) in cells for t in means)
                       if method != BASELINE else 0, tuned_percent=float(np.mean(tuned)))
  return out


def _fmt(value, digits=1):
  return "—" if value is None else f"{value:.{digits}f}"


def cells_from_results(results: list[dict]) -> dict:
  """Cells of one setting from result dicts (e.g. the runs launch/main.py just made), scored on
  whichever split they were evaluated on (test, or val for search runs)."""
  cells = {}
  for result in results:
    cell = cells.setdefault((result["task"], result["method"]), Cell([], result["tuned_percent"]))
    cell.accuracies.append(100 * result.get("test_accuracy", result.get("val_accuracy")))
    cell.wall_seconds += result["wall_seconds"]
  return cells


def tables(cells: dict, with_published: bool = False, with_chance: bool = False):
  """(markdown, csv rows) for one setting's cells."""
  tasks = _ordered({t for t, _ in cells}, list(tasks_lib.TASKS))
  methods = _ordered({m for _, m in cells}, ["linear", "full", "vpt_shallow", "vpt_deep", "mixed",
                                             "ft_then_pt", "lp_ft"])
  stats = summary(cells)
  header = ["method", *tasks, "Natural", "Specialized", "Structured", "Mean", "Mean (tasks)",
            "Wins vs FT", "Tuned/Total %", "Time (s)"]
  markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  rows = []
  for method in methods:
    s = stats[method]
    per_task = [f"{cells[(t, method)].mean:.1f} ± {cells[(t, method)].std:.1f}"
                if (t, method) in cells else "—" for t in tasks]
    wins = f"{s['wins']}/{s['compared']}" if method != BASELINE else "—"
    wall = sum(cells[(t, method)].wall_seconds for t in tasks if (t, method) in cells)
    line = [method, *per_task, *(str(s["groups"][g]) for g in tasks_lib.GROUPS),
            str(s["mean"]), str(s["task_mean"]), wins, _fmt(s["tuned_percent"], 2),
            f"{wall:.0f}"]
    markdown.append("| " + " | ".join(line) + " |")
    rows.append({"method": method, **{t: cells[(t, method)].mean if (t, method) in cells else None
                                      for t in tasks},
                 **{f"{t}_std": cells[(t, method)].std if (t, method) in cells else None
                    for t in tasks},
                 **{g: s["groups"][g].value for g in tasks_lib.GROUPS},
                 **{f"{g}_tasks": s["groups"][g].present for g in tasks_lib.GROUPS},
                 "mean": s["mean"].value, "mean_complete": s["mean"].present == s["mean"].expected,
                 "mean_tasks": s["task_mean"].value,
                 "wins_vs_full": s["wins"] if method != BASELINE else None,
                 "tuned_percent": s["tuned_percent"], "wall_seconds": wall,
                 "source": "this sweep"})
  if with_chance:
    line = ["chance", *(f"{100 / tasks_lib.get(t).num_classes:.1f}" for t in tasks)]
    markdown.append("| " + " | ".join(line + [""] * (len(header) - len(line))) + " |")
  if with_published:
    for method, numbers in published.VPT_PAPER.items():
      if method not in methods:
        continue
      paper = summary({(t, method): Cell([v], 0.0) for t, v in numbers.items()})[method]
      line = [f"{method} (VPT paper)", *(_fmt(numbers.get(t)) for t in tasks),
              *(str(paper["groups"][g]) for g in tasks_lib.GROUPS), str(paper["mean"]),
              str(paper["task_mean"])]
      line += [""] * (len(header) - len(line))
      markdown.append("| " + " | ".join(line) + " |")
      rows.append({"method": method, **{t: numbers.get(t) for t in tasks},
                   **{g: paper["groups"][g].value for g in tasks_lib.GROUPS},
                   "mean": paper["mean"].value, "mean_tasks": paper["task_mean"].value,
                   "source": "VPT paper, Table 1"})
  return "\n".join(markdown), rows


def write(sweep_dir: str, out_dir: str, with_published: bool = False) -> str:
  """Writes report.md and one CSV per setting; returns the Markdown."""
  cells, failed, unfinished = collect(sweep_dir)
  os.makedirs(out_dir, exist_ok=True)
  parts = [f"# Sweep report: {sweep_dir}"]
  for setting in sorted(cells, key=lambda s: (not s.startswith("vtab"), s)):
    markdown, rows = tables(cells[setting], with_published)
    seeds = sorted({len(c.accuracies) for c in cells[setting].values()})
    parts.append(f"\n## {setting}: test top-1 (%), mean ± std (population, ddof 0) over "
                 f"{'/'.join(map(str, seeds))} seeds\n\n{markdown}")
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(os.path.join(out_dir, f"{setting}.csv"), buffer.getvalue())
  if not cells:
    parts.append("\nNo finished final runs yet.")
  if failed:
    parts.append("\n## Failed runs (non-finite loss, or a data-scale size the task cannot "
                 "hold; failed.json says which)\n\n" + "\n".join(f"- {r}" for r in failed))
  if unfinished:
    parts.append("\n## Unfinished runs\n\n" + "\n".join(f"- {r}" for r in unfinished))
  text = "\n".join(parts) + "\n"
  files.write_text(os.path.join(out_dir, "report.md"), text)
  return text
