"""Optimizers over the trainable parameter subtree only (frozen ones never reach optax).

SGD with momentum and coupled L2 weight decay (PyTorch's `weight_decay`, as the VPT code used):
g <- g + wd * p before the momentum trace. Each trainable group gets lr * lr_mults.get(group, 1).
"""

import re

import flax.traverse_util
import jax
import optax


def learning_rate(base_lr: float, batch_size: int) -> float:
  """The VPT protocol's linear scaling: lr = base_lr * batch / 256."""
  return base_lr * batch_size / 256


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
  if warmup_steps >= total_steps:
    raise ValueError(f"The warm-up ({warmup_steps} steps) must be shorter than training "
                     f"({total_steps} steps): lower optim.warmup_epochs or raise optim.epochs.")
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, 0.0)


def decay_mask(trainable, decay_rules) -> dict:
  """True where weight decay applies; (regex, bool) rules over '/'-joined paths, first match wins."""
  compiled = [(re.compile(pattern), decay) for pattern, decay in decay_rules]
  flat = flax.traverse_util.flatten_dict(trainable, sep="/")
  mask = {path: next((d for regex, d in compiled if regex.fullmatch(path)), False) for path in flat}
  return flax.traverse_util.unflatten_dict(mask, sep="/")


def _per_group(trainable_groups, lr_mults, make_tx):
  lr_mults = dict(lr_mults or {})
  groups = set(jax.tree.leaves(trainable_groups))
  if unknown := set(lr_mults) - groups:
    raise ValueError(f"lr_mults names groups {sorted(unknown)} that this method does not train; "
                     f"its groups: {sorted(groups)}.")
  return optax.multi_transform({g: make_tx(lr_mults.get(g, 1.0)) for g in groups},
                               trainable_groups)


def sgd(trainable_groups, schedule: optax.Schedule, *, momentum: float, weight_decay: float,
        lr_mults=None, decay_rules=((".*", True),)) -> optax.GradientTransformation:
  """`trainable_groups`: group name per trainable leaf (the trainable part of `methods.labels`)."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=lambda p: decay_mask(p, decay_rules)),
      _per_group(trainable_groups, lr_mults, lambda scale: optax.sgd(
          lambda step: schedule(step) * scale, momentum=momentum or None)))


def adamw(trainable_groups, schedule: optax.Schedule, *, weight_decay: float, lr_mults=None,
          decay_rules=((".*", True),), **_) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay), for training from scratch (launch/pretrain.py)."""
  return _per_group(trainable_groups, lr_mults, lambda scale: optax.adamw(
      lambda step: schedule(step) * scale, weight_decay=weight_decay,
      mask=lambda p: decay_mask(p, decay_rules)))


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}


def make(name: str, trainable_groups, schedule, **kwargs) -> optax.GradientTransformation:
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} must be one of {', '.join(OPTIMIZERS)}.")
  return OPTIMIZERS[name](trainable_groups, schedule, **kwargs)
