"""Recipes: how each method trains, by name, and the resolution of a config into one run's settings.

A recipe maps (method, task) to config values: optimizer and its parameter groups, weight-decay
rule, schedule (per epoch or per step), warm-up, epochs, batch, backbone dropout, head init, GELU
form, resize kernel, lr and wd grids, final-run seeds, how a diverged run is scored, and for
two-stage methods the earlier stage's settings. `resolve(config)` fills every field the config
leaves unset from its recipe; what the config sets (in a config file, in
`config.method_overrides[method]`, or on the command line) wins.

  paper   The papers' own code. VPT-shallow, VPT-deep and linear as KMnP/vpt trains them; full
          fine-tuning, Mixed and FT-then-PT as ChengHan111/VPT-or-FT does (FT: its AdamW, batch
          128, 5 warm-up epochs, dropout 0.1). partial_k, bitfit and adapter as KMnP/vpt's
          finetune configs (its AdamW, batch 384, 5 warm-up epochs, the finetune grid, backbone in
          eval mode), mlp_k and sidetune as its linear configs (SGD, batch 1024). Methods neither paper
          trained (layernorm, lora, ssf, lp_ft, Mai et al.'s) take the VPT recipe: SGD, batch 64,
          10 warm-up epochs, no dropout. FGVC tasks as KMnP/vpt's FGVC configs (configs/{prompt,finetune,
          linear}/<task>.yaml, tune_fgvc.py): batch 128 / 384 / 1024, their grids, its
          transforms (resize 256; random crop 224 and flip in training, centre crop otherwise).
  google  How Google fine-tunes these checkpoints for VTAB-1k (ViT paper, appendix B.1.1 and
          Table 4; google-research/vision_transformer vit_jax/train.py and configs/common.py):
          SGD momentum 0.9, no weight decay, gradient clipping at global norm 1, lr 0.01 (not
          scaled by batch), 2,500 steps at batch 512 with a per-step cosine schedule after 500
          warm-up steps (vit_jax's default; the paper does not state VTAB's), inputs in [-1, 1],
          a zero-initialised head, the tanh GELU. For `full` only. Not reproduced: the 384 px
          resolution (set data.resolution=384) and BiT's random crops and flips.

To add one: write a function (method, task, requested) -> nested dict of config values, where
`requested` holds the values the config sets itself, and register it in RECIPES.
"""

import os
import re
from typing import Callable

from vpt_jax import methods, models
from vpt_jax.training import optim
from vpt_jax.data import augment, device, pipeline, shifts, sources
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.checkpoints import alexnet as alexnet_checkpoint
from vpt_jax.models import side as side_model
from vpt_jax.models import vit
from vpt_jax.models import backbones

# VPT-deep prompt length per task. No published config lists them (KMnP/vpt keeps them in
# external files, README L138-140; VPT-or-FT follows VPT's). Each is the one length in
# {1, 5, 10, 50, 100, 200} that reproduces Han et al.'s Tuned/Total row (Tables 3-4, 10-15:
# (12 x 768 x p + 769 x classes) / all parameters, the VPT code's count, build_model.py L49-54);
# they agree with KMnP/vpt's demo.ipynb (dmlab 100, eurosat 100, sun397 5, caltech101 10),
# VPT-or-FT's commands (cifar100 10, clevr_dist 200, dsprites_ori 50) and the VPT paper's group
# means (12.4 / 52.8 / 107.5 as reprinted). Han et al.'s Table 18 (clevr_count, kitti_dist,
# dsprites_loc, dsprites_ori 100) contradicts their own Tuned/Total row (docs/protocol.md).
PROMPT_TOKENS = {
    "cifar100": 10, "caltech101": 10, "dtd": 10, "oxford_flowers102": 1, "oxford_iiit_pet": 1,
    "svhn": 50, "sun397": 5, "patch_camelyon": 100, "eurosat": 100, "resisc45": 10,
    "diabetic_retinopathy": 1, "clevr_count": 50, "clevr_dist": 200, "dmlab": 100,
    "kitti_dist": 50, "dsprites_loc": 10, "dsprites_ori": 50, "smallnorb_azi": 200,
    "smallnorb_ele": 200}

# tune_vtab.py get_lrwd_range (KMnP/vpt L215-266): full fine-tuning's grid and the prompt/linear
# grid; one weight-decay grid; five final seeds (L284).
BACKBONE_LRS = (0.005, 0.001, 0.0005, 0.0001)
PROMPT_LRS = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
WEIGHT_DECAYS = (0.01, 0.001, 0.0001, 0.0)
SEEDS = (42, 44, 82, 100, 800)
# VPT-or-FT's AdamW ignores the grid's value: any wd > 0 decays by 0.01 (src/solver/optimizer.py
# L36-50), wd == 0 switches to SGD.
FT_ADAMW_DECAY = 0.01


def _vpt_code(method: str) -> dict:
  """KMnP/vpt (configs/base-prompt.yaml, base-linear.yaml; src/solver/optimizer.py): SGD, coupled
  decay on all but the head's bias (`last_layer.bias`), a per-epoch schedule with 10 warm-up
  epochs, and the frozen backbone in eval mode (`PromptedTransformer.train`, src/models/vit_prompt/
  vit.py L89-100; src/models/vit_models.py L173-174), so no backbone dropout. Batch 64 for every
  task, as VPT-or-FT runs VPT (its base-prompt.yaml L25, command.txt L543-549) for Han et al.'s
  rows; the VPT code's own runs take 128 below 100 prompts (demo.ipynb), which
  `--config.optim.batch_size=128` reproduces for the VPT paper's rows."""
  linear = methods.stage_names(method)[-1] in VPT_LINEAR_CONFIG
  return dict(
      model=dict(dropout=0.0, attn_out_dropout=0.0, gelu_approximate=False, head_init="vpt"),
      method_kwargs=dict(prompt_dropout=0.0 if method == "vpt_shallow" else 0.1),
      data=dict(normalization="imagenet", resize="tf1_bilinear", flip=False),
      optim=dict(name="sgd", base_lr=0.5 if not methods.moves_backbone(method) else 0.001,
                 weight_decay=1e-4, momentum=0.9, batch_size=1024 if linear else 64, epochs=100,
                 warmup_epochs=10, schedule="epoch", scale_lr=True, grad_clip_norm=None,
                 decay_rules=((r"head/bias", False), (".*", True)),
                 on_non_finite="score_last_epoch"),
      sweep=dict(base_lrs=BACKBONE_LRS if methods.moves_backbone(method) else PROMPT_LRS,
                 weight_decays=WEIGHT_DECAYS, seeds=len(SEEDS), seed_values=SEEDS))


def _vpt_or_ft_full(weight_decay: float | None) -> dict:
  """ChengHan111/VPT-or-FT full fine-tuning (configs/base-finetune.yaml, command.txt): batch 128,
  5 warm-up epochs, the whole ViT in train mode with dropout 0.1 after the position embedding and
  in the MLP (its attention dropouts are 0), and the optimizer quirk: wd > 0 means its AdamW with
  decoupled decay 0.01 on every parameter whose name holds no "bias" (its LayerNorms are named
  attention_norm/ffn_norm/encoder_norm, so their scales are decayed), wd == 0 means SGD with
  momentum 0.9 and no decay."""
  settings = _vpt_code("full")
  weight_decay = 0.01 if weight_decay is None else weight_decay
  settings["model"].update(dropout=0.1)
  settings["optim"].update(batch_size=128, warmup_epochs=5, base_lr=0.001,
                           weight_decay=weight_decay)
  if weight_decay > 0:
    settings["optim"].update(name="hf_adamw", applied_weight_decay=FT_ADAMW_DECAY,
                             decay_rules=((r".*/bias", False), (".*", True)))
  else:
    settings["optim"].update(name="sgd", applied_weight_decay=0.0)
  return settings


# The VPT paper's other rows, as KMnP/vpt's demo.ipynb (cell 2, L44-88) launches them: Partial-1,
# Bias and Adapter with configs/finetune (L65-66, L80-81, L86-88), Linear, MLP-3 and Sidetune
# with configs/linear (L54, L57-60, L72-76).
VPT_FINETUNE_CONFIG = ("partial_k", "bitfit", "adapter")
VPT_LINEAR_CONFIG = ("linear", "mlp_k", "sidetune")


def _vpt_finetune(weight_decay: float | None) -> dict:
  """KMnP/vpt's configs/base-finetune.yaml for the methods it trains with it: its AdamW quirk as
  VPT-or-FT's (optimizer.py L36-50, L100-137; OPTIMIZER "adamw" L14), 5 warm-up epochs of 100
  (L12, L18), batch 384 (L25), the finetune grid (tune_vtab.py L217-219), and the backbone in eval
  mode whatever trains in it (vit_models.py L33-38 froze_enc, L173-174 `self.enc.eval()`): no
  dropout, unlike VPT-or-FT's full fine-tuning."""
  settings = _vpt_or_ft_full(weight_decay)
  settings["model"].update(dropout=0.0)
  settings["optim"].update(batch_size=384)
  settings["sweep"]["base_lrs"] = BACKBONE_LRS
  return settings


# VQT's queries per layer per task (andytu28/VQT scripts/VQT/run_demo_exp.sh); its grids
# (head2toe_train.py L18-47, Adam on ViT-B, lr scaled by batch / 256).
QUERY_TOKENS = {
    "caltech101": 1, "dtd": 1, "oxford_flowers102": 1, "oxford_iiit_pet": 1, "cifar100": 1,
    "patch_camelyon": 1, "resisc45": 1, "diabetic_retinopathy": 1, "eurosat": 1,
    "clevr_count": 1, "dsprites_ori": 1, "sun397": 1, "smallnorb_ele": 10, "clevr_dist": 10,
    "svhn": 20, "dmlab": 20, "dsprites_loc": 20, "smallnorb_azi": 20, "kitti_dist": 20}
VQT_LRS = (1.0, 0.5, 0.25, 0.1, 0.05)
# GaLore's fine-tuning example (jiaweizzhao/GaLore README, RoBERTa on GLUE: --lora_r 4
# --galore_scale 4 --update_proj_gap 500) on the linear layers' kernels of attention and MLP
# (run_glue.py L397-402: "attn"/"mlp" nn.Linear weights; biases, norms, embeddings stay plain
# AdamW). run_glue.py applies no weight decay; the `galore` recipe keeps VPT-or-FT's full
# fine-tuning around it, decay 0.01 included (FT_ADAMW_DECAY), so that it differs from `full` only
# in the optimizer's statistics.
GALORE = dict(galore_rank=4, galore_update_period=500, galore_scale=4.0, galore_rules=(
    (r".*/(MultiHeadDotProductAttention_0/(query|key|value|out)|MlpBlock_0/Dense_\d+)/kernel",
     True), (".*", False)))


def _vqt_code() -> dict:
  """andytu28/VQT (configs/h2t-prompt/vtab.yaml, scripts/VQT/run_vqt_vtab.sh, h2t_vit.py): the
  VPT code base with Adam (coupled decay, none on the head's bias), batch 128, queries dropped
  at 0.1, the backbone's blocks in eval mode but its embedding dropout (0.1) in train mode (its
  train() override covers the encoder only)."""
  settings = _vpt_code("vqt")
  settings["model"].update(embedding_dropout=0.1)
  settings["method_kwargs"] = dict(query_dropout=0.1, query_tokens=1)
  settings["optim"].update(name="adam", batch_size=128, base_lr=0.25)
  settings["sweep"]["base_lrs"] = VQT_LRS
  return settings


# FGVC (KMnP/vpt). tune_fgvc.py's grids: finetune_main, prompt_main, linear_main (one weight-decay
# grid). Their learning rates are the applied rate at batch 256 (setup(): lr / 256 *
# DATA.BATCH_SIZE), which is base_lr here (scale_lr).
FGVC_BACKBONE_LRS = (0.001, 0.0001, 0.0005, 0.005)
FGVC_PROMPT_LRS = (5.0, 2.5, 1.0, 50.0, 25.0, 10.0, 0.5, 0.25, 0.1)
FGVC_LINEAR_LRS = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
# configs/base-{prompt,finetune,linear}.yaml: batch, warm-up epochs (100 epochs, cosine, each).
FGVC_BATCH = {"prompt": (128, 10), "finetune": (384, 5), "linear": (1024, 10)}
# configs/{prompt,finetune,linear}/<task>.yaml SOLVER.(BASE_LR, WEIGHT_DECAY): the rate the code
# applies at that batch (train.py uses BASE_LR as it is); base_lr = BASE_LR x 256 / batch.
FGVC_CONFIGS = {
    "cub": {"prompt": (0.1, 0.01), "finetune": (0.00375, 0.01), "linear": (0.1, 0.01)},
    "nabirds": {"prompt": (0.1, 0.01), "finetune": (0.00375, 0.01), "linear": (0.1, 0.01)},
    "oxford_flowers": {"prompt": (0.001, 0.0001), "finetune": (0.001, 0.0001),
                       "linear": (0.001, 0.0001)},
    "stanford_dogs": {"prompt": (0.001, 0.0001), "finetune": (0.00375, 0.001),
                      "linear": (0.001, 0.0001)},
    "stanford_cars": {"prompt": (0.001, 0.0001), "finetune": (0.0375, 0.001),
                      "linear": (0.001, 0.0001)},
}
# VPT-deep prompt lengths on FGVC, derived (docs/protocol.md): the VPT paper's tuned/total
# percentages (Han et al. Table 19 reprints them: 0.29, 1.02, 0.14, 1.17, 2.27 of 85.8M) less
# the head, over 12 x 768 per prompt; they average 73, the mean the VPT paper states.
FGVC_PROMPT_TOKENS = {"cub": 10, "nabirds": 50, "oxford_flowers": 5, "stanford_dogs": 100,
                      "stanford_cars": 200}
# src/data/transforms.py for CROPSIZE 224: resize 256, crop 224.
FGVC_CROP_FROM = 256


def _fgvc(settings: dict, method: str, task: str) -> dict:
  """The FGVC parts of KMnP/vpt's configs over a method's settings: its batch, warm-up, lr and
  wd per task, grids, transforms and prompt length."""
  kind = ("linear" if methods.stage_names(method)[-1] in VPT_LINEAR_CONFIG else
          "finetune" if (methods.moves_backbone(method) and method not in ("mixed", "ft_then_pt")
                         or method in VPT_FINETUNE_CONFIG)
          else "prompt")
  batch, warmup = FGVC_BATCH[kind]
  lr, wd = FGVC_CONFIGS[task][kind]
  settings["data"].update(resize="short_side", crop_from=FGVC_CROP_FROM, flip=True)
  settings["optim"].update(batch_size=batch, warmup_epochs=warmup, epochs=100,
                           base_lr=lr * 256 / batch, weight_decay=wd)
  settings["sweep"]["base_lrs"] = {"prompt": FGVC_PROMPT_LRS, "finetune": FGVC_BACKBONE_LRS,
                                   "linear": FGVC_LINEAR_LRS}[kind]
  if "prompt_dropout" in settings["method_kwargs"]:
    settings["method_kwargs"]["prompt_tokens"] = FGVC_PROMPT_TOKENS[task]
  return settings


# The backbones of the VPT paper's Tables 2 and 4 and Han et al.'s Tables 7-15, by family. What
# the code does differently for them (docs/protocol.md, "The paper recipe on other backbones"):
# KMnP/vpt builds MAE's ViT with drop_path_rate 0.1 (src/models/vit_backbones/vit_mae.py L59-82),
# MoCo v3's with timm's defaults (vit_moco.py L121-125: no dropout, no drop-path) and Swin-B/L
# (22k, 224) with drop_path_rate 0.5 (src/models/build_vit_backbone.py L170-206, L304-337), none
# with Google's dropout 0.1; they act only where the backbone trains in train mode (full
# fine-tuning: `froze_enc` False for end2end, vit_models.py L33-38; the prompted models' train()
# overrides put the blocks in eval mode, vit_prompt/vit_mae.py L81-92, vit_moco.py L83-94,
# swin_transformer.py L229-240).
FAMILY_PREFIXES = (("mae_", "mae"), ("mocov3_", "mocov3"), ("swin", "swin"), ("dinov2_", None),
                   ("clip_", None), ("openclip_", None))
TRAIN_MODE_REGULARISATION = {"mae": dict(dropout=0.0, drop_path=0.1),
                             "mocov3": dict(dropout=0.0, drop_path=0.0),
                             "swin": dict(dropout=0.0, drop_path=0.5)}
# KMnP/vpt tune_vtab.py L236-243 ("linear_mae"): the linear grid extended downwards for MAE.
LINEAR_MAE_LRS = PROMPT_LRS + (0.025, 0.005, 0.0025)
# Swin-B's VPT: VF's Swin prompt config and command (configs/base-prompt_swin.yaml L25
# BATCH_SIZE 80; command.txt L539 DATA.BATCH_SIZE "80").
SWIN_PROMPT_BATCH = 80
# Swin-B VPT-deep prompt length per task, derived like PROMPT_TOKENS: the one length in
# {1, 5, 10, 50} (the VPT paper's Swin grid) that reproduces Han et al.'s Tuned/Total row of
# Tables 7-9, (12,032 x p + 1,025 x classes) / (86.7M + those): Swin-B's deep prompts are
# (2 x 128 + 2 x 256 + 18 x 512 + 2 x 1024) x p (vit_prompt/swin_transformer.py L124-156).
# eurosat fits worst (10 gives 0.15%, printed 0.13%; 5 would give 0.08%).
SWIN_PROMPT_TOKENS = {
    "cifar100": 1, "caltech101": 1, "dtd": 1, "oxford_flowers102": 1, "oxford_iiit_pet": 1,
    "svhn": 50, "sun397": 1, "patch_camelyon": 5, "eurosat": 10, "resisc45": 10,
    "diabetic_retinopathy": 1, "clevr_count": 50, "clevr_dist": 50, "dmlab": 10,
    "kitti_dist": 50, "dsprites_loc": 10, "dsprites_ori": 5, "smallnorb_azi": 10,
    "smallnorb_ele": 1}
PROMPT_METHODS = ("vpt_shallow", "vpt_deep", "mixed", "ft_then_pt")


def backbone_family(backbone: str | None) -> str | None:
  """"supervised" (Google's ViTs, a checkpoint file, None), "mae", "mocov3" or "swin"; None for
  the backbones neither paper trained (DINOv2, CLIP)."""
  name = backbone or ""
  record = backbones.find(name)
  name = record.name if record else name
  return next((family for prefix, family in FAMILY_PREFIXES if name.startswith(prefix)),
              "supervised")


def paper(method: str, task: str, requested: dict) -> dict:
  """Each method as the papers' code trained it (KMnP/vpt, ChengHan111/VPT-or-FT, andytu28/VQT).
  The backbone `requested` names (config.backbone) decides what their code changed for it."""
  backbone = requested.get("backbone")
  family = backbone_family(backbone)
  if family is None:
    raise ValueError(f"recipe=paper has no settings for backbone={backbone!r}: neither the VPT "
                     "paper nor Han et al. trained DINOv2 or CLIP; use recipe=mai (Mai et al.'s, "
                     "as OSU-MLB/PETL_Vision trains them).")
  settings = _paper(method, task, requested)
  if family == "supervised":
    return settings
  for model, optim_settings, name in (
      [(settings["model"], settings["optim"], method)] +
      [(settings["stage_model"][s], settings["stage_optim"][s], s)
       for s in settings["stage_model"]]):
    if name in ("full", "galore"):  # The backbone in train mode: its own regularisation.
      model.update(TRAIN_MODE_REGULARISATION[family])
    if family == "swin" and name in PROMPT_METHODS + ("vpt_deep",):
      optim_settings["batch_size"] = SWIN_PROMPT_BATCH
  if family == "mae" and method == "linear" and task not in tasks_lib.FGVC_TASKS:
    settings["sweep"]["base_lrs"] = LINEAR_MAE_LRS
  if (family == "swin" and task in SWIN_PROMPT_TOKENS
      and "prompt_tokens" in settings["method_kwargs"]):
    settings["method_kwargs"]["prompt_tokens"] = SWIN_PROMPT_TOKENS[task]
  return settings


def _paper(method: str, task: str, requested: dict) -> dict:
  requested_optim = requested.get("optim", {})
  if method in VPT_FINETUNE_CONFIG:
    settings = _vpt_finetune(requested_optim.get("weight_decay"))
  elif method in ("full", "galore"):
    settings = _vpt_or_ft_full(requested_optim.get("weight_decay"))
    if method == "galore":  # VPT-or-FT's full fine-tuning, its AdamW made GaLore's.
      applied = FT_ADAMW_DECAY if settings["optim"]["weight_decay"] > 0 else 0.0
      settings["optim"].update(name="galore_adamw", applied_weight_decay=applied,
                               decay_rules=((r".*/bias", False), (".*", True)), **GALORE)
  elif method == "vqt":
    settings = _vqt_code()
    if task in QUERY_TOKENS:
      settings["method_kwargs"]["query_tokens"] = QUERY_TOKENS[task]
  else:
    # Mixed (VPT-or-FT MODEL.PROMPT.FT_PT_MIXED): one SGD over prompts, backbone and head with
    # the prompt grid, batch 64, the backbone in eval mode (the same train() override).
    settings = _vpt_code(methods.stage_names(method)[-1])
    if method in ("mixed", "ft_then_pt"):
      settings["sweep"]["base_lrs"] = PROMPT_LRS
      settings["optim"]["base_lr"] = 0.5
  if task in PROMPT_TOKENS and "prompt_dropout" in settings["method_kwargs"]:
    settings["method_kwargs"]["prompt_tokens"] = PROMPT_TOKENS[task]
  stages = {}
  for stage in methods.stage_names(method)[:-1]:
    requested_stage = requested.get("stage_optim", {}).get(stage, {})
    stage_settings = (_vpt_or_ft_full(requested_stage.get("weight_decay")) if method == "ft_then_pt"
                      else _vpt_code(stage))
    if stage == "linear":  # LP-FT probes at a typical linear-probe setting.
      stage_settings["optim"].update(base_lr=1.0, weight_decay=0.0)
    stages[stage] = stage_settings
  settings["stage_optim"] = {name: s["optim"] for name, s in stages.items()}
  settings["stage_model"] = {name: s["model"] for name, s in stages.items()}
  return _fgvc(settings, method, task) if task in tasks_lib.FGVC_TASKS else settings


def google(method: str, task: str, requested: dict) -> dict:
  """Google's fine-tuning of its ViTs on VTAB-1k (SGD, 2,500 steps at batch 512); full only."""
  del task, requested
  if method != "full":
    raise ValueError(f"Recipe 'google' is Google's full fine-tuning of these checkpoints; it has "
                     f"no setting for method {method!r}. Use recipe=paper.")
  return dict(
      model=dict(dropout=0.0, attn_out_dropout=None, gelu_approximate=True, head_init="zeros"),
      method_kwargs={},
      data=dict(normalization="inception", resize="bilinear", flip=False),
      optim=dict(name="sgd", base_lr=0.01, weight_decay=0.0, momentum=0.9, batch_size=512,
                 epochs=1, warmup_epochs=0, steps=2500, warmup_steps=500, schedule="step",
                 scale_lr=False, grad_clip_norm=1.0, decay_rules=((".*", False),),
                 on_non_finite="fail"),
      sweep=dict(base_lrs=(0.03, 0.01, 0.003), weight_decays=(0.0,), seeds=len(SEEDS),
                 seed_values=SEEDS),
      stage_optim={}, stage_model={})


# OSU-MLB/PETL_Vision (Mai et al.) on VTAB-1k: experiment/config/lr_wd_vtab_processed.yml's grid,
# experiment/run.py's one final run at the config's random_seed (42).
MAI_LRS = (0.001, 0.01)
MAI_WEIGHT_DECAYS = (0.0001, 0.001)
MAI_SEEDS = (42,)
# default_vtab_processed.yml L21-40: the modules' capacities and scales a run outside a search
# takes (vpt_num 10 and vpt_dropout 0.1 too); tuned_blocks -1 is ViT-B's block 11. Its VPT
# removes each prompt set after the block it entered (model/vision_transformer.py
# forward_features L223-241), its LoRA is model/lora.py's shared q/k/v form (lora_form "petl").
MAI_METHOD_KWARGS = dict(
    prompt_tokens=10, prompt_dropout=0.1, prompt_carry=False, lora_form="petl",
    adapter_bottleneck=64, adapter_scaler=0.1,
    convpass_bottleneck=8, convpass_scaler=10.0, convpass_xavier_init=False,
    repadapter_bottleneck=8, repadapter_scaler=1.0, repadapter_group=2, fact_dim=8,
    fact_scaler=1.0, tuned_blocks=(-1,))
# experiment/config/method/<name>.yml: its list-valued fields, searched with lr and wd as one
# product grid (main_tune.py L18-27 splits lists from scalars; experiment/tune.py L24
# ParameterGrid). Its other fields (modes, inits) are the methods themselves.
_SCALERS = (0.01, 0.1, 1.0, 10.0)
MAI_METHOD_GRIDS = {
    "vpt_shallow": (("method_kwargs.prompt_tokens", (5, 10, 50, 100, 200)),),
    "vpt_deep": (("method_kwargs.prompt_tokens", (5, 10, 50, 100)),),
    "lora": (("method_kwargs.lora_rank", (1, 8, 16, 32)),),  # lora.yml's lora_bottleneck.
    "adaptformer": (("method_kwargs.adapter_bottleneck", (4, 16, 32)),
                    ("method_kwargs.adapter_scaler", (0.05, 0.1, 0.2))),
    "convpass": (("method_kwargs.convpass_scaler", _SCALERS + (100.0,)),
                 ("method_kwargs.convpass_bottleneck", (8, 16)),
                 ("method_kwargs.convpass_xavier_init", (True, False))),
    "fact_tk": (("method_kwargs.fact_dim", (16, 32, 64)),
                ("method_kwargs.fact_scaler", _SCALERS + (100.0,))),
    "fact_tt": (("method_kwargs.fact_dim", (8, 16, 32)),
                ("method_kwargs.fact_scaler", _SCALERS + (100.0,))),
    "repadapter": (("method_kwargs.repadapter_bottleneck", (8, 16, 32)),
                   ("method_kwargs.repadapter_scaler", (0.1, 0.5, 1.0, 5.0, 10.0))),
    "lora_p_adapter": (("method_kwargs.adapter_scaler", _SCALERS),
                       ("method_kwargs.adapter_bottleneck", (4, 8, 16, 32, 64))),
    "rand_p_adapter": (("method_kwargs.adapter_scaler", _SCALERS),
                       ("method_kwargs.adapter_bottleneck", (4, 8, 16, 32))),
    "rand_h_adapter": (("method_kwargs.adapter_scaler", _SCALERS),
                       ("method_kwargs.adapter_bottleneck", (4, 8, 16, 32))),
}


def mai(method: str, task: str, requested: dict) -> dict:
  """Mai et al.'s recipe as OSU-MLB/PETL_Vision runs it (AdamW, batch 64, 100 epochs, drop-path
  0.1, each method's PETL_Vision sizes and grids; many-shot and few-shot ImageNet settings too).
  On VTAB-1k (experiment/config/default_vtab_processed.yml, engine/optimizer.py,
  engine/trainer.py, data/dataset/vtab_processed.py, experiment/run.py): torch's AdamW over every
  tuned parameter (one group, decay on all, lr as given), batch 64, 100 epochs with 10 warm-up
  epochs and a cosine stepped once per epoch, timm's ViT with exact GELU, no dropout and drop-path
  0.1, images resized to 224 and fed in [0, 1] (normalized: False), selection on the last epoch's
  validation accuracy, one final seed (42). Each method's capacity and scale as
  default_vtab_processed.yml sets them (MAI_METHOD_KWARGS), searched over its method/<name>.yml
  lists with lr and wd (MAI_METHOD_GRIDS). Not reproduced: timm's schedule floor and start (lr_min
  1e-5, warmup_lr_init 1e-6, and its first two epochs both at warmup_lr_init), PIL's bicubic
  resize (bilinear here) and timm's truncated-normal head (zeros here); docs/protocol.md lists
  each with its file."""
  optim_settings = dict(name="adamw", base_lr=0.001, weight_decay=0.0001, momentum=None,
                        batch_size=64, epochs=100, warmup_epochs=10, schedule="epoch",
                        scale_lr=False, grad_clip_norm=None, decay_rules=((".*", True),),
                        on_non_finite="score_last_epoch")
  model = dict(dropout=0.0, attn_out_dropout=None, gelu_approximate=False, head_init="zeros",
               drop_path=0.1)
  earlier = methods.stage_names(method)[:-1]
  settings = dict(
      model=model, method_kwargs=dict(MAI_METHOD_KWARGS),
      data=dict(normalization="unit", resize="bilinear", flip=False),
      optim=optim_settings,
      sweep=dict(base_lrs=MAI_LRS, weight_decays=MAI_WEIGHT_DECAYS, seeds=len(MAI_SEEDS),
                 seed_values=MAI_SEEDS, grid=MAI_METHOD_GRIDS.get(methods.stage_names(method)[-1])),
      stage_optim={name: dict(optim_settings) for name in earlier},
      stage_model={name: dict(model) for name in earlier})
  if task in tasks_lib.MANY_SHOT_TASKS:
    _mai_many_shot(settings, tasks_lib.get(task), requested)
  if task in tasks_lib.IMAGENET_TASKS:
    _mai_imagenet(settings, method, requested)
  return settings


# Mai et al.'s few-shot ImageNet with CLIP ViT-B/16 (OSU-MLB/PETL_Vision experiment/config/
# clip_fs_imagenet.yml, lr_wd_clip_imagenet.yml, method-imagenet/*.yml, data/dataset/few_shot.py):
# one lr and wd, batch 256, drop_path_rate searched over [0, 0.1]; evaluation Resize((256, 256),
# bicubic) + CenterCrop(224); training timm's create_transform with RandAugment
# 'rand-m9-mstd0.5-inc1' and random erasing 0.25 ('pixel').
MAI_IMAGENET_LR, MAI_IMAGENET_WD = 0.00003, 0.005
MAI_IMAGENET_BATCH = 256
MAI_IMAGENET_DROP_PATHS = (0.0, 0.1)
MAI_IMAGENET_CROP_FROM = 256  # int((256 / 224) * crop_size).
MAI_IMAGENET_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
MAI_IMAGENET_RANDOM_ERASING = 0.25
MAI_IMAGENET_PATIENCE = 10  # clip_fs_imagenet.yml early_patience, eval_freq 1.
# method-imagenet/<name>.yml of the methods with released ImageNet results (PETL_Vision
# tune_output/clip_fs_imagenet/): vpt_deep_50, lora_32, adaptformer_32, convpass_32, fact_tk_32, rand_h_adapter_32,
# lora_p_adapter_32, repadapter; their scalars, no grid (the grid is the drop-path's).
MAI_IMAGENET_METHOD_KWARGS = {
    "vpt_deep": dict(prompt_tokens=50),
    "lora": dict(lora_rank=32),
    "adaptformer": dict(adapter_bottleneck=32, adapter_scaler=0.1),
    "convpass": dict(convpass_bottleneck=32, convpass_scaler=1.0, convpass_xavier_init=True),
    "fact_tk": dict(fact_dim=32, fact_scaler=0.01),
    "rand_h_adapter": dict(adapter_bottleneck=32, adapter_scaler=0.01),
    "lora_p_adapter": dict(adapter_bottleneck=32, adapter_scaler=0.1),
    "repadapter": dict(repadapter_bottleneck=32, repadapter_scaler=1.0),
}


def _mai_imagenet(settings: dict, method: str, requested: dict) -> None:
  """PETL_Vision's clip_fs_imagenet over the VTAB-1k settings of `mai`: lr 3e-5, wd 5e-3, batch
  256, the drop-path grid, the backbone's normalisation (its MEAN_STD_DICT: CLIP's statistics for
  CLIP), CLIP's zero-shot head, images resized to 256 x 256 (bicubic, aspect not kept) and held
  so, the centre 224 crop in evaluation; in training timm's RandomResizedCrop(224) (bicubic) and
  flip of that 256 x 256 image (timm crops the decoded image itself), RandAugment and random
  erasing, all on the device."""
  from vpt_jax.models import backbones
  record = backbones.find(str(requested.get("backbone")))
  for optim_settings in (settings["optim"], *settings["stage_optim"].values()):
    optim_settings.update(base_lr=MAI_IMAGENET_LR, weight_decay=MAI_IMAGENET_WD,
                          batch_size=MAI_IMAGENET_BATCH)
  for model in (settings["model"], *settings["stage_model"].values()):
    # clip_fs_imagenet.yml's drop_path_rate (the grid searches it); the head starts as CLIP's
    # zero-shot classifier (README "Robustness to Domain Shift", build_clip_zs_classifier.py).
    model.update(drop_path=0.0, head_init="zero_shot")
  settings["data"].update(
      normalization=record.normalization if record else "clip", resize="squash_bicubic",
      crop_from=MAI_IMAGENET_CROP_FROM, flip=True, augment="random_resized_crop",
      rand_augment=MAI_IMAGENET_RAND_AUGMENT,
      random_erasing=MAI_IMAGENET_RANDOM_ERASING)
  settings["early_stop_patience"] = MAI_IMAGENET_PATIENCE  # Search runs only (loop.EarlyStop).
  settings["sweep"].update(base_lrs=(MAI_IMAGENET_LR,), weight_decays=(MAI_IMAGENET_WD,),
                           grid=(("model.drop_path", MAI_IMAGENET_DROP_PATHS),))
  settings["method_kwargs"].update(
      MAI_IMAGENET_METHOD_KWARGS.get(methods.stage_names(method)[-1], {}))


# Mai et al.'s many-shot settings (OSU-MLB/PETL_Vision experiment/config/): default_cifar100.yml,
# default_resisc.yml, default_clevr.yml: 40 epochs, 4 warm-up (RESISC45 5); default_cifar100_500
# .yml, default_cifar100_1k.yml, default_resisc_500.yml: 100 and 10 for the small sizes;
# lr_wd_cifar.yml, lr_wd_resisc.yml: lr x wd x drop_path_rate; lr_wd_clevr.yml: lr, wd 1e-4, and
# default_clevr.yml's drop_path_rate 0.
MAI_MANY_SHOT_LRS = (0.0005, 0.001)
MAI_MANY_SHOT_DROP_PATHS = (0.0, 0.1, 0.2)
MAI_MANY_SHOT_SMALL = {("cifar100", "500"), ("cifar100", "1k"), ("resisc45", "225"),
                       ("resisc45", "450")}
MAI_MANY_SHOT_WARMUP = {"cifar100": 4, "resisc45": 5, "clevr_dist": 4}
# Resize(256) then RandomResizedCrop(224) / CenterCrop(224) (data/dataset/cifar100.py, resisc.py).
MAI_MANY_SHOT_CROP_FROM = 256
# cifar100-500, resisc45-225 and resisc45-450 search on five splits (vpt_jax/data/many_shot.py).
MANY_SHOT_FIVE_SPLITS = {("cifar100", "500"), ("resisc45", "225"), ("resisc45", "450")}


def _mai_many_shot(settings: dict, task, requested: dict) -> None:
  """PETL_Vision's many-shot runs over the VTAB-1k settings of `mai`: their epochs and grid;
  CIFAR-100 and RESISC45 resized to 256 (bicubic) and held so, trained on RandomResizedCrop(224)
  with a horizontal flip (RESISC45 also a vertical one) and scored on the centre 224 crop, in
  Inception's [-1, 1] (normalized: True with timm's IMAGENET_INCEPTION mean and std 0.5); the
  CIFAR search trains on the evaluation view (cifar100.py builds its trainval_split from
  transform_val). CLEVR as VTAB's TF preprocessing: a bilinear resize to 224, ImageNet's
  statistics (MEAN_STD_DICT), no augmentation."""
  dataset, size = task.many_shot
  small = (dataset, size) in MAI_MANY_SHOT_SMALL
  settings["optim"].update(epochs=100 if small else 40,
                           warmup_epochs=10 if small else MAI_MANY_SHOT_WARMUP[dataset],
                           base_lr=0.001, weight_decay=0.0001)
  settings["sweep"]["base_lrs"] = MAI_MANY_SHOT_LRS
  if dataset == "clevr_dist":
    settings["model"]["drop_path"] = 0.0
    settings["data"].update(normalization="imagenet", resize="bilinear", flip=False)
    settings["sweep"]["weight_decays"] = (0.0001,)
    settings["sweep"]["grid"] = None  # Its scripts search the lr alone: no method capacity axis.
  else:
    data = requested.get("data", {})
    train_subset = data.get("train_subset") or tasks_lib.phase_subsets(
        task, requested.get("phase", "final"), data.get("split"))[0]
    search = train_subset.startswith("split_train")
    settings["data"].update(
        normalization="inception", resize="bicubic", crop_from=MAI_MANY_SHOT_CROP_FROM,
        augment="center_crop" if search and dataset == "cifar100" else "random_resized_crop",
        flip=True, vertical_flip=dataset == "resisc45")
    settings["sweep"]["grid"] = (("model.drop_path", MAI_MANY_SHOT_DROP_PATHS),)
    if task.many_shot in MANY_SHOT_FIVE_SPLITS:  # experiment/tune.py: every split, averaged.
      settings["sweep"]["grid"] += (("data.split", tuple(range(5))),)
  for name in settings["stage_optim"]:
    settings["stage_optim"][name].update({k: settings["optim"][k] for k in (
        "epochs", "warmup_epochs")})
    settings["stage_model"][name]["drop_path"] = settings["model"]["drop_path"]


RECIPES: dict[str, Callable[[str, str, dict], dict]] = {"paper": paper, "google": google,
                                                       "mai": mai}


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


def _explicit(tree: dict) -> dict:
  """The leaves a config sets (not None), nested."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      if inner := _explicit(value):
        out[key] = inner
    elif value is not None:
      out[key] = value
  return out


def resolve(config):
  """One run's complete settings (a ConfigDict): `config` (one task, one method) over its
  recipe's values."""
  import ml_collections  # Configs are ConfigDicts; what is below a resolved run needs none.
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
  requested = _merge(per_method.get(config.method, {}), _explicit(given))
  settings = _merge(RECIPES[config.recipe](config.method, config.task, requested),
                    per_method.get(config.method, {}))
  stage_optim = given.pop("stage_optim", None) or {}
  stage_model = given.pop("stage_model", None) or {}
  for section, entries in (("stage_optim", stage_optim), ("stage_model", stage_model)):
    for name, fields in entries.items():
      explicit = _explicit(fields)
      if name not in stages[:-1] and explicit:
        raise ValueError(f"config.{section}.{name}: {config.method} has no earlier stage called "
                         f"{name!r} (its stages: {', '.join(stages)}; the last one takes "
                         f"config.{section.removeprefix('stage_')} itself).")
      fields_of = given["optim"] if section == "stage_optim" else given["model"]
      if unknown := set(explicit) - set(fields_of):
        raise ValueError(f"config.{section}.{name} sets {sorted(unknown)}, which are not "
                         f"config.{section.removeprefix('stage_')} fields.")
  resolved = _merge(settings, given)
  # Earlier stages: their recipe values, the shared fields the config sets (all but the tuned
  # stage's base_lr, weight_decay and where they were selected), then config.stage_optim.
  shared = {k: v for k, v in given["optim"].items()
            if k not in ("base_lr", "weight_decay", "selected_in")}
  resolved["stage_optim"] = {
      name: _merge(_merge(settings["stage_optim"][name], shared), stage_optim.get(name, {}))
      for name in stages[:-1]}
  # Model fields the config sets hold for every stage (variant, depth, ...), then its stage_model.
  resolved["stage_model"] = {
      name: _merge(_merge(settings["stage_model"][name], given["model"]),
                   stage_model.get(name, {}))
      for name in stages[:-1]}
  train_subset, eval_subset = tasks_lib.phase_subsets(
      tasks_lib.with_data_settings(tasks_lib.get(tasks[0]), resolved["data"]), resolved["phase"],
      resolved["data"].get("split"))
  resolved["data"]["train_subset"] = resolved["data"]["train_subset"] or train_subset
  resolved["data"]["eval_subset"] = resolved["data"]["eval_subset"] or eval_subset
  validate(resolved, stages)
  return ml_collections.ConfigDict(resolved)


_TRAINING_SUBSETS = re.compile(r"train800|train800val200|train_full|scale\d+_(train|trainval)|"
                               r"combined|split_train(_\d+)?|train_all|"  # Many-shot.
                               r"\d+shot_(train800_|train800val200_)?seed\d+|"
                               r"train|trainval|train_[\d.]+")  # FGVC's and custom folders'.


def _check(ok: bool, field: str, value, valid: str) -> None:
  if not ok:
    raise ValueError(f"{field}={value!r} must be {valid}.")


def validate(config: dict, stages=()) -> None:
  """Refuses a resolved config that would train nonsense; one message per field, with the valid
  range. Runs before anything is written."""
  data, sweep = config["data"], config["sweep"]
  patch = models.architecture(config["model"]["variant"]).patch_size[0]
  _check(data["resolution"] > 0 and data["resolution"] % patch == 0, "data.resolution",
         data["resolution"], f"a positive multiple of the patch size {patch}")
  _check(data["normalization"] in device.NORMALIZATIONS, "data.normalization",
         data["normalization"], f"one of {', '.join(device.NORMALIZATIONS)}")
  models.check_resolution(config["model"]["variant"], data["resolution"])
  _check(data["source"] in sources.SOURCES, "data.source", data["source"],
         f"one of {', '.join(sources.SOURCES)}")
  _check(data["resize"] in pipeline.RESIZE_METHODS, "data.resize", data["resize"],
         f"one of {', '.join(pipeline.RESIZE_METHODS)}")
  task = tasks_lib.get(config["task"])
  _check(data["source"] in task.sources, "data.source", data["source"],
         f"a source that reads task {task.name}: {', '.join(task.sources)}")
  _check(data["resize"] not in ("short_side", "squash_bicubic") or data["source"] != "tfds",
         "data.resize", data["resize"], "tf1_bilinear or bilinear with data.source=tfds "
         "(short_side and squash_bicubic are PIL's, "
         "made by the image-folder sources)")
  _check(not (task.many_shot and task.many_shot[0] != "clevr_dist") or bool(data.get("split_dir")),
         "data.split_dir", data.get("split_dir"), "a copy of OSU-MLB/PETL_Vision's data/"
         f"annotations folder, whose split files define {task.name}'s subsets (git clone "
         "https://github.com/OSU-MLB/PETL_Vision; --config.data.split_dir=PETL_Vision/data/"
         "annotations)")
  _check(data.get("augment") in (None,) + device.AUGMENTATIONS, "data.augment",
         data.get("augment"), f"unset or one of {', '.join(device.AUGMENTATIONS)}")
  augment.parse(data.get("rand_augment"))  # A misspelt string fails here, in one line.
  _check(0 <= (data.get("random_erasing") or 0) <= 1, "data.random_erasing",
         data.get("random_erasing"), "a probability in [0, 1]")
  _check(not data.get("crop_from") or data["crop_from"] > data["resolution"], "data.crop_from",
         data.get("crop_from"), f"0 (no crop) or larger than data.resolution={data['resolution']}")
  _check(not _TRAINING_SUBSETS.fullmatch(data["eval_subset"]), "data.eval_subset",
         data["eval_subset"], "held-out data (val200, test, scale<N>_val, <k>shot_val200_seed<s>),"
         " not a training subset, which would be reported as validation accuracy")
  _check(config["dtype"] in ("float32", "bfloat16"), "dtype", config["dtype"],
         "'float32' or 'bfloat16'")
  _check(config["eval_batch_size"] >= 1, "eval_batch_size", config["eval_batch_size"], "≥ 1")
  _check(config["checkpoints_to_keep"] >= 1, "checkpoints_to_keep",
         config["checkpoints_to_keep"], "≥ 1 (a run resumes from its checkpoints)")
  _check(config["checkpoint_every_epochs"] >= 0, "checkpoint_every_epochs",
         config["checkpoint_every_epochs"], "≥ 0 (0: only at the end)")
  for shift in config["eval_shifts"]:
    shifts.parse(shift)
  _check(config["eval_every_epochs"] >= 0, "eval_every_epochs", config["eval_every_epochs"],
         "≥ 0 (0: never during training)")
  patience = config.get("early_stop_patience") or 0
  _check(patience >= 0 and (patience == 0 or sweep["pack"] == 1), "early_stop_patience",
         patience, "≥ 0, and 0 with sweep.pack > 1 (a packed run cannot stop alone)")
  optims = [("optim", config["optim"], config["model"])] + [
      (f"stage_optim.{name}", config["stage_optim"][name], config["stage_model"][name])
      for name in config["stage_optim"]]
  for prefix, optim_config, model in optims:
    _validate_optim(prefix, optim_config)
    for field in ("dropout", "attn_out_dropout", "embedding_dropout", "drop_path"):
      value = model.get(field)
      _check(value is None or 0 <= value < 1, f"model.{field}", value, "in [0, 1)")
    _check(model["head_init"] in ("zeros", "vpt", "zero_shot"), "model.head_init", model["head_init"],
           "zeros, vpt or zero_shot (CLIP's zero-shot classifier; a CLIP backbone)")
  head_classes = config["model"].get("head_classes")
  task_classes = tasks_lib.get(config["task"]).num_classes
  _check(head_classes is None or head_classes >= task_classes, "model.head_classes", head_classes,
         f"None (the task's {task_classes} classes) or at least {task_classes}")
  kwargs = config["method_kwargs"]
  if any(s in ("vpt_shallow", "vpt_deep", "mixed") for s in stages):
    _check(isinstance(kwargs.get("prompt_tokens"), int) and kwargs["prompt_tokens"] >= 1,
           "method_kwargs.prompt_tokens", kwargs.get("prompt_tokens"), "an integer ≥ 1")
    _check(0 <= kwargs["prompt_dropout"] < 1, "method_kwargs.prompt_dropout",
           kwargs["prompt_dropout"], "in [0, 1)")
  if "vqt" in stages:
    _check(isinstance(kwargs.get("query_tokens"), int) and kwargs["query_tokens"] >= 1,
           "method_kwargs.query_tokens", kwargs.get("query_tokens"), "an integer ≥ 1")
    _check(0 <= kwargs["query_dropout"] < 1, "method_kwargs.query_dropout",
           kwargs["query_dropout"], "in [0, 1)")
  _validate_method_kwargs(config, kwargs, set(stages))
  _check(sweep["seeds"] >= 1, "sweep.seeds", sweep["seeds"], "≥ 1")
  _check(len(sweep["base_lrs"]) >= 1 and all(lr > 0 for lr in sweep["base_lrs"]),
         "sweep.base_lrs", sweep["base_lrs"], "one or more learning rates > 0")
  _check(len(sweep["weight_decays"]) >= 1 and all(wd >= 0 for wd in sweep["weight_decays"]),
         "sweep.weight_decays", sweep["weight_decays"], "one or more weight decays ≥ 0")
  _check(sweep["protocol"] in ("vtab1k", "data_scale", "kshot", tasks_lib.MANY_SHOT),
         "sweep.protocol", sweep["protocol"], "vtab1k, data_scale, kshot or many_shot")
  _check(sweep["shots"] >= 1, "sweep.shots", sweep["shots"], "≥ 1")
  _check(sweep["pack"] >= 1, "sweep.pack", sweep["pack"], "≥ 1 (1: one run at a time)")
  for axis in sweep["grid"] or ():
    field, values = (axis if isinstance(axis, (tuple, list)) and len(axis) == 2 else (None, ()))
    _check(field is not None and _has_field(config, str(field)) and len(values) >= 1,
           "sweep.grid", axis, "(field, values) pairs naming config fields, each with one or "
           "more values, e.g. ((\"method_kwargs.lora_rank\", (1, 8, 32)),)")


_PETL_ADAPTERS = {"adaptformer", "lora_p_adapter", "rand_p_adapter", "rand_h_adapter"}


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _validate_method_kwargs(config: dict, kwargs: dict, stages: set) -> None:
  """The capacity and scale settings of the methods a run trains, each in its valid range."""
  arch = models.architecture(config["model"]["variant"], config["model"].get("depth"))
  depth, width = arch.depth, arch.width
  integers = (  # (field, methods that read it, lowest, highest, what the range means)
      ("lora_rank", {"lora"}, 1, width, f"an integer in [1, {width}] (the model width)"),
      ("adapter_dim", {"adapter_houlsby"}, 1, None, "an integer ≥ 1"),
      ("adapter_reduction", {"adapter"}, 1, width,
       f"an integer in [1, {width}] (the adapter is width // adapter_reduction wide)"),
      ("partial_k", {"partial_k"}, 1, depth, f"an integer in [1, {depth}] (the model depth)"),
      ("mlp_k", {"mlp_k"}, 2, None, "an integer ≥ 2 (1 would be method=linear)"),
      ("adapter_bottleneck", _PETL_ADAPTERS, 1, None, "an integer ≥ 1"),
      ("convpass_bottleneck", {"convpass"}, 1, None, "an integer ≥ 1"),
      ("repadapter_bottleneck", {"repadapter"}, 1, None, "an integer ≥ 1"),
      ("repadapter_group", {"repadapter"}, 1, None, "an integer ≥ 1"),
      ("fact_dim", {"fact_tk", "fact_tt"}, 1, width, f"an integer in [1, {width}]"))
  for field, users, low, high, valid in integers:
    if users & stages:
      value = kwargs.get(field)
      _check(_is_int(value) and value >= low and (high is None or value <= high),
             f"method_kwargs.{field}", value, valid)
  scales = (("lora_alpha", {"lora"}, True), ("adapter_scaler", _PETL_ADAPTERS, False),
            ("convpass_scaler", {"convpass"}, False), ("repadapter_scaler", {"repadapter"}, False),
            ("fact_scaler", {"fact_tk", "fact_tt"}, False))
  for field, users, zero_ok in scales:
    if users & stages:
      value = kwargs.get(field)
      _check(_is_number(value) and (value >= 0 if zero_ok else value > 0),
             f"method_kwargs.{field}", value,
             "a number ≥ 0 (0: scale 1)" if zero_ok else "a number > 0")
  _validate_prompt_and_lora_forms(kwargs, stages, depth)
  if "repadapter" in stages:
    groups, bottleneck = kwargs["repadapter_group"], kwargs["repadapter_bottleneck"]
    _check(bottleneck % groups == 0 and width % groups == 0, "method_kwargs.repadapter_group",
           groups, f"a divisor of repadapter_bottleneck={bottleneck} and of the width {width}")
  if "convpass" in stages:
    _check(isinstance(kwargs.get("convpass_xavier_init"), bool),
           "method_kwargs.convpass_xavier_init", kwargs.get("convpass_xavier_init"),
           "True or False")
  if stages & {"selective_attention", "selective_mlp", "selective_blocks"}:
    blocks = kwargs.get("tuned_blocks")
    _check(isinstance(blocks, (tuple, list)) and len(blocks) >= 1
           and all(_is_int(i) and -depth <= i < depth for i in blocks),
           "method_kwargs.tuned_blocks", blocks,
           f"one or more block indices in [-{depth}, {depth - 1}] (negative count from the end)")
  if "sidetune" in stages:
    value = kwargs.get("side_checkpoint")
    _check(isinstance(value, str) and (value in ("", alexnet_checkpoint.NAME) or os.path.isfile(value)),
           "method_kwargs.side_checkpoint", value, f"'{alexnet_checkpoint.NAME}' (torchvision's "
           "ImageNet AlexNet, downloaded once), a .pth file in its layout, or '' (random init)")
    resolution = config["data"]["resolution"]
    _check(resolution >= side_model.MIN_IMAGE_SIZE, "data.resolution", resolution,
           f"≥ {side_model.MIN_IMAGE_SIZE} for sidetune (its AlexNet pools the image three times)")


_PROMPT_FORM_METHODS = {"vpt_shallow", "vpt_deep"}


def _validate_prompt_and_lora_forms(kwargs: dict, stages: set, depth: int) -> None:
  """prompt_carry, prompt_layers and lora_form, where a method the run trains reads them."""
  if _PROMPT_FORM_METHODS & stages:
    carry, layers = kwargs.get("prompt_carry"), kwargs.get("prompt_layers")
    _check(carry is None or isinstance(carry, bool), "method_kwargs.prompt_carry", carry,
           "True (KMnP/vpt's: prompts go through every block), False (PETL_Vision's) or unset")
    _check(layers is None or (_is_int(layers) and 1 <= layers <= depth), "method_kwargs.prompt_layers",
           layers, f"an integer in [1, {depth}] (prompts in the last k blocks) or unset (every block)")
  if "lora" in stages:
    form = kwargs.get("lora_form")
    _check(form in (None,) + vit.LORA_FORMS, "method_kwargs.lora_form", form,
           "'qv' (Hu et al.'s query/value LoRA), 'petl' (PETL_Vision's shared q/k/v form) or unset")


def _has_field(config: dict, dotted: str) -> bool:
  for part in dotted.split("."):
    if not isinstance(config, dict) or part not in config:
      return False
    config = config[part]
  return True


def _validate_optim(prefix: str, o: dict) -> None:
  _check(o["name"] in optim.OPTIMIZERS, f"{prefix}.name", o["name"],
         f"one of {', '.join(optim.OPTIMIZERS)}")
  _check(o["base_lr"] > 0, f"{prefix}.base_lr", o["base_lr"], "> 0")
  _check(o["weight_decay"] >= 0, f"{prefix}.weight_decay", o["weight_decay"], "≥ 0")
  _check(o.get("applied_weight_decay") is None or o["applied_weight_decay"] >= 0,
         f"{prefix}.applied_weight_decay", o.get("applied_weight_decay"), "≥ 0")
  _check(o["momentum"] is None or 0 <= o["momentum"] < 1, f"{prefix}.momentum", o["momentum"],
         "in [0, 1)")
  _check(o["batch_size"] >= 1, f"{prefix}.batch_size", o["batch_size"], "≥ 1")
  _check(o["epochs"] >= 1, f"{prefix}.epochs", o["epochs"], "≥ 1")
  _check(o["schedule"] in ("epoch", "step"), f"{prefix}.schedule", o["schedule"], "epoch or step")
  if o["schedule"] == "epoch":
    _check(o["warmup_epochs"] >= 0, f"{prefix}.warmup_epochs", o["warmup_epochs"], "≥ 0")
    if o["warmup_epochs"] >= o["epochs"]:
      raise ValueError(f"The warm-up ({o['warmup_epochs']} epochs) must be shorter than training "
                       f"({o['epochs']} epochs): lower {prefix}.warmup_epochs or raise "
                       f"{prefix}.epochs.")
  else:
    _check(o.get("steps") is None or o["steps"] >= 1, f"{prefix}.steps", o.get("steps"), "≥ 1")
    _check(o.get("warmup_steps") is None or o["warmup_steps"] >= 0, f"{prefix}.warmup_steps",
           o.get("warmup_steps"), "≥ 0")
  _check(o.get("grad_clip_norm") is None or o["grad_clip_norm"] > 0, f"{prefix}.grad_clip_norm",
         o.get("grad_clip_norm"), "> 0, or None for no clipping")
  if o["name"] == "galore_adamw":
    for field, valid in (("galore_rank", "an integer ≥ 1"),
                         ("galore_update_period", "an integer ≥ 1 (steps)")):
      _check(isinstance(o.get(field), int) and o[field] >= 1, f"{prefix}.{field}", o.get(field),
             valid)
    _check(o.get("galore_scale") is not None and o["galore_scale"] > 0, f"{prefix}.galore_scale",
           o.get("galore_scale"), "> 0")
    _check(bool(o.get("galore_rules")), f"{prefix}.galore_rules", o.get("galore_rules"),
           "(regex, bool) rules choosing the kernels GaLore projects")
  _check(o["on_non_finite"] in ("score_last_epoch", "fail"), f"{prefix}.on_non_finite",
         o["on_non_finite"], "score_last_epoch or fail")
