"""Train and evaluate one run, or one run per task and method when the config names several.

  python launch/main.py --config=configs/demo.py      # offline demo: 5 tasks x (VPT, FT), table
  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep --workdir=runs/dtd
  python launch/main.py --config=configs/demo.py:task=folder:/data/pets,method=linear+vpt_deep+full
      # your own images: class subfolders (train/<class>/, optional val/ and test/), one
      # <class>/ tree, train/val/test.json or train/val/test.txt lists; docs/data.md
  python launch/main.py --config=configs/vtab.py:task=dtd --config.optim.base_lr=2.5 --workdir=...
      # any config field: --config.<field>=<value> (a misspelt field is an error)
  python launch/main.py --list     # every task, data source, backbone, method and recipe

Afterwards: launch/predict.py --run=<run folder> <images> classifies new images with a finished
run; launch/export.py --run=<run folder> --out=<dir> writes it as safetensors/npz files other
tools load (docs/predict_export.md); launch/sweep.py runs the papers' protocol (docs/studies.md).
The config file's docstring says what it runs and what to expect. Running the same command again
resumes an interrupted run from its last checkpoint; a finished run is reported, not retrained.
--workdir defaults to config.workdir, else runs/<config name>_<arguments>.
"""

import os
import re
import sys
import time

from absl import flags, logging
import jax
from ml_collections import config_flags

from vpt_jax import catalog
from vpt_jax.checkpoints import pretrained
from vpt_jax.data import lists, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import plots, report, robustness, run_report, sweep
from vpt_jax.training import spec, train
from vpt_jax.utils import cli, files, hosts, timing

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


def _run_dirs(workdir: str, pairs: list[tuple[str, str]]) -> list[str]:
  """<workdir>/<task>/<method> per run, the task by its short name (a custom folder's base name;
  the full task is in each run's config.json), numbered where two tasks share one."""
  names = {}
  for task in dict.fromkeys(task for task, _ in pairs):
    name = tasks_lib.short_name(task)
    names[task] = name if name not in names.values() else f"{name}_{len(names) + 1}"
  return [os.path.join(workdir, names[task], method) for task, method in pairs]


def _accuracy_line(result: dict) -> str:
  split = result["eval_subset"]
  accuracy = result.get("test_accuracy", result.get("val_accuracy"))
  flag = " (diverged: scored at its last finished epoch)" if "diverged" in result else ""
  return (f"{tasks_lib.short_name(result['task'])} / {result['method']} / seed {result['seed']}: "
          f"{split} accuracy {100 * accuracy:.1f}%{flag} in {result['wall_seconds']:.0f}s")


def _write_tables(workdir: str, results: list[dict], markdown: str, rows: list[dict]) -> None:
  """results.md and results.csv at the top of the workdir (beside the runs)."""
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "results.md"), markdown + "\n")
    files.write_text(os.path.join(workdir, "results.csv"), report.csv_text(rows))


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
    run_dirs = [workdir] if len(pairs) == 1 else _run_dirs(workdir, pairs)
    configs = [config] if len(pairs) == 1 else [planner.base(t, m) for t, m in pairs]
    # Every run is resolved and its data and checkpoint checked before the first trains.
    for run_config, run_dir in zip(configs, run_dirs):
      train.check_inputs(spec.resolve_run(run_config, run_dir), log)
    platform = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    results = []
    for (task, method), run_config, run_dir in zip(pairs, configs, run_dirs):
      log(f"\n== {tasks_lib.short_name(task)} / {method} / seed {run_config.seed} on {platform} "
          f"-> {run_dir}")
      results.append(train.train_and_evaluate(run_config, run_dir, log=log))
      report_path = run_report.write(run_dir) if jax.process_index() == 0 else None
      if len(pairs) > 1:
        log(f"   {_accuracy_line(results[-1])}; report {report_path}")
  table, rows = report.tables(report.cells_from_results(results), with_chance=True)
  subset = results[0]["eval_subset"]
  markdown = f"{subset} top-1 (%), one seed, {jax.devices()[0].platform}:\n\n{table}"
  if len(results) > 1:
    log(f"\n{markdown}")
  if config.eval_shifts and subset == "test":
    with cli.errors(ValueError, RuntimeError, lists.BadDataError):
      shifted = [robustness.shift_run(d, config.eval_shifts, log=lambda *_: None) for d in run_dirs]
    shift_table = _shift_table(shifted, [r["method"] for r in results], config.eval_shifts)
    shift_text = (f"Shifted test sets ({', '.join(config.eval_shifts)}): top-1 (%), mean over "
                  f"tasks\n\n{shift_table}")
    markdown += f"\n\n{shift_text}"
    log(f"\n{shift_text}")
  _write_tables(workdir, results, markdown, rows)
  if len(results) > 1 and jax.process_index() == 0:
    plots.comparison(report.cells_from_results(results), os.path.join(workdir, "comparison.png"),
                     f"{subset} top-1 (%)", tasks_lib.short_name)
  if len(results) == 1:
    log(f"\n{_accuracy_line(results[0])}. Run folder: {workdir} (report: {report_path}).")
  else:
    log(f"\nTotal wall time {time.time() - started:.0f}s; tables in {workdir}/results.md and "
        f"results.csv, figure {workdir}/comparison.png, each run in {workdir}/<task>/<method>/.")


if __name__ == "__main__":
  cli.run(main)
