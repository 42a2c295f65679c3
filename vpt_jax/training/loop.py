"""The training loop: a pack of K >= 1 runs of one program, from their newest checkpoints to the
end of their schedule. A single run is a pack of one.

Each epoch dispatches its steps without waiting and starts copying the pack's losses to the host.
An epoch that needs the parameters as they are at its end (an evaluation, a checkpoint, the last
epoch) is finished at once; any other is finished while the device runs the next one, so the
host never stalls the device for it. Finishing an epoch, per member: the divergence check (at
most one epoch late), a metrics row, early stopping, the checkpoint, and the progress line.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.training import checkpointing, metrics, optim, programs, spec
from vpt_jax.training.progress import Progress
from vpt_jax.utils import paths, timing


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class EarlyStop:
  """OSU-MLB/PETL_Vision's utils/misc.py EarlyStop (min_delta 0), fed one validation accuracy per
  epoch: the first is the best so far; a better one resets the count, a worse one adds one, an
  equal one neither; `patience` worse ones (since the last best) stop the run."""
  patience: int
  best: float | None = None
  worse: int = 0

  def update(self, accuracy: float) -> bool:
    """True when the run stops at this evaluation."""
    if self.best is None:
      self.best = accuracy
    elif accuracy > self.best:
      self.best, self.worse = accuracy, 0
    elif accuracy < self.best:
      self.worse += 1
      return self.worse >= self.patience
    return False


def _early_stop(member: "Member", step: int) -> EarlyStop | None:
  """The member's early-stop state, replayed from its metrics up to `step` (so a resumed run
  continues the count); None where it does not stop early (final runs, patience 0)."""
  patience = member.run.eval.early_stop_patience
  if not patience or member.run.final_run:
    return None
  tracker = EarlyStop(patience)
  for row in metrics.read(member.stage.workdir):
    if "eval_accuracy" in row and row.get("step", 0) <= step:
      tracker.update(row["eval_accuracy"])
  return tracker


@dataclasses.dataclass
class Member:
  """One run of a pack: its settings, random keys, clock, and its frozen parameters (on the
  devices)."""
  run: spec.RunSpec
  stage: spec.StageSpec
  rngs: dict
  clock: object  # train.Clock
  frozen: dict
  backbone_count: int
  extent: programs.Extent  # How much it trains (every member of a pack the same).
  started: dict = dataclasses.field(default_factory=timing.snapshot)


def evaluate(program: programs.Program, data: spec.DataSpec, batch_size: int, params,
             subset: str, keep_logits: bool = False) -> dict:
  """Loss and accuracy of `params` on a held-out subset. Validation subsets (val200, k-shot,
  data-scale) are cached arrays held on the devices like the training set; the test split is
  read from a cache where one was made (launch/prepare_data.py --cache_subsets), else streamed."""
  with timing.phase("eval"):
    if subset != "test":
      images, labels = programs.train_arrays(data, subset, program.mesh)
    elif (cached := programs.cached_arrays(data, subset, program.mesh)) is not None:
      images, labels = cached
    else:
      return program.evaluator.stream(params, data.task, subset, data.array_resolution, batch_size,
                                      data.data_dir, data.resize, keep_logits=keep_logits,
                                      source=data.source)
    return program.evaluator.arrays(params, images, labels, batch_size, keep_logits=keep_logits)


def _restore(program: programs.Program, member: Member, state: dict, checkpointer, log):
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
      {"trainable": program.shardings[0], "opt_state": program.shardings[1]})
  step, restored = checkpointer.restore_latest(abstract)
  if restored is not None:
    log(f"Resuming {member.stage.method.name} from step {step} of {member.extent.total_steps} "
        f"({member.stage.workdir}).")
    return step, restored
  return 0, state


def _first_non_finite(losses: np.ndarray, step: int) -> tuple[int, float] | None:
  """(step, value) of the first non-finite loss of an epoch that ended before `step`, or None."""
  if np.all(np.isfinite(losses)):
    return None
  index = int(np.argmin(np.isfinite(losses)))
  return step - len(losses) + index, float(losses[index])


def _diverged(member: Member, epoch: int, bad: tuple[int, float], finished, checkpointer,
              log) -> dict:
  """The final state of a member whose loss turned non-finite in `epoch` (0-based): its last
  finished epoch's parameters under score_last_epoch, else NonFiniteLossError."""
  step, value = bad
  if member.stage.optim.on_non_finite == "score_last_epoch" and finished is not None:
    log(f"Loss became {value} at step {step} (epoch {epoch + 1}); stopped, scored at epoch "
        f"{epoch} as the VPT code does ({member.stage.workdir}).")
    return {"trainable": finished, "opt_state": None,
            "diverged": {"step": step, "epoch": epoch + 1, "scored_epoch": epoch}}
  kept = checkpointer.steps()
  raise NonFiniteLossError(
      f"Loss became {value} at step {step} (epoch {epoch + 1}); stopped. Last good "
      f"checkpoint: {f'step {kept[-1]}' if kept else 'none'} in "
      f"{member.stage.workdir}/checkpoints. Lower the learning rate (optim.base_lr="
      f"{member.stage.optim.base_lr}) and use a new workdir.")


def _epoch_row(program: programs.Program, member: Member, trainable, learning_rate, epoch: int,
               step: int, losses: np.ndarray, accuracies: np.ndarray,
               training: programs.TrainingSet) -> dict:
  """The metrics line of an epoch (with train and held-out evaluation when it is due);
  `trainable` gives the member's trainable parameters when asked."""
  row = {"epoch": epoch + 1, "train_loss_running": float(losses.mean()),
         "train_accuracy_running": float(accuracies.mean()),
         # That of the epoch's last step (the epoch's own under a per-epoch schedule).
         "learning_rate": float(learning_rate)}
  run = member.run
  # Early stopping evaluates every epoch (PETL_Vision's eval_freq 1).
  every = 1 if _stops_early(member) else run.eval.every_epochs
  if every and ((epoch + 1) % every == 0 or step == member.extent.total_steps):
    params = paths.merge(trainable(), member.frozen)
    with timing.phase("eval"):
      on_train = program.evaluator.arrays(params, training.images, training.labels,
                                          run.eval.batch_size, rows=training.host_rows)
    held_out = evaluate(program, run.data, run.eval.batch_size, params, run.data.eval_subset)
    row.update(train_loss=on_train["loss"], train_accuracy=on_train["accuracy"],
               eval_loss=held_out["loss"], eval_accuracy=held_out["accuracy"])
  return row


def _stops_early(member: Member) -> bool:
  return bool(member.run.eval.early_stop_patience) and not member.run.final_run


def _checkpoint_due(member: Member, epoch: int, step: int, total_steps: int) -> bool:
  every = member.run.checkpoints.every_epochs  # 0: only at the end.
  return bool(every and (epoch + 1) % every == 0) or step == total_steps


def _stop_record(stopper: EarlyStop, epoch: int | None) -> dict:
  return {"stopped_after_epoch": epoch, "best_eval_accuracy": stopper.best,
          "patience": stopper.patience}


def fit(program: programs.Program, members: list[Member], states: list[dict],
        training: programs.TrainingSet, log) -> list[dict]:
  """Trains a pack of members (one program, one step) from their newest readable checkpoints (or
  `states`) to the end; returns their final states. Their trainable and optimizer states are
  stacked on a leading axis and advanced by one compiled step.

  A non-finite loss stops a member. With optim.on_non_finite "score_last_epoch" (the VPT code:
  src/engine/trainer.py stops the run and its last recorded epoch is what counts) its final state
  holds the parameters of its last finished epoch and "diverged" says where it happened; with
  "fail", or when no epoch finished, NonFiniteLossError.
  """
  checkpointers = [checkpointing.Checkpointer(os.path.join(m.stage.workdir, "checkpoints"),
                                              m.run.checkpoints.keep, background=True)
                   for m in members]
  writers = [metrics.MetricWriter(m.stage.workdir) for m in members]
  try:
    return _fit(program, members, states, training, checkpointers, writers, log)
  finally:
    for closing in checkpointers + writers:
      closing.close()


def _needs_state(member: Member, epoch: int, step: int) -> bool:
  """Whether epoch `epoch` (0-based, ending at `step`) uses the member's parameters as they are
  at its end (an evaluation, a checkpoint, early stopping, the last epoch): then the epoch is
  finished before the next one is dispatched. Other epochs are finished one epoch late, while
  the device already runs the next, so their losses reach the host without a stall."""
  every = 1 if _stops_early(member) else member.run.eval.every_epochs
  total_steps = member.extent.total_steps
  evaluates = bool(every) and ((epoch + 1) % every == 0 or step == total_steps)
  return evaluates or _checkpoint_due(member, epoch, step, total_steps)


@dataclasses.dataclass
class _Epoch:
  """A dispatched epoch whose losses are on their way to the host."""
  index: int  # 0-based.
  step: int  # The step it ends at.
  losses: list  # Per step, (K,) device arrays.
  accuracies: list
  learning_rates: object


def _fit(program, members, states, training, checkpointers, writers, log) -> list[dict]:
  k = len(members)
  restored = [_restore(program, m, s, c, log) for m, s, c in zip(members, states, checkpointers)]
  if len({step for step, _ in restored}) > 1:
    raise ValueError("Packed runs must resume from the same step; train them one by one.")
  step = restored[0][0]
  for writer in writers:
    writer.drop_after(step)  # Lines logged after the restart point are about to be redone.
  pack = program.pack(k)
  trainable, opt_state = pack.states([state for _, state in restored])
  del restored, states  # The step donates the pack's state; nothing else may hold it.
  rngs = {name: pack.values([m.rngs[name] for m in members]) for name in members[0].rngs}
  state_of = lambda i: {"trainable": pack.member(trainable, i),
                        "opt_state": pack.member(opt_state, i)}
  frozen = members[0].frozen
  extent = members[0].extent
  if any(m.extent != extent for m in members):
    raise ValueError("Packed runs must train on one training set.")
  stage, total_steps, steps_per_epoch = members[0].stage, extent.total_steps, extent.steps_per_epoch
  extent_values = program.replicate(np.asarray([extent.examples, steps_per_epoch], np.int32))
  score_last_epoch = stage.optim.on_non_finite == "score_last_epoch"
  copy_members = lambda: [jax.tree.map(jnp.copy, pack.member(trainable, i)) for i in range(k)]
  # XLA:CPU runs a program's shards on one small thread pool: copies queued behind steps whose
  # collectives are still gathering take its threads and the collective never completes (it aborts
  # after 40 s). On several CPU devices the copies wait for the epoch's last step instead.
  wait_before_copies = jax.default_backend() == "cpu" and program.mesh.size > 1
  # Each member's parameters at the end of recent epochs {epoch: [per member]} (epoch -1: where
  # this attempt started), what a divergence found in the next epoch is scored with.
  snapshots = {step // steps_per_epoch - 1: copy_members() if step else [None] * k} \
      if score_last_epoch else {}
  done = [None] * k  # A member's final state once it stopped (diverged, or stopped early).
  stoppers = [_early_stop(m, step) for m in members]
  for i, stopper in enumerate(stoppers):  # It stopped before the restart: its last checkpoint.
    if stopper is not None and stopper.worse >= stopper.patience:
      done[i] = {**state_of(i), "early_stop": _stop_record(stopper, step // steps_per_epoch)}
  total_epochs = -(-total_steps // steps_per_epoch)
  progress = Progress(f"{members[0].run.task.short_name} {stage.method.name}" + (f" x{k}" if k > 1 else ""),
                      total_epochs, step // steps_per_epoch,
                      steps_per_epoch * stage.optim.batch_size * k, log,
                      enabled=jax.process_index() == 0)

  def finish_epoch(epoch: _Epoch) -> None:
    """Divergence, the metrics row, early stopping and the checkpoint of a dispatched epoch."""
    with timing.phase("train", excludes_compile=True):
      losses, accuracies = (np.stack(jax.device_get(values))
                            for values in (epoch.losses, epoch.accuracies))
    learning_rates = jax.device_get(epoch.learning_rates)
    for i, member in enumerate(members):
      if done[i] is not None:
        continue
      if (bad := _first_non_finite(losses[:, i], epoch.step)) is not None:
        before = snapshots.get(epoch.index - 1, [None] * k)[i] if score_last_epoch else None
        done[i] = _diverged(member, epoch.index, bad, before, checkpointers[i], log)
        continue
      trainable_i = lambda: pack.member(trainable, i)
      row = _epoch_row(program, member, trainable_i, pack.member(learning_rates, i), epoch.index,
                       epoch.step, losses[:, i], accuracies[:, i], training)
      with timing.phase("write"):
        writers[i].write(epoch.step, **row)
        member.clock.save()
        stopping = (stoppers[i] is not None and "eval_accuracy" in row
                    and stoppers[i].update(row["eval_accuracy"]))
        if stopping or _checkpoint_due(member, epoch.index, epoch.step, total_steps):
          checkpointers[i].save(epoch.step, state_of(i))
      if stopping:  # Packs never stop early (recipes.validate), so this ends the loop.
        log(f"Stopped early after epoch {epoch.index + 1}: validation accuracy below its best "
            f"{stoppers[i].best:.4f} {stoppers[i].patience} times ({member.stage.workdir}).")
        done[i] = {**state_of(i), "early_stop": _stop_record(stoppers[i], epoch.index + 1)}
    progress.epoch(epoch.index + 1, float(losses.mean()), float(accuracies.mean()),
                   float(np.mean(learning_rates)))
    for old in [e for e in snapshots if e < epoch.index]:
      del snapshots[old]

  pending = None  # The epoch dispatched before this one, finished once this one is dispatched.
  with progress:
    while step < total_steps and not all(d is not None for d in done):
      epoch = step // steps_per_epoch
      with timing.phase("train", excludes_compile=True):
        permutation = pack.values([program.permutation(m.rngs["data"], epoch, extent.examples)
                                   for m in members])
        losses, accuracies = [], []
        for _ in range(min(steps_per_epoch, total_steps - step)):
          trainable, opt_state, step_metrics = pack.step(
              trainable, opt_state, frozen, training.images, training.labels, training.rows,
              permutation, extent_values, step, rngs["train"], rngs["flip"])
          losses.append(step_metrics["loss"])
          accuracies.append(step_metrics["accuracy"])
          step += 1
        # Each step's (K,) metrics on their way to the host as they finish: stacked there, so
        # epochs of other lengths (a search and a final run) compile nothing more.
        for array in losses + accuracies:
          array.copy_to_host_async()
        dispatched = _Epoch(epoch, step, losses, accuracies,
                            optim.current_lr(program.schedule, opt_state, step - 1))
      if pending is not None:
        finish_epoch(pending)
        pending = None
      if score_last_epoch:  # Copies: the next step overwrites (donates) the pack's state.
        if wait_before_copies:
          jax.block_until_ready(trainable)
        snapshots[epoch] = copy_members()
      if all(d is not None for d in done):
        break
      if any(_needs_state(m, epoch, step) for m in members) or step == total_steps:
        finish_epoch(dispatched)
      else:
        pending = dispatched
    if pending is not None:
      finish_epoch(pending)
  finals = []
  for i, checkpointer in enumerate(checkpointers):
    if done[i] is not None:
      finals.append(done[i])
      continue
    state_i = state_of(i)
    if total_steps not in checkpointer.steps():  # A resumed finished stage lost its last.
      with timing.phase("write"):
        checkpointer.save(total_steps, state_i)
    if stoppers[i] is not None and stoppers[i].best is not None:  # Ran to the end: the best seen.
      state_i = {**state_i, "early_stop": _stop_record(stoppers[i], None)}
    finals.append(state_i)
  return finals
