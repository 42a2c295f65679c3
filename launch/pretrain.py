"""Pre-train a small ViT from scratch and write it as a Google (vision_transformer) npz checkpoint.

  python launch/pretrain.py --config=configs/demo_pretrain.py \
      --out=vpt_jax/assets/demo_vit_ti8_depth2.npz

The run itself is an ordinary launch/main.py run (config.backbone = None: random init, method
"full"), in config.workdir, resumable; the export then goes through pretrained.export_npz, so the
file loads through exactly the code that loads Google's checkpoints. Deterministic on CPU.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from vpt_jax.checkpoints import pretrained
from vpt_jax.training import artifacts, train
from vpt_jax.utils import cli, files

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/demo_pretrain.py")
_OUT = flags.DEFINE_string("out", None, "Where to write the npz checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Default: config.workdir.")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = cli.config_value(_CONFIG)
  if config.backbone is not None or config.method != "full":
    sys.exit("error: pre-training needs config.backbone = None and config.method = 'full'.")
  workdir = _WORKDIR.value or config.workdir
  try:
    result = train.train_and_evaluate(config, workdir)
  except (ValueError, RuntimeError, files.DamagedFileError) as e:
    sys.exit(f"error: {e}")
  params, _ = artifacts.load(os.path.join(workdir, artifacts.FILENAME))
  pretrained.export_npz(params, _OUT.value)
  print(f"{config.task}: {result['eval_subset']} accuracy {result['val_accuracy']:.4f} after "
        f"{result['epochs']} epochs ({result['wall_seconds']:.0f}s); wrote {_OUT.value} "
        f"({os.path.getsize(_OUT.value) / 1e6:.1f} MB)")


if __name__ == "__main__":
  cli.run(main)
