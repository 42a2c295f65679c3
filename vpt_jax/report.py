"""Tables like the paper's, recomputed from the result.json files of a sweep's final runs."""

import collections
import csv
import dataclasses
import glob
import io
import json
import os

import numpy as np

from vpt_jax import published
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
    with open(path) as f:
      result = json.load(f)
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


def summary(cells: dict) -> dict:
  """Per method: group means, mean of group means, wins against full fine-tuning."""
  tasks = {task for task, _ in cells}
  methods = {method for _, method in cells}
  out = {}
  for method in methods:
    means = {task: cells[(task, method)].mean for task in tasks if (task, method) in cells}
    groups = {}
    for group in tasks_lib.GROUPS:
      values = [v for t, v in means.items() if tasks_lib.get(t).group == group]
      groups[group] = float(np.mean(values)) if values else None
    present = [v for v in groups.values() if v is not None]
    wins = sum(1 for t, v in means.items()
               if (t, BASELINE) in cells and method != BASELINE and v > cells[(t, BASELINE)].mean)
    tuned = [cells[(t, method)].tuned_percent for t in means]
    out[method] = dict(groups=groups, mean=float(np.mean(present)) if present else None,
                       wins=wins, compared=sum((t, BASELINE) in cells for t in means)
                       if method != BASELINE else 0, tuned_percent=float(np.mean(tuned)))
  return out


def _fmt(value, digits=1):
  return "—" if value is None else f"{value:.{digits}f}"


def cells_from_results(results: list[dict]) -> dict:
  """Cells of one setting from result dicts (e.g. the runs launch/main.py just made)."""
  cells = {}
  for result in results:
    cell = cells.setdefault((result["task"], result["method"]), Cell([], result["tuned_percent"]))
    cell.accuracies.append(100 * result["test_accuracy"])
    cell.wall_seconds += result["wall_seconds"]
  return cells


def tables(cells: dict, with_published: bool = False, with_chance: bool = False):
  """(markdown, csv rows) for one setting's cells."""
  tasks = _ordered({t for t, _ in cells}, list(tasks_lib.TASKS))
  methods = _ordered({m for _, m in cells}, ["linear", "full", "vpt_shallow", "vpt_deep", "mixed",
                                             "ft_then_pt", "lp_ft"])
  stats = summary(cells)
  header = ["method", *tasks, "Natural", "Specialized", "Structured", "Mean", "Wins vs FT",
            "Tuned/Total %", "Time (s)"]
  markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  rows = []
  for method in methods:
    s = stats[method]
    per_task = [f"{cells[(t, method)].mean:.1f} ± {cells[(t, method)].std:.1f}"
                if (t, method) in cells else "—" for t in tasks]
    wins = f"{s['wins']}/{s['compared']}" if method != BASELINE else "—"
    wall = sum(cells[(t, method)].wall_seconds for t in tasks if (t, method) in cells)
    line = [method, *per_task, *(_fmt(s["groups"][g]) for g in tasks_lib.GROUPS),
            _fmt(s["mean"]), wins, _fmt(s["tuned_percent"], 2), f"{wall:.0f}"]
    markdown.append("| " + " | ".join(line) + " |")
    rows.append({"method": method, **{t: cells[(t, method)].mean if (t, method) in cells else None
                                      for t in tasks},
                 **{f"{t}_std": cells[(t, method)].std if (t, method) in cells else None
                    for t in tasks},
                 **{g: s["groups"][g] for g in tasks_lib.GROUPS}, "mean": s["mean"],
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
      line = [f"{method} (VPT paper)", *(_fmt(numbers.get(t)) for t in tasks)]
      line += [""] * (len(header) - len(line))
      markdown.append("| " + " | ".join(line) + " |")
      rows.append({"method": method, **{t: numbers.get(t) for t in tasks},
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
    parts.append(f"\n## {setting}: test top-1 (%), mean ± std over {'/'.join(map(str, seeds))} "
                 f"seeds\n\n{markdown}")
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with open(os.path.join(out_dir, f"{setting}.csv"), "w") as f:
      f.write(buffer.getvalue())
  if not cells:
    parts.append("\nNo finished final runs yet.")
  if failed:
    parts.append("\n## Failed runs (non-finite loss)\n\n" + "\n".join(f"- {r}" for r in failed))
  if unfinished:
    parts.append("\n## Unfinished runs\n\n" + "\n".join(f"- {r}" for r in unfinished))
  text = "\n".join(parts) + "\n"
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(text)
  return text
