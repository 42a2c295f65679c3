"""Config helpers: `get_config(arg)` arguments, flat views of a config, overrides as flags.

Configs are ml_collections ConfigDicts. Fields left None in configs/default.py are decided by the
run's recipe (vpt_jax/training/recipes.py) unless a config file or the command line sets them.
"""

import json
import shlex
from typing import Any


def unset(field_type):
  """A field that is None until set; `--config.x=...` still knows its type."""
  import ml_collections  # Only configs need it; a resolved run (vpt_jax.training.spec) does not.
  return ml_collections.FieldReference(None, field_type=field_type)


def parse_arg(arg: str | None, **defaults) -> dict:
  """Values of `defaults`, overridden by `arg` ("key=value,key2=value2"); unknown keys and
  ill-typed values are errors."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or key not in defaults:
      raise ValueError(f"Config argument {item!r} is not key=value with a known key; valid keys: "
                       f"{', '.join(defaults)}.")
    values[key] = _convert(key, text.strip(), defaults[key])
  return values


def _convert(key, text, default):
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"Config argument {key}={text!r} must be true or false.")
    return text.lower() in ("true", "1")
  if isinstance(default, (int, float)):
    try:
      return type(default)(text)
    except ValueError:
      kind = "an int" if isinstance(default, int) else "a float"
      raise ValueError(f"Config argument {key}={text!r} must be {kind}.") from None
  return text


def flatten(config) -> dict[str, Any]:
  """{"optim.base_lr": 0.5, ...}: a config (or nested dict) as JSON values under dotted paths."""
  tree = json.loads(config.to_json_best_effort()) if hasattr(
      config, "to_json_best_effort") else json.loads(json.dumps(config))
  flat = {}

  def visit(prefix, value):
    if isinstance(value, dict) and value:
      for key, item in value.items():
        visit(f"{prefix}.{key}" if prefix else key, item)
    else:
      flat[prefix] = value
  visit("", tree)
  return flat


def set_path(config, path: str, value) -> None:
  """config.<path> = value for a dotted path, whatever the field's previous type."""
  *parents, leaf = path.split(".")
  for parent in parents:
    config = config[parent]
  with config.ignore_type():
    config[leaf] = value


def override_flags(overrides: dict[str, Any]) -> list[str]:
  """`--config.<path>=<value>` flags that set these values again in another process."""
  flags = []
  for path, value in sorted(overrides.items()):
    text = value if isinstance(value, str) else repr(value)
    flags.append(f"--config.{path}={text}")
  return flags


def quoted(flags: list[str]) -> str:
  return " ".join(shlex.quote(f) for f in flags)
