"""Training-state checkpoints (orbax): saved at epoch ends, restored when a run restarts.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed
save never looks finished; a save that fails (a full disk) leaves no temporary behind. Beside the
checkpoints, checkpoint_checksums.<process>.json records a SHA-256 of what each one holds; a
checkpoint that is
unreadable or no longer matches it (disk damage, a bad copy) is moved aside (to
unreadable_checkpoints/, never deleted) with a warning, in favour of the one before it.

In the background (training's mode) a save copies the state to the host and returns; the write
and the checksum follow on a thread while the devices train on. A checkpoint exists only once
both are done, as in the foreground, and every later call (save, steps, restore, close) first
waits for the pending one and raises its error, if any.
"""

import concurrent.futures

import glob
import hashlib
import logging
import os
import shutil
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from vpt_jax.utils import files


def checksum(state) -> str:
  """SHA-256 of the values of a pytree of arrays, in tree order (this process's shards when an
  array spans several hosts)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    digest.update(jax.tree_util.keystr(path).encode())
    if getattr(leaf, "is_fully_addressable", True):
      digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    else:
      for shard in sorted(leaf.addressable_shards, key=lambda s: str(s.index)):
        digest.update(np.ascontiguousarray(shard.data).tobytes())
  return digest.hexdigest()


class Checkpointer:
  def __init__(self, directory: str, keep: int, background: bool = False):
    directory = os.path.abspath(directory)  # Orbax needs absolute paths.
    self._directory = directory
    self._writer = concurrent.futures.ThreadPoolExecutor(1) if background else None
    self._pending = None
    self._sums_path = os.path.join(os.path.dirname(directory),
                                   f"checkpoint_checksums.{jax.process_index()}.json")
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def wait(self) -> None:
    """Until the pending save (if any) is written; raises its error."""
    if self._pending is not None:
      pending, self._pending = self._pending, None
      pending.result()

  def steps(self) -> list[int]:
    self.wait()
    return sorted(self._manager.all_steps())

  def _sums(self) -> dict:
    try:
      return files.read_json(self._sums_path) if os.path.exists(self._sums_path) else {}
    except files.DamagedFileError:
      return {}  # Without checksums, restoring still checks that orbax can read the files.

  def save(self, step: int, state) -> None:
    self.wait()
    if self._writer is None or jax.process_count() > 1:  # Hosts hold shards: they save together.
      self._write(step, state)
    else:  # The host copy is taken now: the devices may overwrite (donate) the state next step.
      self._pending = self._writer.submit(self._write, step, jax.device_get(state))

  def _write(self, step: int, state) -> None:
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except BaseException:
      for tmp in glob.glob(os.path.join(self._directory, "*.orbax-checkpoint-tmp*")):
        shutil.rmtree(tmp, ignore_errors=True)
      raise
    kept = self._manager.all_steps()
    sums = {k: v for k, v in self._sums().items() if int(k) in kept}
    sums[str(step)] = checksum(state)
    files.write_json(self._sums_path, sums)

  def restore_latest(self, abstract_state):
    """(step, state) of the newest readable checkpoint, or (None, None) when there is none."""
    self.wait()
    sums = self._sums()
    for step in reversed(self.steps()):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        expected = sums.get(str(step))
        if expected is not None and checksum(state) != expected:
          raise ValueError("its contents do not match the checksum recorded when it was saved")
        return step, state
      except MemoryError:
        raise
      except Exception as e:  # Orbax raises many types for damaged files; all mean "unreadable".
        aside = os.path.join(os.path.dirname(self._directory.rstrip("/")),
                             "unreadable_checkpoints", f"{step}-{int(time.time())}")
        logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); moved to %s, falling "
                        "back to the previous one.", step, self._directory, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "", aside)
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          os.replace(os.path.join(self._directory, str(step)), aside)
        if jax.process_count() > 1:  # Every host must see the same list of checkpoints.
          multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self._manager.reload()
    return None, None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._writer is not None:
        self._writer.shutdown()
      self._manager.close()
