"""Recipes: how each method trains, by name, and the resolution of a config into one run's settings.

A recipe maps (method, task) to config values: optimizer, schedule, batch, epochs, dropout, the
sweep's grids, and for two-stage methods the earlier stage's optimizer (config.stage_optim).
`resolve(config)` fills every field the config leaves unset from its recipe; what the config sets
(in a config file, by `config.method_overrides[method]`, or on the command line) wins.

  vpt   KMnP/vpt's recipe for every method: SGD with momentum 0.9 and coupled weight decay (none
        on the head's bias), lr = base_lr x batch / 256, batch 64, 100 epochs with 10 of linear
        warm-up then cosine decay, prompt dropout 0.1 for VPT-deep and 0 for VPT-shallow, the
        published prompt length per task, and the lr grids of the VPT code's tune_vtab.py.

To add one: write a function (method, task) -> nested dict of config values and register it in
RECIPES.
"""

from typing import Callable

import ml_collections

from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib

# VPT-deep prompt length per task, as the published configs list them.
PROMPT_TOKENS = {
    "cifar100": 10, "caltech101": 10, "dtd": 10, "oxford_flowers102": 1, "oxford_iiit_pet": 1,
    "svhn": 50, "sun397": 5, "patch_camelyon": 100, "eurosat": 100, "resisc45": 10,
    "diabetic_retinopathy": 1, "clevr_count": 100, "clevr_dist": 200, "dmlab": 100,
    "kitti_dist": 100, "dsprites_loc": 100, "dsprites_ori": 100, "smallnorb_azi": 200,
    "smallnorb_ele": 200}

# KMnP/vpt tune_vtab.py: lr grids for methods that move the backbone and for the rest; one wd grid.
BACKBONE_LRS = (0.005, 0.001, 0.0005, 0.0001)
PROMPT_LRS = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
WEIGHT_DECAYS = (0.01, 0.001, 0.0001, 0.0)


def _vpt_single(method: str) -> dict:
  moves_backbone = methods.moves_backbone(method)
  return dict(
      model=dict(dropout=0.0),
      method_kwargs=dict(prompt_dropout=0.0 if method == "vpt_shallow" else 0.1),
      optim=dict(name="sgd", base_lr=0.001 if moves_backbone else 0.5, weight_decay=1e-4,
                 momentum=0.9, batch_size=64, epochs=100, warmup_epochs=10,
                 # As the VPT code: no decay on the classifier's bias.
                 decay_rules=((r"head/bias", False), (".*", True))),
      sweep=dict(base_lrs=BACKBONE_LRS if moves_backbone else PROMPT_LRS,
                 weight_decays=WEIGHT_DECAYS, seeds=5))


# The earlier stage of a two-stage method: FT-then-PT fine-tunes at a typical full-FT choice,
# LP-FT probes at a typical linear-probe one.
_VPT_FIRST_STAGE = {"full": dict(base_lr=0.001, weight_decay=1e-4),
                    "linear": dict(base_lr=1.0, weight_decay=0.0)}


def vpt(method: str, task: str) -> dict:
  settings = _vpt_single(methods.stage_names(method)[-1])
  if task in PROMPT_TOKENS:
    settings["method_kwargs"]["prompt_tokens"] = PROMPT_TOKENS[task]
  settings["stage_optim"] = {
      stage: {**_vpt_single(stage)["optim"], **_VPT_FIRST_STAGE[stage]}
      for stage in methods.stage_names(method)[:-1]}
  return settings


RECIPES: dict[str, Callable[[str, str], dict]] = {"vpt": vpt}


def _merge(base: dict, top: dict) -> dict:
  """`base` with the non-None leaves of `top` written over it (nested dicts merge)."""
  out = dict(base)
  for key, value in top.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    elif isinstance(value, dict):
      out[key] = _merge({}, value)
    elif value is not None:
      out[key] = value
    else:
      out.setdefault(key, None)
  return out


def _phase_subsets(phase: str) -> tuple[str, str]:
  if phase == "final":
    return "train800val200", "test"
  if phase == "search":
    return "train800", "val200"
  raise ValueError(f"phase={phase!r} must be 'final' or 'search'.")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """One run's complete settings: `config` (one task, one method) over its recipe's values."""
  if config.recipe not in RECIPES:
    raise ValueError(f"recipe={config.recipe!r} is not a recipe; choose one of: "
                     f"{', '.join(RECIPES)}.")
  tasks = tasks_lib.expand(config.task)
  if len(tasks) != 1 or "+" in config.method:
    raise ValueError(f"A run has one task and one method, not task={config.task!r} "
                     f"method={config.method!r}: launch/main.py and launch/sweep.py run one per "
                     "pair.")
  stages = methods.stage_names(config.method)  # Also checks the name.
  given = config.to_dict()
  per_method = given.pop("method_overrides", None) or {}
  settings = _merge(RECIPES[config.recipe](config.method, config.task),
                    per_method.get(config.method, {}))
  stage_optim = given.pop("stage_optim", None) or {}
  for name, fields in stage_optim.items():
    explicit = {k: v for k, v in fields.items() if v is not None and v != {}}
    if name not in stages[:-1] and explicit:
      raise ValueError(f"config.stage_optim.{name}: {config.method} has no earlier stage called "
                       f"{name!r} (its stages: {', '.join(stages)}; the last one takes "
                       f"config.optim itself).")
    if unknown := set(explicit) - set(given["optim"]):
      raise ValueError(f"config.stage_optim.{name} sets {sorted(unknown)}, which are not "
                       f"config.optim fields.")
  resolved = _merge(settings, given)
  # Earlier stages: their recipe values, the shared optim fields the config sets (all but the
  # tuned stage's base_lr and weight_decay), then config.stage_optim.
  shared = {k: v for k, v in given["optim"].items() if k not in ("base_lr", "weight_decay")}
  resolved["stage_optim"] = {
      name: _merge(_merge(settings["stage_optim"][name], shared), stage_optim.get(name, {}))
      for name in stages[:-1]}
  train_subset, eval_subset = _phase_subsets(resolved["phase"])
  resolved["data"]["train_subset"] = resolved["data"]["train_subset"] or train_subset
  resolved["data"]["eval_subset"] = resolved["data"]["eval_subset"] or eval_subset
  return ml_collections.ConfigDict(resolved)
