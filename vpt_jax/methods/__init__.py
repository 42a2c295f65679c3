"""Tuning methods by name: which modules a method adds to the ViT and which parameters it trains.

A method is `vit.Model` fields (prompts, LoRA, adapters, SSF) plus (regex, group) rules over
'/'-joined parameter paths, matched in order. Group FROZEN is never trained: it is split off before
differentiation, so no gradient, optimizer state or update exists for it. Every other group trains
and may get its own learning-rate multiplier (e.g. "prompt" and "backbone" for `mixed`).
Two-stage methods (`ft_then_pt`, `lp_ft`) list single-stage methods that run in order; the last
one is the stage a sweep tunes.
"""

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from vpt_jax.utils import paths
from vpt_jax.models import peft, vit

FROZEN = "frozen"
BACKBONE = "backbone"
_HEAD = ("head/.*", "head")
_REST_FROZEN = (".*", FROZEN)
# CLIP's `proj` (vit.Model's top-level `projection`) trains with the head under every method, as
# in OSU-MLB/PETL_Vision: it makes the projection the head's first layer (experiment/
# build_model.py L121-124, `model.head = torch.nn.Sequential(*[proj, fc])`) and trains every
# parameter whose name holds "head" (TUNE_MODULES, L13-14, L76-78). Put before each method's own
# rules; a model without a projection leaves it unused.
PROJECTION = ("projection/.*", "head")


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  rules: tuple[tuple[str, str], ...] = ()
  model_fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # vit.Model fields.
  stages: tuple["Method", ...] = ()
  carry_head: bool = True  # Later stages start from the earlier stage's head (else a fresh one).
  # Pre-trained weights of the side network (sidetune): a name or file for checkpoints.load_side;
  # "" keeps its random initialisation.
  side_checkpoint: str = ""
  trains: bool = True  # False: no optimizer step; the run evaluates its initial model (zero_shot).

  @property
  def single_stages(self) -> tuple["Method", ...]:
    return self.stages or (self,)

  @property
  def tuned_stage(self) -> "Method":
    return self.single_stages[-1]


@dataclasses.dataclass(frozen=True)
class _Entry:
  build: Callable[..., Method]
  moves_backbone: bool
  stages: tuple[str, ...]
  about: str
  trains: bool = True


_REGISTRY: dict[str, _Entry] = {}


def register(about: str, moves_backbone: bool = False, stages: tuple[str, ...] = (),
             trains: bool = True):
  """Registers a method builder under its function name; `about` says what it trains (one line
  of `--list`). `moves_backbone`: its (last) stage trains pre-trained backbone weights, which sets
  its learning-rate grid and compute cost. `trains` False: no optimizer step (its Method says so
  too), so a sweep runs one point of its grid."""
  def wrap(fn):
    last = _REGISTRY[stages[-1]].moves_backbone if stages else moves_backbone
    _REGISTRY[fn.__name__] = _Entry(fn, last, tuple(stages), about, trains)
    return fn
  return wrap


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}.")
  return _REGISTRY[name]


def about(name: str) -> str:
  return _entry(name).about


def moves_backbone(name: str) -> bool:
  """Whether the stage a sweep tunes trains the pre-trained backbone (e.g. full, mixed, lp_ft)."""
  return _entry(name).moves_backbone


def trains(name: str) -> bool:
  """Whether the method takes optimizer steps (zero_shot does not)."""
  return _entry(name).trains


def stage_names(name: str) -> tuple[str, ...]:
  """The single-stage methods `name` runs, in order (just itself for one stage)."""
  return _entry(name).stages or (name,)


def get(name: str, depth: int, width: int = 768, **hparams) -> Method:
  """The method `name` for a ViT of `depth` blocks of `width` features; `hparams` come from the
  config (extra ignored, None counts as not given)."""
  entry = _entry(name)
  try:
    method = entry.build(depth=depth, width=width,
                         **{k: v for k, v in hparams.items() if v is not None})
  except TypeError as e:
    raise ValueError(f"Method {name!r} needs more hyper-parameters ({e}); set them in "
                     "config.method_kwargs.") from None
  return _with_projection(method)


def _with_projection(method: Method) -> Method:
  if method.stages:
    return dataclasses.replace(method, stages=tuple(map(_with_projection, method.stages)))
  return dataclasses.replace(method, rules=(PROJECTION,) + tuple(method.rules))


@register("the head only (a linear probe)")
def linear(**_):
  return Method("linear", (_HEAD, _REST_FROZEN))


@register("nothing: CLIP's zero-shot classifier (the task's class names through the backbone's text "
          "tower) as the head, evaluated (a CLIP backbone; tasks with class names)", trains=False)
def zero_shot(**_):
  # PETL_Vision's method zero_shot (experiment/config/method/zero_shot.yml): the model as
  # build_model.py makes it, its head build_clip_zs_classifier.py's, evaluated without training.
  # The head is this method's "trainable" part only so that the artifact keeps it.
  return Method("zero_shot", (_HEAD, _REST_FROZEN), dict(head_init="zero_shot"), trains=False)


@register("everything (full fine-tuning)", moves_backbone=True)
def full(**_):
  return Method("full", (_HEAD, (".*", BACKBONE)))


def _prompts(deep, prompt_tokens, prompt_dropout, prompt_project=None, prompt_carry=True,
             prompt_layers=None):
  """vit.Model's prompt fields; PETL_Vision's forms (`prompt_carry` False, `prompt_layers`) only
  where asked, so KMnP/vpt's VPT builds the model (and its compiled program) it always did."""
  fields = dict(prompt_tokens=prompt_tokens, prompt_deep=deep, prompt_dropout=prompt_dropout,
                prompt_project=prompt_project)
  if not prompt_carry:
    fields["prompt_carry"] = False
  if prompt_layers is not None:
    fields["prompt_layers"] = prompt_layers
  return fields


@register("prompts after the embedding (VPT-shallow) and the head")
def vpt_shallow(*, prompt_tokens, prompt_dropout, prompt_project=None, prompt_carry=True,
                prompt_layers=None, **_):
  # prompt_carry False: PETL_Vision's VPT-shallow, whose prompts act in the first block only.
  return Method("vpt_shallow", (("prompt/.*", "prompt"), _HEAD, _REST_FROZEN),
                _prompts(False, prompt_tokens, prompt_dropout, prompt_project, prompt_carry,
                         prompt_layers))


@register("prompts at every layer (VPT-deep) and the head")
def vpt_deep(*, prompt_tokens, prompt_dropout, prompt_project=None, prompt_carry=True,
             prompt_layers=None, **_):
  # prompt_layers k: PETL_Vision's vpt_layer, prompt sets in the last k blocks only.
  return Method("vpt_deep", (("prompt/.*", "prompt"), _HEAD, _REST_FROZEN),
                _prompts(True, prompt_tokens, prompt_dropout, prompt_project, prompt_carry,
                         prompt_layers))


@register("deep prompts, the whole backbone and the head", moves_backbone=True)
def mixed(*, prompt_tokens, prompt_dropout, prompt_project=None, **_):
  return Method("mixed", (("prompt/.*", "prompt"), _HEAD, (".*", BACKBONE)),
                _prompts(True, prompt_tokens, prompt_dropout, prompt_project))


@register("stage 1 full, stage 2 vpt_deep on the fine-tuned backbone with a fresh head",
          stages=("full", "vpt_deep"))
def ft_then_pt(*, depth, **hparams):
  # The prompt stage loads the fine-tuned backbone without its head, and prompts and head start
  # afresh (ChengHan111/VPT-or-FT src/models/build_vit_backbone.py L580-605).
  return Method("ft_then_pt", stages=(full(), vpt_deep(depth=depth, **hparams)), carry_head=False)


@register("stage 1 linear, stage 2 full from the probed head", stages=("linear", "full"))
def lp_ft(**_):
  return Method("lp_ft", stages=(linear(), full()))


@register("biases and the head (BitFit)")
def bitfit(**_):
  return Method("bitfit", (_HEAD, (r".*/bias", "peft"), _REST_FROZEN))


@register("LayerNorm scales and biases and the head")
def layernorm(**_):
  return Method("layernorm", (_HEAD, (r".*(LayerNorm_\d+|encoder_norm|fc_norm)/.*", "peft"), _REST_FROZEN))


_LORA_PARAMETERS = {"qv": r".*/lora_(query|value)_[ab]", "petl": r".*/lora_(down|up)"}


@register("low-rank updates of query and value (LoRA; lora_form petl: PETL_Vision's shared q/k/v "
          "form) and the head")
def lora(*, lora_rank, lora_alpha=0.0, lora_form="qv", **_):
  # lora_form "petl": OSU-MLB/PETL_Vision model/lora.py (vit.Attention), which recipe=mai trains.
  if lora_form not in _LORA_PARAMETERS:
    raise ValueError(f"lora_form={lora_form!r} must be one of {', '.join(_LORA_PARAMETERS)}.")
  return Method("lora", (_HEAD, (_LORA_PARAMETERS[lora_form], "peft"), _REST_FROZEN),
                dict(peft=vit.PeftModules(lora_rank=lora_rank, lora_alpha=lora_alpha,
                                          lora_form=lora_form)))


@register("the VPT code's (Pfeiffer) adapter after each MLP, width / adapter_reduction, and the head")
def adapter(*, width, adapter_reduction, **_):
  # KMnP/vpt src/models/vit_adapter/vit.py: Linear(width, width // r) -> GELU -> Linear, added to
  # the MLP's output before the residual sum; REDUCATION_FACTOR r (its config.py default 8).
  return Method("adapter", (_HEAD, (r".*/adapter_mlp/.*", "peft"), _REST_FROZEN),
                dict(peft=vit.PeftModules(adapter_dim=width // adapter_reduction,
                                          adapter_style="pfeiffer")))


@register("Houlsby adapters after attention and MLP (adapter_dim) and the head")
def adapter_houlsby(*, adapter_dim, **_):
  return Method("adapter_houlsby", (_HEAD, (r".*/adapter_(attention|mlp)/.*", "peft"),
                                    _REST_FROZEN),
                dict(peft=vit.PeftModules(adapter_dim=adapter_dim)))


@register("per-channel scale and shift after each op (SSF) and the head")
def ssf(**_):
  return Method("ssf", (_HEAD, (r"(.*/)?ssf_[^/]+/.*", "peft"), _REST_FROZEN),
                dict(peft=vit.PeftModules(ssf=True)))


@register("learned queries per layer, read-only on the frozen backbone (VQT), and the head")
def vqt(*, query_tokens, query_dropout, **_):
  """Visual Query Tuning (Tu et al. 2023): learned queries per layer read the frozen backbone's
  tokens; the head reads their outputs. No gradient reaches the backbone's activations."""
  return Method("vqt", (("query/.*", "query"), _HEAD, _REST_FROZEN),
                dict(query_tokens=query_tokens, query_dropout=query_dropout))


@register("everything, with low-rank Adam statistics for attention and MLP kernels (GaLore)",
          moves_backbone=True)
def galore(**_):
  """Full fine-tuning whose optimizer keeps low-rank Adam statistics for the attention and MLP
  kernels (GaLore, Zhao et al. 2024; optimizer `galore_adamw` in vpt_jax/training/optim.py)."""
  return Method("galore", (_HEAD, (".*", BACKBONE)))


@register("the last k blocks and the head (partial-k)", moves_backbone=True)
def partial_k(*, depth, partial_k, **_):
  if not 0 < partial_k <= depth:
    raise ValueError(f"partial_k={partial_k} must be between 1 and the model depth {depth}.")
  blocks = "|".join(str(i) for i in range(depth - partial_k, depth))
  # The final norm is the encoder's, or fc_norm after MAE's pooling (the VPT code trains it too).
  return Method("partial_k", (_HEAD, (rf"(Transformer/(encoderblock_({blocks})|encoder_norm)|fc_norm)/.*",
                                      BACKBONE), _REST_FROZEN))


@register("an MLP head of mlp_k layers on the frozen backbone (the VPT code's MLP-k)")
def mlp_k(*, mlp_k, **_):
  # KMnP/vpt src/models/mlp.py with MODEL.MLP_NUM = k - 1 hidden layers (demo.ipynb's MLP-3: 2).
  if mlp_k < 2:
    raise ValueError(f"mlp_k={mlp_k} must be ≥ 2 (1 would be `linear`).")
  # BatchNorm1d's running averages: updated by each train step, not by the optimizer.
  return Method("mlp_k", (_HEAD, (r"mlp_head_\d+/running_(mean|var)", peft.STATISTICS_GROUP),
                          (r"mlp_head_\d+/.*", "mlp_head"), _REST_FROZEN),
                dict(peft=vit.PeftModules(head_hidden=mlp_k - 1)))


@register("a side network (torchvision's AlexNet features, projected) mixed into the frozen ViT's "
          "features by a learned sigmoid weight (the VPT code's Sidetune), and the head")
def sidetune(*, side_checkpoint="", **_):
  # KMnP/vpt src/models/vit_models.py: TRANSFER_TYPE "side" freezes the ViT (L89-91) and trains
  # side_alpha, the whole AlexNet `features` and side_projection (L51-61) with the head.
  return Method("sidetune", (_HEAD, (r"side/.*|side_projection/.*|side_alpha", "side"),
                             _REST_FROZEN),
                dict(peft=vit.PeftModules(side_network=True)), side_checkpoint=side_checkpoint)


# ---------------------------------------------------------------------------------------------
# Mai et al.'s methods as OSU-MLB/PETL_Vision defines them (experiment/config/method/*.yml over
# main.py's defaults; modules in vpt_jax/models/peft.py). Its trainable set is every parameter
# whose name holds one of TUNE_MODULES (experiment/build_model.py): the module's and the head's.

_PETL = (r".*/petl_(attention|mlp)/.*", "peft")


def _petl(name, attention=None, mlp=None):
  return Method(name, (_HEAD, _PETL, _REST_FROZEN),
                dict(peft=vit.PeftModules(petl_attention=attention, petl_mlp=mlp)))


@register("AdaptFormer: a scaled ReLU bottleneck beside each MLP, fed the block input, and the head")
def adaptformer(*, adapter_bottleneck, adapter_scaler, **_):
  # adaptformer.yml: ft_mlp_module adapter, parallel, ft_mlp_ln before, adapter_init lora_kaiming.
  return _petl("adaptformer", mlp=peft.Insert("adapter", "parallel", adapter_bottleneck,
                                               adapter_scaler, "lora_kaiming"))


@register("ConvPass: a 3x3-convolution bottleneck beside attention and MLP, and the head")
def convpass(*, convpass_bottleneck, convpass_scaler, convpass_xavier_init=False, **_):
  # convpass.yml: both branches, parallel, ln after (reads the normed input); main.py's
  # convpass_init lora_xavier.
  spec = peft.Insert("convpass", "parallel", convpass_bottleneck, convpass_scaler, "lora_xavier",
                     normed_input=True, conv_xavier=convpass_xavier_init)
  return _petl("convpass", spec, spec)


@register("RepAdapter: a linear grouped bottleneck before attention and MLP, and the head")
def repadapter(*, repadapter_bottleneck, repadapter_scaler, repadapter_group=2, **_):
  # repadapter.yml: both branches, sequential_before; main.py's repadapter_init lora_xavier.
  spec = peft.Insert("repadapter", "sequential_before", repadapter_bottleneck, repadapter_scaler,
                     "lora_xavier", groups=repadapter_group)
  return _petl("repadapter", spec, spec)


def _sequential_adapter(init, adapter_bottleneck, adapter_scaler):
  return peft.Insert("adapter", "sequential_after", adapter_bottleneck, adapter_scaler, init)


@register("Pfeiffer adapter after each MLP, LoRA-initialised (up from zero), and the head")
def lora_p_adapter(*, adapter_bottleneck, adapter_scaler, **_):
  return _petl("lora_p_adapter", mlp=_sequential_adapter("lora_xavier", adapter_bottleneck,
                                                         adapter_scaler))


@register("Pfeiffer adapter after each MLP, random (xavier) initialised, and the head")
def rand_p_adapter(*, adapter_bottleneck, adapter_scaler, **_):
  return _petl("rand_p_adapter", mlp=_sequential_adapter("xavier", adapter_bottleneck,
                                                         adapter_scaler))


@register("Houlsby adapters after attention and MLP, random (xavier) initialised, and the head")
def rand_h_adapter(*, adapter_bottleneck, adapter_scaler, **_):
  spec = _sequential_adapter("xavier", adapter_bottleneck, adapter_scaler)
  return _petl("rand_h_adapter", spec, spec)


@register("DiffFit: biases, LayerNorms, a per-channel gamma on each residual branch, and the head")
def difffit(**_):
  # build_model.py: difffit adds 'bias' and 'norm' to TUNE_MODULES, besides 'difffit' (gammas).
  return Method("difffit", (_HEAD, (r".*/difffit_\d/gamma|.*/bias|.*(LayerNorm_\d+|encoder_norm|fc_norm)/.*",
                                    "peft"), _REST_FROZEN), dict(peft=vit.PeftModules(difffit=True)))


def _fact(name, fact_type, fact_dim, fact_scaler):
  return Method(name, (_HEAD, (r"Transformer/fact/.*", "peft"), _REST_FROZEN),
                dict(peft=vit.PeftModules(fact_type=fact_type, fact_dim=fact_dim,
                                          fact_scale=fact_scaler)))


@register("FacT-TK: shared factors, a Tucker core for every weight update, and the head")
def fact_tk(*, fact_dim, fact_scaler, **_):
  return _fact("fact_tk", "tk", fact_dim, fact_scaler)


@register("FacT-TT: shared factors, a core per weight group and block, and the head")
def fact_tt(*, fact_dim, fact_scaler, **_):
  return _fact("fact_tt", "tt", fact_dim, fact_scaler)


def _blocks(depth, tuned_blocks) -> str:
  """PETL_Vision's block indices (attention_index, mlp_index, block_index) as a regex
  alternation; negative ones count from the end as Python's do (-1: its configs' 11 on B/16)."""
  if not tuned_blocks or any(not -depth <= i < depth for i in tuned_blocks):
    raise ValueError(f"tuned_blocks={tuple(tuned_blocks)} must name blocks of the {depth}-block model.")
  return "|".join(sorted({str(i % depth) for i in tuned_blocks}))


@register("the attention (q, k, v, out) of blocks `tuned_blocks`, and the head", moves_backbone=True)
def selective_attention(*, depth, tuned_blocks, **_):
  # attn_full_*.yml: attention_type full = attn.qkv and attn.proj, weights and biases.
  return Method("selective_attention", (_HEAD, (
      rf"Transformer/encoderblock_({_blocks(depth, tuned_blocks)})/MultiHeadDotProductAttention_0/.*",
      BACKBONE), _REST_FROZEN))


@register("the MLPs of blocks `tuned_blocks`, and the head", moves_backbone=True)
def selective_mlp(*, depth, tuned_blocks, **_):
  # mlp_full_*.yml: mlp_type full = mlp.fc1 and mlp.fc2.
  return Method("selective_mlp", (_HEAD, (
      rf"Transformer/encoderblock_({_blocks(depth, tuned_blocks)})/MlpBlock_0/.*", BACKBONE),
      _REST_FROZEN))


@register("whole blocks `tuned_blocks` (without the final norm), and the head", moves_backbone=True)
def selective_blocks(*, depth, tuned_blocks, **_):
  # block_*.yml: block_index -> 'blocks.<i>'.
  return Method("selective_blocks", (_HEAD, (
      rf"Transformer/encoderblock_({_blocks(depth, tuned_blocks)})/.*", BACKBONE), _REST_FROZEN))


# ---------------------------------------------------------------------------------------------
# Parameter groups.

def labels(params, rules) -> dict:
  """The group of every parameter (same tree as `params`); the first matching rule decides."""
  groups = paths.first_match(params, rules)
  used = set(paths.rule_indices(paths.flatten(params), [pattern for pattern, _ in rules]).values())
  idle = [pattern for i, (pattern, group) in enumerate(rules)
          if group != FROZEN and i not in used and (pattern, group) != PROJECTION]
  if idle:
    raise ValueError(f"Rules {idle} match no parameter: the model lacks the modules they train.")
  return groups


def split(params, groups) -> tuple[dict, dict]:
  """(trainable, frozen) subtrees of `params`; paths.merge() puts them back together."""
  flat, group_of = paths.flatten(params), paths.flatten(groups)
  trainable = {k: v for k, v in flat.items() if group_of[k] != FROZEN}
  frozen = {k: v for k, v in flat.items() if group_of[k] == FROZEN}
  return paths.unflatten(trainable), paths.unflatten(frozen)


def count_trained(params, groups) -> int:
  """Scalars of `params` (any subtree of the model's) that training learns: not the frozen ones
  nor BatchNorm's running averages (updated by the step, not learned)."""
  group_of = paths.flatten(groups)
  return sum(paths.count(value) for path, value in paths.flatten(params).items()
             if group_of[path] not in (FROZEN, peft.STATISTICS_GROUP))


def summary(method_name: str, params, groups, backbone_count: int) -> str:
  """One line: what trains, and its share of the pre-trained backbone."""
  per_group = {}
  group_of = paths.flatten(groups)
  for path, value in paths.flatten(params).items():
    per_group[group_of[path]] = per_group.get(group_of[path], 0) + paths.count(value)
  per_group.pop(FROZEN, None)
  per_group.pop(peft.STATISTICS_GROUP, None)
  total = sum(per_group.values())
  without_head = total - per_group.get("head", 0)
  parts = ", ".join(f"{group} {n:,}" for group, n in per_group.items())
  return (f"{method_name}: {total:,} trainable parameters ({parts}); without the head "
          f"{without_head:,} = {100 * without_head / backbone_count:.2f}% of the "
          f"{backbone_count:,}-parameter backbone")


def init_params(model, backbone_params, rng, image_size: int) -> dict:
  """`model`'s parameters: the pre-trained backbone where it has them, fresh ones (the method's
  prompts, adapters, ...) elsewhere."""
  images = np.zeros((1, image_size, image_size, 3), np.float32)
  fresh = jax.jit(model.init)(rng, images)["params"]
  missing = set(paths.flatten(backbone_params)) - set(paths.flatten(fresh))
  if missing:
    raise ValueError(f"The tuned model has no place for backbone parameters {sorted(missing)[:5]}.")
  return paths.merge(fresh, backbone_params)


# ---------------------------------------------------------------------------------------------
# The Swin family (vpt_jax/models/swin.py): the methods that apply to its parameter tree.

SWIN_METHODS = ("linear", "full", "bitfit", "layernorm", "partial_k", "lora", "vpt_shallow",
                "vpt_deep", "mixed")


def for_model(name: str, *, depth: int, width: int, stage_depths: tuple[int, ...] | None = None,
              **hparams) -> Method:
  """The method `name` for a model of `models.geometry(model)`: `get` for a ViT; for a Swin
  (`stage_depths`: blocks per stage) the methods of SWIN_METHODS (two-stage ones whose stages
  all are), with Swin's rules where its tree differs; any other is refused in one line."""
  if stage_depths is None:
    return get(name, depth, width, **hparams)
  stages = stage_names(name)
  if not all(stage in SWIN_METHODS for stage in stages):
    raise ValueError(f"Method {name!r} does not apply to a Swin backbone; on Swin: "
                     f"{', '.join(SWIN_METHODS)} (and two-stage methods of those).")
  return _swin_rules(get(name, depth, width, **hparams), tuple(stage_depths), hparams)


def _swin_rules(method: Method, stage_depths: tuple[int, ...], hparams: dict) -> Method:
  if method.stages:
    return dataclasses.replace(method, stages=tuple(
        _swin_rules(stage, stage_depths, hparams) for stage in method.stages))
  prefix = method.rules[:method.rules.index(_HEAD)]  # Rules every method shares (kept first).
  if method.name == "bitfit":
    # KMnP/vpt src/models/vit_models.py L236-239 (Swin's "tinytl-bias"): every parameter whose
    # name holds "bias", which on Swin includes attention's relative_position_bias_table.
    own = ((r".*/(bias|relative_position_bias_table)", "peft"),)
  elif method.name == "layernorm":
    # The patch embedding's, every block's norm1 and norm2, patch merging's and the final norm.
    own = ((r"(.*/)?norm[12]?/(scale|bias)", "peft"),)
  elif method.name == "partial_k":
    own = ((swin_partial_k_pattern(stage_depths, hparams["partial_k"]), BACKBONE),)
  else:  # The other rules name only method modules (prompt/, lora_*) or everything.
    return method
  return dataclasses.replace(method, rules=prefix + (_HEAD,) + own + (_REST_FROZEN,))


def swin_partial_k_pattern(stage_depths: tuple[int, ...], k: int) -> str:
  """The last k blocks in order across stages, the patch merging after any stage they reach into,
  and the final norm: KMnP/vpt's Swin partial-1 (last block + norm), partial-2 (stage 3 + norm)
  and partial-4 (stage 3, stage 2's last two blocks and its downsample, norm), src/models/
  vit_models.py L211-230, read as one rule."""
  blocks = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
  if not 0 < k <= len(blocks):
    raise ValueError(f"partial_k={k} must be between 1 and the model depth {len(blocks)}.")
  tuned = blocks[len(blocks) - k:]
  names = [f"layers_{s}_blocks_{j}" for s, j in tuned] + [
      f"layers_{s}_downsample" for s in sorted({s for s, _ in tuned}) if s < len(stage_depths) - 1]
  return rf"({'|'.join(names)}|norm)/.*"
