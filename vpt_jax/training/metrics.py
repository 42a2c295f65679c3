"""Metrics of a run: JSON lines (one per log point) and TensorBoard event files, written by host 0.

The event files are written with TensorBoard's own writer (no TensorFlow): in the background,
flushed when the writer closes, so an epoch's end never waits on them; the JSON lines are the
record, written at once. Where the tensorboard package is missing, only the JSON lines are kept.
"""

import json
import logging
import os
import sys
import time
import types

import jax

from vpt_jax.utils import files


def _event_writer(directory: str):
  # TensorBoard's writer would import TensorFlow (its banners, seconds of start-up) just for
  # tf.io.gfile where TensorFlow is installed; this module tells it to use its own stub.
  sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
  try:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
  except ImportError:
    logging.info("tensorboard is not installed: metrics go to metrics.jsonl only.")
    return None
  writer = EventFileWriter(directory)

  def write(step: int, scalars: dict) -> None:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=name, simple_value=value)
                                         for name, value in scalars.items()])
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  write.close = writer.close
  return write


class MetricWriter:
  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = _event_writer(os.path.join(workdir, "tensorboard")) \
        if self.enabled else None

  def write(self, step: int, **metrics) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    if self._tensorboard:
      self._tensorboard(step, {name: float(value) for name, value in metrics.items()
                               if isinstance(value, (int, float)) and name != "epoch"})

  def close(self) -> None:
    if self._tensorboard:
      self._tensorboard.close()
      self._tensorboard = None

  def drop_after(self, step: int) -> None:
    """On resume: forget lines logged after the checkpoint we restart from (they will be redone),
    and any damaged line (a write cut short), naming it."""
    if not self.enabled or not os.path.exists(self.path):
      return
    rows = _parse(self.path)
    files.write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows
                                        if row["step"] <= step))


def _parse(path: str) -> list[dict]:
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("%s: line %d is damaged (%r); dropped, the epoch is logged again.",
                        path, number, line[:80])
  return rows


def read(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  return _parse(path) if os.path.exists(path) else []
