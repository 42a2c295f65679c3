"""Device mesh and shardings: the batch is split over all devices on the "data" axis; parameters
are replicated or, FSDP-style, split along one axis over the same devices. Works across hosts.

`config.sharding_strategy` is a list of (regex, "replicate" | "fsdp") pairs over parameter paths,
first match wins (big_vision's name for the same idea).
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from vpt_jax.utils import paths

DATA = "data"
TACTICS = ("replicate", "fsdp")


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


def param_shardings(mesh: Mesh, params, strategy, min_size: int = 2 ** 16):
  """NamedSharding per leaf from the (regex, tactic) strategy; unmatched leaves are replicated."""
  for _, tactic in strategy:
    if tactic not in TACTICS:
      raise ValueError(f"Unknown sharding tactic {tactic!r}; use one of {TACTICS}.")
  tactics = paths.first_match(params, strategy, default="replicate")
  num_devices = mesh.devices.size
  return jax.tree.map(
      lambda leaf, tactic: NamedSharding(mesh, _fsdp_spec(leaf.shape, num_devices, min_size)
                                         if tactic == "fsdp" else P()), params, tactics)


def optimizer_shardings(mesh: Mesh, tx: optax.GradientTransformation, abstract_opt_state,
                        trainable_shardings):
  """Optimizer state sharded like the parameters it tracks; counters and the rest replicated."""
  masked = lambda x: isinstance(x, optax.MaskedNode)  # Leaves another group's state holds.
  return optax.tree_utils.tree_map_params(
      tx, lambda value, sharding: value if masked(value) else sharding, abstract_opt_state,
      trainable_shardings, transform_non_params=lambda _: replicated(mesh), is_leaf=masked)


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the same host value on every process (each supplies its own shards)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_batch(mesh: Mesh, global_batch: np.ndarray) -> jax.Array:
  """Splits a global batch (identical on all hosts) over the data axis."""
  return put_global(global_batch, batch_sharded(mesh))
