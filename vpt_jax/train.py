"""One run: a task, a tuning method and a seed, trained and evaluated as its config says.

`train_and_evaluate(config, workdir)` is the whole of it. It resolves the config once (recipe,
task, the method's stages, their models and optimizer settings), then for each stage calls
`create_train_state`, `fit` and `finish`. The workdir holds config.json (the resolved settings),
metrics (JSON lines and TensorBoard), orbax checkpoints, the stage's artifact (only what it
trained) and, when the run is complete, result.json. Running the same command again resumes from
the newest readable checkpoint and ends with the same numbers; a finished run is reported, not
redone. Two-stage methods (ft_then_pt, lp_ft) run each stage in its own sub-directory.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vpt_jax import (artifacts, checkpointing, config_lib, evaluate, files, methods, metrics,
                     optim, paths, pretrained, recipes, sharding, steps)
from vpt_jax.data import device, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("eval_batch_size", "checkpoint_every_epochs", "checkpoints_to_keep",
                     "pretrained_cache_dir", "data.data_dir", "data.cache_dir", "workdir")
_NOT_RUN_SETTINGS = ("sweep.",)  # The sweep's grid: which runs exist, not how one trains.


class NonFiniteLossError(RuntimeError):
  pass


class Clock:
  """Wall time of a stage across restarts: what earlier attempts spent (<workdir>/elapsed.json,
  updated every epoch) plus this attempt's."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, "elapsed.json")
    self._started = time.time()
    self._before = 0.0
    if os.path.exists(self._path):
      try:
        self._before = float(files.read_json(self._path)["seconds"])
      except (files.DamagedFileError, KeyError, TypeError, ValueError):
        pass  # A lost count undercounts; it never stops a run.

  def seconds(self) -> float:
    return self._before + time.time() - self._started

  def save(self) -> None:
    if jax.process_index() == 0:
      files.write_json(self._path, {"seconds": self.seconds()})


def finished_result(path: str, log=print) -> dict | None:
  """A finished (stage's) result, or None when there is none or it is damaged (then it is set
  aside and the run finishes again from its checkpoints)."""
  if not os.path.exists(path):
    return None
  try:
    return files.read_json(path)
  except files.DamagedFileError as e:
    log(f"{e} Moved to {files.set_aside(path, 'damaged')}; finishing the run again.")
    return None


class ConfigMismatchError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Stage:
  """One single-stage method of a run, resolved: what trains, on which model, how and where."""
  method: methods.Method
  model: vit.Model
  optim: ml_collections.ConfigDict
  workdir: str
  model_config: dict  # config.model (or stage_model) as the artifact records it.
  keeps_previous_head: bool = True  # Starts from the earlier stage's head (else its own init).

  def start_from(self, previous_params):
    """What this stage takes over from the stage before it."""
    if previous_params is None or self.keeps_previous_head:
      return previous_params
    return {k: v for k, v in previous_params.items() if k != "head"}


def model_kwargs(config, num_classes: int, model_config=None) -> dict:
  """vit.Model arguments of the backbone (no method modules)."""
  dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(config.dtype, "invalid")
  if dtype == "invalid":
    raise ValueError(f"dtype={config.dtype!r} must be 'float32' or 'bfloat16'.")
  return dict(num_classes=num_classes, dtype=dtype, **(model_config or config.model).to_dict())


def plan_stages(config, task: tasks_lib.Task, workdir: str) -> list[Stage]:
  depth = vit.Model(**model_kwargs(config, task.num_classes)).architecture.depth
  method = methods.get(config.method, depth=depth, **config.method_kwargs.to_dict())
  singles = method.single_stages
  stages = []
  for index, single in enumerate(singles):
    last = index == len(singles) - 1
    model_config = config.model if last else config.stage_model[single.name]
    stages.append(Stage(
        single, vit.Model(**model_kwargs(config, task.num_classes, model_config),
                          **single.model_fields),
        config.optim if last else config.stage_optim[single.name],
        workdir if len(singles) == 1 else os.path.join(workdir, f"stage{index + 1}_{single.name}"),
        model_config.to_dict(), method.carry_head))
  return stages


def applied_weight_decay(optim_config) -> float:
  """The decay the optimizer applies (VPT-or-FT's AdamW applies 0.01 whatever the grid says)."""
  if optim_config.get("applied_weight_decay") is not None:
    return optim_config.applied_weight_decay
  return optim_config.weight_decay


def peak_lr(optim_config) -> float:
  if optim_config.get("scale_lr", True):
    return optim.learning_rate(optim_config.base_lr, optim_config.batch_size)
  return optim_config.base_lr


def make_schedule(optim_config, steps_per_epoch: int) -> tuple[optim.Schedule, int]:
  """(schedule, total steps) of a stage."""
  if optim_config.get("schedule", "epoch") == "epoch":
    return (optim.warmup_cosine_epochs(optim_config.warmup_epochs, optim_config.epochs,
                                       steps_per_epoch),
            optim_config.epochs * steps_per_epoch)
  total = optim_config.get("steps") or optim_config.epochs * steps_per_epoch
  warmup = optim_config.get("warmup_steps")
  warmup = optim_config.warmup_epochs * steps_per_epoch if warmup is None else warmup
  return optim.warmup_cosine(warmup, total), total


def config_differences(stored: dict, current: dict) -> list[str]:
  """The fields in which two flat configs train differently."""
  return sorted(k for k in set(current) | set(stored)
                if current.get(k) != stored.get(k) and k not in RESUMABLE_CHANGES
                and not k.startswith(_NOT_RUN_SETTINGS))


def claim_workdir(config, workdir: str, log=print) -> None:
  """The workdir belongs to one configuration: a different one must use another workdir."""
  path = os.path.join(workdir, "config.json")
  current = config_lib.flatten(config)
  stored = None
  if os.path.exists(path):
    try:
      stored = files.read_json(path)
    except files.DamagedFileError as e:  # The config is ours to write again; results are kept.
      log(f"{e} Moved to {files.set_aside(path, 'damaged')}; writing it again.")
  if stored is not None:
    differences = config_differences(stored, current)
    if differences:
      shown = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differences[:6])
      raise ConfigMismatchError(
          f"{workdir} holds a run with another configuration ({shown}); use a new --workdir.")
  if jax.process_index() == 0:
    files.write_json(path, current)


def load_backbone(config, task: tasks_lib.Task) -> dict:
  """The pre-trained parameters without a head (each stage's model initialises its own, as its
  recipe says); with `config.backbone = None`, a random init (from scratch)."""
  base = vit.Model(**model_kwargs(config, task.num_classes))
  if config.backbone:
    params = pretrained.load(config.backbone, base, image_size=config.data.resolution,
                             cache_dir=config.pretrained_cache_dir)
  else:
    images = jnp.zeros((1, config.data.resolution, config.data.resolution, 3))
    params = jax.jit(base.init)(jax.random.PRNGKey(config.seed), images)["params"]
  return {k: v for k, v in params.items() if k != "head"}


@dataclasses.dataclass
class TrainSetup:
  """A stage made ready to train: its optimizer, shardings, compiled step and evaluator."""
  stage: Stage
  mesh: jax.sharding.Mesh
  tx: object
  schedule: optim.Schedule
  shardings: tuple  # (trainable, optimizer state, frozen)
  frozen: dict
  train_step: object
  evaluator: evaluate.Evaluator
  steps_per_epoch: int
  total_steps: int
  rngs: dict
  backbone_count: int


def create_train_state(config, stage: Stage, backbone, previous_params, mesh, num_examples: int,
                       log) -> tuple[TrainSetup, dict]:
  """The stage's setup and its initial state {"trainable", "opt_state"}."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, data_rng, flip_rng = jax.random.split(rng, 4)
  params = methods.init_params(stage.model, backbone, init_rng, config.data.resolution)
  if previous_params is not None:
    params = paths.merge(params, stage.start_from(previous_params))
  groups = methods.labels(params, stage.method.rules)
  trainable, frozen = methods.split(params, groups)
  trainable_groups, _ = methods.split(groups, groups)
  backbone_count = paths.count(backbone)
  log(methods.summary(stage.method.name, params, groups, backbone_count))

  batch_size = stage.optim.batch_size
  if batch_size % mesh.devices.size:
    raise ValueError(f"Batch size {batch_size} does not split over {mesh.devices.size} devices.")
  steps_per_epoch = device.steps_per_epoch(num_examples, batch_size)
  schedule, total_steps = make_schedule(stage.optim, steps_per_epoch)
  tx = optim.make(stage.optim.name, trainable_groups, schedule, momentum=stage.optim.momentum,
                  lr_mults=stage.optim.lr_mults.to_dict(), decay_rules=stage.optim.decay_rules,
                  grad_clip_norm=stage.optim.get("grad_clip_norm"))

  trainable_sharding = sharding.param_shardings(mesh, trainable, config.sharding_strategy)
  frozen_sharding = sharding.param_shardings(mesh, frozen, config.sharding_strategy)
  opt_sharding = sharding.optimizer_shardings(mesh, tx, jax.eval_shape(tx.init, trainable),
                                              trainable_sharding)
  trainable = jax.device_put(trainable, trainable_sharding)
  frozen = jax.device_put(frozen, frozen_sharding)
  opt_state = jax.jit(lambda t: optim.set_hyperparams(
      tx.init(t), peak_lr=peak_lr(stage.optim), weight_decay=applied_weight_decay(stage.optim)),
      out_shardings=opt_sharding)(trainable)
  shardings = (trainable_sharding, opt_sharding, frozen_sharding)
  train_step = steps.build_train_step(stage.model, tx, mesh, shardings, steps_per_epoch,
                                      batch_size, config.data.normalization, config.data.flip)
  setup = TrainSetup(stage, mesh, tx, schedule, shardings, frozen, train_step,
                     evaluate.Evaluator(mesh, stage.model, config.data.normalization),
                     steps_per_epoch, total_steps,
                     dict(train=train_rng, data=data_rng, flip=flip_rng), backbone_count)
  return setup, {"trainable": trainable, "opt_state": opt_state}


def _evaluate(config, setup: TrainSetup, trainable, subset: str) -> dict:
  params = paths.merge(trainable, setup.frozen)
  if tasks_lib.parse_kshot(subset):  # A few examples per class: held as arrays, not streamed.
    images, labels = _train_arrays(config, subset, setup.mesh)
    return setup.evaluator.arrays(params, images, labels, config.eval_batch_size)
  return setup.evaluator.stream(params, config.task, subset, config.data.resolution,
                                config.eval_batch_size, config.data.data_dir, config.data.resize)


def _train_arrays(config, subset: str, mesh):
  """A small subset's images and labels, replicated on the devices."""
  images, labels = pipeline.load_arrays(config.task, subset, config.data.resolution,
                                        config.data.data_dir, config.data.cache_dir,
                                        config.data.resize)
  replicated = sharding.replicated(mesh)
  return sharding.put_global(images, replicated), sharding.put_global(labels, replicated)


def fit(config, setup: TrainSetup, state: dict, images, labels, log, clock: Clock) -> dict:
  """Trains from the newest readable checkpoint (or `state`) to the end; returns the final state.

  A non-finite loss stops training. With optim.on_non_finite "score_last_epoch" (the VPT code:
  src/engine/trainer.py stops the run and its last recorded epoch is what counts) the returned
  state holds the parameters of the last finished epoch and "diverged" says where it happened;
  with "fail", or when no epoch finished, NonFiniteLossError.
  """
  stage = setup.stage
  checkpointer = checkpointing.Checkpointer(os.path.join(stage.workdir, "checkpoints"),
                                            config.checkpoints_to_keep)
  writer = metrics.MetricWriter(stage.workdir)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
      {"trainable": setup.shardings[0], "opt_state": setup.shardings[1]})
  step, restored = checkpointer.restore_latest(abstract)
  if restored is not None:
    state = restored
    log(f"Resuming {stage.method.name} from step {step} of {setup.total_steps} "
        f"({stage.workdir}).")
  step = step or 0
  writer.drop_after(step)  # Lines logged after the restart point are about to be redone.

  batch_size, steps_per_epoch, total_steps = (stage.optim.batch_size, setup.steps_per_epoch,
                                              setup.total_steps)
  score_last_epoch = stage.optim.get("on_non_finite", "fail") == "score_last_epoch"
  permutation_fn = jax.jit(
      lambda epoch: device.epoch_permutation(setup.rngs["data"], epoch, len(images)),
      out_shardings=sharding.replicated(setup.mesh))
  progress = tqdm.tqdm(total=total_steps * batch_size, initial=step * batch_size, unit="img",
                       unit_scale=True, desc=f"{config.task} {stage.method.name}",
                       mininterval=1.0, disable=None if jax.process_index() == 0 else True,
                       smoothing=0.1)
  trainable, opt_state = state["trainable"], state["opt_state"]
  finished = jax.tree.map(jnp.copy, trainable) if score_last_epoch and step else None
  while step < total_steps:
    epoch = step // steps_per_epoch
    permutation = permutation_fn(epoch)
    losses, accuracies = [], []
    for _ in range(min(steps_per_epoch, total_steps - step)):
      trainable, opt_state, step_metrics = setup.train_step(
          trainable, opt_state, setup.frozen, images, labels, permutation, step,
          setup.rngs["train"], setup.rngs["flip"])
      losses.append(step_metrics["loss"])
      accuracies.append(step_metrics["accuracy"])
      step += 1
      progress.update(batch_size)
    # One transfer per epoch: the steps above were dispatched without waiting for each other.
    losses, accuracies = jax.device_get((jnp.stack(losses), jnp.stack(accuracies)))
    if not np.all(np.isfinite(losses)):
      bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
      progress.close()
      kept = checkpointer.steps()
      checkpointer.close()
      if score_last_epoch and finished is not None:
        log(f"Loss became {losses[bad - step + len(losses)]} at step {bad} (epoch {epoch + 1}); "
            f"stopped, scored at epoch {epoch} as the VPT code does.")
        return {"trainable": finished, "opt_state": None,
                "diverged": {"step": bad, "epoch": epoch + 1, "scored_epoch": epoch}}
      raise NonFiniteLossError(
          f"Loss became {losses[bad - step + len(losses)]} at step {bad} (epoch {epoch + 1}); "
          f"stopped. Last good checkpoint: "
          f"{f'step {kept[-1]}' if kept else 'none'} in {stage.workdir}/checkpoints. Lower the "
          f"learning rate (optim.base_lr={stage.optim.base_lr}) and use a new workdir.")
    if score_last_epoch:  # The parameters a divergence in the next epoch would be scored with.
      finished = jax.tree.map(jnp.copy, trainable)
    row = {"epoch": epoch + 1, "train_loss_running": float(losses.mean()),
           "train_accuracy_running": float(accuracies.mean()),
           # That of the epoch's last step (the epoch's own under a per-epoch schedule).
           "learning_rate": float(optim.current_lr(setup.schedule, opt_state, step - 1))}
    if config.eval_every_epochs and ((epoch + 1) % config.eval_every_epochs == 0
                                     or step == total_steps):
      on_train = setup.evaluator.arrays(paths.merge(trainable, setup.frozen), images, labels,
                                        config.eval_batch_size)
      held_out = _evaluate(config, setup, trainable, config.data.eval_subset)
      row.update(train_loss=on_train["loss"], train_accuracy=on_train["accuracy"],
                 eval_loss=held_out["loss"], eval_accuracy=held_out["accuracy"])
    writer.write(step, **row)
    clock.save()
    progress.set_postfix(epoch=epoch + 1, loss=f"{row['train_loss_running']:.3f}")
    every = config.checkpoint_every_epochs  # 0: only at the end.
    if (every and (epoch + 1) % every == 0) or step == total_steps:
      checkpointer.save(step, {"trainable": trainable, "opt_state": opt_state})
  progress.close()
  if total_steps not in checkpointer.steps():  # A resumed finished stage lost its final one.
    checkpointer.save(total_steps, {"trainable": trainable, "opt_state": opt_state})
  checkpointer.close()
  return {"trainable": trainable, "opt_state": opt_state}


def finish(config, setup: TrainSetup, state: dict, clock: Clock) -> tuple[dict, dict]:
  """Evaluates the trained stage, writes its artifact; returns (result, final parameters)."""
  stage = setup.stage
  # Replicated first, so every host holds the whole of FSDP-sharded arrays for the artifact.
  trainable = jax.jit(lambda tree: tree, out_shardings=sharding.replicated(setup.mesh))(
      state["trainable"])
  final_params = paths.merge(trainable, setup.frozen)
  evaluation = _evaluate(config, setup, trainable, config.data.eval_subset)
  artifact = os.path.join(stage.workdir, artifacts.FILENAME)
  artifact_bytes = artifacts.save(artifact, trainable, {
      "task": config.task, "method": stage.method.name, "seed": config.seed,
      "backbone": config.backbone, "model": stage.model_config,
      "model_fields": artifacts.model_fields_to_json(stage.method.model_fields),
  }) if jax.process_index() == 0 else 0
  eval_name = "test" if config.data.eval_subset == "test" else "val"
  trained = paths.count(trainable)
  result = {
      "task": config.task, "method": stage.method.name, "recipe": config.recipe,
      "seed": config.seed,
      "train_subset": config.data.train_subset, "eval_subset": config.data.eval_subset,
      "optimizer": stage.optim.name, "base_lr": stage.optim.base_lr, "lr": peak_lr(stage.optim),
      "weight_decay": stage.optim.weight_decay,
      "applied_weight_decay": applied_weight_decay(stage.optim),
      "batch_size": stage.optim.batch_size, "epochs": stage.optim.epochs,
      "steps": setup.total_steps, "schedule": stage.optim.get("schedule", "epoch"),
      "dropout": stage.model.dropout,
      f"{eval_name}_accuracy": evaluation["accuracy"], f"{eval_name}_loss": evaluation["loss"],
      "eval_examples": evaluation["examples"],
      "trainable_parameters": trained, "backbone_parameters": setup.backbone_count,
      "tuned_percent": 100 * (trained - paths.count(trainable.get("head", {})))
                       / setup.backbone_count,
      "artifact_bytes": artifact_bytes, "full_model_bytes": 4 * paths.count(final_params),
      "artifact_sha256": files.sha256_file(artifact) if jax.process_index() == 0 else None,
      "wall_seconds": clock.seconds(),
  }
  if "diverged" in state:
    result["diverged"] = state["diverged"]
  return result, final_params


def _run_stage(config, stage: Stage, backbone, previous_params, mesh, log):
  clock = Clock(stage.workdir)
  images, labels = _train_arrays(config, config.data.train_subset, mesh)
  setup, state = create_train_state(config, stage, backbone, previous_params, mesh, len(images),
                                    log)
  state = fit(config, setup, state, images, labels, log, clock)
  return finish(config, setup, state, clock)


def _restore_finished_stage(config, stage: Stage, backbone, previous_params, result: dict):
  """Final parameters of a finished stage: its artifact (checked against the checksum its result
  recorded) on top of what it started from."""
  path = os.path.join(stage.workdir, artifacts.FILENAME)
  if not os.path.exists(path):
    raise files.DamagedFileError(f"{path} is missing.")
  if result.get("artifact_sha256") and files.sha256_file(path) != result["artifact_sha256"]:
    raise files.DamagedFileError(f"{path} does not match the checksum its stage recorded.")
  trained, _ = artifacts.load(path)
  base = methods.init_params(stage.model, backbone, jax.random.PRNGKey(0),
                             config.data.resolution)
  return paths.merge(base, stage.start_from(previous_params) or {}, trained)


def _combine(config, stage_results: list[dict]) -> dict:
  result = dict(stage_results[-1], method=config.method)
  if len(stage_results) > 1:  # The method tuned what any stage tuned; it stores every artifact.
    result["stages"] = stage_results
    for key in ("trainable_parameters", "tuned_percent"):
      result[key] = max(r[key] for r in stage_results)
    for key in ("wall_seconds", "artifact_bytes"):
      result[key] = sum(r[key] for r in stage_results)
  return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Runs (or resumes) the run configured by `config` in `workdir`; returns its result."""
  config = recipes.resolve(config)  # Validates: nothing is written for a config it refuses.
  task = tasks_lib.get(config.task)
  stages = plan_stages(config, task, workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory: choose another workdir.")
  lock = files.RunLock(workdir) if jax.process_index() == 0 else None
  if lock:
    lock.acquire()  # One owner at a time; the OS drops the lock if this process dies.
  try:
    return _train_and_evaluate(config, task, stages, workdir, log)
  finally:
    if lock:
      lock.release()


def _train_and_evaluate(config, task, stages: list[Stage], workdir: str, log) -> dict:
  claim_workdir(config, workdir, log)
  result_path = os.path.join(workdir, "result.json")
  if (result := finished_result(result_path, log)) is not None:
    log(f"{workdir} already holds a finished run; not retraining. Delete {result_path} to rerun.")
    return result

  backbone = load_backbone(config, task)
  mesh = sharding.make_mesh()
  params, stage_results = None, []
  for index, stage in enumerate(stages):
    stage_result_path = os.path.join(stage.workdir, "result.json")
    if len(stages) > 1 and (done := finished_result(stage_result_path, log)) is not None:
      try:
        params = _restore_finished_stage(config, stage, backbone, params, done)
        stage_results.append(done)
        log(f"Stage {index + 1} ({stage.method.name}) already finished.")
        continue
      except files.DamagedFileError as e:  # Finish the stage again from its checkpoints.
        log(f"{e} Stage {index + 1} ({stage.method.name}) is finished again; its result moved "
            f"to {files.set_aside(stage_result_path, 'damaged')}.")
    result, params = _run_stage(config, stage, backbone, params, mesh, log)
    stage_results.append(result)
    if len(stages) > 1 and jax.process_index() == 0:
      files.write_json(stage_result_path, result)

  result = _combine(config, stage_results)
  if jax.process_index() == 0:
    files.write_json(result_path, result)
  return result
