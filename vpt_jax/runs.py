"""A finished run, back from its workdir: the model and its parameters (backbone + artifact)."""

import json
import os

import jax

from vpt_jax import checkpoints, methods
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit


def load_trained(workdir: str):
  """(model, params, flat config) of a run (the last stage of a two-stage method)."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir} is not a run directory (no config.json).")
  with open(config_path) as f:
    config = json.load(f)
  stages = sorted(d for d in os.listdir(workdir) if d.startswith("stage"))
  stage_dir = os.path.join(workdir, stages[-1]) if stages else workdir
  artifact = os.path.join(stage_dir, "artifact.npz")
  if not os.path.exists(artifact):
    raise FileNotFoundError(f"{workdir} has no artifact.npz: the run has not finished.")
  trained, meta = methods.load_artifact(artifact)
  kwargs = dict(meta["method_model_kwargs"])
  if "extras" in kwargs:
    kwargs["extras"] = vit.Extras(**kwargs["extras"])
  model_config = {k.removeprefix("model."): v for k, v in config.items() if k.startswith("model.")}
  num_classes = tasks_lib.get(config["task"]).num_classes
  model = vit.Model(num_classes=num_classes, **model_config, **kwargs)
  backbone = checkpoints.load_pretrained(
      config["backbone"], vit.Model(num_classes=num_classes, **model_config),
      image_size=config["data.resolution"], cache_dir=config.get("checkpoint_cache_dir"))
  base = methods.init_params(model, backbone, jax.random.PRNGKey(0),
                             config["data.resolution"])
  if stages:  # A two-stage run: the first stage's artifact sits under the second's.
    for stage in stages[:-1]:
      earlier, _ = methods.load_artifact(os.path.join(workdir, stage, "artifact.npz"))
      base = methods.merge(base, earlier)
  return model, methods.merge(base, trained), config
