"""Train and evaluate one run, or one run per task and method when the config names several.

  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep --workdir=runs/dtd
  python launch/main.py --config=configs/vtab.py:task=dtd --config.optim.base_lr=2.5 --workdir=...
  python launch/main.py --config=configs/demo.py      # offline demo: 5 tasks x (VPT, FT), table
  python launch/main.py --list     # every task, data source, backbone, method and recipe

The config file's docstring says what it runs and what to expect. Running the same command again
resumes an interrupted run from its last checkpoint; a finished run is reported, not retrained.
--workdir defaults to config.workdir, else runs/<config name>_<arguments>.
"""

import json
import os
import re
import sys
import time

from absl import flags, logging
import jax
from ml_collections import config_flags

from vpt_jax import catalog
from vpt_jax.checkpoints import pretrained
from vpt_jax.study import report, robustness, sweep
from vpt_jax.training import train
from vpt_jax.utils import cli, files, hosts, timing
from vpt_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vtab.py:task=dtd.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "One process per host: join the others first (cluster "
                                 "auto-detection, or the three flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "With --distributed: HOST:PORT of process "
                                   "0's coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
_LIST = flags.DEFINE_bool("list", False, "Print every task, data source, backbone, method and "
                          "recipe, one line each, and exit.")


def _default_workdir(config, config_flag: str) -> str:
  if config.workdir:
    return config.workdir
  path, _, arg = config_flag.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{name}_{arg}" if arg else name))


def _shift_table(shifted: list[dict], run_methods: list[str], names) -> str:
  rows = ["| method | clean | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
  for method in dict.fromkeys(run_methods):
    mine = [s for s, m in zip(shifted, run_methods) if m == method]
    mean = lambda values: f"{100 * sum(values) / len(values):.1f}"
    rows.append(f"| {method} | {mean([s['clean'] for s in mine])} | " + " | ".join(
        mean([s["accuracy"][n] for s in mine]) for n in names) + " |")
  return "\n".join(rows)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _LIST.value:
    print("\n".join(catalog.lines()))
    return
  if _CONFIG.value is None:
    sys.exit("error: --config is required, e.g. --config=configs/vtab.py:task=dtd (or --list).")
  config = cli.config_value(_CONFIG)
  if _DISTRIBUTED.value:
    with cli.errors(ValueError):
      hosts.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  timing.enable_compilation_cache(config.compilation_cache)
  workdir = _WORKDIR.value or _default_workdir(
      config, config_flags.get_config_filename(flags.FLAGS["config"]))
  log = print if jax.process_index() == 0 else (lambda *_: None)
  started = time.time()
  with cli.errors(ValueError, RuntimeError, pretrained.CheckpointError, files.DamagedFileError,
                  pipeline.DataNotPreparedError), hosts.peer_loss_is_fatal():
    planner = sweep.Planner(config)
    pairs = [(task, method) for task in planner.tasks for method in planner.methods]
    if len(pairs) == 1:
      log(f"{config.task} / {config.method} / seed {config.seed} on {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s) -> {workdir}")
      result = train.train_and_evaluate(config, workdir, log=log)
      log(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))
      return
    # Several tasks or methods: one run each (no grid search: that is launch/sweep.py's job).
    results, run_dirs = [], []
    for task, method in pairs:
      run_dir = os.path.join(workdir, task, method)
      log(f"\n== {task} / {method} -> {run_dir}")
      result = train.train_and_evaluate(planner.base(task, method), run_dir, log=log)
      accuracy = result.get("test_accuracy", result.get("val_accuracy"))
      log(f"   {result['eval_subset']} accuracy {100 * accuracy:.1f}% "
          f"({result['wall_seconds']:.0f}s)")
      results.append(result)
      run_dirs.append(run_dir)
  table, _ = report.tables(report.cells_from_results(results), with_chance=True)
  log(f"\n{results[0]['eval_subset']} top-1 (%), one seed, {jax.devices()[0].platform}:\n{table}")
  if config.eval_shifts and results[0]["eval_subset"] == "test":
    log(f"\nShifted test sets ({', '.join(config.eval_shifts)}): top-1 (%), mean over tasks")
    log(_shift_table([robustness.shift_run(d, config.eval_shifts, log=lambda *_: None)
                      for d in run_dirs], [r["method"] for r in results], config.eval_shifts))
  log(f"\nTotal wall time {time.time() - started:.0f}s; results in {workdir}/<task>/<method>/.")


if __name__ == "__main__":
  cli.run(main)
