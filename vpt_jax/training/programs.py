"""What a process builds once and every run reuses: the compiled program of a stage, pre-trained
backbones, and training sets on the devices.

A program is everything that compiles for a stage: the model, the optimizer's structure, the
shardings, the jitted train and eval steps. It depends on the task, the method, the recipe's
static settings and the shapes, and not on the peak learning rate, the weight decay or the seed
(runtime values in the optimizer state and the step's arguments), so one program, compiled once,
serves every grid point and seed of a sweep in this process. Nor, under per-epoch schedules, on
how many examples a run trains on (its `Extent`, runtime values too): a search run on train800
trains on the first 800 rows of the train800val200 array its final runs train on, so a task's
search and final runs share one program and one array on the devices.
"""

import collections
import dataclasses
import json
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from vpt_jax import methods
from vpt_jax import checkpoints
from vpt_jax.training import evaluate, optim, sharding, spec, steps
from vpt_jax.utils import paths, timing
from vpt_jax.data import device, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit

_KEEP_ARRAYS = 4  # Training sets kept on the devices (a sweep goes through one task at a time).

_programs: dict[str, "Program"] = {}
_backbones: collections.OrderedDict = collections.OrderedDict()
_arrays: collections.OrderedDict = collections.OrderedDict()
_rows: dict[str, np.ndarray | None] = {}  # Where a search set's examples are in its final set.


def _stacked(tree_of_shardings):
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), tree_of_shardings)


@dataclasses.dataclass(frozen=True)
class Extent:
  """How much a run trains: the first `examples` rows of its program's training array, in
  `steps_per_epoch` steps an epoch, `total_steps` in all."""
  examples: int
  steps_per_epoch: int
  total_steps: int


@dataclasses.dataclass(frozen=True)
class TrainingSet:
  """A run's training set on the devices: example i is row `rows[i]` of `images` and `labels`,
  which hold it alone (rows 0, 1, ...) or inside a larger set (a search run's in its task's
  final set). `rows` is padded with zeros to the rows of `images`; `host_rows` is the same
  without the padding."""
  images: jax.Array
  labels: jax.Array
  rows: jax.Array
  host_rows: np.ndarray

  @property
  def examples(self) -> int:
    return len(self.host_rows)

  @property
  def capacity(self) -> int:
    return self.images.shape[0]


@dataclasses.dataclass
class Program:
  key: str
  model: vit.Model
  mesh: jax.sharding.Mesh
  groups: dict  # Group of every parameter (methods.labels).
  tx: object
  schedule: optim.Schedule
  shardings: tuple  # (trainable, optimizer state, frozen)
  capacity: int  # Rows of the training array the step gathers from.
  extent_of: object  # examples -> Extent.
  abstract_params: dict  # Shapes of every parameter of the model.
  init_opt: object  # (trainable, peak_lr, weight_decay, steps_per_epoch) -> optimizer state.
  evaluator: evaluate.Evaluator
  replicate: object  # tree -> the same tree, replicated (whole on every host).
  step_fn: object
  images_shape: tuple
  _packed: dict = dataclasses.field(default_factory=dict)
  _fresh: dict = dataclasses.field(default_factory=dict)
  _permutations: dict = dataclasses.field(default_factory=dict)

  def permutation(self, rng, epoch, examples: int):
    """The epoch's order of a run's `examples`, padded to the program's capacity."""
    if examples not in self._permutations:
      capacity, replicated = self.capacity, sharding.replicated(self.mesh)
      self._permutations[examples] = jax.jit(
          lambda rng, epoch: device.epoch_permutation(rng, epoch, examples, capacity),
          out_shardings=replicated)
    return self._permutations[examples](rng, epoch)

  def fresh_params(self, rng, skip: frozenset) -> dict:
    """The model's initialisation of every parameter not in `skip` (the ones the backbone
    provides); XLA drops the initialisers of the others, which makes this quick to compile."""
    if skip not in self._fresh:
      model, images = self.model, np.zeros(self.images_shape, np.float32)
      self._fresh[skip] = jax.jit(lambda rng: paths.unflatten({
          k: v for k, v in paths.flatten(model.init(rng, images)["params"]).items()
          if k not in skip}))
    return self._fresh[skip](rng)

  def pack(self, members: int) -> "Pack":
    """How `members` runs of this program train together (built once per pack size)."""
    if members not in self._packed:
      self._packed[members] = Pack(self, members)
    return self._packed[members]

  @property
  def train_step(self):
    """The step of a single run (a pack of one)."""
    return self.pack(1).step


class Pack:
  """K runs of one program advanced by one compiled step. K > 1: their trainable and optimizer
  states, permutations and keys stacked on a leading axis and the step vmapped. A pack of one
  keeps its state as it is and runs the plain step (its metrics given a leading axis of 1): the
  very program, and so the very numbers, of a run trained alone."""

  def __init__(self, program: Program, members: int):
    self.members, self._program = members, program
    state_shardings = program.shardings[:2] if members == 1 else tuple(
        _stacked(s) for s in program.shardings[:2])
    self._state_shardings = state_shardings
    self.step = steps.jit_pack_step(program.step_fn, program.mesh,
                                    state_shardings + (program.shardings[2],), members)

  def states(self, states: list[dict]) -> tuple[dict, dict]:
    """(trainable, optimizer state) of the pack, placed as its step takes them."""
    parts = [[s[part] for s in states] for part in ("trainable", "opt_state")]
    if self.members > 1:
      parts = [jax.tree.map(lambda *xs: jnp.stack(xs), *trees) for trees in parts]
    else:
      parts = [trees[0] for trees in parts]
    return tuple(jax.device_put(tree, sharding)
                 for tree, sharding in zip(parts, self._state_shardings))

  def values(self, values: list):
    """Per-member step arguments (permutations, keys) as the step takes them."""
    return self._program.replicate(values[0] if self.members == 1 else jnp.stack(values))

  def member(self, tree, i: int):
    """Member i's part of a pack's tree (a copy when the pack is stacked)."""
    return tree if self.members == 1 else jax.tree.map(lambda x: x[i], tree)


def _counts_steps(optim_config: spec.OptimSpec) -> bool:
  """A per-step schedule's rate is a float function of the total steps, which is part of its
  program; a per-epoch schedule counts epochs by an integer division with a runtime value."""
  return optim_config.schedule != "epoch"


def program_key(run: spec.RunSpec, stage: spec.StageSpec, training: TrainingSet, mesh) -> str:
  return json.dumps({
      "task": run.task.name, "stage": stage.method.name, "model": stage.model_config,
      "fields": repr(sorted(stage.method.model_fields.items())),
      "optim": stage.optim.compiled_fields(), "capacity": training.capacity,
      "examples": training.examples if _counts_steps(stage.optim) else None,
      "dtype": str(run.dtype),
      "data": [run.data.resolution, run.data.normalization, run.data.flip, run.data.crop_from,
               run.data.augment, run.data.vertical_flip],
      "sharding": run.sharding_strategy, "devices": [d.id for d in mesh.devices.flat],
      "augmentation": [run.data.rand_augment, run.data.random_erasing],
  }, sort_keys=True, default=str)


def get(run: spec.RunSpec, stage: spec.StageSpec, training: TrainingSet, mesh) -> Program:
  """The program of `stage` for `training` (built on first use)."""
  key = program_key(run, stage, training, mesh)
  if key not in _programs:
    _programs[key] = _build(key, run, stage, training, mesh)
  return _programs[key]


def extent(optim_config: spec.OptimSpec, examples: int, batch_size: int) -> Extent:
  steps_per_epoch = device.steps_per_epoch(examples, batch_size)
  if optim_config.schedule == "epoch":
    return Extent(examples, steps_per_epoch, optim_config.epochs * steps_per_epoch)
  return Extent(examples, steps_per_epoch,
                optim_config.steps or optim_config.epochs * steps_per_epoch)


def _build(key, run: spec.RunSpec, stage: spec.StageSpec, training: TrainingSet, mesh) -> Program:
  model, optim_config = stage.model, stage.optim
  resolution = run.data.resolution
  images = np.zeros((1, resolution, resolution, 3), np.float32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  groups = methods.labels(abstract, stage.method.rules)
  trainable, frozen = methods.split(abstract, groups)
  trainable_groups, _ = methods.split(groups, groups)
  batch_size = optim_config.batch_size
  if batch_size % mesh.devices.size:
    raise ValueError(f"Batch size {batch_size} does not split over {mesh.devices.size} devices.")
  schedule = _schedule(optim_config, extent(optim_config, training.examples, batch_size))
  galore = {k: getattr(optim_config, k) for k in optim.GALORE_FIELDS
            } if optim_config.name == "galore_adamw" else {}
  tx = optim.make(optim_config.name, trainable_groups, schedule, momentum=optim_config.momentum,
                  lr_mults=dict(optim_config.lr_mults), decay_rules=optim_config.decay_rules,
                  grad_clip_norm=optim_config.grad_clip_norm, **galore)
  trainable_sharding = sharding.param_shardings(mesh, trainable, run.sharding_strategy)
  frozen_sharding = sharding.param_shardings(mesh, frozen, run.sharding_strategy)
  opt_sharding = sharding.optimizer_shardings(mesh, tx, jax.eval_shape(tx.init, trainable),
                                              trainable_sharding)
  shardings = (trainable_sharding, opt_sharding, frozen_sharding)
  replicated = sharding.replicated(mesh)
  step_fn = steps.make_device_step(model, tx, mesh, batch_size,
                                   run.data.normalization, run.data.flip, run.data.crop_size,
                                   run.data.augment, run.data.vertical_flip,
                                   rand_augment=run.data.rand_augment,
                                   random_erasing=run.data.random_erasing)
  return Program(
      key=key, model=model, mesh=mesh, groups=groups, tx=tx, schedule=schedule,
      shardings=shardings, capacity=training.capacity,
      extent_of=lambda examples: extent(optim_config, examples, batch_size),
      abstract_params=abstract,
      init_opt=jax.jit(lambda t, peak, wd, steps_per_epoch: optim.set_hyperparams(
          tx.init(t), peak_lr=peak, weight_decay=wd, steps_per_epoch=steps_per_epoch),
                       out_shardings=opt_sharding),
      evaluator=evaluate.Evaluator(mesh, model, run.data.normalization, run.data.crop_size),
      replicate=jax.jit(lambda tree: tree, out_shardings=replicated),
      step_fn=step_fn, images_shape=images.shape)


def _schedule(optim_config: spec.OptimSpec, run_extent: Extent) -> optim.Schedule:
  """A stage's schedule: per epoch, counting epochs by the optimizer state's steps per epoch; per
  step, fixed by `run_extent` (part of the program)."""
  if optim_config.schedule == "epoch":
    return optim.warmup_cosine_epochs(optim_config.warmup_epochs, optim_config.epochs)
  warmup = optim_config.warmup_steps
  warmup = optim_config.warmup_epochs * run_extent.steps_per_epoch if warmup is None else warmup
  return optim.warmup_cosine(warmup, run_extent.total_steps)


def initial_params(program: Program, backbone, rng) -> dict:
  """The stage model's parameters: the pre-trained backbone where it has them, fresh ones (the
  method's prompts, adapters, head) elsewhere."""
  given = frozenset(paths.flatten(backbone))
  missing = given - set(paths.flatten(program.abstract_params))
  if missing:
    raise ValueError(f"The tuned model has no place for backbone parameters {sorted(missing)[:5]}.")
  return paths.merge(program.fresh_params(rng, given), backbone)


def backbone(run: spec.RunSpec) -> dict:
  """The pre-trained parameters without a head (each stage's model initialises its own, as its
  recipe says); with no checkpoint, a random init from the run's seed (from scratch). Read once
  per process."""
  source, base_model, resolution = run.backbone, run.backbone.model, run.data.resolution
  # Every field of the base model: the architecture's options decide what the reader loads.
  key = json.dumps([source.checkpoint, repr(base_model), resolution, source.cache_dir,
                    None if source.checkpoint else run.seed])
  if key in _backbones:
    _backbones.move_to_end(key)
  else:
    with timing.phase("data"):
      if source.checkpoint:
        params = checkpoints.load(source.checkpoint, base_model, image_size=resolution,
                                  cache_dir=source.cache_dir)
      else:
        images = np.zeros((1, resolution, resolution, 3), np.float32)
        params = jax.jit(base_model.init)(jax.random.PRNGKey(run.seed), images)["params"]
    _backbones[key] = {k: v for k, v in params.items() if k != "head"}
    while len(_backbones) > 2:  # A process works with one or two backbones at a time.
      _backbones.popitem(last=False)
  return _backbones[key]


def train_arrays(data: spec.DataSpec, subset: str, mesh):
  """A small subset's images and labels, replicated on the devices (kept for later runs)."""
  return _on_devices(data, subset, mesh, pipeline.load_arrays)


def _superset(task, subset: str) -> str | None:
  """The subset a task's final runs train on, which holds `subset` (a search run's): VTAB-1k's
  train800val200 (TFDS interleaves its two parts: train800 is inside it, not its front), a
  custom folder's trainval, a data-scale size's trainval."""
  if subset == "train800":
    return "train800val200"
  if subset == "train" and task.group == tasks_lib.CUSTOM:
    return "trainval"
  if match := re.fullmatch(r"scale(\d+)_train", subset):
    return f"scale{match.group(1)}_trainval"
  return None


def training_set(data: spec.DataSpec, mesh) -> TrainingSet:
  """The run's training set on the devices: held inside the final runs' set where that holds
  every one of its images (checked once per process on the host, image by image), so that both
  train with one program on one array."""
  superset = _superset(data.task, data.train_subset)
  rows = _rows_in(data, superset) if superset is not None else None
  images, labels = train_arrays(data, superset if rows is not None else data.train_subset, mesh)
  if rows is None:
    rows = np.arange(images.shape[0], dtype=np.int32)
  padded = np.zeros(images.shape[0], np.int32)
  padded[:len(rows)] = rows
  return TrainingSet(images, labels, sharding.put_global(padded, sharding.replicated(mesh)), rows)


def _rows_in(data: spec.DataSpec, superset: str) -> np.ndarray | None:
  """The row of `superset` that holds each example of the run's training subset (an image and
  label equal to it), or None where one is not there."""
  key = json.dumps([data.source, repr(data.task), data.train_subset, superset,
                    data.array_resolution, data.resize, data.data_dir, data.cache_dir])
  if key not in _rows:
    with timing.phase("data"):
      load = lambda subset: pipeline.load_arrays(data.task, subset, data.array_resolution,
                                                 data.data_dir, data.cache_dir, data.resize,
                                                 data.source)
      (images, labels), (held_images, held_labels) = load(data.train_subset), load(superset)
      where = collections.defaultdict(list)
      for row, (image, label) in enumerate(zip(held_images, held_labels)):
        where[(image.tobytes(), int(label))].append(row)
      rows = [where[(image.tobytes(), int(label))].pop(0) if where[(image.tobytes(), int(label))]
              else None for image, label in zip(images, labels)]
    _rows[key] = None if None in rows or len(held_labels) <= len(rows) else np.asarray(rows, np.int32)
  return _rows[key]


def cached_arrays(data: spec.DataSpec, subset: str, mesh):
  """A subset's images and labels on the devices if they are cached on disk, else None."""
  return _on_devices(data, subset, mesh, pipeline.cached_arrays)


def _on_devices(data: spec.DataSpec, subset: str, mesh, load):
  key = json.dumps([data.source, data.task.name, subset, data.array_resolution, data.resize,
                    data.data_dir, data.cache_dir, data.task.split_dir,
                    [d.id for d in mesh.devices.flat]])
  if key in _arrays:
    _arrays.move_to_end(key)
    return _arrays[key]
  with timing.phase("data"):
    loaded = load(data.task, subset, data.array_resolution, data.data_dir, data.cache_dir, data.resize,
                  data.source)
    if loaded is None:
      return None
    images, labels = loaded
    replicated = sharding.replicated(mesh)
    arrays = sharding.put_global(images, replicated), sharding.put_global(labels, replicated)
  _arrays[key] = arrays
  while len(_arrays) > _KEEP_ARRAYS:
    _arrays.popitem(last=False)
  return arrays
