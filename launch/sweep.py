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
import time

from absl import flags, logging
from ml_collections import config_flags

from vpt_jax.checkpoints import pretrained
from vpt_jax.study import executors, sweep
from vpt_jax.utils import cli, files, timing
from vpt_jax.data import pipeline
from vpt_jax.data import tasks as tasks_lib

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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  executors.exit_with_parent()  # A --parallel child ends when its sweep does.
  if (_RUN_INDEX.value is None) != (_PHASE.value is None):
    sys.exit("error: --run_index and --phase go together (one job-array task of one phase).")
  config = cli.config_value(_CONFIG)
  config_flag = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  sweep_dir = os.path.abspath(_SWEEP_DIR.value)
  with cli.errors(ValueError):
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
      raise ValueError(f"--sweep_dir {sweep_dir} is a file: choose a directory.")
    planner = sweep.Planner(config, overrides, sweep_dir)
    searches = planner.search_runs()
    finals = planner.final_slots()
  os.makedirs(sweep_dir, exist_ok=True)

  if _SLURM.value:
    scripts = executors.slurm_scripts(config_flag, overrides, sweep_dir, len(searches),
                                      len(finals))
    for name, text in scripts.items():
      target = os.path.join(sweep_dir, "slurm", "submit.sh" if name == "submit" else
                            f"{name}.sbatch")
      if _DRY_RUN.value:
        print(f"# ---- {target}\n{text}")
      else:
        files.write_text(target, text)
    if not _DRY_RUN.value:
      print(f"Wrote {sweep_dir}/slurm/; submit with: bash {sweep_dir}/slurm/submit.sh")
    return

  timing.enable_compilation_cache(config.compilation_cache)
  started, spent = time.time(), timing.snapshot()
  with cli.errors(ValueError, RuntimeError, IndexError, pretrained.CheckpointError,
                  files.DamagedFileError, pipeline.DataNotPreparedError):
    if _RUN_INDEX.value is not None:  # One run, in this process (a job-array or parallel task).
      if _PHASE.value == "search":
        run = searches[_RUN_INDEX.value]
      else:
        run = planner.final_run(sweep_dir, *finals[_RUN_INDEX.value])
      counts = sweep.execute(sweep_dir, [run], executors.local(planner),
                             expected=planner.expected_config)
    else:
      # Every task's data, prepared (or generated) once here, before any run starts.
      for task in planner.tasks:
        pipeline.ensure_prepared(
            tasks_lib.with_split_dir(tasks_lib.get(task), config.data.get("split_dir")),
            config.data.data_dir, config.data.source)
      print(f"Sweep of {len(planner.groups())} task/method settings: {len(searches)} grid runs, "
            f"then {len(finals)} final runs -> {sweep_dir}")
      in_process = _PARALLEL.value <= 1
      runner = (executors.local(planner) if in_process else
                executors.subprocess_runner(planner, config_flag, overrides, sweep_dir))
      counts = sweep.run_protocol(sweep_dir, planner, runner, parallel=_PARALLEL.value,
                                  device_ids=tuple(_DEVICE_IDS.value),
                                  pack=config.sweep.pack if in_process else 1)
  times = (timing.since(spent) if _RUN_INDEX.value is not None or _PARALLEL.value <= 1 else
           sweep.times_of_runs_since(sweep_dir, started))
  print(f"Done: {counts['ran']} ran, {counts['skipped']} already finished, "
        f"{counts['failed']} failed (non-finite loss), {counts['infeasible']} infeasible "
        "(a data-scale size the task cannot hold); failed.json says which.")
  print(f"Wall time {time.time() - started:.1f}s: " + ", ".join(
      f"{name} {times.get(name, 0):.1f}s" for name in timing.PHASES)
      + f" ({int(times.get('compiles', 0))} compilations, {int(times.get('cache_loads', 0))} "
        "programs from the compilation cache).")
  print(f"Report: python launch/report.py --sweep_dir={sweep_dir}")


if __name__ == "__main__":
  cli.run(main)
