"""TensorFlow imported without its start-up banners.

TensorFlow's native libraries print "oneDNN custom operations are on ..." (twice, each after
"All log messages before absl::InitializeLog() ...") straight to file descriptor 2 while they
load, before any log level applies: nothing a user can act on, printed ahead of the run's own
lines. The import runs with descriptor 2 pointed at /dev/null; Python's errors are raised after
it is restored, so a failed import still says why.
"""

import contextlib
import importlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
  """Descriptor 2 to /dev/null for the block (Python's sys.stderr flushed first)."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def tensorflow():
  """The tensorflow module, imported quietly the first time."""
  if "tensorflow" not in sys.modules:
    with native_stderr_silenced():
      importlib.import_module("tensorflow")
  return sys.modules["tensorflow"]
