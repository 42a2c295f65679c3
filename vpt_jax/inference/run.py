"""A finished run opened for use: its model and parameters (the backbone, every stage's trained
parameters and the head), checked against the checksums its results recorded, with the
preprocessing its evaluation applied and its class names. What is not a finished, intact run is
refused with one line (RunError) that says what to do."""

import dataclasses
import os

import jax
import numpy as np

from vpt_jax.checkpoints import pretrained
from vpt_jax.data import device
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import run_report
from vpt_jax.training import artifacts
from vpt_jax.utils import files


class RunError(ValueError):
  """A run directory that cannot be used: not a run, unfinished or damaged."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How the run's evaluation turned an image file into the model's input."""
  resolution: int  # The model's input size.
  resize: str  # data.resize: how the decoded image is resized (vpt_jax/data/folder_source.py).
  normalization: str  # data.normalization (vpt_jax/data/device.py).
  crop_from: int = 0  # >0: resized to this size, then the centre `resolution` square is kept.

  @property
  def stored_size(self) -> int:
    return self.crop_from or self.resolution

  @property
  def crop_size(self) -> int | None:
    return self.resolution if self.crop_from else None

  def prepare(self, images):
    """uint8 (N, stored_size, stored_size, 3) -> the model's float32 input (jit-able)."""
    return device.normalize(device.center_crop(images, self.crop_size), self.normalization)

  def mean_std(self) -> tuple[list[float], list[float]]:
    """The per-channel mean and std on [0, 1] pixels that the normalization equals, read off
    device.normalize itself ((x - mean) / std), for tools that take them as numbers."""
    black, white = (np.asarray(device.normalize(np.full((1, 1, 1, 3), v, np.uint8), self.normalization))[0, 0, 0]
                    for v in (0, 255))
    std = 1.0 / (white - black)
    return [round(float(m), 8) for m in -black * std], [round(float(s), 8) for s in std]

  def card(self) -> dict:
    mean, std = self.mean_std()
    return {"resolution": self.resolution, "resize": self.resize,
            "resize_to": self.stored_size, "center_crop": self.crop_size or self.resolution,
            "normalization": self.normalization, "mean": mean, "std": std,
            "pixels": "RGB, scaled to [0, 1] before the mean and std"}


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  workdir: str
  model: object  # vit.Model or swin.Model, as the run built it.
  params: dict  # The tuned model's parameters, every stage applied.
  config: dict  # The flat resolved config (config.json).
  result: dict  # result.json.
  class_names: list[str]
  preprocessing: Preprocessing

  @property
  def method(self) -> str:
    return self.result["method"]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def accuracy(self) -> dict:
    """The run's own held-out accuracy: {"split": "test" or "val", "accuracy", "examples"}."""
    split = "test" if "test_accuracy" in self.result else "val"
    return {"split": split, "accuracy": self.result.get(f"{split}_accuracy"),
            "examples": self.result.get("eval_examples")}

  @property
  def task(self) -> tasks_lib.Task | None:
    """The task record (None for a custom folder that has moved since the run)."""
    try:
      return tasks_lib.get(self.config["task"])
    except ValueError:
      return None


def _stage_checksums(result: dict, stage_dirs: list[str]) -> list[str | None]:
  stages = result.get("stages") or [result]
  if len(stages) != len(stage_dirs):
    raise RunError(f"{os.path.dirname(stage_dirs[0])}: result.json lists {len(stages)} stages but "
                   f"the run folder has {len(stage_dirs)}; the run folder is damaged.")
  return [stage.get("artifact_sha256") for stage in stages]


def check(workdir: str) -> dict:
  """The run's result after checking that `workdir` is a finished run whose artifacts match the
  checksums its results recorded; RunError otherwise."""
  if not os.path.isdir(workdir):
    raise RunError(f"--run={workdir}: no such directory.")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise RunError(f"--run={workdir} is not a run directory (no config.json); give the folder of one "
                   "run, e.g. runs/demo/demo_digits/vpt_deep.")
  result_path = os.path.join(workdir, "result.json")
  if not os.path.exists(result_path):
    raise RunError(f"{workdir} has not finished (no result.json): let it finish, or run the same "
                   "launch/main.py command again to resume it.")
  try:
    result = files.read_json(result_path)
  except files.DamagedFileError as e:
    raise RunError(f"{e} Run the same launch/main.py command again to finish the run anew.") from None
  stage_dirs = artifacts.stage_dirs(workdir)
  for stage_dir, recorded in zip(stage_dirs, _stage_checksums(result, stage_dirs)):
    path = os.path.join(stage_dir, artifacts.FILENAME)
    if not os.path.exists(path):
      raise RunError(f"{path} is missing: the run is damaged; train it again in a new --workdir.")
    if recorded and files.sha256_file(path) != recorded:
      raise RunError(f"{path} does not match the SHA-256 its run recorded: the file is damaged; "
                     "train the run again in a new --workdir.")
  return result


def open_run(workdir: str) -> FinishedRun:
  """The finished run in `workdir`, checked (`check`) and rebuilt on its pre-trained backbone."""
  result = check(workdir)
  try:
    model, params, config = artifacts.load_trained(workdir)
  except (files.DamagedFileError, FileNotFoundError) as e:
    raise RunError(str(e)) from None
  except pretrained.CheckpointError as e:
    raise RunError(f"The run's backbone cannot be read: {e}") from None
  params = jax.device_get(params)
  num_classes = int(np.shape(params["head"]["bias"])[0])
  preprocessing = Preprocessing(config["data.resolution"], config.get("data.resize") or "bilinear",
                                config["data.normalization"], config.get("data.crop_from") or 0)
  return FinishedRun(os.path.normpath(workdir), model, params, config, result,
                     run_report.class_names(config["task"], num_classes), preprocessing)
