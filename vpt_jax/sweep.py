"""The paper's protocol over many runs: a base_lr x weight_decay grid scored on validation data,
the best setting (ties -> smaller lr, then smaller weight decay) rerun with several seeds and
scored on test.

Every run has its own workdir under the sweep directory:

  <sweep_dir>/<setting>/<task>/<method>/search/lr<lr>_wd<wd>/   grid runs
  <sweep_dir>/<setting>/<task>/<method>/best.json                 the chosen setting
  <sweep_dir>/<setting>/<task>/<method>/final/seed<s>/            final runs
  <sweep_dir>/<setting>/<task>/<method>/superseded/...             finals of an earlier selection

where <setting> is "vtab1k", "scale<N>" (data-scale, N training examples) or "<k>shot".
A run with result.json is done and skipped; one with failed.json (non-finite loss) is reported
and skipped; anything else is (re)started and resumes from its own checkpoints.
"""

import dataclasses
import json
import os
import queue
import shlex
import subprocess
import sys
from concurrent import futures
from typing import Callable

import ml_collections

from vpt_jax import train
from vpt_jax.data import tasks as tasks_lib

PHASES = ("search", "final")


@dataclasses.dataclass(frozen=True)
class Run:
  setting: str
  task: str
  method: str
  phase: str
  base_lr: float
  weight_decay: float
  seed: int

  @property
  def group_dir(self) -> str:
    return os.path.join(self.setting, self.task, self.method)

  @property
  def workdir(self) -> str:
    leaf = (f"lr{self.base_lr:g}_wd{self.weight_decay:g}" if self.phase == "search"
            else f"seed{self.seed}")
    return os.path.join(self.group_dir, self.phase, leaf)


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    path = f"{prefix}.{key}" if prefix else key
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(value, path))
    else:
      out[path] = value
  return out


def _set(config, path, value):
  *parents, leaf = path.split(".")
  for parent in parents:
    config = config[parent]
  with config.ignore_type():
    config[leaf] = value


def user_overrides(config, default) -> dict:
  """The fields a user changed on the command line (`--config.x=y`), as flat paths."""
  mine, theirs = _flatten(config.to_dict()), _flatten(default.to_dict())
  return {k: v for k, v in mine.items() if k not in ("task", "method") and theirs.get(k) != v}


def settings(sweep_config) -> list[str]:
  protocol = sweep_config.protocol
  if protocol == "vtab1k":
    return ["vtab1k"]
  if protocol == "data_scale":
    return [f"scale{n}" for n in sweep_config.sizes]
  if protocol == "kshot":
    return [f"{sweep_config.shots}shot"]
  raise ValueError(f"sweep.protocol={protocol!r} must be 'vtab1k', 'data_scale' or 'kshot'.")


def subsets(setting: str, phase: str, seed: int) -> tuple[str, str]:
  """(train subset, eval subset) of a run."""
  final = phase == "final"
  if setting == "vtab1k":
    return ("train800val200", "test") if final else ("train800", "val200")
  if setting.startswith("scale"):
    return (f"{setting}_trainval", "test") if final else (f"{setting}_train", f"{setting}_val")
  if setting.endswith("shot"):
    return f"{setting}_seed{seed}", "test" if final else "val200"
  raise ValueError(f"Unknown sweep setting {setting!r}.")


def search_runs(setting, task, method, sweep_config) -> list[Run]:
  return [Run(setting, task, method, "search", float(lr), float(wd), 0)
          for lr in sweep_config.base_lrs for wd in sweep_config.weight_decays]


def final_runs(setting, task, method, best, sweep_config) -> list[Run]:
  return [Run(setting, task, method, "final", best["base_lr"], best["weight_decay"], seed)
          for seed in range(sweep_config.seeds)]


def status(sweep_dir: str, run: Run) -> str:
  """"done", "failed" or "pending"."""
  workdir = os.path.join(sweep_dir, run.workdir)
  if os.path.exists(os.path.join(workdir, "result.json")):
    return "done"
  if os.path.exists(os.path.join(workdir, "failed.json")):
    return "failed"
  return "pending"


def set_aside_superseded(sweep_dir: str, run: Run, log=print) -> None:
  """A final run started with another setting than the one now selected (the grid changed) moves
  to <method>/superseded/lr<a>_wd<b>/seed<s>: kept, but no longer counted or resumed."""
  workdir = os.path.join(sweep_dir, run.workdir)
  path = os.path.join(workdir, "config.json")
  if run.phase != "final" or not os.path.exists(path):
    return
  with open(path) as f:
    stored = json.load(f)
  setting = (stored.get("optim.base_lr"), stored.get("optim.weight_decay"))
  if setting == (run.base_lr, run.weight_decay):
    return
  base = os.path.join(sweep_dir, run.group_dir, "superseded",
                      f"lr{setting[0]:g}_wd{setting[1]:g}", f"seed{run.seed}")
  target, n = base, 1
  while os.path.exists(target):  # The same old setting set aside before: keep both.
    n += 1
    target = f"{base}_{n}"
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(workdir, target)
  log(f"{run.workdir} was trained with base_lr={setting[0]:g} weight_decay={setting[1]:g}, not "
      f"the selected {run.base_lr:g}/{run.weight_decay:g}: moved to "
      f"{os.path.relpath(target, sweep_dir)}; rerunning it.")


def read_result(sweep_dir: str, run: Run) -> dict | None:
  path = os.path.join(sweep_dir, run.workdir, "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def select_best(sweep_dir: str, runs: list[Run]) -> dict:
  """The grid point with the best validation accuracy; ties -> smaller lr, then smaller wd."""
  scored = []
  for run in runs:
    result = read_result(sweep_dir, run)
    if result is not None:
      scored.append((-result["val_accuracy"], run.base_lr, run.weight_decay, result))
  if not scored:
    raise RuntimeError(f"No grid run of {runs[0].group_dir} finished: nothing to choose from.")
  scored.sort(key=lambda item: item[:3])
  accuracy, base_lr, weight_decay, _ = scored[0]
  return {"base_lr": base_lr, "weight_decay": weight_decay, "val_accuracy": -accuracy,
          "grid_points": len(runs), "finished": len(scored)}


# Fields a sweep sets per run; overriding them for a whole sweep would silently be undone.
SWEEP_FIELDS = ("seed", "optim.base_lr", "optim.weight_decay", "data.train_subset",
                "data.eval_subset")


class Planner:
  """Builds each run's config from `get_config` (the config file) plus the user's overrides."""

  def __init__(self, get_config: Callable, config: ml_collections.ConfigDict, arg: str | None,
               for_sweep: bool = False):
    self._get_config = get_config
    self._args = dict(item.split("=", 1) for item in filter(None, (arg or "").split(",")))
    self.overrides = user_overrides(config, get_config(arg))
    if for_sweep and (fixed := sorted(set(self.overrides) & set(SWEEP_FIELDS))):
      raise ValueError(f"A sweep sets {', '.join(fixed)} itself (seeds 0..sweep.seeds-1, the "
                       "grid sweep.base_lrs x sweep.weight_decays, the protocol's subsets); "
                       "drop those overrides and set config.sweep instead.")

  def base(self, **args) -> ml_collections.ConfigDict:
    """The config file's config for these arguments (e.g. one task and method), overridden."""
    merged = {**self._args, **{k: str(v) for k, v in args.items()}}
    config = self._get_config(",".join(f"{k}={v}" for k, v in merged.items()))
    for path, value in self.overrides.items():
      _set(config, path, value)
    return config

  def sweep_config(self, task: str, method: str):
    """The grid and protocol for one task and method (grids differ between methods)."""
    return self.base(task=task, method=method).sweep

  def config(self, run: Run) -> ml_collections.ConfigDict:
    mode = "final" if run.phase == "final" else "search"
    config = self.base(task=run.task, method=run.method, mode=mode, seed=run.seed)
    config.seed = run.seed
    config.optim.base_lr = run.base_lr
    config.optim.weight_decay = run.weight_decay
    config.data.train_subset, config.data.eval_subset = subsets(run.setting, run.phase, run.seed)
    return config


def run_in_process(config, workdir: str, log=print) -> None:
  train.train_and_evaluate(config, workdir, log=log)


def run_in_subprocess(config, workdir: str, env: dict | None = None, log=print) -> None:
  """One `launch/main.py` process per run: own memory, own devices (via `env`)."""
  os.makedirs(workdir, exist_ok=True)
  requested = os.path.join(workdir, "requested_config.json")
  with open(requested, "w") as f:
    f.write(config.to_json(indent=2))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, os.path.join(repo, "launch", "main.py"),
             f"--config={os.path.join(repo, 'configs', 'from_json.py')}:{requested}",
             f"--workdir={workdir}"]
  process = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True,
                           text=True)
  if process.returncode:
    message = (process.stderr.strip().splitlines() or ["no output"])[-1]
    if "Loss became" in message:
      raise train.NonFiniteLossError(message.removeprefix("error: "))
    if "cannot hold data-scale size" in message:
      raise tasks_lib.InfeasibleSubsetError(message.removeprefix("error: "))
    raise RuntimeError(f"Run {workdir} failed: {message}")


def execute(sweep_dir: str, runs: list[Run], planner: Planner, runner=run_in_process,
            parallel: int = 1, device_ids: tuple[str, ...] = (), log=print) -> dict:
  """Runs what is not done yet; returns counts of skipped, ran and failed runs."""
  counts = {"skipped": 0, "ran": 0, "failed": 0}
  free_slots = queue.Queue()  # A device slot is held for the whole of one run.
  for slot in range(max(parallel, 1)):
    free_slots.put(slot)
  pending = []
  for run in runs:
    set_aside_superseded(sweep_dir, run, log)
    state = status(sweep_dir, run)
    if state == "pending":
      pending.append(run)
    else:
      counts["skipped" if state == "done" else "failed"] += 1

  def one(run):
    workdir = os.path.join(sweep_dir, run.workdir)
    slot = free_slots.get()
    try:
      kwargs = {}
      if device_ids:
        device = device_ids[slot % len(device_ids)]
        share = device_ids.count(device)
        kwargs["env"] = {"CUDA_VISIBLE_DEVICES": device,
                         "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / share:.2f}"}
      runner(planner.config(run), workdir, log=log, **kwargs)
      return "ran"
    except (train.NonFiniteLossError, tasks_lib.InfeasibleSubsetError) as e:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "failed.json"), "w") as f:
        json.dump({"error": str(e)}, f)
      log(f"FAILED {run.workdir}: {e}")
      return "failed"
    finally:
      free_slots.put(slot)

  if parallel <= 1:
    outcomes = [one(run) for run in pending]
  else:
    with futures.ThreadPoolExecutor(parallel) as pool:
      outcomes = list(pool.map(one, pending))
  for outcome in outcomes:
    counts[outcome] += 1
  return counts


def plan(tasks: list[str], methods: list[str], sweep_config) -> list[tuple[str, str, str]]:
  return [(setting, task, method) for setting in settings(sweep_config) for task in tasks
          for method in methods]


def run_protocol(sweep_dir: str, groups, planner: Planner, log=print, **execute_kwargs) -> dict:
  """Grid search, selection, then final seeds, for every (setting, task, method)."""
  totals = {"skipped": 0, "ran": 0, "failed": 0}
  grids = {group: search_runs(*group, planner.sweep_config(*group[1:])) for group in groups}
  counts = execute(sweep_dir, [r for runs in grids.values() for r in runs], planner, log=log,
                   **execute_kwargs)
  totals = {k: totals[k] + counts[k] for k in totals}
  finals = []
  for group, grid in grids.items():
    try:
      best = select_best(sweep_dir, grid)
    except RuntimeError as e:  # Every grid run failed (or cannot run): say so, go on.
      log(f"SKIPPED final runs of {grid[0].group_dir}: {e}")
      continue
    path = os.path.join(sweep_dir, grid[0].group_dir, "best.json")
    with open(path + ".tmp", "w") as f:
      json.dump(best, f, indent=2)
    os.replace(path + ".tmp", path)
    log(f"{grid[0].group_dir}: best base_lr={best['base_lr']:g} weight_decay="
        f"{best['weight_decay']:g} (val accuracy {best['val_accuracy']:.4f})")
    finals += final_runs(*group, best, planner.sweep_config(*group[1:]))
  counts = execute(sweep_dir, finals, planner, log=log, **execute_kwargs)
  return {k: totals[k] + counts[k] for k in totals}


SLURM_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=vpt-{phase}
#SBATCH --array=0-{last}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output={sweep_dir}/slurm/%x-%A_%a.out
cd {repo}
python launch/sweep.py --config={config} --sweep_dir={sweep_dir} --phase={phase} \\
    --run_index=$SLURM_ARRAY_TASK_ID {extra}
"""


def slurm_scripts(config_arg: str, sweep_dir: str, num_search: int, num_final: int,
                  extra_flags: tuple[str, ...] = ()) -> dict[str, str]:
  """Two job arrays: the grid, then (after it succeeds) the final seeds, which pick the best."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  scripts = {
      phase: SLURM_TEMPLATE.format(phase=phase, last=count - 1, sweep_dir=shlex.quote(sweep_dir),
                                   repo=shlex.quote(repo), config=shlex.quote(config_arg),
                                   extra=" ".join(shlex.quote(f) for f in extra_flags))
      for phase, count in (("search", num_search), ("final", num_final))}
  scripts["submit"] = (
      "#!/bin/bash\nset -e\n"
      f"search=$(sbatch --parsable {sweep_dir}/slurm/search.sbatch)\n"
      f"sbatch --dependency=afterok:$search {sweep_dir}/slurm/final.sbatch\n")
  return scripts
