"""One run, resolved: the immutable settings everything below `train.train_and_evaluate` reads.

`resolve_run(config, workdir)` is the only place a run's ConfigDict is read. It fills the config
from its recipe (`recipes.resolve`), looks the task, the method and the backbone up once, and
returns a `RunSpec` of frozen dataclasses: the task, the backbone, the stages (each with its
method, model and optimizer settings, and workdir), the data, evaluation and checkpointing
settings, the seed, and `record`, the flat resolved config that config.json keeps.
"""

import dataclasses
import os
from typing import Any

import jax.numpy as jnp

from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib
from vpt_jax import models
from vpt_jax.models import vit
from vpt_jax.training import optim, recipes, zero_shot
from vpt_jax.utils import config_lib

# The learning rate, the decay and where they were chosen vary between the runs of one program.
RUNTIME_OPTIM_FIELDS = ("base_lr", "weight_decay", "applied_weight_decay", "selected_in")


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """How one stage trains (configs/default.py's optim fields, as the recipe filled them)."""
  name: str
  base_lr: float
  weight_decay: float
  applied_weight_decay: float | None
  momentum: float | None
  batch_size: int
  epochs: int
  warmup_epochs: int
  schedule: str
  steps: int | None
  warmup_steps: int | None
  scale_lr: bool
  grad_clip_norm: float | None
  decay_rules: tuple
  lr_mults: tuple[tuple[str, float], ...]
  on_non_finite: str
  galore_rank: int | None
  galore_update_period: int | None
  galore_scale: float | None
  galore_rules: tuple | None
  selected_in: str | None

  @property
  def peak_lr(self) -> float:
    return optim.learning_rate(self.base_lr, self.batch_size) if self.scale_lr else self.base_lr

  @property
  def decay(self) -> float:
    """The decay the optimizer applies (VPT-or-FT's AdamW applies 0.01 whatever the grid says)."""
    return self.weight_decay if self.applied_weight_decay is None else self.applied_weight_decay

  def compiled_fields(self) -> dict:
    """The fields a compiled program depends on (not the runtime lr, decay and provenance)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in RUNTIME_OPTIM_FIELDS}


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One single-stage method of a run: what trains, on which model, how and where."""
  method: methods.Method
  model: vit.Model
  optim: OptimSpec
  workdir: str
  model_config: dict  # config.model (or stage_model) as the artifact records it.
  keeps_previous_head: bool = True  # Starts from the earlier stage's head (else its own init).

  def start_from(self, previous_params):
    """What this stage takes over from the stage before it."""
    if previous_params is None or self.keeps_previous_head:
      return previous_params
    return {k: v for k, v in previous_params.items() if k != "head"}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """The pre-trained weights a run starts from: a registered name or a file (None: a random
  init from the run's seed), and the base model (no method modules, no head) they load into."""
  checkpoint: str | None
  cache_dir: str | None
  model: vit.Model


@dataclasses.dataclass(frozen=True)
class DataSpec:
  task: tasks_lib.Task
  source: str  # A name in vpt_jax/data/sources.py.
  train_subset: str
  eval_subset: str
  resolution: int
  normalization: str
  resize: str
  flip: bool
  data_dir: str | None
  cache_dir: str | None
  # >0: images are stored at crop_from px and cropped to `resolution` on the device (random in
  # training, the centre in evaluation: KMnP/vpt's FGVC transforms); 0: stored at `resolution`.
  crop_from: int = 0
  # timm's RandAugment string ("" none) and random erasing probability, on the device
  # (vpt_jax/data/augment.py; PETL_Vision's few-shot ImageNet: "rand-m9-mstd0.5-inc1", 0.25).
  rand_augment: str = ""
  random_erasing: float = 0.0
  # How training crops (vpt_jax/data/device.py AUGMENTATIONS; None: a random crop) and whether
  # it also flips vertically (PETL_Vision's RESISC45).
  augment: str | None = None
  vertical_flip: bool = False

  @property
  def array_resolution(self) -> int:
    """The size images are decoded, cached and held at."""
    return self.crop_from or self.resolution

  @property
  def crop_size(self) -> int | None:
    """What the device crops the held images to, if they are larger than the model's input."""
    return self.resolution if self.crop_from else None


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  batch_size: int
  every_epochs: int  # 0: only at the end.
  shifts: tuple[str, ...]
  early_stop_patience: int = 0  # >0: search runs stop early (loop.EarlyStop).


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  every_epochs: int  # 0: only at the end.
  keep: int


@dataclasses.dataclass(frozen=True)
class RunSpec:
  method: str  # The method's name (two-stage methods name their stages in `stages`).
  recipe: str
  seed: int
  backbone: BackboneSpec
  stages: tuple[StageSpec, ...]
  data: DataSpec
  eval: EvalSpec
  checkpoints: CheckpointSpec
  dtype: Any
  sharding_strategy: tuple
  record: dict  # The flat resolved config (config.json).

  @property
  def task(self) -> tasks_lib.Task:
    return self.data.task

  @property
  def final_run(self) -> bool:
    """Scored on the test split (a final run keeps its test logits)."""
    return self.data.eval_subset == "test"


def _optim(o) -> OptimSpec:
  fields = {f.name: o.get(f.name) for f in dataclasses.fields(OptimSpec)}
  fields["lr_mults"] = tuple(sorted(o.lr_mults.to_dict().items()))
  fields["schedule"] = fields["schedule"] or "epoch"
  return OptimSpec(**fields)


def _dtype(name: str):
  dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(name, "invalid")
  if dtype == "invalid":
    raise ValueError(f"dtype={name!r} must be 'float32' or 'bfloat16'.")
  return dtype


def _model_fields(model_config) -> dict:
  """vit.Model fields of config.model (its head size is the run's, not the module's)."""
  return {k: v for k, v in model_config.to_dict().items() if k != "head_classes"}


def _stages(config, dtype, num_classes: int, workdir: str) -> tuple[StageSpec, ...]:
  base = models.build(num_classes=num_classes, dtype=dtype, **_model_fields(config.model))
  method = methods.for_model(config.method, **models.geometry(base),
                             **config.method_kwargs.to_dict())
  singles = method.single_stages
  stages = []
  for index, single in enumerate(singles):
    last = index == len(singles) - 1
    model_config = config.model if last else config.stage_model[single.name]
    stages.append(StageSpec(
        single, models.build(num_classes=num_classes, dtype=dtype,
                             **{**_model_fields(model_config), **single.model_fields}),
        _optim(config.optim if last else config.stage_optim[single.name]),
        workdir if len(singles) == 1 else os.path.join(workdir, f"stage{index + 1}_{single.name}"),
        model_config.to_dict(), method.carry_head))
  return tuple(stages)


def from_resolved(config, workdir: str) -> RunSpec:
  """The spec of a config that `recipes.resolve` already filled."""
  # A many-shot task with where PETL_Vision's split files are; a custom folder with how its
  # missing splits are carved and what its final run is scored on.
  task = tasks_lib.with_data_settings(
      tasks_lib.with_split_dir(tasks_lib.get(config.task), config.data.get("split_dir")), config.data)
  dtype = _dtype(config.dtype)
  # VPT-or-FT's KITTI configs train a 196-way head on 4 classes (docs/protocol.md).
  head_classes = config.model.get("head_classes") or task.num_classes
  d = config.data
  stages = _stages(config, dtype, head_classes, workdir)
  if any(zero_shot.uses(stage.model) for stage in stages):  # Refused before anything is written.
    zero_shot.check(task, head_classes, config.backbone, stages[-1].model)
  return RunSpec(
      method=config.method, recipe=config.recipe, seed=config.seed,
      backbone=BackboneSpec(config.backbone, config.pretrained_cache_dir,
                            models.build(num_classes=head_classes, dtype=dtype,
                                         **_model_fields(config.model))),
      stages=stages,
      data=DataSpec(task, d.source, d.train_subset, d.eval_subset, d.resolution, d.normalization, d.resize,
                    d.flip, d.data_dir, d.cache_dir, d.crop_from or 0,
                    augment=d.get("augment"), vertical_flip=bool(d.get("vertical_flip")),
                    rand_augment=d.get("rand_augment") or "",
                    random_erasing=d.get("random_erasing") or 0.0),
      eval=EvalSpec(config.eval_batch_size, config.eval_every_epochs, tuple(config.eval_shifts),
                    config.get("early_stop_patience") or 0),
      checkpoints=CheckpointSpec(config.checkpoint_every_epochs, config.checkpoints_to_keep),
      dtype=dtype, sharding_strategy=tuple(tuple(rule) for rule in config.sharding_strategy),
      record=config_lib.flatten(config))


def resolve_run(config, workdir: str) -> RunSpec:
  """The run `config` describes, resolved and validated (nothing is written for a config this
  refuses)."""
  return from_resolved(recipes.resolve(config), workdir)
