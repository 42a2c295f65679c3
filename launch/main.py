"""Train and evaluate one run.

  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep --workdir=runs/dtd
  python launch/main.py --config=configs/vtab.py:task=dtd --config.optim.base_lr=2.5 --workdir=...

The config file's docstring says what it runs and what to expect. Running the same command again
resumes an interrupted run from its last checkpoint; a finished run is reported, not retrained.
"""

import json
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from vpt_jax import checkpoints, train
from vpt_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vtab.py:task=dtd.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() first (one process per host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  log = print if jax.process_index() == 0 else (lambda *_: None)
  log(f"{config.task} / {config.method} / seed {config.seed} on {jax.device_count()} "
      f"{jax.devices()[0].platform} device(s) -> {_WORKDIR.value}")
  try:
    result = train.train_and_evaluate(config, _WORKDIR.value, log=log)
  except (ValueError, RuntimeError, checkpoints.CheckpointError,
          pipeline.DataNotPreparedError) as e:
    sys.exit(f"error: {e}")
  log(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))


if __name__ == "__main__":
  app.run(main)
