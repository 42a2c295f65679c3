"""Measurement rows as JSON lines, each forced to disk when it exists, and failures named by what
they are. Standard library only: the PyTorch process and the device check's driver use it too,
neither of which may start JAX.
"""

import json
import os
import re


class NonFiniteLoss(RuntimeError):
  """The timed steps produced a NaN or infinite loss."""


class CompileError(RuntimeError):
  """Lowering or compiling a step failed (the cause is chained)."""


def first_line(error: BaseException) -> str:
  lines = [line for line in str(error).splitlines() if line.strip()]
  return lines[0][:300] if lines else ""


def error_kind(error: BaseException) -> str:
  """The failure by what it is: out of memory, a non-finite loss, a failed compilation, a
  missing package, or the exception's own type."""
  text = f"{type(error).__name__}: {error}"
  if isinstance(error, NonFiniteLoss):
    return "nan"
  if re.search(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY", text):
    return "oom"
  if isinstance(error, CompileError):
    return "compile_error"
  if isinstance(error, (ImportError, ModuleNotFoundError)):
    return "missing_package"
  return type(error).__name__


def error_row(fields: dict, error: BaseException) -> dict:
  """A row for a measurement that failed: its setting, the kind of failure and its first line."""
  return {**fields, "error_kind": error_kind(error),
          "error": f"{type(error).__name__}: {first_line(error)}"}


def append_row(path: str, row: dict) -> None:
  """Appends one JSON line and forces it to disk: a timeout or crash later keeps this row."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row, default=float) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_rows(path: str) -> list[dict]:
  """The rows of a JSON-lines file; a last line cut off by a kill is left out."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows
