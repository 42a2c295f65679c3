"""Metrics of a run: JSON lines (one per log point) and TensorBoard event files, written by host 0."""

import json
import logging
import os

import jax
import tensorflow as tf

from vpt_jax.utils import files


class MetricWriter:
  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard")) \
        if self.enabled else None

  def write(self, step: int, **metrics) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    with self._tensorboard.as_default(step=step):
      for name, value in metrics.items():
        if isinstance(value, (int, float)) and name != "epoch":
          tf.summary.scalar(name, value)
    self._tensorboard.flush()

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
