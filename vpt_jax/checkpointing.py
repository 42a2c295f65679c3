"""Training-state checkpoints (orbax): saved at epoch ends, restored when a run restarts.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed
save never looks finished. A checkpoint that is finished but unreadable (disk damage, a bad copy)
is moved aside (to unreadable_checkpoints/, never deleted) with a warning, in favour of the one
before it.
"""

import logging
import os
import time

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, keep: int):
    directory = os.path.abspath(directory)  # Orbax needs absolute paths.
    self._directory = directory
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state):
    """(step, state) of the newest readable checkpoint, or (None, None) when there is none."""
    for step in reversed(self.steps()):
      try:
        return step, self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
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
    self._manager.close()
