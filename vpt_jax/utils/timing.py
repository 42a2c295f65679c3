"""Where the time goes: seconds per phase of the work this process does (data loading,
compilation, train steps, evaluation, writing), and JAX's persistent compilation cache.

Compilation is measured by JAX itself (jax.monitoring's backend-compile durations), so it is
counted wherever it happens; a program loaded from the persistent cache counts as a cache load,
not a compilation. The train-step phase is the training loop's time minus the compilation inside
it.
"""

import collections
import contextlib
import os
import time

import jax

from vpt_jax.utils import files

PHASES = ("data", "compile", "train", "eval", "write")
_totals = collections.Counter()
COUNTS = ("compiles", "cache_loads")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def _on_duration(event: str, seconds: float, **_) -> None:
  if event == _COMPILE_EVENT:  # Also reported for programs the persistent cache provides.
    _totals["compile"] += seconds
    _totals["compiles"] += 1


def _on_event(event: str, **_) -> None:
  if event == _CACHE_HIT_EVENT:
    _totals["compiles"] -= 1
    _totals["cache_loads"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def snapshot() -> dict:
  return dict(_totals)


def since(before: dict) -> dict:
  """Seconds per phase (and the numbers of compilations and cache loads) since `before`."""
  return {k: _totals[k] - before.get(k, 0) for k in (*PHASES, *COUNTS)}


@contextlib.contextmanager
def phase(name: str, excludes_compile: bool = False):
  """Adds the block's wall time to `name`; with `excludes_compile`, less what compiled inside."""
  started, compiled = time.perf_counter(), _totals["compile"]
  try:
    yield
  finally:
    spent = time.perf_counter() - started
    if excludes_compile:
      spent -= _totals["compile"] - compiled
    _totals[name] += max(spent, 0.0)


def enable_compilation_cache(setting: str | None) -> str | None:
  """JAX's persistent compilation cache: "auto" (None too) puts it under the project's cache
  ($VPT_JAX_CACHE/xla), "off" disables it, anything else is a directory. Returns the directory."""
  if setting == "off":
    return None
  directory = files.cache_dir("xla") if setting in (None, "auto") else setting
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  # Every program, however quick to compile: a sweep compiles the same ones in many processes.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
