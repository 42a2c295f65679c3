"""What a user watching a run sees: one line per epoch, from values the loop already fetched.

On a terminal a tqdm bar over the run's epochs (loss, train accuracy, learning rate, images per
second and tqdm's ETA in its postfix); when the output goes to a file or a pipe (CI, `| tee`,
Slurm logs) no bar and no escape codes, but one plain line per epoch through the run's log. The
loop calls `epoch` after it has the epoch's losses on the host, so watching adds no transfer.
"""

import sys
import time

import tqdm


def _on_terminal() -> bool:
  return sys.stderr.isatty()


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
  """Per-epoch progress of one pack of runs (K runs of one program count K x the images)."""

  def __init__(self, description: str, total_epochs: int, first_epoch: int, images_per_epoch: int,
               log, enabled: bool = True, terminal: bool | None = None):
    self._description, self._total = description, total_epochs
    self._images, self._log, self._enabled = images_per_epoch, log, enabled
    self._terminal = enabled and (_on_terminal() if terminal is None else terminal)
    self._bar = tqdm.tqdm(total=total_epochs, initial=first_epoch, unit="epoch", desc=description,
                          disable=not self._terminal, dynamic_ncols=True, file=sys.stderr)
    self._last = time.perf_counter()
    self._durations: list[float] = []  # Seconds per epoch, the first (compiling) left out of ETAs.

  def epoch(self, epoch: int, loss: float, accuracy: float, learning_rate: float) -> str:
    """Reports epoch `epoch` (1-based) finished; returns the plain line (also logged off a
    terminal)."""
    now = time.perf_counter()
    seconds, self._last = now - self._last, now
    self._durations.append(seconds)
    rate = self._images / max(seconds, 1e-9)
    steady = self._durations[1:] or self._durations
    remaining = (self._total - epoch) * sum(steady) / len(steady)
    line = (f"{self._description} epoch {epoch}/{self._total}: loss {loss:.4f}, train accuracy "
            f"{100 * accuracy:.1f}%, lr {learning_rate:.3g}, {rate:.0f} img/s, ETA {_clock(remaining)}")
    if self._terminal:
      self._bar.set_postfix_str(f"loss {loss:.4f}, acc {100 * accuracy:.1f}%, lr {learning_rate:.3g}, "
                                f"{rate:.0f} img/s", refresh=False)
      self._bar.update(1)
    elif self._enabled:
      self._log(line)
    return line

  def close(self) -> None:
    self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
