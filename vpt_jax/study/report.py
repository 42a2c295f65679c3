"""Tables like the paper's, recomputed from the result.json files of a sweep's final runs."""

import collections
import csv
import dataclasses
import glob
import io
import os

import numpy as np

from vpt_jax.study import many_shot, predictions, published
from vpt_jax.study import imagenet_shift, robustness
from vpt_jax.utils import files
from vpt_jax.data import tasks as tasks_lib

BASELINE = "full"


@dataclasses.dataclass
class Cell:
  accuracies: list[float]  # Percent, one per seed.
  tuned_percent: float
  wall_seconds: float = 0.0  # Summed over seeds.
  diverged: int = 0  # Seeds whose loss turned non-finite, scored at their last finished epoch.
  recipes: set = dataclasses.field(default_factory=set)
  backbones: set = dataclasses.field(default_factory=set)  # config.backbone of its runs.

  def add(self, result: dict, accuracy_key: str = "test_accuracy") -> None:
    self.accuracies.append(100 * result[accuracy_key])
    self.wall_seconds += result["wall_seconds"]
    self.diverged += "diverged" in result
    self.recipes.add(result.get("recipe", "paper"))

  @property
  def mean(self) -> float:
    return float(np.mean(self.accuracies))

  @property
  def std(self) -> float:
    return float(np.std(self.accuracies))


MAIN_SETTING = "runs"  # The setting of launch/main.py's runs (<dir>/<task>/<method>/).


def setting_of(sweep_dir: str, workdir: str) -> str:
  """A counted run's setting: a sweep's <setting>/<task>/<method>/final/seed<N>, or the runs of
  a launch/main.py multi-run command."""
  parts = os.path.relpath(workdir, sweep_dir).split(os.sep)
  return parts[0] if len(parts) == 5 else MAIN_SETTING


def final_dirs(sweep_dir: str) -> tuple[list[str], list[str]]:
  """(final run dirs of the sweep's current configuration, final dirs outside it): a group's
  sweep.json lists its current finals; a group without one counts all of them. A launch/main.py
  multi-run folder (<dir>/<task>/<method>/config.json) counts each of its runs."""
  current = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(sweep_dir, "*", "*",
                                                                       "config.json")))
  outside = []
  for group in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", "*"))):
    dirs = sorted(glob.glob(os.path.join(group, "final", "seed*")))
    manifest = os.path.join(group, "sweep.json")
    if not os.path.exists(manifest):
      current += dirs
      continue
    try:
      listed = {os.path.join(group, d) for d in files.read_json(manifest)["final"]}
    except (files.DamagedFileError, KeyError):
      listed = set(dirs)  # A damaged list counts every final; the next sweep writes it again.
    current += [d for d in dirs if d in listed]
    outside += [d for d in dirs if d not in listed]
  return current, outside


def collect(sweep_dir: str):
  """{setting: {(task, method): Cell}} from the final runs of the sweep's current configuration,
  plus failed and unfinished run dirs."""
  cells = collections.defaultdict(dict)
  current, _ = final_dirs(sweep_dir)
  for workdir in current:
    path = os.path.join(workdir, "result.json")
    try:
      result = files.read_json(path) if os.path.exists(path) else None
    except files.DamagedFileError:
      result = None  # Listed among the damaged files by write(); rerunning the sweep redoes it.
    if result is None:
      continue
    setting = setting_of(sweep_dir, workdir)
    key = (result["task"], result["method"])
    cell = cells[setting].setdefault(key, Cell([], result["tuned_percent"]))
    cell.add(result, "test_accuracy" if "test_accuracy" in result else "val_accuracy")
    cell.backbones.add(_backbone(workdir))
  failed = sorted(os.path.relpath(os.path.dirname(p), sweep_dir) for p in glob.glob(
      os.path.join(sweep_dir, "*", "*", "*", "*", "*", "failed.json")))
  unfinished = sorted(
      os.path.relpath(os.path.dirname(p), sweep_dir)
      for p in glob.glob(os.path.join(sweep_dir, "*", "*", "*", "*", "*", "config.json"))
      if not os.path.exists(os.path.join(os.path.dirname(p), "result.json"))
      and not os.path.exists(os.path.join(os.path.dirname(p), "failed.json"))
      and os.sep + "superseded" + os.sep not in p)
  return dict(cells), failed, unfinished


def _backbone(workdir: str) -> str | None:
  """config.backbone of a run (its config.json), which decides the published rows beside it."""
  try:
    return files.read_json(os.path.join(workdir, "config.json")).get("backbone")
  except (FileNotFoundError, files.DamagedFileError):
    return None


def _diverged_and_damaged(sweep_dir: str) -> tuple[list[str], list[str]]:
  diverged, damaged = [], []
  for path in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", "*", "*", "*", "result.json"))):
    try:
      result = files.read_json(path)
    except files.DamagedFileError:
      damaged.append(f"- {os.path.relpath(path, sweep_dir)}")
      continue
    if info := result.get("diverged"):
      diverged.append(f"- {os.path.relpath(os.path.dirname(path), sweep_dir)}: diverged at step "
                      f"{info['step']} (epoch {info['epoch']}), scored at epoch "
                      f"{info['scored_epoch']}")
  return diverged, damaged


def _failure(workdir: str) -> str:
  try:
    record = files.read_json(os.path.join(workdir, "failed.json"))
  except files.DamagedFileError:
    return "failed.json is damaged"
  kind = {"infeasible": "infeasible size", "failed": "non-finite loss"}.get(record.get("kind"),
                                                                            "failed")
  return f"{kind}: {record.get('error', '')[:160]}"


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
      members = [t for t in suite if _group(t) == group]
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


def _group(task: str) -> str:
  """A task's group without reading a custom folder (its record walks the folder)."""
  return tasks_lib.CUSTOM if task.startswith(tasks_lib.FOLDER_PREFIX) else tasks_lib.get(task).group


def _fmt(value, digits=1):
  return "—" if value is None else f"{value:.{digits}f}"


def cells_from_results(results: list[dict]) -> dict:
  """Cells of one setting from result dicts (e.g. the runs launch/main.py just made), scored on
  whichever split they were evaluated on (test, or val for search runs)."""
  cells = {}
  for result in results:
    cell = cells.setdefault((result["task"], result["method"]), Cell([], result["tuned_percent"]))
    cell.add(result, "test_accuracy" if "test_accuracy" in result else "val_accuracy")
  return cells


def _cell_text(cell: Cell) -> str:
  text = f"{cell.mean:.1f} ± {cell.std:.1f}"
  return text + "†" if cell.diverged else text


def tables(cells: dict, with_published: bool = False, with_chance: bool = False,
           setting: str = "vtab1k"):
  """(markdown, csv rows) for one setting's cells; † marks cells with a diverged seed. With
  `with_published`, the published rows that these runs' recipe reproduces follow."""
  tasks = _ordered({t for t, _ in cells}, list(tasks_lib.TASKS))
  methods = _ordered({m for _, m in cells}, ["linear", "full", "vpt_shallow", "vpt_deep", "mixed",
                                             "ft_then_pt", "lp_ft"])
  stats = summary(cells)
  # VTAB's group columns only where a task has a VTAB group (not for FGVC or a custom folder);
  # the mean over tasks only where there are several.
  groups = tasks_lib.GROUPS if any(_group(t) in tasks_lib.GROUPS for t in tasks) else ()
  means = (["Mean"] if groups else []) + (["Mean (tasks)"] if groups or len(tasks) > 1 else [])
  labels = [tasks_lib.short_name(t) for t in tasks]
  header = ["method", *labels, *(g.capitalize() for g in groups), *means,
            "Wins vs FT", "Tuned/Total %", "Time (s)"]
  markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  rows = []
  for method in methods:
    s = stats[method]
    per_task = [_cell_text(cells[(t, method)]) if (t, method) in cells else "—" for t in tasks]
    wins = f"{s['wins']}/{s['compared']}" if method != BASELINE and s["compared"] else "—"
    wall = sum(cells[(t, method)].wall_seconds for t in tasks if (t, method) in cells)
    mean_cells = ([str(s["mean"])] if groups else []) + (
        [str(s["task_mean"])] if "Mean (tasks)" in means else [])
    line = [method, *per_task, *(str(s["groups"][g]) for g in groups), *mean_cells, wins,
            _fmt(s["tuned_percent"], 2), f"{wall:.0f}"]
    markdown.append("| " + " | ".join(line) + " |")
    rows.append({"method": method, **{tasks_lib.short_name(t): cells[(t, method)].mean
                                      if (t, method) in cells else None for t in tasks},
                 **{f"{tasks_lib.short_name(t)}_std": cells[(t, method)].std
                    if (t, method) in cells else None for t in tasks},
                 **{g: s["groups"][g].value for g in tasks_lib.GROUPS},
                 **{f"{g}_tasks": s["groups"][g].present for g in tasks_lib.GROUPS},
                 "mean": s["mean"].value, "mean_complete": s["mean"].present == s["mean"].expected,
                 "mean_tasks": s["task_mean"].value,
                 "wins_vs_full": s["wins"] if method != BASELINE else None,
                 "tuned_percent": s["tuned_percent"], "wall_seconds": wall,
                 "diverged_seeds": sum(cells[(t, method)].diverged for t in tasks
                                       if (t, method) in cells),
                 "source": "this sweep"})
  if with_chance:
    line = ["chance", *(f"{100 / tasks_lib.get(t).num_classes:.1f}" for t in tasks)]
    markdown.append("| " + " | ".join(line + [""] * (len(header) - len(line))) + " |")
  notes = []
  if with_published:
    recipes = set().union(*(cell.recipes for cell in cells.values())) or {"paper"}
    # The rows of the backbone the runs name (Han et al.'s MAE rows beside MAE runs, ...).
    backbones = set().union(*(cell.backbones for cell in cells.values())) or {None}
    chosen = [r for recipe in sorted(recipes) for backbone in sorted(backbones, key=str)
              for r in published.rows_for(recipe, setting, methods, backbone)]
    for row in {id(r): r for r in chosen}.values():
      numbers = row.accuracies
      if row.group_means:  # Printed as group means only: those, and no per-task numbers.
        paper = dict(groups={g: Average(row.group_means[g], 1, 1) for g in tasks_lib.GROUPS},
                     mean=Average(float(np.mean(list(row.group_means.values()))), 3, 3),
                     task_mean=Average(None, 0, len(published.TASK_ORDER)))
      else:
        paper = summary({(t, row.method): Cell([v], 0.0) for t, v in numbers.items()})[row.method]
      label = row.source.split(",")[0]
      line = [f"{row.method} ({label})",
              *(_fmt(numbers.get(t)) + ("?" if t in row.uncertain else "") for t in tasks),
              *(str(paper["groups"][g]) + ("?" if g in row.uncertain else "") for g in groups),
              *([str(paper["mean"])] if groups else []),
              *([str(paper["task_mean"])] if "Mean (tasks)" in means else [])]
      line += [""] * (len(header) - len(line))
      markdown.append("| " + " | ".join(line) + " |")
      notes += [f"? {row.method} ({label}) {t}: {why}" for t, why in row.uncertain.items()
                if t in tasks or t in tasks_lib.GROUPS]
      rows.append({"method": row.method, **{t: numbers.get(t) for t in tasks},
                   **{g: paper["groups"][g].value for g in tasks_lib.GROUPS},
                   "mean": paper["mean"].value, "mean_tasks": paper["task_mean"].value,
                   "source": row.source})
  if any(cell.diverged for cell in cells.values()):
    notes.append("† a seed's loss turned non-finite; it is scored at its last finished epoch, "
                 "as the VPT code does (see the diverged runs below).")
  notes = list(dict.fromkeys(notes))
  return "\n".join(markdown) + ("\n\n" + "\n".join(notes) if notes else ""), rows


def shift_rows(sweep_dir: str) -> dict:
  """{setting: {method: {"clean": acc, shift: acc, ...}}}: the current final runs' shift.json
  (launch/robustness.py), averaged over seeds per task, then over tasks."""
  per_task = collections.defaultdict(lambda: collections.defaultdict(list))
  current, _ = final_dirs(sweep_dir)
  for workdir in current:
    path = os.path.join(workdir, "shift.json")
    try:
      stored = files.read_json(path) if os.path.exists(path) else None
      result = files.read_json(os.path.join(workdir, "result.json"))
    except (files.DamagedFileError, FileNotFoundError):
      continue
    if stored is None or stored.get("artifact_sha256") != result.get("artifact_sha256"):
      continue  # Made from an earlier artifact: launch/robustness.py evaluates it again.
    setting = os.path.relpath(workdir, sweep_dir).split(os.sep)[0]
    for name, value in {"clean": stored["clean"], **stored["accuracy"]}.items():
      per_task[(setting, result["method"])][(result["task"], name)].append(value)
  rows = collections.defaultdict(dict)
  for (setting, method), values in per_task.items():
    names = list(dict.fromkeys(name for _, name in values))
    for name in names:
      rows[setting].setdefault(method, {})[name] = float(np.mean(
          [np.mean(v) for (task, n), v in values.items() if n == name]))
  return dict(rows)


def wise_curves(sweep_dir: str) -> dict:
  """{(setting, task, method): wise.json with its test curves averaged over the final runs};
  a method's merge_petl curves (wise_petl.json) as "<method> (merge_petl)"."""
  out = {}
  for mode in robustness.WISE_MODES:
    for path in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", "*", robustness.wise_file(mode)))):
      try:
        stored = files.read_json(path)
      except files.DamagedFileError:
        continue
      setting, task, method = os.path.relpath(os.path.dirname(path), sweep_dir).split(os.sep)
      method = method if mode == "model" else f"{method} (merge_{mode})"
      out[(setting, task, method)] = _averaged_wise(stored)
  return out


def _averaged_wise(stored: dict) -> dict:
  names = list(dict.fromkeys(k for run in stored["test"].values() for k in run))
  test = {name: np.mean([run[name] for run in stored["test"].values()], axis=0).tolist()
          for name in names}
  return {**stored, "test": test, "runs": len(stored["test"])}


def _robustness_markdown(rows: dict, curves: dict) -> str:
  parts = []
  for setting, methods in sorted(rows.items()):
    columns = list(dict.fromkeys(k for row in methods.values() for k in row))
    parts.append(f"\n## {setting}: clean vs shifted test top-1 (%), mean over seeds, then "
                 "tasks (launch/robustness.py)\n\n| method | " + " | ".join(columns)
                 + " | mean shifted |\n|" + "---|" * (len(columns) + 2))
    for method, row in sorted(methods.items()):
      shifted = [v for k, v in row.items() if k != "clean"]
      parts[-1] += (f"\n| {method} | " + " | ".join(_fmt(100 * row[c]) if c in row else ""
                                                     for c in columns)
                    + f" | {_fmt(100 * np.mean(shifted)) if shifted else ''} |")
  if curves:
    parts.append("\n## WiSE-FT: (1 - a) * pre-trained + a * fine-tuned, a chosen on val200 "
                 "(launch/robustness.py)\n\n| setting | task | method | a | test at a | "
                 "test at a = 1 | shifted at a | shifted at a = 1 |\n|" + "---|" * 8)
    for (setting, task, method), c in curves.items():
      i = c["alphas"].index(c["selected_alpha"])
      shifted = [v for k, v in c["test"].items() if k != "clean"]
      at = lambda j: _fmt(100 * np.mean([v[j] for v in shifted])) if shifted else ""
      parts[-1] += (f"\n| {setting} | {task} | {method} | {c['selected_alpha']} | "
                    f"{_fmt(100 * c['test']['clean'][i])} | {_fmt(100 * c['test']['clean'][-1])}"
                    f" | {at(i)} | {at(-1)} |")
  return "\n".join(parts)


def selections_markdown(sweep_dir: str) -> str:
  """What each task's grid chose (best.json): the setting its final runs train with."""
  rows = []
  for path in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", "*", "best.json"))):
    setting, task, method = os.path.relpath(path, sweep_dir).split(os.sep)[:3]
    try:
      best = files.read_json(path)
    except files.DamagedFileError:
      continue
    others = ", ".join(f"{field}={value}" for field, value in best.get("grid", {}).items())
    rows.append(f"| {setting} | {task} | {method} | {best['base_lr']:g} | "
                f"{best['weight_decay']:g} | {others} | {100 * best['val_accuracy']:.1f} |")
  if not rows:
    return ""
  return ("\n## Selected settings (best validation top-1 of each grid; ties -> smaller lr, wd, "
          "then smaller values of the other axes)\n\n| setting | task | method | base_lr | "
          "weight_decay | other axes | val top-1 (%) |\n|---|---|---|---|---|---|---|\n"
          + "\n".join(rows))


def csv_text(rows: list[dict]) -> str:
  """A table's rows as CSV, the union of their fields as columns."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def write(sweep_dir: str, out_dir: str, with_published: bool = False,
          ensembles: tuple = ()) -> str:
  """Writes report.md and one CSV per setting; returns the Markdown. `ensembles`: method sets
  whose prediction ensembles are scored, e.g. (("vpt_deep", "lora"),)."""
  cells, failed, unfinished = collect(sweep_dir)
  os.makedirs(out_dir, exist_ok=True)
  parts = [f"# Sweep report: {sweep_dir}"]
  for setting in sorted(cells, key=lambda s: (not s.startswith("vtab"), s)):
    if setting == tasks_lib.MANY_SHOT:  # Method x dataset/size, beside Mai et al.'s releases.
      markdown, rows = many_shot.tables(cells[setting], with_published)
    else:
      markdown, rows = tables(cells[setting], with_published, setting=setting)
    seeds = sorted({len(c.accuracies) for c in cells[setting].values()})
    subset = "test" if setting != MAIN_SETTING else "evaluation-split"
    parts.append(f"\n## {setting}: {subset} top-1 (%), mean ± std (population, ddof 0) over "
                 f"{'/'.join(map(str, seeds))} seeds\n\n{markdown}")
    files.write_text(os.path.join(out_dir, f"{setting}.csv"), csv_text(rows))
  if not cells:
    parts.append("\nNo finished final runs yet.")
  current, _ = final_dirs(sweep_dir)
  for setting in sorted({setting_of(sweep_dir, d) for d in current}):
    runs = predictions.load([d for d in current if setting_of(sweep_dir, d) == setting])
    if runs:
      parts.append(f"\n## {setting}: predictions (test logits of the final runs)\n\n"
                   + predictions.markdown(predictions.analyse(runs, list(ensembles))))
  if robustness := _robustness_markdown(shift_rows(sweep_dir), wise_curves(sweep_dir)):
    parts.append(robustness)
  if natural := imagenet_shift.markdown(sweep_dir, with_published):  # Few-shot ImageNet's.
    parts.append(natural)
  if selected := selections_markdown(sweep_dir):
    parts.append(selected)
  if failed:
    parts.append("\n## Failed runs (non-finite loss, or a data-scale size the task cannot "
                 "hold; failed.json says which)\n\n" + "\n".join(
                     f"- {r}: {_failure(os.path.join(sweep_dir, r))}" for r in failed))
  diverged, damaged = _diverged_and_damaged(sweep_dir)
  if diverged:
    parts.append("\n## Diverged runs (non-finite loss; scored at their last finished epoch)\n\n"
                 + "\n".join(diverged))
  if damaged:
    parts.append("\n## Damaged result files (not counted; run the sweep again to redo them)\n\n"
                 + "\n".join(damaged))
  _, outside = final_dirs(sweep_dir)
  if outside:
    parts.append("\n## Final runs of an earlier sweep configuration (not counted)\n\n"
                 + "\n".join(f"- {os.path.relpath(d, sweep_dir)}" for d in outside))
  if unfinished:
    parts.append("\n## Unfinished runs\n\n" + "\n".join(f"- {r}" for r in unfinished))
  text = "\n".join(parts) + "\n"
  files.write_text(os.path.join(out_dir, "report.md"), text)
  return text
