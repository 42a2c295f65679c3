"""XLA's cost analysis of each method's compiled train step (FLOPs, memory, optimizer state).

  PYTHONPATH=. python launch/method_costs.py                       # B/16, 224 px, batch 2
  PYTHONPATH=. python launch/method_costs.py --methods=vqt,vpt_deep --variant=Ti/16 --depth=2

Nothing is trained or even allocated (abstract shapes), so the B/16 figures need no GPU.
Writes benchmarks/method_costs_<variant>.md and prints it.
"""

import os

from absl import app, flags

from vpt_jax.utils import files
from vpt_jax.bench import costs

_METHODS = flags.DEFINE_list("methods", ["linear", "vpt_deep", "vqt", "full", "galore"],
                             "Methods to analyse.")
_VARIANT = flags.DEFINE_string("variant", "B/16", "ViT variant.")
_DEPTH = flags.DEFINE_integer("depth", None, "Override the depth.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image size.")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch (FLOPs are per image).")
_OUT_DIR = flags.DEFINE_string("out_dir", "benchmarks", "Where the Markdown goes.")


def main(argv):
  del argv
  rows = []
  for method in _METHODS.value:
    rows.append(costs.method_costs(method, _VARIANT.value, _DEPTH.value, _IMAGE_SIZE.value,
                                   _BATCH.value))
    print(costs.markdown(rows).splitlines()[-1], flush=True)
  text = (f"# Train-step costs: {_VARIANT.value}"
          f"{f' depth {_DEPTH.value}' if _DEPTH.value else ''} at {_IMAGE_SIZE.value} px, "
          f"batch {_BATCH.value}, float32 (XLA cost and memory analysis, CPU compile)\n\n"
          + costs.markdown(rows) + "\n")
  path = os.path.join(_OUT_DIR.value,
                      f"method_costs_{_VARIANT.value.replace('/', '')}.md")
  files.write_text(path, text)
  print(text)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
