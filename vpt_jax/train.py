"""One run: a task, a tuning method and a seed, trained and evaluated as the config says.

`train_and_evaluate(config, workdir)` is the whole of it. The workdir holds config.json, metrics
(JSON lines and TensorBoard), orbax checkpoints, the method's artifact (only what it trained) and,
when the run is complete, result.json. Running the same command again resumes from the newest
readable checkpoint and ends with the same numbers; a finished run is reported, not redone.
Two-stage methods (ft_then_pt, lp_ft) run each stage in its own sub-directory.
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vpt_jax import checkpoints, methods, metrics, optim, resume, sharding, steps
from vpt_jax.data import device, pipeline
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("eval_batch_size", "checkpoint_every_epochs", "checkpoints_to_keep",
                     "checkpoint_cache_dir", "data.data_dir", "data.cache_dir")


class NonFiniteLossError(RuntimeError):
  pass


class ConfigMismatchError(ValueError):
  pass


def _flat_config(config) -> dict:
  flat = {}

  def visit(prefix, value):
    if isinstance(value, dict):
      for key, item in value.items():
        visit(f"{prefix}.{key}" if prefix else key, item)
    else:
      flat[prefix] = value
  visit("", json.loads(config.to_json_best_effort()))
  return flat


def _write_json_atomic(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _check_workdir_config(config, workdir: str) -> None:
  """The workdir belongs to one configuration: a different one must use another workdir."""
  path = os.path.join(workdir, "config.json")
  current = _flat_config(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    differences = sorted(k for k in set(current) | set(stored)
                         if current.get(k) != stored.get(k) and k not in RESUMABLE_CHANGES)
    if differences:
      shown = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differences[:6])
      raise ConfigMismatchError(
          f"{workdir} holds a run with another configuration ({shown}); use a new --workdir.")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_json_atomic(path, current)


def base_model_kwargs(config, num_classes: int) -> dict:
  dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(config.dtype, "invalid")
  if dtype == "invalid":
    raise ValueError(f"dtype={config.dtype!r} must be 'float32' or 'bfloat16'.")
  return dict(num_classes=num_classes, dtype=dtype, **config.model.to_dict())


@dataclasses.dataclass
class _Evaluator:
  """Loss and accuracy over a whole split, every example exactly once."""
  mesh: jax.sharding.Mesh
  model: vit.Model
  normalization: str

  def __post_init__(self):
    def eval_step(params, images, labels, mask):
      images = device.normalize(images, self.normalization)
      return steps.make_eval_step(self.model)(params, images, labels, mask)
    self._step = jax.jit(eval_step)

    def gather(images, labels, indices):
      return images[indices], labels[indices]
    self._gather = jax.jit(gather, out_shardings=sharding.batch_sharded(self.mesh))

  def _finish(self, sums) -> dict:
    sums = jax.device_get(sums)
    count = int(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
            "examples": count}

  def stream(self, params, config, subset: str) -> dict:
    batch_size = config.eval_batch_size
    sums = None
    put = lambda x: sharding.put_batch(self.mesh, x)
    for batch in pipeline.eval_batches(config.task, subset, config.data.resolution, batch_size,
                                       config.data.data_dir):
      out = self._step(params, put(batch["image"]), put(batch["label"]), put(batch["mask"]))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return self._finish(sums)

  def arrays(self, params, images, labels, batch_size: int) -> dict:
    n = images.shape[0]
    sums = None
    for start in range(0, n, batch_size):
      indices = np.arange(start, start + batch_size)
      mask = indices < n
      batch_images, batch_labels = self._gather(images, labels, np.minimum(indices, n - 1))
      out = self._step(params, batch_images, batch_labels, sharding.put_batch(self.mesh, mask))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return self._finish(sums)


def stage_optim(config, stage_name: str) -> ml_collections.ConfigDict:
  """`config.optim` with the overrides `config.stage_optim[stage_name]` (two-stage methods)."""
  optim_config = ml_collections.ConfigDict(config.optim.to_dict())
  overrides = config.get("stage_optim") or {}
  optim_config.update(dict(overrides.get(stage_name, {})))
  return optim_config


def _check_stage_optim(config, method: methods.Method) -> None:
  stage_names = [stage.name for stage in method.stages or (method,)]
  for name, overrides in (config.get("stage_optim") or {}).items():
    if name not in stage_names[:-1]:
      raise ValueError(f"config.stage_optim.{name}: {config.method} has no earlier stage called "
                       f"{name!r} (its stages: {', '.join(stage_names)}; the last one takes "
                       f"config.optim itself).")
    if unknown := set(overrides) - set(config.optim):
      raise ValueError(f"config.stage_optim.{name} sets {sorted(unknown)}, which are not "
                       f"config.optim fields.")


def _run_stage(config, stage: methods.Method, workdir: str, backbone, previous_params,
               log) -> tuple[dict, dict]:
  """Trains one single-stage method; returns (result, final parameters)."""
  started = time.time()
  task = tasks_lib.get(config.task)
  mesh = sharding.make_mesh()
  model = vit.Model(**base_model_kwargs(config, task.num_classes), **stage.model_kwargs)
  resolution = config.data.resolution
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, data_rng, flip_rng = jax.random.split(rng, 4)

  params = methods.init_params(model, backbone, init_rng, resolution)
  if previous_params is not None:
    params = methods.merge(params, previous_params)
  groups = methods.labels(params, stage.rules)
  trainable, frozen = methods.split(params, groups)
  trainable_groups, _ = methods.split(groups, groups)
  backbone_count = methods.count(backbone) - methods.count(backbone.get("head", {}))
  log(methods.summary(stage.name, params, groups, backbone_count))

  images, labels = pipeline.load_arrays(config.task, config.data.train_subset, resolution,
                                        config.data.data_dir, config.data.cache_dir)
  optim_config = stage_optim(config, stage.name)
  batch_size = optim_config.batch_size
  if batch_size % mesh.devices.size:
    raise ValueError(f"Batch size {batch_size} does not split over {mesh.devices.size} devices.")
  steps_per_epoch = device.steps_per_epoch(len(images), batch_size)
  total_steps = optim_config.epochs * steps_per_epoch
  schedule = optim.warmup_cosine(optim.learning_rate(optim_config.base_lr, batch_size),
                                 optim_config.warmup_epochs * steps_per_epoch, total_steps)
  tx = optim.make(optim_config.name, trainable_groups, schedule, momentum=optim_config.momentum,
                  weight_decay=optim_config.weight_decay,
                  lr_mults=optim_config.lr_mults.to_dict(), decay_rules=optim_config.decay_rules)

  replicated = sharding.replicated(mesh)
  trainable_sharding = sharding.param_shardings(mesh, trainable, config.sharding_rules)
  frozen_sharding = sharding.param_shardings(mesh, frozen, config.sharding_rules)
  opt_sharding = sharding.optimizer_shardings(mesh, jax.eval_shape(tx.init, trainable),
                                              trainable_sharding)
  trainable = jax.device_put(trainable, trainable_sharding)
  frozen = jax.device_put(frozen, frozen_sharding)
  opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(trainable)
  images = sharding.put_global(images, replicated)
  labels = sharding.put_global(labels, replicated)

  jitted_step = steps.build_train_step(
      model, tx, mesh, (trainable_sharding, opt_sharding, frozen_sharding), steps_per_epoch,
      batch_size, config.data.normalization, train_rng, flip_rng if config.data.flip else None)
  permutation_fn = jax.jit(lambda epoch: device.epoch_permutation(data_rng, epoch, len(images)),
                           out_shardings=replicated)
  evaluator = _Evaluator(mesh, model, config.data.normalization)

  checkpointer = resume.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     config.checkpoints_to_keep)
  writer = metrics.MetricWriter(workdir)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      {"trainable": trainable, "opt_state": opt_state},
      {"trainable": trainable_sharding, "opt_state": opt_sharding})
  step, restored = checkpointer.restore_latest(abstract)
  if restored is not None:
    trainable, opt_state = restored["trainable"], restored["opt_state"]
    log(f"Resuming {stage.name} from step {step} of {total_steps} ({workdir}).")
  step = step or 0
  writer.drop_after(step)  # Lines logged after the restart point are about to be redone.

  def save(step):
    checkpointer.save(step, {"trainable": trainable, "opt_state": opt_state})

  progress = tqdm.tqdm(total=total_steps * batch_size, initial=step * batch_size, unit="img",
                       unit_scale=True, desc=f"{config.task} {stage.name}", mininterval=1.0,
                       disable=None if jax.process_index() == 0 else True, smoothing=0.1)
  eval_every = config.eval_every_epochs
  while step < total_steps:
    epoch = step // steps_per_epoch
    permutation = permutation_fn(epoch)
    losses, accuracies = [], []
    for _ in range(steps_per_epoch):
      trainable, opt_state, step_metrics = jitted_step(trainable, opt_state, frozen, images,
                                                       labels, permutation, step)
      losses.append(step_metrics["loss"])
      accuracies.append(step_metrics["accuracy"])
      step += 1
      progress.update(batch_size)
    # One transfer per epoch: the steps above were dispatched without waiting for each other.
    losses, accuracies = jax.device_get((jnp.stack(losses), jnp.stack(accuracies)))
    if not np.all(np.isfinite(losses)):
      bad = step - steps_per_epoch + int(np.argmin(np.isfinite(losses)))
      kept = checkpointer.steps()
      progress.close()
      checkpointer.close()
      raise NonFiniteLossError(
          f"Loss became {losses[bad - step + steps_per_epoch]} at step {bad} (epoch {epoch + 1}); "
          f"stopped. Last good checkpoint: "
          f"{f'step {kept[-1]}' if kept else 'none'} in {workdir}/checkpoints. Lower the learning "
          f"rate (optim.base_lr={optim_config.base_lr}) and use a new workdir.")
    row = {"epoch": epoch + 1, "train_loss_running": float(losses.mean()),
           "train_accuracy_running": float(accuracies.mean()),
           "learning_rate": float(schedule(step - 1))}  # That of the epoch's last step.
    if eval_every and ((epoch + 1) % eval_every == 0 or step == total_steps):
      merged = methods.merge(trainable, frozen)
      train_eval = evaluator.arrays(merged, images, labels, config.eval_batch_size)
      eval_eval = evaluator.stream(merged, config, config.data.eval_subset)
      row.update(train_loss=train_eval["loss"], train_accuracy=train_eval["accuracy"],
                 eval_loss=eval_eval["loss"], eval_accuracy=eval_eval["accuracy"])
    writer.write(step, **row)
    progress.set_postfix(epoch=epoch + 1, loss=f"{row['train_loss_running']:.3f}")
    every = config.checkpoint_every_epochs  # 0: only at the end.
    if (every and (epoch + 1) % every == 0) or step == total_steps:
      save(step)
  progress.close()
  if total_steps not in checkpointer.steps():
    save(total_steps)  # A resumed finished stage whose final checkpoint was lost.
  checkpointer.close()

  # Replicated first, so every host holds the whole of FSDP-sharded arrays for the artifact.
  trainable = jax.jit(lambda tree: tree, out_shardings=replicated)(trainable)
  final_params = methods.merge(trainable, frozen)
  evaluation = evaluator.stream(final_params, config, config.data.eval_subset)
  artifact = os.path.join(workdir, "artifact.npz")
  model_kwargs = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                  for k, v in stage.model_kwargs.items()}
  artifact_bytes = methods.save_artifact(artifact, trainable, {
      "task": config.task, "method": stage.name, "seed": config.seed,
      "backbone": config.backbone, "model": config.model.to_dict(),
      "method_model_kwargs": model_kwargs}) if jax.process_index() == 0 else 0
  eval_name = "test" if config.data.eval_subset == "test" else "val"
  result = {
      "task": config.task, "method": stage.name, "seed": config.seed,
      "train_subset": config.data.train_subset, "eval_subset": config.data.eval_subset,
      "base_lr": optim_config.base_lr,
      "lr": optim.learning_rate(optim_config.base_lr, batch_size),
      "weight_decay": optim_config.weight_decay, "batch_size": batch_size,
      "epochs": optim_config.epochs, "steps": total_steps,
      f"{eval_name}_accuracy": evaluation["accuracy"], f"{eval_name}_loss": evaluation["loss"],
      "eval_examples": evaluation["examples"],
      "trainable_parameters": methods.count(trainable),
      "backbone_parameters": backbone_count,
      "tuned_percent": 100 * (methods.count(trainable) - methods.count(trainable.get("head", {})))
                       / backbone_count,
      "artifact_bytes": artifact_bytes, "full_model_bytes": 4 * methods.count(final_params),
      "wall_seconds": time.time() - started,
  }
  return result, final_params


def _backbone(config, base: vit.Model) -> dict:
  """The pre-trained parameters; with `config.backbone = None`, a random init (from scratch)."""
  if config.backbone:
    return checkpoints.load_pretrained(config.backbone, base, image_size=config.data.resolution,
                                       cache_dir=config.checkpoint_cache_dir)
  images = jnp.zeros((1, config.data.resolution, config.data.resolution, 3))
  return jax.jit(base.init)(jax.random.PRNGKey(config.seed), images)["params"]


def _restore_finished_stage(config, stage, workdir, backbone, previous_params):
  """Final parameters of a finished stage: its artifact on top of what it started from."""
  task = tasks_lib.get(config.task)
  model = vit.Model(**base_model_kwargs(config, task.num_classes), **stage.model_kwargs)
  params, _ = methods.load_artifact(os.path.join(workdir, "artifact.npz"))
  base = methods.init_params(model, backbone, jax.random.PRNGKey(0), config.data.resolution)
  return methods.merge(base, previous_params or {}, params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Runs (or resumes) the run configured by `config` in `workdir`; returns its result."""
  result_path = os.path.join(workdir, "result.json")
  task = tasks_lib.get(config.task)
  arch = vit.Model(num_classes=task.num_classes, **config.model.to_dict()).architecture
  method = methods.get(config.method, depth=arch.depth, **config.method_kwargs.to_dict())
  _check_stage_optim(config, method)  # Before the workdir gets anything.
  _check_workdir_config(config, workdir)
  if os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    log(f"{workdir} already holds a finished run; not retraining. Delete {result_path} to rerun.")
    return result

  base = vit.Model(**base_model_kwargs(config, task.num_classes))
  backbone = _backbone(config, base)

  stages = method.stages or (method,)
  params, stage_results = None, []
  for index, stage in enumerate(stages):
    stage_dir = workdir if len(stages) == 1 else os.path.join(workdir,
                                                              f"stage{index + 1}_{stage.name}")
    stage_result_path = os.path.join(stage_dir, "result.json")
    if len(stages) > 1 and os.path.exists(stage_result_path):
      with open(stage_result_path) as f:
        stage_results.append(json.load(f))
      params = _restore_finished_stage(config, stage, stage_dir, backbone, params)
      log(f"Stage {index + 1} ({stage.name}) already finished.")
      continue
    result, params = _run_stage(config, stage, stage_dir, backbone, params, log)
    stage_results.append(result)
    if len(stages) > 1 and jax.process_index() == 0:
      _write_json_atomic(stage_result_path, result)

  result = dict(stage_results[-1], method=config.method)
  if len(stages) > 1:  # The method tuned what any of its stages tuned; it stores every artifact.
    result["stages"] = stage_results
    for key in ("trainable_parameters", "tuned_percent"):
      result[key] = max(r[key] for r in stage_results)
    for key in ("wall_seconds", "artifact_bytes"):
      result[key] = sum(r[key] for r in stage_results)
  if jax.process_index() == 0:
    _write_json_atomic(result_path, result)
  return result
