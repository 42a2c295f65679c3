"""One run: a task, a tuning method and a seed, trained and evaluated as its config says.

`train_and_evaluate(config, workdir)` is the whole of it. It resolves the config once into a
frozen `spec.RunSpec` (recipe, task, backbone, the method's stages with their models and optimizer
settings), then for each stage calls `create_train_state`, `loop.fit` and `finish`. The workdir
holds config.json (the resolved settings), metrics (JSON lines and TensorBoard), orbax
checkpoints, the stage's artifact (only what it trained) and, when the run is complete,
result.json. Running the same command again resumes from
the newest readable checkpoint and ends with the same numbers; a finished run is reported, not
redone. Two-stage methods (ft_then_pt, lp_ft) run each stage in its own sub-directory.
"""

import contextlib
import os
import time

import jax
import numpy as np

from vpt_jax import checkpoints, methods
from vpt_jax.data import layouts, pipeline
from vpt_jax.training import artifacts, checkpointing, loop, programs, sharding, spec, zero_shot
from vpt_jax.utils import files, paths, timing

# Fields that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("eval_batch_size", "checkpoint_every_epochs", "checkpoints_to_keep",
                     "pretrained_cache_dir", "data.data_dir", "data.cache_dir", "workdir",
                     "compilation_cache", "eval_shifts", "data.split_dir")
_NOT_RUN_SETTINGS = ("sweep.",)  # The sweep's grid: which runs exist, not how one trains.


PREDICTIONS = "test_logits.npz"  # A final run's test logits (float16) and labels, in split order.
VAL_PREDICTIONS = "val_logits.npz"  # A search run's, on its validation subset.
SPLITS = "splits"  # A custom folder's train/val/test lists and class names, in the run folder.


def predictions_file(run: spec.RunSpec) -> str:
  return PREDICTIONS if run.final_run else VAL_PREDICTIONS


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
    """Every epoch: atomic, but not waiting for the disk (a lost count only undercounts)."""
    if jax.process_index() == 0:
      files.write_json(self._path, {"seconds": self.seconds()}, durable=False)


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


# Fields added to configs after runs were recorded without them, with the value those runs used:
# a record that lacks one matches a config that has that value.
ADDED_FIELDS: dict[str, object] = {"data.source": "tfds", "model.drop_path": None,
                                   "data.augment": None, "data.vertical_flip": None,
                                   "data.split_dir": None, "data.split": None,
                                   "data.rand_augment": None, "data.random_erasing": None,
                                   "early_stop_patience": None}


def config_differences(stored: dict, current: dict) -> list[str]:
  """The fields in which two flat configs train differently."""
  stored = {**{k: v for k, v in ADDED_FIELDS.items() if k in current}, **stored}
  return sorted(k for k in set(current) | set(stored)
                if current.get(k) != stored.get(k) and k not in RESUMABLE_CHANGES
                and not k.startswith(_NOT_RUN_SETTINGS))


def claim_workdir(record: dict, workdir: str, log=print) -> None:
  """The workdir belongs to one configuration (`record`, the flat resolved config): a different
  one must use another workdir."""
  path = os.path.join(workdir, "config.json")
  stored = None
  if os.path.exists(path):
    try:
      stored = files.read_json(path)
    except files.DamagedFileError as e:  # The config is ours to write again; results are kept.
      log(f"{e} Moved to {files.set_aside(path, 'damaged')}; writing it again.")
  if stored is not None:
    differences = config_differences(stored, record)
    if differences:
      shown = ", ".join(f"{k}: {stored.get(k)!r} -> {record.get(k)!r}" for k in differences[:6])
      raise ConfigMismatchError(
          f"{workdir} holds a run with another configuration ({shown}); use a new --workdir.")
  if jax.process_index() == 0:
    files.write_json(path, record)


def run_keys(seed: int):
  """(init, train, data, flip) random keys of a run of `seed`."""
  return jax.random.split(jax.random.PRNGKey(seed), 4)


def create_train_state(run: spec.RunSpec, stage: spec.StageSpec, backbone, previous_params, mesh,
                       training: programs.TrainingSet, log
                       ) -> tuple[programs.Program, loop.Member, dict]:
  """The stage's (shared, compiled) program, the run as a member of it, and its initial state
  {"trainable", "opt_state"}."""
  program = programs.get(run, stage, training, mesh)
  extent = program.extent_of(training.examples)
  init_rng, train_rng, data_rng, flip_rng = run_keys(run.seed)
  params = programs.initial_params(program, backbone, init_rng)
  if stage.method.side_checkpoint:  # Sidetune's pre-trained side network (torchvision's AlexNet).
    params = paths.merge(params, {"side": checkpoints.load_side(stage.method.side_checkpoint,
                                                                run.backbone.cache_dir)})
  carried = stage.start_from(previous_params)
  if previous_params is not None:
    params = paths.merge(params, carried)
  if zero_shot.uses(stage.model) and "head" not in (carried or {}):
    params = dict(params, head=zero_shot.head(run.backbone.checkpoint, run.backbone.cache_dir,
                                              stage.model, run.task.class_names))
  trainable, frozen = methods.split(params, program.groups)
  backbone_count = paths.count(backbone)
  log(methods.summary(stage.method.name, params, program.groups, backbone_count))
  # Copies: the step donates (overwrites) them, and the backbone they come from is kept for
  # later runs of this process.
  trainable = jax.device_put(trainable, program.shardings[0], may_alias=False)
  opt_state = program.init_opt(trainable, stage.optim.peak_lr, stage.optim.decay,
                               extent.steps_per_epoch)
  member = loop.Member(run, stage, dict(train=train_rng, data=data_rng, flip=flip_rng),
                       Clock(stage.workdir), jax.device_put(frozen, program.shardings[2]),
                       backbone_count, extent)
  return program, member, {"trainable": trainable, "opt_state": opt_state}


def finish(program: programs.Program, member: loop.Member, state: dict) -> tuple[dict, dict]:
  """Evaluates the trained stage, writes its artifact; returns (result, final parameters)."""
  stage, run = member.stage, member.run
  # Replicated first, so every host holds the whole of FSDP-sharded arrays for the artifact.
  trainable = program.replicate(state["trainable"])
  final_params = paths.merge(trainable, member.frozen)
  evaluation = loop.evaluate(program, run.data, run.eval.batch_size, final_params,
                             run.data.eval_subset, keep_logits=True)
  artifact = os.path.join(stage.workdir, artifacts.FILENAME)
  with timing.phase("write"):
    artifact_bytes = artifacts.save(artifact, trainable, {
        "task": run.task.name, "method": stage.method.name, "seed": run.seed,
        "backbone": run.backbone.checkpoint, "model": stage.model_config,
        "model_fields": artifacts.model_fields_to_json(stage.method.model_fields),
    }) if jax.process_index() == 0 else 0
    # Test logits for ensembles and agreement (report.py); every run's for its own report.
    if jax.process_index() == 0:
      files.write_npz(os.path.join(stage.workdir, predictions_file(run)), {
          "logits": evaluation["logits"], "labels": evaluation["labels"].astype(np.int32)})
  eval_name = "test" if run.final_run else "val"
  trained = methods.count_trained(trainable, program.groups)
  o = stage.optim
  result = {
      "task": run.task.name, "method": stage.method.name, "recipe": run.recipe, "seed": run.seed,
      "train_subset": run.data.train_subset, "eval_subset": run.data.eval_subset,
      "optimizer": o.name, "base_lr": o.base_lr, "lr": o.peak_lr,
      "weight_decay": o.weight_decay, "applied_weight_decay": o.decay,
      "batch_size": o.batch_size, "epochs": o.epochs if stage.method.trains else 0,
      "steps": member.extent.total_steps if stage.method.trains else 0,
      "schedule": o.schedule, "dropout": stage.model.dropout,
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
  result["predictions"] = predictions_file(run)
  if "diverged" in state:
    result["diverged"] = state["diverged"]
  if "early_stop" in state:  # The best validation accuracy seen, which selection uses.
    result["early_stop"] = state["early_stop"]
    result[f"{eval_name}_accuracy_best"] = state["early_stop"]["best_eval_accuracy"]
  return result, final_params


def _run_stage(run: spec.RunSpec, stage: spec.StageSpec, backbone, previous_params, mesh, log,
               started: dict):
  """Trains and finishes one stage; `started`: the timing snapshot its phases count from (taken
  before the backbone and the images were read, so their time counts as "data")."""
  training = programs.training_set(run.data, mesh)
  program, member, state = create_train_state(run, stage, backbone, previous_params, mesh,
                                              training, log)
  member.started = started
  if stage.method.trains:  # zero_shot: evaluated as it starts.
    [state] = loop.fit(program, [member], [state], training, log)
  return finish(program, member, state)


def _restore_finished_stage(run: spec.RunSpec, stage: spec.StageSpec, backbone, previous_params,
                            result: dict):
  """Final parameters of a finished stage: its artifact (checked against the checksum its result
  recorded) on top of what it started from."""
  path = os.path.join(stage.workdir, artifacts.FILENAME)
  if not os.path.exists(path):
    raise files.DamagedFileError(f"{path} is missing.")
  if result.get("artifact_sha256") and files.sha256_file(path) != result["artifact_sha256"]:
    raise files.DamagedFileError(f"{path} does not match the checksum its stage recorded.")
  trained, _ = artifacts.load(path)
  base = methods.init_params(stage.model, backbone, jax.random.PRNGKey(0), run.data.resolution)
  return paths.merge(base, stage.start_from(previous_params) or {}, trained)


def _combine(run: spec.RunSpec, stage_results: list[dict]) -> dict:
  result = dict(stage_results[-1], method=run.method)
  if len(stage_results) > 1:  # The method tuned what any stage tuned; it stores every artifact.
    result["stages"] = stage_results
    if "predictions" in result:
      result["predictions"] = os.path.join(os.path.basename(run.stages[-1].workdir),
                                           result["predictions"])
    for key in ("trainable_parameters", "tuned_percent"):
      result[key] = max(r[key] for r in stage_results)
    for key in ("wall_seconds", "artifact_bytes"):
      result[key] = sum(r[key] for r in stage_results)
  return result


def train_and_evaluate(config, workdir: str, log=print) -> dict:
  """Runs (or resumes) the run configured by `config` in `workdir`; returns its result. The
  config is read here, once: below, everything takes the resolved `spec.RunSpec`."""
  run = spec.resolve_run(config, workdir)  # Validates: nothing is written for a config it refuses.
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory: choose another workdir.")
  if not os.path.exists(os.path.join(workdir, "result.json")):
    check_inputs(run, log)
  lock = files.RunLock(workdir) if jax.process_index() == 0 else None
  if lock:
    lock.acquire()  # One owner at a time; the OS drops the lock if this process dies.
  try:
    return _train_and_evaluate(run, workdir, log)
  finally:
    if lock:
      lock.release()


def check_inputs(run: spec.RunSpec, log=print) -> None:
  """What can refuse a run before it trains, done before its workdir is made (a user error
  leaves nothing behind): the data's checks (an image-folder source's lists, layout and every
  image, decoded once per data version) and the backbone's checkpoint, read (and kept for the
  run) now."""
  data = run.data
  pipeline.check_data(data.task, data.source, data.data_dir, data.cache_dir,
                      (data.train_subset, data.eval_subset), log)
  programs.backbone(run)


def _train_and_evaluate(run: spec.RunSpec, workdir: str, log) -> dict:
  claim_workdir(run.record, workdir, log)
  if jax.process_index() == 0:  # A custom folder's (carved) splits, as the run read them.
    layouts.write_split_lists(run.task, run.data.data_dir, os.path.join(workdir, SPLITS))
  result_path = os.path.join(workdir, "result.json")
  if (result := finished_result(result_path, log)) is not None:
    log(f"{workdir} already holds a finished run; not retraining. Delete {result_path} to rerun.")
    return result

  started = timing.snapshot()
  backbone = programs.backbone(run)
  mesh = sharding.make_mesh()
  params, stage_results = None, []
  several = len(run.stages) > 1
  for index, stage in enumerate(run.stages):
    stage_result_path = os.path.join(stage.workdir, "result.json")
    if several and (done := finished_result(stage_result_path, log)) is not None:
      try:
        params = _restore_finished_stage(run, stage, backbone, params, done)
        stage_results.append(done)
        log(f"Stage {index + 1} ({stage.method.name}) already finished.")
        continue
      except files.DamagedFileError as e:  # Finish the stage again from its checkpoints.
        log(f"{e} Stage {index + 1} ({stage.method.name}) is finished again; its result moved "
            f"to {files.set_aside(stage_result_path, 'damaged')}.")
    result, params = _run_stage(run, stage, backbone, params, mesh, log, started)
    started = timing.snapshot()
    stage_results.append(result)
    if several and jax.process_index() == 0:
      files.write_json(stage_result_path, result)

  result = _combine(run, stage_results)
  if jax.process_index() == 0:
    files.write_json(result_path, result)
  return result


def train_and_evaluate_packed(configs: list, workdirs: list[str], log=print) -> list[dict]:
  """Several single-stage runs of one program (grid points, or seeds of one setting) trained at
  once: their trainable states stacked (vmap), the frozen backbone and the train set shared, each
  with its own initialisation and its own batches. Each run keeps its own workdir, checkpoints,
  metrics and result, as if trained alone; returns their results in order."""
  runs = [spec.resolve_run(c, w) for c, w in zip(configs, workdirs)]
  if (any(len(r.stages) != 1 for r in runs)
      or len({(r.task.name, r.data.train_subset) for r in runs}) != 1):
    raise ValueError("Only single-stage runs on one training set can be packed.")
  with contextlib.ExitStack() as locks:
    if jax.process_index() == 0:
      for workdir in workdirs:
        locks.enter_context(files.RunLock(workdir))
    results = [None] * len(runs)
    for i, (run, workdir) in enumerate(zip(runs, workdirs)):
      claim_workdir(run.record, workdir, log)
      results[i] = finished_result(os.path.join(workdir, "result.json"), log)
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
      return results
    mesh = sharding.make_mesh()
    first = runs[todo[0]]
    started = timing.snapshot()
    backbone = programs.backbone(first)
    training = programs.training_set(first.data, mesh)
    built = [create_train_state(runs[i], runs[i].stages[0], backbone, None, mesh, training,
                                log) for i in todo]
    for _, member, _ in built:
      member.started = started
    program = built[0][0]
    if any(p is not program for p, _, _ in built):
      raise ValueError("Packed runs must share one program (same method, recipe and shapes).")
    # Runs resumed from different steps cannot share steps: those train one by one.
    latest = [max(checkpointing.Checkpointer(os.path.join(m.stage.workdir, "checkpoints"),
                                             1).steps() or [0]) for _, m, _ in built]
    groups = ([list(range(len(built)))] if len(set(latest)) == 1 else
              [[j] for j in range(len(built))])
    for group in groups:
      finals = [built[j][2] for j in group]
      if first.stages[0].method.trains:  # One program: one method for all.
        finals = loop.fit(program, [built[j][1] for j in group], finals, training, log)
      for j, state in zip(group, finals):
        result, _ = finish(program, built[j][1], state)
        if jax.process_index() == 0:
          files.write_json(os.path.join(workdirs[todo[j]], "result.json"), result)
        results[todo[j]] = result
    return results
