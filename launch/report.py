"""Tables and figures of a sweep: Markdown and CSV tables like the paper's, PNG plots.

  python launch/report.py --sweep_dir=sweeps/a                 # -> sweeps/a/report/
  python launch/report.py --sweep_dir=sweeps/a --published     # with the VPT paper's numbers
  python launch/report.py --sweep_dir=sweeps/a --distances=sweeps/a/distances.json

The loss-curve figure needs runs made with --config.eval_every_epochs=1; the data-scale figure
needs a sweep with --config.sweep.protocol=data_scale; the distance chart needs
launch/data_distance.py's output.
"""

import os
import sys

from absl import flags

from vpt_jax import cli, plots, report

_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "A launch/sweep.py output directory.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Default: <sweep_dir>/report.")
_PUBLISHED = flags.DEFINE_bool("published", False, "Add the published numbers as extra rows.")
_DISTANCES = flags.DEFINE_string("distances", None, "distances.json from launch/data_distance.py.")
flags.mark_flags_as_required(["sweep_dir"])


def main(argv):
  del argv
  if not os.path.isdir(_SWEEP_DIR.value):
    sys.exit(f"error: {_SWEEP_DIR.value} is not a directory; run launch/sweep.py first.")
  out_dir = _OUT_DIR.value or os.path.join(_SWEEP_DIR.value, "report")
  print(report.write(_SWEEP_DIR.value, out_dir, _PUBLISHED.value))
  cells, _, _ = report.collect(_SWEEP_DIR.value)
  figures = {
      "loss_curves.png": lambda p: plots.loss_curves(_SWEEP_DIR.value, p),
      "data_scale.png": lambda p: plots.data_scale(cells, p),
  }
  if _DISTANCES.value:
    figures["data_distance.png"] = lambda p: plots.distance_chart(
        plots.read_distances(_DISTANCES.value), cells.get("vtab1k", {}), p)
  for name, draw in figures.items():
    path = os.path.join(out_dir, name)
    print(f"{'wrote' if draw(path) else 'no data for'} {path}")


if __name__ == "__main__":
  cli.run(main)
