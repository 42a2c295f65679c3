"""Optimizers over the trainable parameter subtree only (frozen ones never reach optax).

The peak learning rate and the weight decay are runtime values held in the optimizer state
(`optax.inject_hyperparams`), so one compiled train step serves every point of a sweep's grid.
SGD has momentum and coupled L2 weight decay (PyTorch's `weight_decay`, as the VPT code used):
g <- g + wd * p before the momentum trace. Each trainable group gets lr * lr_mults.get(group, 1).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vpt_jax import paths

# (step, peak learning rate) -> learning rate of that step.
Schedule = Callable[[jax.Array, jax.Array], jax.Array]


def learning_rate(base_lr: float, batch_size: int) -> float:
  """The VPT protocol's linear scaling: lr = base_lr * batch / 256."""
  return base_lr * batch_size / 256


def warmup_cosine(warmup_steps: int, total_steps: int) -> Schedule:
  """Linear warm-up from 0 to the peak, then cosine decay to 0 at `total_steps` (the arithmetic
  of optax.warmup_cosine_decay_schedule, with the peak a runtime value)."""
  if warmup_steps >= total_steps:
    raise ValueError(f"The warm-up ({warmup_steps} steps) must be shorter than training "
                     f"({total_steps} steps): lower optim.warmup_epochs or raise optim.epochs.")
  decay_steps = total_steps - warmup_steps

  def schedule(step, peak):
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step - warmup_steps, decay_steps)
                                / decay_steps))
    decayed = peak * cosine
    if not warmup_steps:
      return decayed
    warm = (0.0 - peak) * (1 - jnp.clip(step, 0, warmup_steps) / warmup_steps) + peak
    return jnp.where(step < warmup_steps, warm, decayed)
  return schedule


def decay_mask(trainable, decay_rules) -> dict:
  """True where weight decay applies; (regex, bool) rules, first match wins, default False."""
  return paths.first_match(trainable, decay_rules, default=False)


def _per_group(trainable_groups, lr_mults, make_tx):
  lr_mults = dict(lr_mults or {})
  return optax.multi_transform(
      {g: make_tx(lr_mults.get(g, 1.0)) for g in set(jax.tree.leaves(trainable_groups))},
      trainable_groups)


def sgd(trainable_groups, schedule: Schedule, *, momentum: float, lr_mults=None,
        decay_rules=((".*", True),)):
  """`trainable_groups`: group name per trainable leaf (the trainable part of `methods.labels`)."""
  def make(peak_lr, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=lambda p: decay_mask(p, decay_rules)),
        _per_group(trainable_groups, lr_mults, lambda scale: optax.sgd(
            lambda step: schedule(step, peak_lr) * scale, momentum=momentum or None)))
  return make


def adamw(trainable_groups, schedule: Schedule, *, lr_mults=None, decay_rules=((".*", True),),
          **_):
  """AdamW (decoupled weight decay), for training from scratch (launch/pretrain.py)."""
  def make(peak_lr, weight_decay):
    return _per_group(trainable_groups, lr_mults, lambda scale: optax.adamw(
        lambda step: schedule(step, peak_lr) * scale, weight_decay=weight_decay,
        mask=lambda p: decay_mask(p, decay_rules)))
  return make


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}


def make(name: str, trainable_groups, schedule: Schedule, **kwargs) -> optax.GradientTransformation:
  """The optimizer `name`; its hyper-parameters `peak_lr` and `weight_decay` start at 0: set them
  in the state with `set_hyperparams` after `init`."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} must be one of {', '.join(OPTIMIZERS)}.")
  groups = set(jax.tree.leaves(trainable_groups))
  if unknown := set(kwargs.get("lr_mults") or {}) - groups:
    raise ValueError(f"lr_mults names groups {sorted(unknown)} that this method does not train; "
                     f"its groups: {sorted(groups)}.")
  return optax.inject_hyperparams(OPTIMIZERS[name](trainable_groups, schedule, **kwargs))(
      peak_lr=0.0, weight_decay=0.0)


def set_hyperparams(opt_state, *, peak_lr: float, weight_decay: float):
  """`opt_state` of `make` with these hyper-parameters (float32 scalars in the state)."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["peak_lr"] = jax.numpy.asarray(peak_lr, jax.numpy.float32)
  hyperparams["weight_decay"] = jax.numpy.asarray(weight_decay, jax.numpy.float32)
  return opt_state._replace(hyperparams=hyperparams)


def current_lr(schedule: Schedule, opt_state, step) -> float:
  """The learning rate step `step` trains with (group multiplier 1)."""
  return schedule(step, opt_state.hyperparams["peak_lr"])
