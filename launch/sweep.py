"""Run the paper's protocol: lr x wd grid on val, best setting with several seeds on test.

  python launch/sweep.py --config=configs/vtab.py:task=dtd,method=vpt_deep --sweep_dir=sweeps/dtd
  python launch/sweep.py --config=configs/vtab.py:task=all,method=vpt_deep+full --sweep_dir=... \
      --parallel=8 --device_ids=0,1,2,3,4,5,6,7      # one run per GPU, side by side
  python launch/sweep.py ... --config.sweep.protocol=data_scale   # or kshot
  python launch/sweep.py ... --slurm --dry_run     # print the Slurm job arrays instead

Rerunning the same command skips finished runs and resumes unfinished ones. Then:
  python launch/report.py --sweep_dir=sweeps/dtd
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vpt_jax import config_args, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/vtab.py:task=...,method=...")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Where all runs of the sweep go.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs side by side, each in its own process "
                                 "(1: one after the other in this process).")
_DEVICE_IDS = flags.DEFINE_list("device_ids", [], "GPU ids for the parallel runs, in turn; repeat "
                                "an id to share a device between small runs.")
_SLURM = flags.DEFINE_bool("slurm", False, "Write Slurm job arrays (and submit them with sbatch).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "With --slurm: print the scripts, submit nothing.")
_PHASE = flags.DEFINE_enum("phase", None, sweep.PHASES, "With --run_index: which job array.")
_RUN_INDEX = flags.DEFINE_integer("run_index", None, "Run only this run of --phase (job arrays).")
flags.mark_flags_as_required(["config", "sweep_dir"])


def _config_file_and_arg():
  return config_args.config_flag_value(sys.argv)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  path, arg = _config_file_and_arg()
  module = config_args.load_config_module(path)
  if (_RUN_INDEX.value is None) != (_PHASE.value is None):
    sys.exit("error: --run_index and --phase go together (one job-array task of one phase).")
  try:
    # A config file may expand names like "all" itself; otherwise tasks are joined by "+".
    tasks = getattr(module, "expand_tasks", lambda spec: spec.split("+"))(config.task)
    methods = config.method.split("+")
    planner = sweep.Planner(module.get_config, config, arg, for_sweep=True)
    groups = sweep.plan(tasks, methods, config.sweep)
    grid_of = {g: planner.sweep_config(*g[1:]) for g in groups}
  except (ValueError, AttributeError) as e:
    sys.exit(f"error: {e}")
  sweep_dir = os.path.abspath(_SWEEP_DIR.value)
  os.makedirs(sweep_dir, exist_ok=True)
  searches = [r for g in groups for r in sweep.search_runs(*g, grid_of[g])]
  finals = [(g, seed) for g in groups for seed in range(grid_of[g].seeds)]
  num_final = len(finals)

  if _SLURM.value:
    overrides = tuple(a for a in sys.argv[1:] if a.startswith("--config."))
    scripts = sweep.slurm_scripts(f"{path}:{arg}", sweep_dir, len(searches), num_final, overrides)
    os.makedirs(os.path.join(sweep_dir, "slurm"), exist_ok=True)
    for name, text in scripts.items():
      target = os.path.join(sweep_dir, "slurm", f"{name}.sbatch" if name != "submit" else
                            "submit.sh")
      if _DRY_RUN.value:
        print(f"# ---- {target}\n{text}")
      else:
        with open(target, "w") as f:
          f.write(text)
    if not _DRY_RUN.value:
      print(f"Wrote {sweep_dir}/slurm/; submit with: bash {sweep_dir}/slurm/submit.sh")
    return

  runner = sweep.run_in_subprocess if _PARALLEL.value > 1 else sweep.run_in_process
  kwargs = dict(runner=runner, parallel=_PARALLEL.value, device_ids=tuple(_DEVICE_IDS.value))
  try:
    if _RUN_INDEX.value is not None:
      if _PHASE.value == "search":
        runs = [searches[_RUN_INDEX.value]]
      else:
        group, seed = finals[_RUN_INDEX.value]
        best = sweep.select_best(sweep_dir, sweep.search_runs(*group, grid_of[group]))
        runs = [sweep.final_runs(*group, best, grid_of[group])[seed]]
      counts = sweep.execute(sweep_dir, runs, planner, **kwargs)
    else:
      print(f"Sweep of {len(groups)} task/method settings: {len(searches)} grid runs, then "
            f"{num_final} final runs -> {sweep_dir}")
      counts = sweep.run_protocol(sweep_dir, groups, planner, **kwargs)
  except (ValueError, RuntimeError, IndexError) as e:
    sys.exit(f"error: {e}")
  print(f"Done: {counts['ran']} ran, {counts['skipped']} already finished, "
        f"{counts['failed']} failed (non-finite loss, see failed.json).")
  print(f"Report: python launch/report.py --sweep_dir={sweep_dir}")


if __name__ == "__main__":
  app.run(main)
