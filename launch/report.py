"""Tables and figures of a sweep: Markdown and CSV tables like the paper's, PNG plots.

  python launch/report.py --sweep_dir=sweeps/a                 # -> sweeps/a/report/
  python launch/report.py --sweep_dir=sweeps/a --published     # with the VPT paper's numbers
  python launch/report.py --sweep_dir=sweeps/a --distances=sweeps/a/distances.json
  python launch/report.py --sweep_dir=sweeps/a --ensembles=vpt_deep+lora+ssf,full+vpt_deep
  python launch/report.py --sweep_dir=sweeps/imagenet --published   # ID / OOD, WiSE-FT curves

Final runs save their test logits: the report always has the error-disagreement matrix and each
method's seed ensemble per task; --ensembles adds prediction ensembles of method sets. Clean vs
shifted accuracy and WiSE-FT appear once launch/robustness.py has evaluated the runs.

The loss-curve figure needs runs made with --config.eval_every_epochs=1; the data-scale figure
needs a sweep with --config.sweep.protocol=data_scale; the distance chart needs
launch/data_distance.py's output.
"""

import os
import sys

from absl import flags

from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import many_shot, plots, predictions, report
from vpt_jax.study import imagenet_shift
from vpt_jax.utils import cli

_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "A launch/sweep.py output directory.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Default: <sweep_dir>/report.")
_PUBLISHED = flags.DEFINE_bool("published", False, "Add the published numbers as extra rows.")
_DISTANCES = flags.DEFINE_string("distances", None, "distances.json from launch/data_distance.py.")
_ENSEMBLES = flags.DEFINE_list("ensembles", [], "Method sets to ensemble, e.g. vpt_deep+lora+ssf.")
flags.mark_flags_as_required(["sweep_dir"])


def main(argv):
  del argv
  if not os.path.isdir(_SWEEP_DIR.value):
    sys.exit(f"error: {_SWEEP_DIR.value} is not a directory; run launch/sweep.py first.")
  out_dir = _OUT_DIR.value or os.path.join(_SWEEP_DIR.value, "report")
  ensembles = tuple(tuple(e.split("+")) for e in _ENSEMBLES.value)
  for members in ensembles:
    if len(members) < 2 or any(m not in methods.names() for m in members):
      sys.exit(f"error: --ensembles={'+'.join(members)} must join two or more method names "
               f"with + (methods: {', '.join(methods.names())}).")
  print(report.write(_SWEEP_DIR.value, out_dir, _PUBLISHED.value, ensembles))
  cells, _, _ = report.collect(_SWEEP_DIR.value)
  current, _ = report.final_dirs(_SWEEP_DIR.value)
  vtab = [d for d in current if os.path.relpath(d, _SWEEP_DIR.value).startswith("vtab1k")]
  curves = {k[1:]: v for k, v in report.wise_curves(_SWEEP_DIR.value).items()
            if k[0] == "vtab1k"}
  figures = {
      "loss_curves.png": lambda p: plots.loss_curves(_SWEEP_DIR.value, p),
      "data_scale.png": lambda p: plots.data_scale(cells, p),
      "ensembles.png": lambda p: plots.ensembles(
          predictions.analyse(predictions.load(vtab), list(ensembles)), p),
      "robustness.png": lambda p: plots.robustness(
          report.shift_rows(_SWEEP_DIR.value).get("vtab1k", {}), curves, p),
  }
  if tasks_lib.MANY_SHOT in cells:  # Accuracy against training-set size, Mai et al.'s beside.
    figures["many_shot.png"] = lambda p: plots.many_shot(
        many_shot.curves(cells[tasks_lib.MANY_SHOT], _PUBLISHED.value), p)
  if _DISTANCES.value:
    figures["data_distance.png"] = lambda p: plots.distance_chart(
        plots.read_distances(_DISTANCES.value), cells.get("vtab1k", {}), p)
  # Few-shot ImageNet: ID against mean OOD top-1 along WiSE-FT's a, per method.
  figures["imagenet_wise.png"] = lambda p: plots.imagenet_wise(
      imagenet_shift.curves(_SWEEP_DIR.value, _PUBLISHED.value), p)
  for name, draw in figures.items():
    path = os.path.join(out_dir, name)
    print(f"{'wrote' if draw(path) else 'no data for'} {path}")


if __name__ == "__main__":
  cli.run(main)
