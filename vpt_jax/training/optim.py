"""Schedules and optimizers over the trainable parameter subtree (frozen ones never reach optax).

The peak learning rate and the weight decay are runtime values held in the optimizer state
(`optax.inject_hyperparams`), so one compiled train step serves every point of a sweep's grid.

  sgd       momentum SGD with coupled L2 weight decay, PyTorch's torch.optim.SGD(weight_decay=...)
            as the VPT code uses it: g <- g + wd * p before the momentum trace.
  hf_adamw  the AdamW class of ChengHan111/VPT-or-FT (src/solver/optimizer.py, HuggingFace's):
            eps is added to sqrt(v) before bias correction, which is folded into the step size
            lr * sqrt(1 - b2^t) / (1 - b1^t), and the decoupled decay p <- p - lr * wd * p acts on
            the weights after the Adam step. optax.adamw differs in both.
  adam      PyTorch's torch.optim.Adam(weight_decay=...) as VQT's code uses it (andytu28/VQT
            src/solver/optimizer.py): coupled L2 decay g <- g + wd * p, then Adam with eps 1e-8
            added to the bias-corrected sqrt(v) (optax.adam's arithmetic).
  galore_adamw  GaLore (Zhao et al. 2024; jiaweizzhao/GaLore galore_torch/adamw.py): `hf_adamw`
            whose chosen kernels keep their Adam statistics in a rank-r space (see galore()).
  adamw     optax's AdamW (pre-training the demo backbone from scratch).

Each trainable group (methods.py) gets lr * lr_mults.get(group, 1); `grad_clip_norm` clips the
global gradient norm first (Google's fine-tuning).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpt_jax.models import peft
from vpt_jax.utils import paths

# (step, peak learning rate[, steps per epoch]) -> learning rate of that step (step = updates
# taken before it). The steps per epoch are a runtime value of the optimizer state (see `make`),
# so runs on training sets of other sizes share one compiled step; per-step schedules ignore it.
Schedule = Callable[..., jax.Array]


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

  def schedule(step, peak, steps_per_epoch=None):
    del steps_per_epoch  # Counted in steps: its length is part of the program.
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step - warmup_steps, decay_steps)
                                / decay_steps))
    decayed = peak * cosine
    if not warmup_steps:
      return decayed
    warm = (0.0 - peak) * (1 - jnp.clip(step, 0, warmup_steps) / warmup_steps) + peak
    return jnp.where(step < warmup_steps, warm, decayed)
  return schedule


def warmup_cosine_epochs(warmup_epochs: int, epochs: int,
                         steps_per_epoch: int | None = None) -> Schedule:
  """Per epoch, as the VPT code's WarmupCosineSchedule stepped once per epoch (KMnP/vpt
  src/solver/lr_scheduler.py, src/engine/trainer.py): epoch e trains at peak * e / W for e < W,
  else peak * 0.5 * (1 + cos(pi * (e - W) / (T - W))). So the first epoch trains at lr 0.
  `steps_per_epoch` None: the schedule's third argument (the optimizer state's)."""
  if warmup_epochs >= epochs:
    raise ValueError(f"The warm-up ({warmup_epochs} epochs) must be shorter than training "
                     f"({epochs} epochs): lower optim.warmup_epochs or raise optim.epochs.")
  fixed = steps_per_epoch

  def schedule(step, peak, steps_per_epoch=None):
    # An integer division either way: the same epoch, so the same float arithmetic after it.
    epoch = (jnp.asarray(step) // (fixed or steps_per_epoch)).astype(jnp.float32)
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


class GaloreState(NamedTuple):
  count: jax.Array
  mu: optax.Updates  # Low-rank for projected kernels, full elsewhere.
  nu: optax.Updates
  projector: optax.Updates  # (r, n) or (m, r) for projected kernels; an unused 0-d zero elsewhere.


def galore_matrix_shape(path: str, shape) -> tuple[int, int]:
  """The 2-D matrix a kernel is to GaLore: (inputs, outputs). Attention kernels (D, H, K) and the
  output kernel (H, K, D) merge their head axes as PyTorch's Linear layers hold them."""
  if len(shape) == 2:
    return tuple(shape)
  if path.endswith("out/kernel"):
    return int(np.prod(shape[:-1])), int(shape[-1])
  return int(shape[0]), int(np.prod(shape[1:]))


def galore_projects_right(m: int, n: int) -> bool:
  """GaLore's "std" rule for a Flax kernel of m inputs and n outputs. GaLore reads PyTorch's
  (outputs, inputs) weight and projects it on the right (Vh[:r]) when outputs >= inputs; the
  Flax kernel is that weight transposed, so the same projection is on its left (U[:, :r], state
  r x n) when n >= m, and on its right (Vh[:r], state m x r) only when m > n."""
  return m > n


def _fixed_signs(vectors, axis: int):
  """Singular vectors with their largest entry positive. An SVD fixes each vector only up to
  its sign, and GaLore's moments outlive the projector, so the sign changes later steps; GaLore
  takes whatever torch.linalg.svd returns (LAPACK's or cuSOLVER's choice). A fixed rule makes the
  updates the same on every backend and for a kernel and its transpose."""
  largest = jnp.take_along_axis(vectors, jnp.argmax(jnp.abs(vectors), axis=axis, keepdims=True),
                                axis=axis)
  return vectors * jnp.where(largest < 0, -1.0, 1.0)


# The vmapped axis of a pack of runs (vpt_jax.training.steps): packed runs share their step.
PACK_AXIS = "pack"


def _shared_by_the_pack(flag):
  """A flag that every run of a pack has alike (it depends on the step count, which they share)
  as one value for the whole pack. Under the pack's vmap a per-run flag would turn lax.cond into
  a select that computes both branches (GaLore's SVDs at every step); outside a pack it is the
  flag itself."""
  try:
    return jax.lax.pmax(flag.astype(jnp.int32), PACK_AXIS) > 0
  except NameError:  # Not traced inside a pack's vmap.
    return flag


def galore_transform(learning_rate_fn, weight_decay, mask, projected, *, rank: int,
                     update_period: int, scale: float, b1=0.9, b2=0.999,
                     eps=1e-6) -> optax.GradientTransformation:
  """GaLore's AdamW (galore_torch/adamw.py with galore_projector.py, proj_type "std"), one group.

  For each kernel `projected` names (a tree of 2-D shapes, None for the others): at steps 0, T,
  2T, ... the gradient's SVD gives the projector P (top-r right or left singular vectors); the
  gradient enters Adam as its projection (statistics never reset when P changes; each singular
  vector's sign fixed by _fixed_signs); the Adam
  direction is projected back and multiplied by `scale`. Other leaves get the same AdamW
  unprojected (hf_adamw's arithmetic: eps before bias correction, decoupled decay on the weight
  after the step, at the raw learning rate).
  """
  masked = lambda x: isinstance(x, optax.MaskedNode)

  def low_rank_shape(shape2d):
    m, n = shape2d
    r = min(rank, m, n)
    return ((m, r), (r, n)) if galore_projects_right(m, n) else ((r, n), (m, r))

  def init(params):
    if not isinstance(params, dict):  # optax.tree_utils.tree_map_params probing the structure.
      return GaloreState(jnp.zeros([], jnp.int32), params, params, params)
    shapes = projected(params) if callable(projected) else projected

    def moments(p, shape2d):
      if masked(p):
        return p
      return jnp.zeros(low_rank_shape(shape2d)[0] if shape2d else p.shape, p.dtype)

    def projector(p, shape2d):
      if masked(p):
        return p
      return jnp.zeros(low_rank_shape(shape2d)[1] if shape2d else (), jnp.float32)
    leaves = lambda f: jax.tree.map(f, params, shapes, is_leaf=lambda x: masked(x) or x is None)
    return GaloreState(jnp.zeros([], jnp.int32), leaves(moments), leaves(moments),
                       leaves(projector))

  def update(grads, state, params):
    shapes = projected(params) if callable(projected) else projected
    decays = mask(params) if callable(mask) else mask
    refresh = _shared_by_the_pack(state.count % update_period == 0)
    count = state.count + 1
    lr = learning_rate_fn(state.count)
    t = count.astype(jnp.float32)
    step_size = lr * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)

    def leaf(g, m, v, p_old, w, shape2d, decay):
      if masked(g):
        return g, m, v, p_old
      if shape2d:
        matrix = g.reshape(shape2d).astype(jnp.float32)
        right = galore_projects_right(*shape2d)
        r = min(rank, *shape2d)

        def fresh():
          u, _, vh = jnp.linalg.svd(matrix, full_matrices=False)
          return _fixed_signs(vh[:r], axis=1) if right else _fixed_signs(u[:, :r], axis=0)
        proj = jax.lax.cond(refresh, fresh, lambda: p_old)
        low = matrix @ proj.T if right else proj.T @ matrix
      else:
        proj, low = p_old, g
      m = b1 * m + (1.0 - b1) * low
      v = b2 * v + (1.0 - b2) * low * low
      direction = m / (jnp.sqrt(v) + eps)
      if shape2d:
        direction = (direction @ proj if right else proj @ direction) * scale
        direction = direction.reshape(g.shape)
      adam = -step_size * direction
      return (adam - lr * weight_decay * (w + adam) if decay else adam), m, v, proj

    is_leaf = lambda x: masked(x) or x is None
    out = jax.tree.map(leaf, grads, state.mu, state.nu, state.projector, params, shapes, decays,
                       is_leaf=is_leaf)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out, is_leaf=is_leaf)
    return pick(0), GaloreState(count, pick(1), pick(2), pick(3))

  return optax.GradientTransformation(init, update)


def _per_group(trainable_groups, lr_mults, make_tx):
  lr_mults = dict(lr_mults or {})
  # BatchNorm's running averages: the step writes them, the optimizer never moves them (no
  # update, no decay, no state).
  return optax.multi_transform(
      {g: optax.set_to_zero() if g == peft.STATISTICS_GROUP else make_tx(lr_mults.get(g, 1.0))
       for g in set(jax.tree.leaves(trainable_groups))},
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


def adam(trainable_groups, schedule: Schedule, *, lr_mults=None, decay_rules=((".*", True),),
         **_):
  def make(peak_lr, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=lambda p: decay_mask(p, decay_rules)),
        _per_group(trainable_groups, lr_mults, lambda scale: optax.adam(
            lambda step: schedule(step, peak_lr) * scale, b1=0.9, b2=0.999, eps=1e-8)))
  return make


def galore_adamw(trainable_groups, schedule: Schedule, *, lr_mults=None,
                 decay_rules=((".*", True),), galore_rank: int, galore_update_period: int,
                 galore_scale: float, galore_rules, **_):
  def shapes(params):
    chosen = paths.flatten(paths.first_match(params, galore_rules, default=False))
    return paths.unflatten({
        path: galore_matrix_shape(path, value.shape)
        if chosen[path] and not isinstance(value, optax.MaskedNode) else None
        for path, value in paths.flatten(params).items()})

  def make(peak_lr, weight_decay):
    return _per_group(trainable_groups, lr_mults, lambda scale: galore_transform(
        lambda step: schedule(step, peak_lr) * scale, weight_decay,
        lambda p: decay_mask(p, decay_rules), shapes, rank=galore_rank,
        update_period=galore_update_period, scale=galore_scale))
  return make


def adamw(trainable_groups, schedule: Schedule, *, lr_mults=None, decay_rules=((".*", True),),
          **_):
  def make(peak_lr, weight_decay):
    return _per_group(trainable_groups, lr_mults, lambda scale: optax.adamw(
        lambda step: schedule(step, peak_lr) * scale, weight_decay=weight_decay,
        mask=lambda p: decay_mask(p, decay_rules)))
  return make


GALORE_FIELDS = ("galore_rank", "galore_update_period", "galore_scale", "galore_rules")
OPTIMIZERS = {"sgd": sgd, "adam": adam, "hf_adamw": hf_adamw, "galore_adamw": galore_adamw,
              "adamw": adamw}


def make(name: str, trainable_groups, schedule: Schedule, grad_clip_norm: float | None = None,
         **kwargs) -> optax.GradientTransformation:
  """The optimizer `name`; its hyper-parameters `peak_lr`, `weight_decay` and `steps_per_epoch`
  (what `schedule` counts epochs by) start at 0, 0 and 1: set them in the state with
  `set_hyperparams` after `init`."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} must be one of {', '.join(OPTIMIZERS)}.")
  groups = set(jax.tree.leaves(trainable_groups))
  if unknown := set(kwargs.get("lr_mults") or {}) - groups:
    raise ValueError(f"lr_mults names groups {sorted(unknown)} that this method does not train; "
                     f"its groups: {sorted(groups)}.")

  def factory(peak_lr, weight_decay, steps_per_epoch):
    bound = lambda step, peak: schedule(step, peak, steps_per_epoch)
    inner = OPTIMIZERS[name](trainable_groups, bound, **kwargs)(peak_lr, weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), inner) if grad_clip_norm else inner
  return optax.inject_hyperparams(factory)(peak_lr=0.0, weight_decay=0.0, steps_per_epoch=1)


def set_hyperparams(opt_state, *, peak_lr: float, weight_decay: float,
                    steps_per_epoch: int | None = None):
  """`opt_state` of `make` with these hyper-parameters (float32 scalars in the state; the steps
  per epoch an int32, kept as they are when not given)."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["peak_lr"] = jnp.asarray(peak_lr, jnp.float32)
  hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
  if steps_per_epoch is not None:
    hyperparams["steps_per_epoch"] = jnp.asarray(steps_per_epoch, jnp.int32)
  return opt_state._replace(hyperparams=hyperparams)


def current_lr(schedule: Schedule, opt_state, step) -> float:
  """The learning rate step `step` trains with (group multiplier 1)."""
  return schedule(step, opt_state.hyperparams["peak_lr"],
                  opt_state.hyperparams.get("steps_per_epoch"))

