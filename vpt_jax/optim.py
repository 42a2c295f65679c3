"""Schedules and optimizers over the trainable parameter subtree (frozen ones never reach optax).

The peak learning rate and the weight decay are runtime values held in the optimizer state
(`optax.inject_hyperparams`), so one compiled train step serves every point of a sweep's grid.

  sgd       momentum SGD with coupled L2 weight decay, PyTorch's torch.optim.SGD(weight_decay=...)
            as the VPT code uses it: g <- g + wd * p before the momentum trace.
  hf_adamw  the AdamW class of ChengHan111/VPT-or-FT (src/solver/optimizer.py, HuggingFace's):
            eps is added to sqrt(v) before bias correction, which is folded into the step size
            lr * sqrt(1 - b2^t) / (1 - b1^t), and the decoupled decay p <- p - lr * wd * p acts on
            the weights after the Adam step. optax.adamw differs in both.
  adamw     optax's AdamW (pre-training the demo backbone from scratch).

Each trainable group (methods.py) gets lr * lr_mults.get(group, 1); `grad_clip_norm` clips the
global gradient norm first (Google's fine-tuning).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vpt_jax import paths

# (step, peak learning rate) -> learning rate of that step (step = updates taken before it).
Schedule = Callable[[jax.Array, jax.Array], jax.Array]


def learning_rate(base_lr: float, batch_size: int) -> float:
  """The VPT code's linear scaling: lr = base_lr * batch / 256."""
  return base_lr * batch_size / 256


def warmup_cosine(warmup_steps: int, total_steps: int) -> Schedule:
  """Per step: linear warm-up from 0 to the peak, then cosine decay to 0 at `total_steps` (the
  arithmetic of optax.warmup_cosine_decay_schedule and of big_vision's schedule)."""
  if warmup_steps >= total_steps:
    raise ValueError(f"The warm-up ({warmup_steps} steps) must be shorter than training "
                     f"({total_steps} steps): lower the warm-up or train longer.")
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


def warmup_cosine_epochs(warmup_epochs: int, epochs: int, steps_per_epoch: int) -> Schedule:
  """Per epoch, as the VPT code's WarmupCosineSchedule stepped once per epoch (KMnP/vpt
  src/solver/lr_scheduler.py, src/engine/trainer.py): epoch e trains at peak * e / W for e < W,
  else peak * 0.5 * (1 + cos(pi * (e - W) / (T - W))). So the first epoch trains at lr 0."""
  if warmup_epochs >= epochs:
    raise ValueError(f"The warm-up ({warmup_epochs} epochs) must be shorter than training "
                     f"({epochs} epochs): lower optim.warmup_epochs or raise optim.epochs.")

  def schedule(step, peak):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
    warm = epoch / max(1.0, warmup_epochs)
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    decayed = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    return peak * jnp.where(epoch < warmup_epochs, warm, decayed)
  return schedule


def decay_mask(trainable, decay_rules) -> dict:
  """True where weight decay applies; (regex, bool) rules, first match wins, default False."""
  return paths.first_match(trainable, decay_rules, default=False)


class HfAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def hf_adamw_transform(learning_rate_fn, weight_decay, mask, b1=0.9, b2=0.999,
                       eps=1e-6) -> optax.GradientTransformation:
  """One group of `hf_adamw` (see the module docstring); `mask` is a tree of bools or a function
  of the parameters giving one."""
  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return HfAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                       jax.tree.map(zeros, params))

  def update(grads, state, params):
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, grads)
    lr = learning_rate_fn(state.count)
    t = count.astype(jnp.float32)
    step_size = lr * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    decays = mask(params) if callable(mask) else mask
    # Inside optax.multi_transform, another group's leaves are MaskedNodes: passed through.
    masked = lambda x: isinstance(x, optax.MaskedNode)

    def leaf(m, v, p, decay):
      if masked(m):
        return m
      adam = -step_size * m / (jnp.sqrt(v) + eps)
      return adam - lr * weight_decay * (p + adam) if decay else adam
    return (jax.tree.map(leaf, mu, nu, params, decays, is_leaf=masked),
            HfAdamState(count, mu, nu))

  return optax.GradientTransformation(init, update)


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


def hf_adamw(trainable_groups, schedule: Schedule, *, lr_mults=None, decay_rules=((".*", True),),
             **_):
  def make(peak_lr, weight_decay):
    return _per_group(trainable_groups, lr_mults, lambda scale: hf_adamw_transform(
        lambda step: schedule(step, peak_lr) * scale, weight_decay,
        lambda p: decay_mask(p, decay_rules)))
  return make


def adamw(trainable_groups, schedule: Schedule, *, lr_mults=None, decay_rules=((".*", True),),
          **_):
  def make(peak_lr, weight_decay):
    return _per_group(trainable_groups, lr_mults, lambda scale: optax.adamw(
        lambda step: schedule(step, peak_lr) * scale, weight_decay=weight_decay,
        mask=lambda p: decay_mask(p, decay_rules)))
  return make


OPTIMIZERS = {"sgd": sgd, "hf_adamw": hf_adamw, "adamw": adamw}


def make(name: str, trainable_groups, schedule: Schedule, grad_clip_norm: float | None = None,
         **kwargs) -> optax.GradientTransformation:
  """The optimizer `name`; its hyper-parameters `peak_lr` and `weight_decay` start at 0: set them
  in the state with `set_hyperparams` after `init`."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} must be one of {', '.join(OPTIMIZERS)}.")
  groups = set(jax.tree.leaves(trainable_groups))
  if unknown := set(kwargs.get("lr_mults") or {}) - groups:
    raise ValueError(f"lr_mults names groups {sorted(unknown)} that this method does not train; "
                     f"its groups: {sorted(groups)}.")
  factory = OPTIMIZERS[name](trainable_groups, schedule, **kwargs)
  if grad_clip_norm:
    inner = factory
    factory = lambda peak_lr, weight_decay: optax.chain(
        optax.clip_by_global_norm(grad_clip_norm), inner(peak_lr, weight_decay))
  return optax.inject_hyperparams(factory)(peak_lr=0.0, weight_decay=0.0)


def set_hyperparams(opt_state, *, peak_lr: float, weight_decay: float):
  """`opt_state` of `make` with these hyper-parameters (float32 scalars in the state)."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["peak_lr"] = jnp.asarray(peak_lr, jnp.float32)
  hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
  return opt_state._replace(hyperparams=hyperparams)


def current_lr(schedule: Schedule, opt_state, step) -> float:
  """The learning rate step `step` trains with (group multiplier 1)."""
  return schedule(step, opt_state.hyperparams["peak_lr"])

