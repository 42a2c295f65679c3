"""Parameters addressed by '/'-joined paths ("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel").

Which parameters train, decay or shard is a list of (regex, value) rules matched in order against
these paths; `first_match` is the one place that does it.
"""

import re
from typing import Any, Sequence

import flax.traverse_util
import jax
import numpy as np

NO_MATCH = object()


def flatten(tree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def rule_indices(paths, patterns: Sequence[str]) -> dict[str, int | None]:
  """For each path, the index of the first pattern that matches it whole (None: no pattern)."""
  compiled = [re.compile(pattern) for pattern in patterns]
  return {path: next((i for i, regex in enumerate(compiled) if regex.fullmatch(path)), None)
          for path in paths}


def first_match(tree, rules: Sequence[tuple[str, Any]], default=NO_MATCH) -> dict:
  """A tree shaped like `tree` holding, per leaf, the value of the first (regex, value) rule that
  matches its path; `default` where none does (without a default, that is an error)."""
  indices = rule_indices(flatten(tree), [pattern for pattern, _ in rules])
  unmatched = [path for path, i in indices.items() if i is None]
  if unmatched and default is NO_MATCH:
    raise ValueError(f"No rule matches parameters {unmatched[:5]}; end the rules with "
                     "('.*', ...).")
  return unflatten({path: default if i is None else rules[i][1] for path, i in indices.items()})


def merge(*trees) -> dict:
  """Union of parameter trees; later trees win where paths repeat."""
  out = {}
  for tree in trees:
    out.update(flatten(tree))
  return unflatten(out)


def count(tree) -> int:
  """Number of scalars in a tree of arrays (or of ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
