"""What a process builds once and every run reuses: the compiled program of a stage, pre-trained
backbones, and training sets on the devices.

A program is everything that compiles for a stage: the model, the optimizer's structure, the
shardings, the jitted train and eval steps. It depends on the task, the method, the recipe's
static settings and the shapes, and not on the peak learning rate, the weight decay or the seed
(runtime values in the optimizer state and the step's arguments), so one program, compiled once,
serves every grid point and seed of a sweep in this process.
"""

import collections
import dataclasses
import json

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from vpt_jax import methods
from vpt_jax.checkpoints import pretrained
from vpt_jax.training import evaluate, optim, sharding, steps
from vpt_jax.utils import paths, timing
from vpt_jax.data import device, pipeline
from vpt_jax.models import vit

# The learning rate, the decay and where they were chosen vary between the runs of one program.
RUNTIME_OPTIM_FIELDS = ("base_lr", "weight_decay", "applied_weight_decay", "selected_in")
_KEEP_ARRAYS = 4  # Training sets kept on the devices (a sweep goes through one task at a time).

_programs: dict[str, "Program"] = {}
_backbones: collections.OrderedDict = collections.OrderedDict()
_arrays: collections.OrderedDict = collections.OrderedDict()


def _stacked(tree_of_shardings):
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), tree_of_shardings)


@dataclasses.dataclass
class Program:
  key: str
  model: vit.Model
  mesh: jax.sharding.Mesh
  groups: dict  # Group of every parameter (methods.labels).
  tx: object
  schedule: optim.Schedule
  shardings: tuple  # (trainable, optimizer state, frozen)
  steps_per_epoch: int
  total_steps: int
  abstract_params: dict  # Shapes of every parameter of the model.
  init_opt: object  # (trainable, peak_lr, weight_decay) -> optimizer state.
  train_step: object
  evaluator: evaluate.Evaluator
  permutation: object  # (rng, epoch) -> the epoch's order of the train set.
  replicate: object  # tree -> the same tree, replicated (whole on every host).
  step_fn: object
  images_shape: tuple
  _packed: dict = dataclasses.field(default_factory=dict)
  _fresh: dict = dataclasses.field(default_factory=dict)

  def fresh_params(self, rng, skip: frozenset) -> dict:
    """The model's initialisation of every parameter not in `skip` (the ones the backbone
    provides); XLA drops the initialisers of the others, which makes this quick to compile."""
    if skip not in self._fresh:
      model, images = self.model, np.zeros(self.images_shape, np.float32)
      self._fresh[skip] = jax.jit(lambda rng: paths.unflatten({
          k: v for k, v in paths.flatten(model.init(rng, images)["params"]).items()
          if k not in skip}))
    return self._fresh[skip](rng)

  def packed_step(self, members: int):
    """The train step of `members` runs at once (compiled once per pack size)."""
    if members not in self._packed:
      shardings = tuple(_stacked(s) for s in self.shardings[:2]) + (self.shardings[2],)
      self._packed[members] = steps.jit_step(self.step_fn, self.mesh, shardings, packed=True)
    return self._packed[members]


def program_key(config, stage, num_examples: int, mesh) -> str:
  optim_config = {k: v for k, v in stage.optim.to_dict().items()
                  if k not in RUNTIME_OPTIM_FIELDS}
  return json.dumps({
      "task": config.task, "stage": stage.method.name, "model": stage.model_config,
      "fields": repr(sorted(stage.method.model_fields.items())), "optim": optim_config,
      "examples": num_examples, "dtype": config.dtype, "data": [
          config.data.resolution, config.data.normalization, config.data.flip],
      "sharding": config.sharding_strategy, "devices": [d.id for d in mesh.devices.flat],
  }, sort_keys=True, default=str)


def get(config, stage, num_examples: int, mesh) -> Program:
  """The program of `stage` for a training set of `num_examples` (built on first use)."""
  key = program_key(config, stage, num_examples, mesh)
  if key not in _programs:
    _programs[key] = _build(key, config, stage, num_examples, mesh)
  return _programs[key]


def _build(key, config, stage, num_examples: int, mesh) -> Program:
  model, optim_config = stage.model, stage.optim
  resolution = config.data.resolution
  images = np.zeros((1, resolution, resolution, 3), np.float32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  groups = methods.labels(abstract, stage.method.rules)
  trainable, frozen = methods.split(abstract, groups)
  trainable_groups, _ = methods.split(groups, groups)
  batch_size = optim_config.batch_size
  if batch_size % mesh.devices.size:
    raise ValueError(f"Batch size {batch_size} does not split over {mesh.devices.size} devices.")
  steps_per_epoch = device.steps_per_epoch(num_examples, batch_size)
  schedule, total_steps = _schedule(optim_config, steps_per_epoch)
  galore = {k: optim_config.get(k) for k in optim.GALORE_FIELDS
            } if optim_config.name == "galore_adamw" else {}
  tx = optim.make(optim_config.name, trainable_groups, schedule, momentum=optim_config.momentum,
                  lr_mults=optim_config.lr_mults.to_dict(), decay_rules=optim_config.decay_rules,
                  grad_clip_norm=optim_config.get("grad_clip_norm"), **galore)
  trainable_sharding = sharding.param_shardings(mesh, trainable, config.sharding_strategy)
  frozen_sharding = sharding.param_shardings(mesh, frozen, config.sharding_strategy)
  opt_sharding = sharding.optimizer_shardings(mesh, tx, jax.eval_shape(tx.init, trainable),
                                              trainable_sharding)
  shardings = (trainable_sharding, opt_sharding, frozen_sharding)
  replicated = sharding.replicated(mesh)
  step_fn = steps.make_device_step(model, tx, mesh, steps_per_epoch, batch_size,
                                   config.data.normalization, config.data.flip)
  return Program(
      key=key, model=model, mesh=mesh, groups=groups, tx=tx, schedule=schedule,
      shardings=shardings, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      abstract_params=abstract,
      init_opt=jax.jit(lambda t, peak, wd: optim.set_hyperparams(tx.init(t), peak_lr=peak,
                                                                  weight_decay=wd),
                       out_shardings=opt_sharding),
      train_step=steps.jit_step(step_fn, mesh, shardings),
      evaluator=evaluate.Evaluator(mesh, model, config.data.normalization),
      permutation=jax.jit(lambda rng, epoch: device.epoch_permutation(rng, epoch, num_examples),
                          out_shardings=replicated),
      replicate=jax.jit(lambda tree: tree, out_shardings=replicated),
      step_fn=step_fn, images_shape=images.shape)


def _schedule(optim_config, steps_per_epoch: int) -> tuple[optim.Schedule, int]:
  """(schedule, total steps) of a stage."""
  if optim_config.get("schedule", "epoch") == "epoch":
    return (optim.warmup_cosine_epochs(optim_config.warmup_epochs, optim_config.epochs,
                                       steps_per_epoch),
            optim_config.epochs * steps_per_epoch)
  total = optim_config.get("steps") or optim_config.epochs * steps_per_epoch
  warmup = optim_config.get("warmup_steps")
  warmup = optim_config.warmup_epochs * steps_per_epoch if warmup is None else warmup
  return optim.warmup_cosine(warmup, total), total


def initial_params(program: Program, backbone, rng) -> dict:
  """The stage model's parameters: the pre-trained backbone where it has them, fresh ones (the
  method's prompts, adapters, head) elsewhere."""
  given = frozenset(paths.flatten(backbone))
  missing = given - set(paths.flatten(program.abstract_params))
  if missing:
    raise ValueError(f"The tuned model has no place for backbone parameters {sorted(missing)[:5]}.")
  return paths.merge(program.fresh_params(rng, given), backbone)


def backbone(config, base_model: vit.Model) -> dict:
  """The pre-trained parameters without a head (each stage's model initialises its own, as its
  recipe says); with `config.backbone = None`, a random init from config.seed (from scratch).
  Read once per process."""
  key = json.dumps([config.backbone, base_model.variant, base_model.depth, base_model.pool_type,
                    base_model.representation_size, config.data.resolution,
                    config.pretrained_cache_dir, None if config.backbone else config.seed])
  if key in _backbones:
    _backbones.move_to_end(key)
  else:
    with timing.phase("data"):
      if config.backbone:
        params = pretrained.load(config.backbone, base_model, image_size=config.data.resolution,
                                 cache_dir=config.pretrained_cache_dir)
      else:
        images = np.zeros((1, config.data.resolution, config.data.resolution, 3), np.float32)
        params = jax.jit(base_model.init)(jax.random.PRNGKey(config.seed), images)["params"]
    _backbones[key] = {k: v for k, v in params.items() if k != "head"}
    while len(_backbones) > 2:  # A process works with one or two backbones at a time.
      _backbones.popitem(last=False)
  return _backbones[key]


def train_arrays(config, subset: str, mesh):
  """A small subset's images and labels, replicated on the devices (kept for later runs)."""
  key = json.dumps([config.task, subset, config.data.resolution, config.data.resize,
                    config.data.data_dir, config.data.cache_dir,
                    [d.id for d in mesh.devices.flat]])
  if key in _arrays:
    _arrays.move_to_end(key)
    return _arrays[key]
  with timing.phase("data"):
    images, labels = pipeline.load_arrays(config.task, subset, config.data.resolution,
                                          config.data.data_dir, config.data.cache_dir,
                                          config.data.resize)
    replicated = sharding.replicated(mesh)
    arrays = sharding.put_global(images, replicated), sharding.put_global(labels, replicated)
  _arrays[key] = arrays
  while len(_arrays) > _KEEP_ARRAYS:
    _arrays.popitem(last=False)
  return arrays
