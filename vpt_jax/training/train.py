"""One run: a task, a tuning method and a seed, trained and evaluated as its config says.

`train_and_evaluate(config, workdir)` is the whole of it. It resolves the config once (recipe,
task, the method's stages, their models and optimizer settings), then for each stage calls
`create_train_state`, `fit` and `finish`. The workdir holds config.json (the resolved settings),
metrics (JSON lines and TensorBoard), orbax checkpoints, the stage's artifact (only what it
trained) and, when the run is complete, result.json. Running the same command again resumes from
the newest readable checkpoint and ends with the same numbers; a finished run is reported, not
redone. Two-stage methods (ft_then_pt, lp_ft) run each stage in its own sub-directory.
"""

import contextlib
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vpt_jax import methods
from vpt_jax.training import artifacts, checkpointing, metrics, optim, programs, recipes, sharding
from vpt_jax.utils import config_lib, files, paths, timing
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import vit

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("eval_batch_size", "checkpoint_every_epochs", "checkpoints_to_keep",
                     "pretrained_cache_dir", "data.data_dir", "data.cache_dir", "workdir",
                     "compilation_cache", "eval_shifts")
_NOT_RUN_SETTINGS = ("sweep.",)  # The sweep's grid: which runs exist, not how one trains.


PREDICTIONS = "test_logits.npz"  # A final run's test logits (float16) and labels, in split order.


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
  """The pre-trained parameters without a head (programs.backbone)."""
  return programs.backbone(config, vit.Model(**model_kwargs(config, task.num_classes)))


@dataclasses.dataclass
class Member:
  """One run being trained by `fit`, alone or packed with others: its settings, random keys,
  clock, and its frozen parameters (placed on the devices)."""
  config: ml_collections.ConfigDict
  stage: Stage
  rngs: dict
  clock: Clock
  frozen: dict
  backbone_count: int
  started: dict = dataclasses.field(default_factory=timing.snapshot)


def run_keys(seed: int):
  """(init, train, data, flip) random keys of a run of `seed`."""
  return jax.random.split(jax.random.PRNGKey(seed), 4)


def create_train_state(config, stage: Stage, backbone, previous_params, mesh, num_examples: int,
                       log) -> tuple[programs.Program, Member, dict]:
  """The stage's (shared, compiled) program, the run as a member of it, and its initial state
  {"trainable", "opt_state"}."""
  program = programs.get(config, stage, num_examples, mesh)
  init_rng, train_rng, data_rng, flip_rng = run_keys(config.seed)
  params = programs.initial_params(program, backbone, init_rng)
  if previous_params is not None:
    params = paths.merge(params, stage.start_from(previous_params))
  trainable, frozen = methods.split(params, program.groups)
  backbone_count = paths.count(backbone)
  log(methods.summary(stage.method.name, params, program.groups, backbone_count))
  # Copies: the step donates (overwrites) them, and the backbone they come from is kept for
  # later runs of this process.
  trainable = jax.device_put(trainable, program.shardings[0], may_alias=False)
  opt_state = program.init_opt(trainable, peak_lr(stage.optim),
                               applied_weight_decay(stage.optim))
  member = Member(config, stage, dict(train=train_rng, data=data_rng, flip=flip_rng),
                  Clock(stage.workdir), jax.device_put(frozen, program.shardings[2]),
                  backbone_count)
  return program, member, {"trainable": trainable, "opt_state": opt_state}


def _evaluate(config, program: programs.Program, params, subset: str,
              keep_logits: bool = False) -> dict:
  with timing.phase("eval"):
    if tasks_lib.parse_kshot(subset):  # A few examples per class: held as arrays, not streamed.
      images, labels = programs.train_arrays(config, subset, program.mesh)
      return program.evaluator.arrays(params, images, labels, config.eval_batch_size)
    return program.evaluator.stream(params, config.task, subset, config.data.resolution,
                                    config.eval_batch_size, config.data.data_dir,
                                    config.data.resize, keep_logits=keep_logits)


def _restore(program: programs.Program, member: Member, state: dict, checkpointer, log):
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
      {"trainable": program.shardings[0], "opt_state": program.shardings[1]})
  step, restored = checkpointer.restore_latest(abstract)
  if restored is not None:
    log(f"Resuming {member.stage.method.name} from step {step} of {program.total_steps} "
        f"({member.stage.workdir}).")
    return step, restored
  return 0, state


def fit(program: programs.Program, members: list[Member], states: list[dict], images, labels,
        log) -> list[dict]:
  """Trains the members from their newest readable checkpoints (or `states`) to the end; returns
  their final states. One member trains alone; several (of one program, at one step) train
  packed: their trainable states stacked on a leading axis, one compiled step for all.

  A non-finite loss stops a member. With optim.on_non_finite "score_last_epoch" (the VPT code:
  src/engine/trainer.py stops the run and its last recorded epoch is what counts) its final state
  holds the parameters of its last finished epoch and "diverged" says where it happened; with
  "fail", or when no epoch finished, NonFiniteLossError.
  """
  k = len(members)
  checkpointers = [checkpointing.Checkpointer(os.path.join(m.stage.workdir, "checkpoints"),
                                              m.config.checkpoints_to_keep) for m in members]
  writers = [metrics.MetricWriter(m.stage.workdir) for m in members]
  restored = [_restore(program, m, s, c, log) for m, s, c in zip(members, states, checkpointers)]
  if len({step for step, _ in restored}) > 1:
    raise ValueError("Packed runs must resume from the same step; train them one by one.")
  step = restored[0][0]
  states = [state for _, state in restored]
  for writer in writers:
    writer.drop_after(step)  # Lines logged after the restart point are about to be redone.

  stage, config = members[0].stage, members[0].config
  batch_size, steps_per_epoch, total_steps = (stage.optim.batch_size, program.steps_per_epoch,
                                              program.total_steps)
  if k == 1:
    trainable, opt_state = states[0]["trainable"], states[0]["opt_state"]
    train_step, frozen = program.train_step, members[0].frozen
    rngs = members[0].rngs
  else:
    stack = lambda *xs: jnp.stack(xs)
    trainable = jax.tree.map(stack, *[s["trainable"] for s in states])
    opt_state = jax.tree.map(stack, *[s["opt_state"] for s in states])
    train_step, frozen = program.packed_step(k), members[0].frozen
    rngs = {name: jnp.stack([m.rngs[name] for m in members]) for name in members[0].rngs}
  member_state = (lambda i, t, o: {"trainable": t, "opt_state": o}) if k == 1 else (
      lambda i, t, o: {"trainable": jax.tree.map(lambda x: x[i], t),
                       "opt_state": jax.tree.map(lambda x: x[i], o)})
  score_last_epoch = stage.optim.get("on_non_finite", "fail") == "score_last_epoch"
  finished = ([jax.tree.map(jnp.copy, member_state(i, trainable, opt_state)["trainable"])
               for i in range(k)] if score_last_epoch and step else [None] * k)
  done = [None] * k  # A member's final state once it stopped (diverged).
  progress = tqdm.tqdm(total=total_steps * batch_size * k, initial=step * batch_size * k,
                       unit="img", unit_scale=True,
                       desc=f"{config.task} {stage.method.name}" + (f" x{k}" if k > 1 else ""),
                       mininterval=1.0, disable=None if jax.process_index() == 0 else True,
                       smoothing=0.1)
  while step < total_steps:
    epoch = step // steps_per_epoch
    with timing.phase("train", excludes_compile=True):
      permutation = (program.permutation(rngs["data"], epoch) if k == 1 else
                     jnp.stack([program.permutation(m.rngs["data"], epoch) for m in members]))
      losses, accuracies = [], []
      for _ in range(min(steps_per_epoch, total_steps - step)):
        trainable, opt_state, step_metrics = train_step(
            trainable, opt_state, frozen, images, labels, permutation, step, rngs["train"],
            rngs["flip"])
        losses.append(step_metrics["loss"])
        accuracies.append(step_metrics["accuracy"])
        step += 1
        progress.update(batch_size * k)
      # One transfer per epoch: the steps above were dispatched without waiting for each other.
      losses, accuracies = jax.device_get((jnp.stack(losses), jnp.stack(accuracies)))
    losses, accuracies = losses.reshape(len(losses), -1), accuracies.reshape(len(losses), -1)
    for i, member in enumerate(members):
      if done[i] is not None:
        continue
      state_i = member_state(i, trainable, opt_state)
      if not np.all(np.isfinite(losses[:, i])):
        bad = step - len(losses) + int(np.argmin(np.isfinite(losses[:, i])))
        value = losses[bad - step + len(losses), i]
        if score_last_epoch and finished[i] is not None:
          log(f"Loss became {value} at step {bad} (epoch {epoch + 1}); stopped, scored at epoch "
              f"{epoch} as the VPT code does ({member.stage.workdir}).")
          done[i] = {"trainable": finished[i], "opt_state": None,
                     "diverged": {"step": bad, "epoch": epoch + 1, "scored_epoch": epoch}}
          continue
        kept = checkpointers[i].steps()
        progress.close()
        for checkpointer in checkpointers:
          checkpointer.close()
        raise NonFiniteLossError(
            f"Loss became {value} at step {bad} (epoch {epoch + 1}); stopped. Last good "
            f"checkpoint: {f'step {kept[-1]}' if kept else 'none'} in "
            f"{member.stage.workdir}/checkpoints. Lower the learning rate (optim.base_lr="
            f"{member.stage.optim.base_lr}) and use a new workdir.")
      if score_last_epoch:  # What a divergence in the next epoch would be scored with.
        finished[i] = jax.tree.map(jnp.copy, state_i["trainable"])
      row = {"epoch": epoch + 1, "train_loss_running": float(losses[:, i].mean()),
             "train_accuracy_running": float(accuracies[:, i].mean()),
             # That of the epoch's last step (the epoch's own under a per-epoch schedule).
             "learning_rate": float(optim.current_lr(program.schedule, state_i["opt_state"],
                                                     step - 1))}
      if config.eval_every_epochs and ((epoch + 1) % config.eval_every_epochs == 0
                                       or step == total_steps):
        params = paths.merge(state_i["trainable"], member.frozen)
        with timing.phase("eval"):
          on_train = program.evaluator.arrays(params, images, labels, config.eval_batch_size)
        held_out = _evaluate(member.config, program, params, member.config.data.eval_subset)
        row.update(train_loss=on_train["loss"], train_accuracy=on_train["accuracy"],
                   eval_loss=held_out["loss"], eval_accuracy=held_out["accuracy"])
      with timing.phase("write"):
        writers[i].write(step, **row)
        member.clock.save()
        every = member.config.checkpoint_every_epochs  # 0: only at the end.
        if (every and (epoch + 1) % every == 0) or step == total_steps:
          checkpointers[i].save(step, state_i)
    progress.set_postfix(epoch=epoch + 1, loss=f"{float(losses.mean()):.3f}")
  progress.close()
  finals = []
  for i in range(k):
    if done[i] is not None:
      finals.append(done[i])
      continue
    state_i = member_state(i, trainable, opt_state)
    if total_steps not in checkpointers[i].steps():  # A resumed finished stage lost its last.
      with timing.phase("write"):
        checkpointers[i].save(total_steps, state_i)
    finals.append(state_i)
  for checkpointer in checkpointers:
    checkpointer.close()
  return finals


def finish(program: programs.Program, member: Member, state: dict) -> tuple[dict, dict]:
  """Evaluates the trained stage, writes its artifact; returns (result, final parameters)."""
  stage, config = member.stage, member.config
  # Replicated first, so every host holds the whole of FSDP-sharded arrays for the artifact.
  trainable = program.replicate(state["trainable"])
  final_params = paths.merge(trainable, member.frozen)
  final_run = config.data.eval_subset == "test"
  evaluation = _evaluate(config, program, final_params, config.data.eval_subset,
                         keep_logits=final_run)
  artifact = os.path.join(stage.workdir, artifacts.FILENAME)
  with timing.phase("write"):
    artifact_bytes = artifacts.save(artifact, trainable, {
        "task": config.task, "method": stage.method.name, "seed": config.seed,
        "backbone": config.backbone, "model": stage.model_config,
        "model_fields": artifacts.model_fields_to_json(stage.method.model_fields),
    }) if jax.process_index() == 0 else 0
    if final_run and jax.process_index() == 0:  # For ensembles and agreement (report.py).
      files.write_npz(os.path.join(stage.workdir, PREDICTIONS), {
          "logits": evaluation["logits"], "labels": evaluation["labels"].astype(np.int32)})
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
      "steps": program.total_steps, "schedule": stage.optim.get("schedule", "epoch"),
      "dropout": stage.model.dropout,
      f"{eval_name}_accuracy": evaluation["accuracy"], f"{eval_name}_loss": evaluation["loss"],
      "eval_examples": evaluation["examples"],
      "trainable_parameters": trained, "backbone_parameters": member.backbone_count,
      "tuned_percent": 100 * (trained - paths.count(trainable.get("head", {})))
                       / member.backbone_count,
      "artifact_bytes": artifact_bytes, "full_model_bytes": 4 * paths.count(final_params),
      "artifact_sha256": files.sha256_file(artifact) if jax.process_index() == 0 else None,
      "wall_seconds": member.clock.seconds(),
      # This attempt's time per phase (shared work, such as compiling, falls on the first run).
      "time_seconds": {k: round(v, 3) for k, v in timing.since(member.started).items()},
  }
  if final_run:
    result["predictions"] = PREDICTIONS
  if "diverged" in state:
    result["diverged"] = state["diverged"]
  return result, final_params


def _run_stage(config, stage: Stage, backbone, previous_params, mesh, log):
  images, labels = programs.train_arrays(config, config.data.train_subset, mesh)
  program, member, state = create_train_state(config, stage, backbone, previous_params, mesh,
                                              len(images), log)
  [state] = fit(program, [member], [state], images, labels, log)
  return finish(program, member, state)


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


def _combine(config, stages: list[Stage], stage_results: list[dict]) -> dict:
  result = dict(stage_results[-1], method=config.method)
  if len(stage_results) > 1:  # The method tuned what any stage tuned; it stores every artifact.
    result["stages"] = stage_results
    if "predictions" in result:
      result["predictions"] = os.path.join(os.path.basename(stages[-1].workdir),
                                           result["predictions"])
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

  result = _combine(config, stages, stage_results)
  if jax.process_index() == 0:
    files.write_json(result_path, result)
  return result


def train_and_evaluate_packed(configs: list, workdirs: list[str], log=print) -> list[dict]:
  """Several single-stage runs of one program (grid points, or seeds of one setting) trained at
  once: their trainable states stacked (vmap), the frozen backbone and the train set shared, each
  with its own initialisation and its own batches. Each run keeps its own workdir, checkpoints,
  metrics and result, as if trained alone; returns their results in order."""
  resolved = [recipes.resolve(c) for c in configs]
  task = tasks_lib.get(resolved[0].task)
  planned = [plan_stages(c, task, w) for c, w in zip(resolved, workdirs)]
  if any(len(p) != 1 for p in planned) or len({c.data.train_subset for c in resolved}) != 1:
    raise ValueError("Only single-stage runs on one training set can be packed.")
  with contextlib.ExitStack() as locks:
    if jax.process_index() == 0:
      for workdir in workdirs:
        locks.enter_context(files.RunLock(workdir))
    results = [None] * len(configs)
    for i, (config, workdir) in enumerate(zip(resolved, workdirs)):
      claim_workdir(config, workdir, log)
      results[i] = finished_result(os.path.join(workdir, "result.json"), log)
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
      return results
    mesh = sharding.make_mesh()
    backbone = load_backbone(resolved[todo[0]], task)
    images, labels = programs.train_arrays(resolved[todo[0]],
                                           resolved[todo[0]].data.train_subset, mesh)
    built = [create_train_state(resolved[i], planned[i][0], backbone, None, mesh, len(images),
                                log) for i in todo]
    program = built[0][0]
    if any(p is not program for p, _, _ in built):
      raise ValueError("Packed runs must share one program (same method, recipe and shapes).")
    # Runs resumed from different steps cannot share steps: those train one by one.
    latest = [max(checkpointing.Checkpointer(os.path.join(m.stage.workdir, "checkpoints"),
                                             1).steps() or [0]) for _, m, _ in built]
    groups = ([list(range(len(built)))] if len(set(latest)) == 1 else
              [[j] for j in range(len(built))])
    for group in groups:
      finals = fit(program, [built[j][1] for j in group], [built[j][2] for j in group], images,
                   labels, log)
      for j, state in zip(group, finals):
        result, _ = finish(program, built[j][1], state)
        if jax.process_index() == 0:
          files.write_json(os.path.join(workdirs[todo[j]], "result.json"), result)
        results[todo[j]] = result
    return results
