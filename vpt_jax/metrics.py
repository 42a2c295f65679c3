"""Metrics of a run: JSON lines (one per log point) and TensorBoard event files, written by host 0."""

import json
import os

import jax
import tensorflow as tf

from vpt_jax import files


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
    """On resume: forget lines logged after the checkpoint we restart from (they will be redone)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if json.loads(line)["step"] <= step]
    files.write_text(self.path, "".join(kept))


def read(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]
