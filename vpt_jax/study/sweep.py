"""The paper's protocol over many runs: a grid scored on validation data, the best point (ties ->
smaller lr, then smaller weight decay, then smaller values of the other axes in order) rerun with
several seeds and scored on test. Where the runs execute is vpt_jax/study/executors.py's job.

The grid is a product over named config fields: base_lr x weight_decay (sweep.base_lrs,
sweep.weight_decays, the recipe's) and any others in sweep.grid, e.g.
`--config.sweep.grid='(("method_kwargs.lora_rank", (1, 8, 32)),)'`; naming optim.base_lr or
optim.weight_decay there replaces that axis.

Every run has its own workdir under the sweep directory:

  <sweep_dir>/<setting>/<task>/<method>/search/lr<lr>_wd<wd>[_<field><value>...]/   grid runs
  <sweep_dir>/<setting>/<task>/<method>/best.json                 the chosen setting
  <sweep_dir>/<setting>/<task>/<method>/final/seed<s>/            final runs
  <sweep_dir>/<setting>/<task>/<method>/superseded/...             finals of an earlier selection

where <setting> is "vtab1k", "scale<N>" (data-scale, N training examples) or "<k>shot"; FGVC's
tasks and custom folders go under "fgvc" and "custom" (their own train/val/test splits).
A run with result.json is done and skipped; one with failed.json (non-finite loss) is reported
and skipped; anything else is (re)started and resumes from its own checkpoints.
"""

import dataclasses
import itertools
import json
import os
import queue
import threading
import time
from concurrent import futures
from typing import Callable

import ml_collections

from vpt_jax import methods
from vpt_jax.training import loop, recipes, train
from vpt_jax.utils import config_lib, files
from vpt_jax.data import tasks as tasks_lib

PHASES = ("search", "final")
# Fields a sweep sets per run; overriding them for a whole sweep would silently be undone.
SWEEP_FIELDS = ("seed", "phase", "optim.base_lr", "optim.weight_decay", "optim.selected_in",
                "data.train_subset", "data.eval_subset")
BUSY_POLL_SECONDS = 2.0
# Failures that are results (recorded in failed.json, reported, not retried).
RECORDED_FAILURES = (loop.NonFiniteLossError, tasks_lib.InfeasibleSubsetError)


def _text(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def point_name(base_lr: float, weight_decay: float, extra=()) -> str:
  """A grid point's directory name: lr<lr>_wd<wd>, then _<field><value> for the other axes."""
  return f"lr{base_lr:g}_wd{weight_decay:g}" + "".join(f"_{f}{_text(v)}" for f, v in extra)


@dataclasses.dataclass(frozen=True)
class Run:
  setting: str
  task: str
  method: str
  phase: str
  base_lr: float
  weight_decay: float
  seed: int
  extra: tuple[tuple[str, object], ...] = ()  # (field, value) of the grid's other axes.

  @property
  def group_dir(self) -> str:
    return os.path.join(self.setting, task_dir(self.task), self.method)

  @property
  def workdir(self) -> str:
    leaf = (point_name(self.base_lr, self.weight_decay, self.extra) if self.phase == "search"
            else f"seed{self.seed}")
    return os.path.join(self.group_dir, self.phase, leaf)


def task_dir(task: str) -> str:
  """A task's directory name: a custom folder's task name holds its path ("folder:/data/x"),
  which would otherwise become nested directories the report never finds."""
  return task.replace(os.sep, "_").replace(":", "_")


LR, WD = "optim.base_lr", "optim.weight_decay"


def grid_axes(sweep_config) -> list[tuple[str, tuple]]:
  """(field, values) of every axis of the grid, base_lr and weight_decay first."""
  extra = [(field, tuple(values)) for field, values in (sweep_config.get("grid") or ())]
  named = dict(extra)
  return ([(LR, tuple(named.pop(LR, sweep_config.base_lrs))),
           (WD, tuple(named.pop(WD, sweep_config.weight_decays)))]
          + [(field, values) for field, values in extra if field in named])


def settings(sweep_config) -> list[str]:
  protocol = sweep_config.protocol
  if protocol == "vtab1k":
    return ["vtab1k"]
  if protocol == "data_scale":
    return [f"scale{n}" for n in sweep_config.sizes]
  if protocol == "kshot":
    return [f"{sweep_config.shots}shot"]
  if protocol == tasks_lib.MANY_SHOT:
    return [tasks_lib.MANY_SHOT]
  raise ValueError(f"sweep.protocol={protocol!r} must be 'vtab1k', 'data_scale', 'kshot' or "
                   "'many_shot'.")


def setting_of(setting: str, task: str) -> str:
  """The setting a task's runs go under: the protocol's, except that the benchmark protocol of
  FGVC's tasks, of custom folders and of few-shot ImageNet is their own ("fgvc", "custom",
  "imagenet": their own splits)."""
  group = tasks_lib.get(task).group
  if (setting == tasks_lib.MANY_SHOT) != (group == tasks_lib.MANY_SHOT) and setting != "vtab1k":
    raise ValueError(f"sweep.protocol={setting!r}: " + (
        f"{task} is not a many-shot task ({', '.join(tasks_lib.MANY_SHOT_TASKS)})"
        if setting == tasks_lib.MANY_SHOT else
        f"{task} is a many-shot task: use sweep.protocol=many_shot") + ".")
  if setting in ("vtab1k", tasks_lib.MANY_SHOT) and group == tasks_lib.MANY_SHOT:
    return group
  if setting == "vtab1k" and group in (tasks_lib.FGVC, tasks_lib.CUSTOM, tasks_lib.IMAGENET):
    return group
  if group in (tasks_lib.FGVC, tasks_lib.CUSTOM, tasks_lib.IMAGENET):
    raise ValueError(f"sweep.protocol={setting!r} is for VTAB-1k's tasks; {task} has its own "
                     "splits: use sweep.protocol=vtab1k.")
  return setting


def subsets(setting: str, phase: str, seed: int, kshot_per_seed: bool = False,
            task: str | None = None, split: int | None = None, data=None) -> tuple[str, str]:
  """(train subset, eval subset) of a run.

  k-shot (ChengHan111/VPT-or-FT DATA.EVEN_SEPARETE, src/data/datasets/tf_dataset.py): the search
  trains on k per class of train800 and validates on k per class of val200; final runs train on
  2k per class of train800val200, the same images for every seed (unless `kshot_per_seed`), and
  score the whole test split. The reference draws the search's training images after an unseeded
  shuffle; here they are drawn from train800 in order with seed 0, so reruns agree.
  """
  final = phase == "final"
  # FGVC and few-shot ImageNet: train -> val, train -> test.
  if setting in (tasks_lib.FGVC, tasks_lib.CUSTOM, tasks_lib.IMAGENET):
    # A custom folder's split settings (config.data, e.g. evaluate_on) decide its subsets.
    record = tasks_lib.get(task)
    return tasks_lib.phase_subsets(tasks_lib.with_data_settings(record, data) if data is not None
                                   else record, phase)
  if setting == tasks_lib.MANY_SHOT:  # PETL_Vision's split files (search split `split`).
    return tasks_lib.phase_subsets(tasks_lib.get(task), phase, split)
  if setting == "vtab1k":
    return ("train800val200", "test") if final else ("train800", "val200")
  if setting.startswith("scale"):
    return (f"{setting}_trainval", "test") if final else (f"{setting}_train", f"{setting}_val")
  if setting.endswith("shot"):
    k = int(setting.removesuffix("shot"))
    if final:
      return f"{2 * k}shot_train800val200_seed{seed if kshot_per_seed else 0}", "test"
    return f"{k}shot_train800_seed0", f"{k}shot_val200_seed0"
  raise ValueError(f"Unknown sweep setting {setting!r}.")


def final_seeds(sweep_config) -> tuple[int, ...]:
  """The seeds of the final runs: the first `seeds` of `seed_values` (the recipe's), else 0..n-1."""
  values = sweep_config.get("seed_values")
  if not values:
    return tuple(range(sweep_config.seeds))
  if sweep_config.seeds > len(values):
    raise ValueError(f"sweep.seeds={sweep_config.seeds} but sweep.seed_values lists "
                     f"{len(values)} seeds ({', '.join(map(str, values))}); set "
                     "sweep.seed_values to as many seeds as you want runs.")
  return tuple(values[:sweep_config.seeds])


def search_runs(setting, task, method, sweep_config) -> list[Run]:
  axes = grid_axes(sweep_config)
  if not methods.trains(method):  # zero_shot: every point of the grid would score the same.
    axes = [(field, values[:1]) for field, values in axes]
  fields = [field for field, _ in axes[2:]]
  return [Run(setting, task, method, "search", float(lr), float(wd), 0, tuple(zip(fields, rest)))
          for lr, wd, *rest in itertools.product(*(values for _, values in axes))]


def final_runs(setting, task, method, best, sweep_config) -> list[Run]:
  extra = tuple(best.get("grid", {}).items())
  return [Run(setting, task, method, "final", best["base_lr"], best["weight_decay"], seed, extra)
          for seed in final_seeds(sweep_config)]


def status(sweep_dir: str, run: Run, log=print) -> str:
  """"done", "failed" (non-finite loss), "infeasible" (a data-scale size the task cannot hold) or
  "pending". A damaged result.json is set aside and the run counts as pending (it finishes
  again from its checkpoints)."""
  workdir = os.path.join(sweep_dir, run.workdir)
  if train.finished_result(os.path.join(workdir, "result.json"), log) is not None:
    return "done"
  failed = os.path.join(workdir, "failed.json")
  if os.path.exists(failed):
    try:
      return files.read_json(failed).get("kind", "failed")
    except files.DamagedFileError as e:
      log(f"{e} Moved to {files.set_aside(failed, 'damaged')}; the run is tried again.")
  return "pending"


def _free_name(base: str) -> str:
  """`base`, or `base`_2, _3, ... whichever does not exist yet."""
  target, n = base, 1
  while os.path.exists(target):
    n += 1
    target = f"{base}_{n}"
  return target


def set_aside_stale(sweep_dir: str, run: Run, expected: dict | None, log=print) -> None:
  """A run trained with another configuration than the one the sweep now asks for (the grid,
  the selection, the epochs, ... changed) moves to <method>/superseded/: kept, but no longer
  counted or resumed, and the run is trained again. `expected`: the run's flat config; None
  compares only the setting the run's path names (base_lr, weight_decay)."""
  workdir = os.path.join(sweep_dir, run.workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    stored = files.read_json(path)
  except files.DamagedFileError:
    return  # Training writes it again (train.claim_workdir); the results stay where they are.
  if expected is None:
    expected = {LR: run.base_lr, WD: run.weight_decay, **dict(run.extra)}
    changed = [k for k, v in expected.items() if stored.get(k) != v]
  else:
    changed = train.config_differences(stored, expected)
  if not changed:
    return
  setting = point_name(stored.get(LR), stored.get(WD),
                       [(field, stored.get(field)) for field, _ in run.extra])
  where = (os.path.join("search", setting) if run.phase == "search"
           else os.path.join(setting, f"seed{run.seed}"))
  target = _free_name(os.path.join(sweep_dir, run.group_dir, "superseded", where))
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(workdir, target)
  shown = ", ".join(f"{k}: {stored.get(k)!r} -> {expected.get(k)!r}" for k in changed[:4])
  log(f"{run.workdir} was trained with another configuration ({shown}"
      f"{', ...' if len(changed) > 4 else ''}): moved to {os.path.relpath(target, sweep_dir)}; "
      "training it again.")


def read_result(sweep_dir: str, run: Run) -> dict | None:
  return train.finished_result(os.path.join(sweep_dir, run.workdir, "result.json"))


def _order(value):
  """Smaller first; numbers before anything else, which is ordered by its text."""
  return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


# Axes over which a grid point's validation accuracy is averaged, not chosen: the five search
# splits of Mai et al.'s small many-shot sets (PETL_Vision experiment/tune.py trains each grid
# point on every split and averages their top-1).
AVERAGED_AXES = ("data.split",)


def select_best(sweep_dir: str, runs: list[Run]) -> dict:
  """The grid point with the best validation accuracy; ties -> smaller lr, then smaller wd, then
  smaller values of the other axes in their order. A point's accuracy is the mean over the
  AVERAGED_AXES runs that finished (the search splits)."""
  points = {}
  for run in runs:
    result = read_result(sweep_dir, run)
    if result is not None:
      kept = tuple((f, v) for f, v in run.extra if f not in AVERAGED_AXES)
      point = dataclasses.replace(run, extra=kept, seed=0)
      # Runs that stopped early are chosen by their best validation accuracy (PETL_Vision's
      # final_acc_hp: False), others by their last.
      points.setdefault(point, []).append(result.get("val_accuracy_best", result["val_accuracy"]))
  scored = []
  for run, accuracies in points.items():
    key = (-float(sum(accuracies) / len(accuracies)), run.base_lr, run.weight_decay,
           *(_order(value) for _, value in run.extra))
    scored.append((key, run))
  if not scored:
    raise RuntimeError(f"No grid run of {runs[0].group_dir} finished: nothing to choose from.")
  scored.sort(key=lambda item: item[0])
  key, run = scored[0]
  best = {"base_lr": run.base_lr, "weight_decay": run.weight_decay, "val_accuracy": -key[0],
          "grid_points": len(runs), "finished": sum(map(len, points.values()))}
  if run.extra:
    best["grid"] = dict(run.extra)
  return best


def best_setting(sweep_dir: str, grid: list[Run]) -> dict:
  """The selection of a grid (job-array tasks of the final phase): chosen from the grid's results
  and written to best.json, which every task of the array writes alike."""
  best = select_best(sweep_dir, grid)
  files.write_json(os.path.join(sweep_dir, grid[0].group_dir, "best.json"), best)
  return best


class Planner:
  """Every run's config, from one ConfigDict: the user's config with the run's fields set."""

  def __init__(self, config: ml_collections.ConfigDict, overrides: dict | None = None,
               sweep_dir: str | None = None):
    grid_fields = {field for field, _ in (config.sweep.get("grid") or ())}
    if fixed := sorted(set(overrides or {}) & (set(SWEEP_FIELDS) | grid_fields)):
      raise ValueError(f"A sweep sets {', '.join(fixed)} itself (the seeds of sweep.seeds, the "
                       "grid sweep.base_lrs x sweep.weight_decays, the protocol's subsets); "
                       "drop those overrides and set config.sweep instead.")
    self.config = config
    self.sweep_dir = sweep_dir
    self.tasks = tasks_lib.expand(config.task)
    self.methods = list(dict.fromkeys(config.method.split("+")))
    for method in self.methods:
      methods.stage_names(method)  # Unknown names fail here, before anything runs.

  def base(self, task: str, method: str) -> ml_collections.ConfigDict:
    config = self.config.copy_and_resolve_references()
    config.task, config.method = task, method
    return config

  def sweep_config(self, task: str, method: str):
    """The grid and protocol for one task and method (grids differ between methods)."""
    return recipes.resolve(self.base(task, method)).sweep

  def groups(self) -> list[tuple[str, str, str]]:
    return [(setting_of(setting, task), task, method) for setting in settings(self.config.sweep)
            for task in self.tasks for method in self.methods]

  def run_config(self, run: Run) -> ml_collections.ConfigDict:
    config = self.base(run.task, run.method)
    config.seed, config.phase = run.seed, run.phase
    config.optim.base_lr, config.optim.weight_decay = run.base_lr, run.weight_decay
    config.optim.selected_in = "search" if run.phase == "search" else os.path.join(
        run.group_dir, "best.json")
    for field, value in run.extra:
      config_lib.set_path(config, field, value)
    config.data.train_subset, config.data.eval_subset = subsets(
        run.setting, run.phase, run.seed, self.config.sweep.kshot_per_seed, run.task,
        config.data.get("split"), config.data)
    # A two-stage method's first stage trains with the setting this sweep selected for that
    # method on the same task, when there is one (else its recipe's default).
    for stage in methods.stage_names(run.method)[:-1]:
      best = (os.path.join(self.sweep_dir, run.setting, task_dir(run.task), stage, "best.json")
              if self.sweep_dir else None)
      if best and os.path.exists(best) and config.stage_optim[stage].base_lr is None:
        chosen = files.read_json(best)
        config.stage_optim[stage].base_lr = chosen["base_lr"]
        config.stage_optim[stage].weight_decay = chosen["weight_decay"]
        config.stage_optim[stage].selected_in = os.path.relpath(best, self.sweep_dir)
    return config

  def expected_config(self, run: Run) -> dict:
    """The flat, resolved config the sweep asks of `run` now (what its config.json must say)."""
    return config_lib.flatten(recipes.resolve(self.run_config(run)))

  def pack_key(self, run: Run) -> str | None:
    """Runs with equal keys can train packed (one program); None: only alone (two stages)."""
    if len(methods.stage_names(run.method)) > 1:
      return None
    flat = self.expected_config(run)
    return json.dumps({k: v for k, v in flat.items() if k not in (
        "seed", "optim.base_lr", "optim.weight_decay", "optim.applied_weight_decay",
        "optim.selected_in") and not k.startswith("sweep.")}, sort_keys=True, default=str)

  def waits_for(self, method: str) -> list[str]:
    """The methods of this sweep whose selection `method`'s first stage takes."""
    return [stage for stage in methods.stage_names(method)[:-1] if stage in self.methods]

  def search_runs(self) -> list[Run]:
    return [run for group in self.groups()
            for run in search_runs(*group, self.sweep_config(*group[1:]))]

  def final_slots(self) -> list[tuple[tuple[str, str, str], int]]:
    """(group, seed) of every final run, known before any selection (job-array indices)."""
    return [(group, seed) for group in self.groups()
            for seed in final_seeds(self.sweep_config(*group[1:]))]

  def final_run(self, sweep_dir: str, group, seed: int) -> Run:
    sweep_config = self.sweep_config(*group[1:])
    best = best_setting(sweep_dir, search_runs(*group, sweep_config))
    write_manifest(sweep_dir, group, final_runs(*group, best, sweep_config))
    return Run(*group, "final", best["base_lr"], best["weight_decay"], seed,
               tuple(best.get("grid", {}).items()))


# A runner trains one run in its workdir: runner(run, workdir, log, env=None) (executors.py).
Runner = Callable[..., None]


def slot_environment(slot: int, parallel: int, device_ids: tuple[str, ...]) -> dict | None:
  """What the process of a device slot sees: its device, and its share of that device's memory
  among the slots that run on it at once (JAX would otherwise take 75% in each)."""
  if parallel <= 1 and not device_ids:
    return None
  if not device_ids:  # Every process sees every device.
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / parallel:.2f}"}
  device_of = lambda s: device_ids[s % len(device_ids)]
  share = sum(device_of(s) == device_of(slot) for s in range(max(parallel, 1)))
  return {"CUDA_VISIBLE_DEVICES": device_of(slot),
          "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / share:.2f}"}


def execute(sweep_dir: str, runs: list[Run], runner: Runner, parallel: int = 1,
            device_ids: tuple[str, ...] = (), log=print,
            expected: Callable[[Run], dict] | None = None, pack: int = 1,
            pack_key: Callable[[Run], str | None] | None = None) -> dict:
  """Runs what is not done yet; returns counts of skipped, ran, failed and infeasible runs.

  `expected(run)` is the flat config the sweep now asks of a run; a run trained otherwise is set
  aside and trained again. A run another process owns (its lock is held) is left to that process
  and waited for, so that nothing is selected or reported before it is done. With `pack` > 1 and
  a runner that packs, up to `pack` runs of equal `pack_key` train at once.
  """
  counts = {"skipped": 0, "ran": 0, "failed": 0, "infeasible": 0}
  free_slots = queue.Queue()  # A device slot is held for the whole of one run.
  for slot in range(max(parallel, 1)):
    free_slots.put(slot)
  outcome_of = {"done": "skipped", "failed": "failed", "infeasible": "infeasible"}

  def settle(run) -> str | None:
    """The run's outcome if there is nothing to do, else None."""
    if files.is_locked(os.path.join(sweep_dir, run.workdir)):
      return "busy"
    set_aside_stale(sweep_dir, run, expected(run) if expected else None, log)
    return outcome_of.get(status(sweep_dir, run, log))

  started = {"runs": 0, "of": 0}  # Which of this call's runs to train a run is, for its header.
  started_lock = threading.Lock()

  def one(run) -> str:
    workdir = os.path.join(sweep_dir, run.workdir)
    slot = free_slots.get()
    try:
      with started_lock:
        started["runs"] += 1
        log(f"== [{started['runs']}/{started['of']}] {run.workdir}")
      env = slot_environment(slot, parallel, device_ids)
      try:
        runner(run, workdir, log=log, env=env)
      except RECORDED_FAILURES as e:
        kind = "infeasible" if isinstance(e, tasks_lib.InfeasibleSubsetError) else "failed"
        files.write_json(os.path.join(workdir, "failed.json"), {"error": str(e), "kind": kind})
      except files.BusyError:
        return "busy"
      state = status(sweep_dir, run, log)
      if state in ("failed", "infeasible"):
        log(f"{state.upper()} {run.workdir}: "
            f"{files.read_json(os.path.join(workdir, 'failed.json'))['error']}")
        return state
      return "ran"
    finally:
      free_slots.put(slot)

  def packed(batch) -> list[str]:
    workdirs = [os.path.join(sweep_dir, run.workdir) for run in batch]
    try:
      runner.pack(batch, workdirs, log=log)
    except RECORDED_FAILURES:  # Attribute it to its run: each resumes alone from its checkpoint.
      return [one(run) for run in batch]
    except files.BusyError:
      return ["busy"] * len(batch)
    return ["ran"] * len(batch)

  def run_all(todo):
    started["of"] += len(todo)
    if pack > 1 and pack_key is not None and hasattr(runner, "pack"):
      outcomes, by_key = {}, {}
      for run in todo:
        by_key.setdefault(pack_key(run), []).append(run)
      for key, same in by_key.items():
        for start in range(0, len(same), pack if key is not None else 1):
          batch = same[start:start + (pack if key is not None else 1)]
          outcomes.update(zip(batch, packed(batch) if len(batch) > 1 else [one(batch[0])]))
      return [outcomes[run] for run in todo]
    if parallel <= 1 or len(todo) <= 1:
      return [one(run) for run in todo]
    with futures.ThreadPoolExecutor(parallel) as pool:
      return list(pool.map(one, todo))

  todo = runs
  announced = False
  while todo:
    settled = {run: settle(run) for run in todo}
    for outcome in settled.values():
      if outcome and outcome != "busy":
        counts[outcome] += 1
    outcomes = dict(zip([r for r, o in settled.items() if o is None],
                        run_all([r for r, o in settled.items() if o is None])))
    for outcome in outcomes.values():
      if outcome != "busy":
        counts[outcome] += 1
    todo = [r for r, o in {**settled, **outcomes}.items() if o == "busy"]
    if todo:
      if not announced:
        log(f"Waiting for {len(todo)} run(s) that another process is training "
            f"(e.g. {todo[0].workdir}).")
        announced = True
      time.sleep(BUSY_POLL_SECONDS)
  return counts


def times_of_runs_since(sweep_dir: str, since: float) -> dict:
  """Seconds per phase of the runs that finished after `since` (from their result.json)."""
  totals = {}
  for root, _, names in os.walk(sweep_dir):
    path = os.path.join(root, "result.json")
    if "result.json" in names and os.path.getmtime(path) >= since:
      try:
        for name, value in files.read_json(path).get("time_seconds", {}).items():
          totals[name] = totals.get(name, 0) + value
      except files.DamagedFileError:
        continue
  return totals


def write_manifest(sweep_dir: str, group, runs: list[Run]) -> None:
  """<group>/sweep.json: the final runs of the sweep's current configuration, which are the ones
  the report counts (finals of earlier configurations may still lie beside them)."""
  setting, task, method = group
  group_dir = os.path.join(setting, task_dir(task), method)
  files.write_json(os.path.join(sweep_dir, group_dir, "sweep.json"),
                   {"final": sorted(os.path.relpath(r.workdir, group_dir)
                                    for r in runs)})


def run_protocol(sweep_dir: str, planner: Planner, runner: Runner, log=print,
                 **execute_kwargs) -> dict:
  """Grid search, selection, then final seeds, for every (setting, task, method). Methods whose
  first stage is another method of the sweep (ft_then_pt after full) go once that one is done.
  Every run is checked against the configuration the sweep now asks of it."""
  groups = planner.groups()
  later = [g for g in groups if planner.waits_for(g[2])]
  totals = {"skipped": 0, "ran": 0, "failed": 0, "infeasible": 0}
  execute_kwargs.setdefault("expected", planner.expected_config)
  execute_kwargs.setdefault("pack_key", planner.pack_key)
  for batch in ([g for g in groups if g not in later], later):
    if batch:
      counts = _protocol_of(sweep_dir, batch, planner, runner, log, **execute_kwargs)
      totals = {k: totals[k] + counts[k] for k in totals}
  return totals


def _protocol_of(sweep_dir, groups, planner, runner, log, **execute_kwargs) -> dict:
  grids = {group: search_runs(*group, planner.sweep_config(*group[1:])) for group in groups}
  totals = execute(sweep_dir, [r for runs in grids.values() for r in runs], runner, log=log,
                   **execute_kwargs)
  finals = []
  for group, grid in grids.items():
    try:
      best = select_best(sweep_dir, grid)
    except RuntimeError as e:  # Every grid run failed (or cannot run): say so, go on.
      log(f"SKIPPED final runs of {grid[0].group_dir}: {e}")
      write_manifest(sweep_dir, group, [])
      continue
    files.write_json(os.path.join(sweep_dir, grid[0].group_dir, "best.json"), best)
    others = "".join(f" {field}={_text(value)}" for field, value in best.get("grid", {}).items())
    log(f"{grid[0].group_dir}: best base_lr={best['base_lr']:g} weight_decay="
        f"{best['weight_decay']:g}{others} (val accuracy {best['val_accuracy']:.4f})")
    group_finals = final_runs(*group, best, planner.sweep_config(*group[1:]))
    write_manifest(sweep_dir, group, group_finals)
    finals += group_finals
  counts = execute(sweep_dir, finals, runner, log=log, **execute_kwargs)
  return {k: totals[k] + counts[k] for k in totals}
