"""Device mesh and shardings: the batch is split over all devices on the "data" axis; parameters
are replicated or, FSDP-style, split along one axis over the same devices. Works across hosts.
"""

import re

import flax.traverse_util
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA = "data"
RULES = ("replicate", "fsdp")


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def _fsdp_spec(shape, num_devices: int, min_size: int) -> P:
  """Split the largest axis that divides evenly; small or indivisible leaves stay replicated."""
  if np.prod(shape, dtype=np.int64) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % num_devices == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA
      return P(*spec)
  return P()


def param_shardings(mesh: Mesh, params, rules, min_size: int = 2 ** 16):
  """NamedSharding per leaf from (regex, "replicate" | "fsdp") rules; the first match decides."""
  compiled = [(re.compile(pattern), rule) for pattern, rule in rules]
  for _, rule in compiled:
    if rule not in RULES:
      raise ValueError(f"Unknown sharding rule {rule!r}; use one of {RULES}.")
  num_devices = mesh.devices.size
  out = {}
  for path, leaf in flax.traverse_util.flatten_dict(params, sep="/").items():
    rule = next((r for regex, r in compiled if regex.fullmatch(path)), "replicate")
    spec = _fsdp_spec(leaf.shape, num_devices, min_size) if rule == "fsdp" else P()
    out[path] = NamedSharding(mesh, spec)
  return flax.traverse_util.unflatten_dict(out, sep="/")


def optimizer_shardings(mesh: Mesh, abstract_opt_state, trainable_shardings):
  """Optimizer state sharded like the parameters it tracks; counters and the rest replicated.

  optax keeps per-parameter state in trees keyed like the parameters, so a state leaf's trailing
  dict keys are its parameter's path.
  """
  by_path = flax.traverse_util.flatten_dict(trainable_shardings, sep="/")

  def sharding_of(path, leaf):
    keys = []
    for entry in reversed(path):
      if not isinstance(entry, jax.tree_util.DictKey):
        break
      keys.insert(0, str(entry.key))
    match = by_path.get("/".join(keys))
    return match if match is not None and len(match.spec) <= leaf.ndim else replicated(mesh)

  return jax.tree_util.tree_map_with_path(sharding_of, abstract_opt_state)


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the same host value on every process (each supplies its own shards)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_batch(mesh: Mesh, global_batch: np.ndarray) -> jax.Array:
  """Splits a global batch (identical on all hosts) over the data axis."""
  return put_global(global_batch, batch_sharded(mesh))
