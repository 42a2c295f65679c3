"""Classify images with a finished run: its backbone, method parameters and head, and its own
evaluation preprocessing (resolution, resize, normalization, centre crop).

  python launch/predict.py --run=runs/demo/demo_digits/vpt_deep photo.png more_photos/
  python launch/predict.py --run=RUN --out=preds.csv --top_k=3 my_test_set/

Writes a CSV (default <run>/predictions.csv): one row per image with its top-k labels, class names
and probabilities. A folder whose subfolders are the run's class names is scored too: accuracy and
a confusion matrix (printed, and drawn to <csv name>_confusion.png). Unreadable files are skipped
and listed. docs/predict_export.md has the details.
"""

import os

from absl import flags, logging

from vpt_jax.inference import predict
from vpt_jax.inference import run as run_lib
from vpt_jax.utils import cli

_RUN = flags.DEFINE_string("run", None, "The folder of one finished run (launch/main.py's run folder).")
_OUT = flags.DEFINE_string("out", None, "The CSV to write; default <run>/predictions.csv.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes per image in the CSV, most probable first.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per device batch (one compiled shape).",
                                   lower_bound=1)
flags.mark_flags_as_required(["run"])


def main(argv):
  logging.set_verbosity(logging.WARNING)  # No JAX start-up lines among the results.
  with cli.errors(run_lib.RunError, predict.InputError):
    run = run_lib.open_run(_RUN.value)
    inputs = predict.collect(argv[1:], run.class_names)
  out = _OUT.value or os.path.join(run.workdir, "predictions.csv")
  predictions = predict.classify(run, inputs, _BATCH_SIZE.value)
  with cli.errors():
    predict.write_csv(out, predictions, run.class_names, _TOP_K.value)
    evaluation = None
    if predictions.labels is not None and len(predictions.paths):
      evaluation = predict.evaluate(predictions, run.class_names,
                                    os.path.splitext(out)[0] + "_confusion.png",
                                    f"{os.path.basename(run.workdir)}: predictions on {len(predictions.paths)} images")
  print("\n".join(predict.summary(run, predictions, out, inputs, evaluation)))


if __name__ == "__main__":
  cli.run(main)
