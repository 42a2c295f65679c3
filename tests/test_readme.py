"""The README's commands stay true: each names a program that exists, flags that program defines,
a config that resolves with the arguments given and fields that config has; its test command is
.ci/run's. (What the commands do is tested where each program is: the demo, own folders, sweeps,
predict and export.)"""

import importlib
import os
import re
import shlex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def _commands(text: str) -> list[list[str]]:
  """Every `python launch/...` command of the README, continuation lines joined, comments and
  elided (`...`) ones dropped."""
  joined = re.sub(r"\\\n\s*", " ", text)
  commands = []
  for line in joined.splitlines():
    line = line.strip().split("  #")[0].split(" && ")[-1]
    if line.startswith("python launch/") and "..." not in line:
      commands.append(shlex.split(line))
  return commands


def _defined_flags(script: str) -> set[str]:
  with open(os.path.join(REPO, script)) as f:
    source = f.read()
  return set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))


def test_readme_is_a_front_page():
  assert len(_readme().splitlines()) <= 250
  for page in re.findall(r"`(docs/[\w.]+\.md)`", _readme()):
    assert os.path.exists(os.path.join(REPO, page)), page


def test_the_test_command_is_ci_run():
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read().strip().splitlines()[-1]
  assert "    " + ci in _readme().splitlines()


def test_every_command_names_real_programs_flags_configs_and_fields(tmp_path):
  pets = tmp_path / "pets"  # The README's own folder, as a class tree of two images.
  for name in ("cat", "dog"):
    (pets / name).mkdir(parents=True)
    (pets / name / "001.jpg").write_bytes(b"")
  commands = _commands(_readme().replace("/data/pets", str(pets)))
  assert len(commands) >= 10
  for command in commands:
    script = command[1]
    assert os.path.exists(os.path.join(REPO, script)), command
    flags = _defined_flags(script)
    config = None
    for arg in command[2:]:
      if not arg.startswith("--"):
        continue  # An image or folder argument.
      name, _, value = arg[2:].partition("=")
      if name == "config":
        path, _, config_arg = value.partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        config = module.get_config(config_arg or None)
      elif name.startswith("config."):
        node = config
        for part in name.split(".")[1:]:
          assert part in node, f"{arg} names no config field ({' '.join(command)})"
          node = node[part]
      else:
        assert name.removeprefix("no") in flags, f"{script} defines no --{name}"
