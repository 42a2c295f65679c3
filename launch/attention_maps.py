"""Class-token attention of trained runs over test images, side by side (e.g. FT vs VPT).

  python launch/attention_maps.py --runs=sweeps/a/vtab1k/dtd/full/final/seed0,\
sweeps/a/vtab1k/dtd/vpt_deep/final/seed0 --num_images=4 --out=dtd_attention.png

Columns per run: the last layer's class-token attention and the attention rollout.
"""

import os
import sys

from absl import flags, logging
import jax
import numpy as np

from vpt_jax.checkpoints import pretrained
from vpt_jax.study import attention
from vpt_jax.training import artifacts
from vpt_jax.utils import cli, files
from vpt_jax.data import device, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import swin

_RUNS = flags.DEFINE_list("runs", None, "Run workdirs (same task).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Test images to show.")
_SUBSET = flags.DEFINE_string("subset", "test", "Which images.")
_OUT = flags.DEFINE_string("out", "attention.png", "Output PNG.")
flags.mark_flags_as_required(["runs"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    loaded = [(os.path.normpath(r), *artifacts.load_trained(r)) for r in _RUNS.value]
    swin_runs = [workdir for workdir, model, _, _ in loaded if isinstance(model, swin.Model)]
    if swin_runs:  # Window attention has no map over the whole image.
      raise ValueError(f"{swin_runs[0]} is a Swin run: attention maps are drawn for ViT runs only.")
    tasks = {config["task"] for _, _, _, config in loaded}
    if len(tasks) != 1:
      raise ValueError(f"The runs are of different tasks ({sorted(tasks)}): compare one task.")
    config = loaded[0][3]
    batch = next(pipeline.eval_batches(tasks_lib.get(config["task"]), _SUBSET.value, config["data.resolution"],
                                       _NUM_IMAGES.value, config.get("data.data_dir"),
                                       config.get("data.resize") or "bilinear"))
  except (ValueError, FileNotFoundError, pretrained.CheckpointError, files.DamagedFileError,
          pipeline.DataNotPreparedError) as e:
    sys.exit(f"error: {e}")
  images = batch["image"][batch["mask"]]
  maps = {}
  for workdir, model, params, run_config in loaded:
    inputs = device.normalize(images, run_config["data.normalization"])
    _, aux = jax.jit(lambda p, x: model.apply({"params": p}, x, return_attention=True))(
        params, inputs)
    side = images.shape[1] // model.architecture.patch_size[0]
    label = f"{run_config['method']}"
    maps[f"{label}: last layer"] = attention.last_layer_map(aux["attention"], model, (side, side))
    maps[f"{label}: rollout"] = attention.rollout_map(aux["attention"], model, (side, side))
  attention.overlay_figure(np.asarray(images), maps, _OUT.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
