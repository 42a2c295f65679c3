"""Watching a run: per-epoch progress lines off a terminal, and epochs finished one epoch late
(while the device runs the next) without changing a number."""

import json
import re

import numpy as np
import pytest

from vpt_jax.training import artifacts, loop, programs, progress, steps, train
from vpt_jax.utils import paths

from test_recipes import _nan_in_epoch
from test_train import tiny_config


def test_plain_lines_off_a_terminal_and_a_bar_on_one(capsys):
  lines = []
  with progress.Progress("dtd vpt_deep", 3, 0, 800, lines.append, terminal=False) as watch:
    for epoch in (1, 2, 3):
      watch.epoch(epoch, 1.5 / epoch, 0.25 * epoch, 0.1)
  assert len(lines) == 3
  assert re.fullmatch(r"dtd vpt_deep epoch 2/3: loss 0\.7500, train accuracy 50\.0%, lr 0\.1, "
                      r"\d+ img/s, ETA \d+:\d\d", lines[1]), lines[1]
  assert "\x1b" not in "".join(lines) and capsys.readouterr().err == ""  # No bar, no escapes.
  shown = []
  with progress.Progress("dtd full", 2, 0, 800, shown.append, terminal=True) as watch:
    watch.epoch(1, 0.5, 0.5, 0.01)
  assert shown == []  # On a terminal the bar is the progress: nothing is logged per epoch.
  bar = capsys.readouterr().err
  assert "dtd full" in bar and "loss 0.5000" in bar and "1/2" in bar


def _order_of_events(monkeypatch):
  """Records the steps dispatched and the epochs finished, in order."""
  events = []
  original_epoch = progress.Progress.epoch

  def epoch(self, number, *args):
    events.append(f"finished {number}")
    return original_epoch(self, number, *args)

  monkeypatch.setattr(progress.Progress, "epoch", epoch)
  original_pack = programs.Pack.__init__

  def pack_init(self, *args):
    original_pack(self, *args)
    step = self.step

    def counted(*step_args):
      events.append("step")
      return step(*step_args)

    self.step = counted

  monkeypatch.setattr(programs.Pack, "__init__", pack_init)
  return events


def test_epochs_without_checkpoint_or_evaluation_finish_while_the_next_runs(
    fake_data_dir, tiny_backbone, tmp_path, monkeypatch):
  # train800val200 at batch 32: 32 steps an epoch; a checkpoint only at the end.
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, **{
      "optim.epochs": 3, "checkpoint_every_epochs": 0})
  events = _order_of_events(monkeypatch)
  lines = []
  train.train_and_evaluate(config, str(tmp_path / "run"), log=lines.append)
  finished = [i for i, e in enumerate(events) if e.startswith("finished")]
  steps_before = [events[:i].count("step") for i in finished]
  # Epoch 1 is finished after epoch 2's 32 steps were dispatched, epoch 2 after epoch 3's; the
  # last epoch (its checkpoint) at once.
  assert steps_before == [64, 96, 96]
  assert [e for e in events if e.startswith("finished")] == ["finished 1", "finished 2",
                                                              "finished 3"]
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [32, 64, 96]
  assert sum(" epoch " in line and "img/s" in line for line in lines) == 3  # Piped: plain lines.


def test_a_divergence_found_one_epoch_late_is_scored_as_one_found_at_once(
    fake_data_dir, tiny_backbone, tmp_path, monkeypatch):
  """Checkpoints every epoch finish each epoch at once; none but the last finish them late: the
  run that diverges in epoch 3 stops and scores epoch 2's parameters either way."""
  monkeypatch.setattr(steps, "make_train_step", _nan_in_epoch(3, 32))
  results, trained = [], []
  monkeypatch.setattr(programs, "_programs", {})  # Compiled anew with the patched step, once for both.
  for every in (1, 0):
    config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, **{
        "optim.epochs": 5, "checkpoint_every_epochs": every})
    workdir = tmp_path / f"every{every}"
    results.append(train.train_and_evaluate(config, str(workdir), log=lambda *_: None))
    trained.append(paths.flatten(artifacts.load(str(workdir / "artifact.npz"))[0]))
  assert results[0]["diverged"] == results[1]["diverged"] == {
      "step": 65, "epoch": 3, "scored_epoch": 2}
  assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
  for name, value in trained[0].items():
    np.testing.assert_array_equal(value, trained[1][name], err_msg=name)
  # Nothing finite is scored when the first epoch diverges, late or not.
  monkeypatch.setattr(steps, "make_train_step", _nan_in_epoch(1, 32))
  monkeypatch.setattr(programs, "_programs", {})
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, **{
      "optim.epochs": 3, "checkpoint_every_epochs": 0})
  with pytest.raises(loop.NonFiniteLossError, match="at step 1 "):
    train.train_and_evaluate(config, str(tmp_path / "first"), log=lambda *_: None)
