"""Task artifacts: what a finished stage trained (its trainable parameters only) and, merged onto
the pre-trained backbone, a finished run back as a model and its parameters."""

import dataclasses
import functools
import json
import os

import jax
import numpy as np

from vpt_jax import methods
from vpt_jax import checkpoints
from vpt_jax.utils import files, paths
from vpt_jax.data import tasks as tasks_lib
from vpt_jax import models
from vpt_jax.models import vit

FILENAME = "artifact.npz"
_META = "__meta__"


def save(path: str, trainable, meta: dict) -> int:
  """Writes the trained parameters and `meta` (JSON-able) atomically; returns the file's bytes."""
  flat = {k: np.asarray(v) for k, v in paths.flatten(jax.device_get(trainable)).items()}
  flat[_META] = np.array(json.dumps(meta))
  files.write_npz(path, flat)
  return os.path.getsize(path)


def load(path: str) -> tuple[dict, dict]:
  """(trained parameters, meta) from `save`; paths.merge() them onto the backbone."""
  try:
    flat = files.read_npz(path)
  except files.DamagedFileError as e:
    raise files.DamagedFileError(f"Task artifact {e}") from None
  if _META not in flat:
    raise files.DamagedFileError(f"{path} is not a vpt_jax task artifact (no metadata).")
  meta = json.loads(str(flat.pop(_META)))
  return paths.unflatten(flat), meta


def model_fields_to_json(model_fields: dict) -> dict:
  return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
          for k, v in model_fields.items()}


def model_fields_from_json(model_fields: dict) -> dict:
  fields = dict(model_fields)
  if "peft" in fields:
    fields["peft"] = vit.PeftModules(**fields["peft"])
  return fields


def stage_dirs(workdir: str) -> list[str]:
  """The directories of a run's stages, in order: the run itself, or its stage<i>_<method>."""
  stages = sorted(d for d in os.listdir(workdir) if d.startswith("stage"))
  return [os.path.join(workdir, d) for d in stages] or [workdir]


def load_trained(workdir: str):
  """(model, params, flat config) of a finished run (the last stage of a two-stage method)."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir} is not a run directory (no config.json).")
  config = files.read_json(config_path)
  stages = stage_dirs(workdir)
  if not os.path.exists(os.path.join(stages[-1], FILENAME)):
    raise FileNotFoundError(f"{workdir} has no {FILENAME}: the run has not finished.")
  trained, meta = load(os.path.join(stages[-1], FILENAME))
  num_classes, model_config = model_of_record(config)
  # The method's fields win over the config's (method zero_shot sets head_init), as in spec.py.
  model = models.build(num_classes=num_classes,
                    **{**model_config, **model_fields_from_json(meta["model_fields"])})
  backbone = pretrained_backbone(config, num_classes)
  params = methods.init_params(model, backbone, jax.random.PRNGKey(0), config["data.resolution"])
  for earlier in stages[:-1]:  # Each stage's artifact sits on top of the one before.
    params = paths.merge(params, load(os.path.join(earlier, FILENAME))[0])
  return model, paths.merge(params, trained), config



def model_of_record(config: dict) -> tuple[int, dict]:
  """(head classes, vit.Model fields) of a run's flat config record."""
  model_config = {k.removeprefix("model."): v for k, v in config.items() if k.startswith("model.")}
  head_classes = model_config.pop("head_classes", None)
  return head_classes or tasks_lib.get(config["task"]).num_classes, model_config


def pretrained_backbone(config: dict, num_classes: int) -> dict:
  """The run's pre-trained parameters without a head (each method's model makes its own); read
  once per process for all the runs that share them."""
  _, model_config = model_of_record(config)
  return _pretrained_backbone(config["backbone"], json.dumps(model_config, sort_keys=True),
                              num_classes, config["data.resolution"],
                              config.get("pretrained_cache_dir"))


@functools.lru_cache(maxsize=2)
def _pretrained_backbone(backbone: str, model_config: str, num_classes: int, resolution: int,
                         cache_dir: str | None) -> dict:
  params = checkpoints.load(backbone, models.build(num_classes=num_classes,
                                                   **json.loads(model_config)),
                            image_size=resolution, cache_dir=cache_dir)
  return {k: v for k, v in params.items() if k != "head"}
