"""Several processes (hosts) training one run: joining them, and stopping at once, in one line,
when one of them is lost.

A dead peer closes its connections, so the next collective of the survivors fails within
seconds; `peer_loss_is_fatal` turns that failure into one line and an immediate exit (a normal
exit would wait on the lost peer at shutdown). A peer that hangs without dying is caught by the
coordination service's heartbeat after HEARTBEAT_SECONDS, which aborts the process itself.
"""

import contextlib
import os
import re
import sys

import jax

HEARTBEAT_SECONDS = 30
_PEER_LOST = re.compile(r"Gloo|[Cc]onnection closed by peer|stopped sending heartbeats|"
                        r"Read error|UNAVAILABLE|DEADLINE_EXCEEDED")


def initialize(coordinator: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  """jax.distributed.initialize with these, or with the cluster's own (Slurm, ...) when None."""
  try:
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               heartbeat_timeout_seconds=HEARTBEAT_SECONDS,
                               initialization_timeout=120)
  except (ValueError, RuntimeError) as e:
    raise ValueError(
        f"could not join the other processes ({str(e).splitlines()[0]}): outside a cluster JAX "
        "detects (Slurm, ...), pass --coordinator=HOST:PORT, --num_processes=N and "
        "--process_id=I to every process.") from None


@contextlib.contextmanager
def peer_loss_is_fatal():
  try:
    yield
  except Exception as e:  # What a lost peer looks like depends on the collective backend.
    if jax.process_count() > 1 and _PEER_LOST.search(str(e)):
      sys.stderr.write(f"error: process {jax.process_index()} lost a peer process "
                       f"({str(e).splitlines()[0][:120]}); stopping. Start every process again "
                       "with the same command: training resumes from the last checkpoint.\n")
      sys.stderr.flush()
      os._exit(1)
    raise
