"""Tuning methods by name: which modules a method adds to the ViT and which parameters it trains.

A method is `vit.Model` fields (prompts, LoRA, adapters, SSF) plus (regex, group) rules over
'/'-joined parameter paths, matched in order. Group FROZEN is never trained: it is split off before
differentiation, so no gradient, optimizer state or update exists for it. Every other group trains
and may get its own learning-rate multiplier (e.g. "prompt" and "backbone" for `mixed`).
Two-stage methods (`ft_then_pt`, `lp_ft`) list single-stage methods that the launcher runs in order.
"""

import dataclasses
import json
import os
import re
from typing import Any, Callable

import flax.traverse_util
import jax
import numpy as np

from vpt_jax import checkpoints
from vpt_jax.models import vit

FROZEN = "frozen"
_HEAD = ("head/.*", "head")
_REST_FROZEN = (".*", FROZEN)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  rules: tuple[tuple[str, str], ...] = ()
  model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  stages: tuple["Method", ...] = ()


_REGISTRY: dict[str, Callable[..., Method]] = {}


def register(fn):
  _REGISTRY[fn.__name__] = fn
  return fn


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str, depth: int, **hparams) -> Method:
  """The method `name` for a ViT of `depth` blocks; `hparams` come from the config (extra ignored)."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}.")
  try:
    return _REGISTRY[name](depth=depth, **hparams)
  except TypeError as e:
    raise ValueError(f"Method {name!r} needs more hyper-parameters ({e}); set them in "
                     "config.method_kwargs.") from None


@register
def linear(**_):
  return Method("linear", (_HEAD, _REST_FROZEN))


@register
def full(**_):
  return Method("full", (_HEAD, (".*", "backbone")))


def _prompts(deep, prompt_tokens, prompt_dropout, prompt_project=None):
  return dict(prompt_tokens=prompt_tokens, prompt_deep=deep, prompt_dropout=prompt_dropout,
              prompt_project=prompt_project)


@register
def vpt_shallow(*, prompt_tokens, prompt_dropout, prompt_project=None, **_):
  return Method("vpt_shallow", (("prompt/.*", "prompt"), _HEAD, _REST_FROZEN),
                _prompts(False, prompt_tokens, prompt_dropout, prompt_project))


@register
def vpt_deep(*, prompt_tokens, prompt_dropout, prompt_project=None, **_):
  return Method("vpt_deep", (("prompt/.*", "prompt"), _HEAD, _REST_FROZEN),
                _prompts(True, prompt_tokens, prompt_dropout, prompt_project))


@register
def mixed(*, prompt_tokens, prompt_dropout, prompt_project=None, **_):
  return Method("mixed", (("prompt/.*", "prompt"), _HEAD, (".*", "backbone")),
                _prompts(True, prompt_tokens, prompt_dropout, prompt_project))


@register
def ft_then_pt(*, depth, **hparams):
  return Method("ft_then_pt", stages=(full(), vpt_deep(depth=depth, **hparams)))


@register
def lp_ft(**_):
  return Method("lp_ft", stages=(linear(), full()))


@register
def bitfit(**_):
  return Method("bitfit", (_HEAD, (r".*/bias", "peft"), _REST_FROZEN))


@register
def layernorm(**_):
  return Method("layernorm", (_HEAD, (r".*(LayerNorm_\d+|encoder_norm)/.*", "peft"), _REST_FROZEN))


@register
def lora(*, lora_rank, lora_alpha=0.0, **_):
  return Method("lora", (_HEAD, (r".*/lora_(query|value)_[ab]", "peft"), _REST_FROZEN),
                dict(extras=vit.Extras(lora_rank=lora_rank, lora_alpha=lora_alpha)))


@register
def adapter(*, adapter_dim, **_):
  return Method("adapter", (_HEAD, (r".*/adapter_(attention|mlp)/.*", "peft"), _REST_FROZEN),
                dict(extras=vit.Extras(adapter_dim=adapter_dim)))


@register
def ssf(**_):
  return Method("ssf", (_HEAD, (r"(.*/)?ssf_[^/]+/.*", "peft"), _REST_FROZEN),
                dict(extras=vit.Extras(ssf=True)))


@register
def partial_k(*, depth, partial_k, **_):
  if not 0 < partial_k <= depth:
    raise ValueError(f"partial_k={partial_k} must be between 1 and the model depth {depth}.")
  blocks = "|".join(str(i) for i in range(depth - partial_k, depth))
  return Method("partial_k", (_HEAD, (rf"Transformer/(encoderblock_({blocks})|encoder_norm)/.*",
                                      "backbone"), _REST_FROZEN))


# ---------------------------------------------------------------------------------------------
# Parameter groups.

def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat):
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def labels(params, rules) -> dict:
  """The group of every parameter (same tree as `params`); the first matching rule decides."""
  flat = _flat(params)
  compiled = [(re.compile(pattern), group) for pattern, group in rules]
  out, unmatched = {}, []
  used = set()
  for path in flat:
    rule = next((i for i, (regex, _) in enumerate(compiled) if regex.fullmatch(path)), None)
    if rule is None:
      unmatched.append(path)
      continue
    out[path] = compiled[rule][1]
    used.add(rule)
  if unmatched:
    raise ValueError(f"No rule matches parameters {unmatched[:5]}; end the rules with ('.*', ...).")
  idle = [rules[i][0] for i, (_, group) in enumerate(compiled) if group != FROZEN and i not in used]
  if idle:
    raise ValueError(f"Rules {idle} match no parameter: the model lacks the modules they train.")
  return _unflat(out)


def split(params, groups) -> tuple[dict, dict]:
  """(trainable, frozen) subtrees of `params`; merge() puts them back together."""
  flat, group_of = _flat(params), _flat(groups)
  trainable = {k: v for k, v in flat.items() if group_of[k] != FROZEN}
  frozen = {k: v for k, v in flat.items() if group_of[k] == FROZEN}
  return _unflat(trainable), _unflat(frozen)


def merge(*trees) -> dict:
  """Union of parameter trees; later trees win where paths repeat."""
  out = {}
  for tree in trees:
    out.update(_flat(tree))
  return _unflat(out)


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def init_params(model, backbone_params, rng, image_size: int) -> dict:
  """`model`'s parameters: the pre-trained backbone where it has them, fresh ones (the method's
  prompts, adapters, ...) elsewhere."""
  images = np.zeros((1, image_size, image_size, 3), np.float32)
  fresh = jax.jit(model.init)(rng, images)["params"]
  missing = set(_flat(backbone_params)) - set(_flat(fresh))
  if missing:
    raise ValueError(f"The tuned model has no place for backbone parameters {sorted(missing)[:5]}.")
  return merge(fresh, backbone_params)


def summary(method_name: str, params, groups, backbone_count: int) -> str:
  """One line: what trains, and its share of the pre-trained backbone."""
  flat, group_of = _flat(params), _flat(groups)
  per_group = {}
  for path, value in flat.items():
    per_group[group_of[path]] = per_group.get(group_of[path], 0) + int(np.prod(value.shape))
  per_group.pop(FROZEN, None)
  total = sum(per_group.values())
  without_head = total - per_group.get("head", 0)
  parts = ", ".join(f"{group} {n:,}" for group, n in per_group.items())
  return (f"{method_name}: {total:,} trainable parameters ({parts}); without the head "
          f"{without_head:,} = {100 * without_head / backbone_count:.2f}% of the "
          f"{backbone_count:,}-parameter backbone")


# ---------------------------------------------------------------------------------------------
# Per-task artifacts: only what the method trained.

_META = "__meta__"


def save_artifact(path: str, trainable, meta: dict) -> int:
  """Writes the trained parameters and `meta` (JSON-able) atomically; returns the file's bytes."""
  flat = {k: np.asarray(v) for k, v in _flat(jax.device_get(trainable)).items()}
  flat[_META] = np.array(json.dumps(meta))
  checkpoints.write_npz_atomic(flat, path)
  return os.path.getsize(path)


def load_artifact(path: str) -> tuple[dict, dict]:
  """(trained parameters, meta) from `save_artifact`; merge() them onto the backbone."""
  flat = checkpoints.read_npz(path)
  if _META not in flat:
    raise checkpoints.CheckpointError(f"{path} is not a vpt_jax task artifact (no metadata).")
  meta = json.loads(str(flat.pop(_META)))
  return _unflat(flat), meta
