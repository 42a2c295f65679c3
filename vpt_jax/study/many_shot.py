"""Mai et al.'s many-shot benchmark in a sweep's report: one table (method x dataset/size) with
the authors' released raw results beside it, and the training-set sizes the plot puts on its
x-axis."""

from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import published

# Training examples of each size (PETL_Vision's combined sets: the final runs train on them).
# CIFAR-100 full is its 50,000 training images, RESISC45 full PETL_Vision's 25,200 (train.txt).
_FULL = {"cifar100": 50000, "resisc45": 25200, "clevr_dist": 70000}


def training_size(task: str) -> int:
  """The combined set's size of a many-shot task ("cifar100-1k" -> 1000)."""
  dataset, size = tasks_lib.get(task).many_shot
  if size == "full":
    return _FULL[dataset]
  return int(size[:-1]) * 1000 if size.endswith("k") else int(size)


def _order(tasks) -> list[str]:
  return [t for t in tasks_lib.MANY_SHOT_TASKS if t in tasks]


def _methods(names) -> list[str]:
  first = ["linear", "full", "vpt_shallow", "vpt_deep", "lora", "ssf", "bitfit"]
  return sorted(names, key=lambda m: (first.index(m) if m in first else len(first), m))


def tables(cells: dict, with_published: bool = False) -> tuple[str, list[dict]]:
  """(markdown, csv rows): test top-1 (%) per method and many-shot task, mean ± std over the
  final runs, and with `with_published` the released rows of the same methods as released (two
  decimals; "—" where the authors released none)."""
  tasks = _order({t for t, _ in cells})
  methods = _methods({m for _, m in cells})
  header = ["method", *tasks]
  markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  rows = []
  for method in methods:
    line = [method]
    for task in tasks:
      cell = cells.get((task, method))
      line.append("—" if cell is None else f"{cell.mean:.1f} ± {cell.std:.1f}"
                  + ("†" if cell.diverged else ""))
    markdown.append("| " + " | ".join(line) + " |")
    rows.append({"method": method, **{t: cells[(t, method)].mean if (t, method) in cells else None
                                      for t in tasks}, "source": "this sweep"})
  notes = []
  if with_published:
    for row in published.many_shot_rows(methods):
      line = [f"{row.method} (released)"] + [
          "—" if t not in row.accuracies else
          f"{row.accuracies[t]:g}" + ("?" if t in row.uncertain else "") for t in tasks]
      markdown.append("| " + " | ".join(line) + " |")
      rows.append({"method": row.method, **{t: row.accuracies.get(t) for t in tasks},
                   "source": row.source})
      notes += [f"? {row.method} (released) {t}: {why}" for t, why in row.uncertain.items()
                if t in tasks]
    notes.insert(0, f"(released): {published.SOURCE_MAI_MANY_SHOT}, not the paper's printed "
                    "tables (OSU-MLB/PETL_Vision tune_output/, commit c4b0227).")
  if any(cell.diverged for cell in cells.values()):
    notes.append("† a run's loss turned non-finite; it is scored at its last finished epoch.")
  notes = list(dict.fromkeys(notes))
  return "\n".join(markdown) + ("\n\n" + "\n".join(notes) if notes else ""), rows


def curves(cells: dict, with_published: bool = True) -> dict:
  """{dataset: {label: [(training size, accuracy %)]}} for the plot: this sweep's methods, and
  the released rows of the same methods (labelled "<method> (released)")."""
  out = {}
  for (task, method), cell in cells.items():
    dataset = tasks_lib.get(task).many_shot[0]
    out.setdefault(dataset, {}).setdefault(method, []).append((training_size(task), cell.mean))
  if with_published:
    for row in published.many_shot_rows({m for _, m in cells}):
      for task, value in row.accuracies.items():
        dataset = tasks_lib.get(task).many_shot[0]
        if dataset in out:
          out[dataset].setdefault(f"{row.method} (released)", []).append(
              (training_size(task), value))
  return {d: {k: sorted(v) for k, v in lines.items()} for d, lines in out.items()}
