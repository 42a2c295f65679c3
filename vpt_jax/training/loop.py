"""The training loop: a pack of K >= 1 runs of one program, from their newest checkpoints to the
end of their schedule. A single run is a pack of one.

Each epoch dispatches its steps without waiting, fetches the pack's losses once, then per member:
checks for divergence, optionally evaluates, writes a metrics row and saves a checkpoint.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vpt_jax.training import checkpointing, metrics, optim, programs, spec
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
    log(f"Resuming {member.stage.method.name} from step {step} of {program.total_steps} "
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
               step: int, losses: np.ndarray, accuracies: np.ndarray, images, labels) -> dict:
  """The metrics line of an epoch (with train and held-out evaluation when it is due);
  `trainable` gives the member's trainable parameters when asked."""
  row = {"epoch": epoch + 1, "train_loss_running": float(losses.mean()),
         "train_accuracy_running": float(accuracies.mean()),
         # That of the epoch's last step (the epoch's own under a per-epoch schedule).
         "learning_rate": float(learning_rate)}
  run = member.run
  # Early stopping evaluates every epoch (PETL_Vision's eval_freq 1).
  every = 1 if _stops_early(member) else run.eval.every_epochs
  if every and ((epoch + 1) % every == 0 or step == program.total_steps):
    params = paths.merge(trainable(), member.frozen)
    with timing.phase("eval"):
      on_train = program.evaluator.arrays(params, images, labels, run.eval.batch_size)
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


def fit(program: programs.Program, members: list[Member], states: list[dict], images, labels,
        log) -> list[dict]:
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
    return _fit(program, members, states, images, labels, checkpointers, writers, log)
  finally:
    for closing in checkpointers + writers:
      closing.close()


def _fit(program, members, states, images, labels, checkpointers, writers, log) -> list[dict]:
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
  stage, total_steps = members[0].stage, program.total_steps
  batch_size = stage.optim.batch_size
  score_last_epoch = stage.optim.on_non_finite == "score_last_epoch"
  # A member's parameters at its last finished epoch (what a divergence would be scored with).
  finished = ([jax.tree.map(jnp.copy, pack.member(trainable, i)) for i in range(k)]
              if score_last_epoch and step else [None] * k)
  done = [None] * k  # A member's final state once it stopped (diverged, or stopped early).
  stoppers = [_early_stop(m, step) for m in members]
  for i, stopper in enumerate(stoppers):  # It stopped before the restart: its last checkpoint.
    if stopper is not None and stopper.worse >= stopper.patience:
      done[i] = {**state_of(i), "early_stop": _stop_record(stopper, step // program.steps_per_epoch)}
  progress = tqdm.tqdm(total=total_steps * batch_size * k, initial=step * batch_size * k,
                       unit="img", unit_scale=True,
                       desc=f"{members[0].run.task.name} {stage.method.name}"
                            + (f" x{k}" if k > 1 else ""),
                       mininterval=1.0, disable=None if jax.process_index() == 0 else True,
                       smoothing=0.1)
  with progress:
    while step < total_steps and not all(d is not None for d in done):
      epoch = step // program.steps_per_epoch
      with timing.phase("train", excludes_compile=True):
        permutation = pack.values([program.permutation(m.rngs["data"], epoch) for m in members])
        losses, accuracies = [], []
        for _ in range(min(program.steps_per_epoch, total_steps - step)):
          trainable, opt_state, step_metrics = pack.step(
              trainable, opt_state, frozen, images, labels, permutation, step, rngs["train"],
              rngs["flip"])
          losses.append(step_metrics["loss"])
          accuracies.append(step_metrics["accuracy"])
          step += 1
          progress.update(batch_size * k)
        # One transfer per epoch: the steps above were dispatched without waiting for each other.
        losses, accuracies = jax.device_get((jnp.stack(losses), jnp.stack(accuracies)))
      # Per member, only what it needs: slices of a stacked pack's state are copies.
      learning_rates = optim.current_lr(program.schedule, opt_state, step - 1)
      for i, member in enumerate(members):
        if done[i] is not None:
          continue
        if (bad := _first_non_finite(losses[:, i], step)) is not None:
          done[i] = _diverged(member, epoch, bad, finished[i], checkpointers[i], log)
          continue
        trainable_i = lambda: pack.member(trainable, i)
        if score_last_epoch:  # A copy: the next step overwrites (donates) the pack's state.
          finished[i] = jax.tree.map(jnp.copy, trainable_i())
        row = _epoch_row(program, member, trainable_i, pack.member(learning_rates, i), epoch, step,
                         losses[:, i], accuracies[:, i], images, labels)
        with timing.phase("write"):
          writers[i].write(step, **row)
          member.clock.save()
          stopping = (stoppers[i] is not None and "eval_accuracy" in row
                      and stoppers[i].update(row["eval_accuracy"]))
          if stopping or _checkpoint_due(member, epoch, step, total_steps):
            checkpointers[i].save(step, state_of(i))
        if stopping:  # Packs never stop early (recipes.validate), so this ends the loop.
          log(f"Stopped early after epoch {epoch + 1}: validation accuracy below its best "
              f"{stoppers[i].best:.4f} {stoppers[i].patience} times ({member.stage.workdir}).")
          done[i] = {**state_of(i), "early_stop": _stop_record(stoppers[i], epoch + 1)}
      progress.set_postfix(epoch=epoch + 1, loss=f"{float(losses.mean()):.3f}")
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
