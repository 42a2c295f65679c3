"""Finished sweeps under distribution shift, and WiSE-FT.

  python launch/robustness.py --sweep_dir=sweeps/main
  python launch/robustness.py --sweep_dir=sweeps/main --shifts=gaussian_noise:5,jpeg:1 --nowise
  python launch/robustness.py --sweep_dir=sweeps/clip --wise_mode=petl   # PETL_Vision's merge_petl

Runs trained on few-shot ImageNet (configs/imagenet_shift.py) are scored on --eval_sets
(<run>/eval_sets.json) and, with --wise, along a = 0, 0.1, ..., 1 on ImageNet and every set
(<method>/wise_sets.json); the other runs as follows.

For every final run of the sweep's current configuration: test accuracy on corrupted copies of
the test split (<run>/shift.json). For every (task, method) whose runs tuned pre-trained weights
(--wise_mode=model; with petl, whose runs inserted parameters, robustness.suits): WiSE-FT's a
picked on val200 with the selected setting's search run, test accuracy of the final runs along
a, clean and shifted (<method>/wise.json; petl: wise_petl.json). Results are reused while the
runs' artifacts are unchanged. Then `launch/report.py` shows them, with a figure.
"""

import os
import sys

from absl import flags, logging

from vpt_jax.study import imagenet_shift, report, robustness
from vpt_jax.utils import cli
from vpt_jax.data import shifts

_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "A launch/sweep.py output directory.")
_SHIFTS = flags.DEFINE_list("shifts", list(shifts.DEFAULT_SHIFTS),
                            "Corruption:severity (1-5) of " + ", ".join(shifts.CORRUPTIONS))
_WISE = flags.DEFINE_bool("wise", True, "WiSE-FT for the methods that tune pre-trained weights "
                          "(--wise_mode=model) or insert parameters (petl).")
_WISE_MODE = flags.DEFINE_enum(
    "wise_mode", "model", robustness.WISE_MODES,
    "model: every parameter from where the run started (wise-ft, PETL_Vision's merge_model.py; "
    "methods that tune pre-trained weights), into <method>/wise.json; petl: PETL_Vision's "
    "merge_petl.py, the head from its start and the inserted modules' outputs times alpha "
    "(methods that insert parameters), into <method>/wise_petl.json.")
_EVAL_SETS = flags.DEFINE_string(
    "eval_sets", "imagenet_shifts", "Named evaluation sets of runs trained on few-shot ImageNet "
    "(imagenet_shifts: ImageNet-V2, -Sketch, -A, -R; or names joined by +).")
flags.mark_flags_as_required(["sweep_dir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not os.path.isdir(_SWEEP_DIR.value):
    sys.exit(f"error: {_SWEEP_DIR.value} is not a directory; run launch/sweep.py first.")
  with cli.errors(ValueError):
    for shift in _SHIFTS.value:
      shifts.parse(shift)
  current, _ = report.final_dirs(_SWEEP_DIR.value)
  finished = [d for d in current if os.path.exists(os.path.join(d, "result.json"))]
  # Runs on few-shot ImageNet: its named evaluation sets and WiSE-FT curves over all of them
  # (vpt_jax/study/imagenet_shift.py) instead of corrupted copies of a TFDS test split.
  natural = [d for d in finished if imagenet_shift.is_imagenet_run(d)]
  finished = [d for d in finished if d not in natural]
  with cli.errors(ValueError):
    eval_sets = imagenet_shift.expand_sets(_EVAL_SETS.value)
  natural_by_method = {}
  for workdir in natural:
    imagenet_shift.evaluate_sets(workdir, eval_sets)
    natural_by_method.setdefault(os.path.dirname(os.path.dirname(workdir)), []).append(workdir)
  for method_dir, runs in sorted(natural_by_method.items()) if _WISE.value else ():
    imagenet_shift.wise_sets(method_dir, sorted(runs), eval_sets)
  for workdir in finished:
    robustness.shift_run(workdir, _SHIFTS.value)
  if not _WISE.value:
    return
  by_method = {}
  for workdir in finished:
    by_method.setdefault(os.path.dirname(os.path.dirname(workdir)), []).append(workdir)
  for method_dir, runs in sorted(by_method.items()):
    if not robustness.suits(runs[0], _WISE_MODE.value):
      continue
    chosen = robustness.selection_run(method_dir)
    if chosen is None:
      print(f"{method_dir}: no search run of the selected setting; WiSE-FT needs one (skipped).")
      continue
    robustness.wise(method_dir, chosen, sorted(runs), _SHIFTS.value, mode=_WISE_MODE.value)
  print(f"Report: python launch/report.py --sweep_dir={_SWEEP_DIR.value}")


if __name__ == "__main__":
  cli.run(main)
