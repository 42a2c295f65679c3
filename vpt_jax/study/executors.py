"""Where a sweep's runs execute: in this process, one subprocess per run (e.g. one per GPU), or
Slurm job arrays. Every path trains a run the same way: `train.train_and_evaluate` on the
planner's config, in the run's own workdir. A subprocess or array task is `launch/sweep.py` with
the sweep's own config flags plus --phase and --run_index, so it plans exactly what its parent did.
"""

import os
import shlex
import subprocess
import sys
import threading
import time

from vpt_jax.study import sweep
from vpt_jax.training import train
from vpt_jax.utils import config_lib

PARENT_ENV = "VPT_JAX_PARENT_PID"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_SCRIPT = os.path.join(REPO, "launch", "sweep.py")


def local(planner: sweep.Planner) -> sweep.Runner:
  """Trains each run in this process, which loads the backbone and the data and compiles each
  program once for all of them; `.pack(runs, workdirs, log)` trains several at once."""
  def run(run: sweep.Run, workdir: str, log=print, env=None):
    del env  # One process sees the devices it was started with.
    train.train_and_evaluate(planner.run_config(run), workdir, log=log)

  run.pack = lambda runs, workdirs, log=print: train.train_and_evaluate_packed(
      [planner.run_config(r) for r in runs], workdirs, log=log)
  return run


def run_index(planner: sweep.Planner, run: sweep.Run) -> int:
  """The run's position in its phase's list (the --run_index of launch/sweep.py)."""
  if run.phase == "search":
    return planner.search_runs().index(run)
  return planner.final_slots().index(((run.setting, run.task, run.method), run.seed))


def sweep_command(config_flag: str, overrides: dict, sweep_dir: str) -> list[str]:
  """launch/sweep.py with the sweep's config file, argument and overrides."""
  return [sys.executable, SWEEP_SCRIPT, f"--config={config_flag}", f"--sweep_dir={sweep_dir}",
          *config_lib.override_flags(overrides)]


def subprocess_runner(planner: sweep.Planner, config_flag: str, overrides: dict,
                      sweep_dir: str) -> sweep.Runner:
  """Trains each run in a `launch/sweep.py --run_index` process: own memory, own devices."""
  command = sweep_command(config_flag, overrides, sweep_dir)

  def run(run: sweep.Run, workdir: str, log=print, env=None):
    process = subprocess.run(
        [*command, f"--phase={run.phase}", f"--run_index={run_index(planner, run)}"],
        env={**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}, capture_output=True,
        text=True)
    if process.returncode and sweep.status(sweep_dir, run) == "pending":
      message = (process.stderr.strip().splitlines() or ["no output"])[-1]
      raise RuntimeError(f"Run {workdir} failed: {message}")
  return run


def exit_with_parent(poll_seconds: float = 1.0) -> None:
  """In a child of `subprocess_runner`: end this process as soon as the parent sweep is gone
  (killed, even with SIGKILL), so that no run trains on without an owner."""
  parent = os.environ.get(PARENT_ENV)
  if not parent:
    return

  def watch():
    while True:
      if os.getppid() != int(parent):
        os._exit(1)
      time.sleep(poll_seconds)
  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


SLURM_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=vpt-{phase}
#SBATCH --array=0-{last}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output={sweep_dir}/slurm/%x-%A_%a.out
cd {repo}
{command} --phase={phase} \\
    --run_index=$SLURM_ARRAY_TASK_ID
"""


def slurm_scripts(config_flag: str, overrides: dict, sweep_dir: str, num_search: int,
                  num_final: int) -> dict[str, str]:
  """Two job arrays: the grid, then (after it succeeds) the final seeds, which pick the best."""
  command = config_lib.quoted(["python", "launch/sweep.py", f"--config={config_flag}",
                               f"--sweep_dir={sweep_dir}",
                               *config_lib.override_flags(overrides)])
  scripts = {
      phase: SLURM_TEMPLATE.format(phase=phase, last=count - 1, sweep_dir=shlex.quote(sweep_dir),
                                   repo=shlex.quote(REPO), command=command)
      for phase, count in (("search", num_search), ("final", num_final))}
  scripts["submit"] = (
      "#!/bin/bash\nset -e\n"
      f"search=$(sbatch --parsable {shlex.quote(sweep_dir)}/slurm/search.sbatch)\n"
      f"sbatch --dependency=afterok:$search {shlex.quote(sweep_dir)}/slurm/final.sbatch\n")
  return scripts
