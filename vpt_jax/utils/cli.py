"""Command-line programs end in one line that says what went wrong and what to do, never in a
traceback: `run(main)` parses the flags that way and `errors()` turns the project's errors, and a
full disk, into `error: ...` and exit status 1."""

import contextlib
import errno
import re
import sys

from absl import app, flags
from ml_collections import config_flags


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith("Pass --helpshort")]
  return lines[-1] if lines else ""


def describe(error: BaseException, argv=()) -> str:
  """One line for a flag or config error (ml_collections wraps them in tracebacks)."""
  if isinstance(error, AttributeError | KeyError):
    missing = str(error).strip("\"' ")
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and re.search(rf"(^|\.){re.escape(missing)}(\.|=|$)", a[len("--config."):])),
                f"--config...{missing}")
    return (f"{flag}: the config has no field {missing!r} (misspelt?); the fields are those of "
            "configs/default.py and the config file.")
  text = _last_line(error)
  text = re.sub(r"^(FATAL Flags parsing error: )", "", text)
  return re.sub(r"^[A-Za-z]*(Error|Exception): ", "", text)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # absl's flag errors and whatever a config file or override raised.
    sys.exit(f"error: {describe(e, argv)}")


def run(main) -> None:
  app.run(main, flags_parser=_parse_flags)


def config_value(config_flag):
  """The parsed config; a config file that cannot be loaded is one line, not a traceback. A
  checkpoint file as config.backbone gives the model the fields the file needs, and an option
  set on the command line that contradicts it is one line (checkpoints.configure)."""
  try:
    config = config_flag.value
    config.keys()  # ml_collections defers a missing file's error to the first access.
  except Exception as e:
    sys.exit(f"error: {describe(e)}")
  from vpt_jax import checkpoints  # The readers import JAX; a flag error need not wait for it.
  overridden = config_flags.get_override_values(flags.FLAGS[config_flag.name])
  with errors(ValueError):  # checkpoints.CheckpointError is one.
    checkpoints.configure(config, {k.removeprefix("model.") for k in overridden if k.startswith("model.")})
  return config


@contextlib.contextmanager
def errors(*expected: type[BaseException]):
  """Inside: the listed exceptions (and any full disk) end the program with one line."""
  try:
    yield
  except OSError as e:
    if e.errno == errno.ENOSPC:
      sys.exit(f"error: no space left on the device ({e.filename or e}): free some space and run "
               "the same command again; it resumes from the last checkpoint.")
    if expected and isinstance(e, expected):
      sys.exit(f"error: {e}")
    raise
  except expected as e:
    sys.exit(f"error: {describe(e) if isinstance(e, KeyError) else e}")
