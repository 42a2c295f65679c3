"""`get_config(arg)` arguments: "key=value,key2=value2", typed by the defaults they override."""


def parse(arg: str | None, **defaults) -> dict:
  """Values of `defaults`, overridden by `arg`; unknown keys and ill-typed values are errors."""
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


def load_config_module(path: str):
  """The module of a config file (for its helpers beside `get_config`)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("vpt_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_flag_value(argv) -> tuple[str, str]:
  """(config file, argument) of the --config flag, written --config=F:ARG or --config F:ARG."""
  for i, item in enumerate(argv):
    if item.startswith("--config="):
      raw = item.split("=", 1)[1]
      break
    if item == "--config" and i + 1 < len(argv):
      raw = argv[i + 1]
      break
  else:
    raise ValueError("No --config flag given.")
  path, _, arg = raw.partition(":")
  return path, arg
