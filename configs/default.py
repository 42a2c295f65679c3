"""The base config: every field a run reads. vtab.py, demo.py and demo_pretrain.py extend it.

A field left unset (None) here is decided per task and method by the run's recipe
(config.recipe, see vpt_jax/training/recipes.py), unless a config file or the command line sets it:
`--config.optim.base_lr=0.1` wins over the recipe. The settings a run really used are in its
<workdir>/config.json.
"""

import ml_collections

from vpt_jax import methods
from vpt_jax.utils import config_lib
from vpt_jax.data import tasks as tasks_lib

unset = config_lib.unset


def _optim_fields():
  return dict(
      name=unset(str),  # sgd, adam, hf_adamw, galore_adamw, adamw (vpt_jax/training/optim.py).
      base_lr=unset(float),  # Peak lr = base_lr x batch / 256 when scale_lr.
      weight_decay=unset(float),  # The grid's value; applied_weight_decay overrides what applies.
      applied_weight_decay=unset(float),
      momentum=unset(float), batch_size=unset(int), epochs=unset(int), warmup_epochs=unset(int),
      schedule=unset(str),  # "epoch": lr changes once per epoch; "step": every step.
      steps=unset(int), warmup_steps=unset(int),  # "step" schedules may count steps instead.
      scale_lr=unset(bool), grad_clip_norm=unset(float),
      decay_rules=unset(tuple),  # (regex, bool) over parameter paths, first match wins.
      lr_mults=ml_collections.ConfigDict(),  # {group: multiplier}, e.g. {"backbone": 0.1}.
      on_non_finite=unset(str),  # "score_last_epoch" (the VPT code) or "fail".
      # galore_adamw: rank, projector refresh period (steps) and update scale of the low-rank
      # Adam statistics, and (regex, bool) rules choosing the kernels that get them.
      galore_rank=unset(int), galore_update_period=unset(int), galore_scale=unset(float),
      galore_rules=unset(tuple),
      selected_in=unset(str))  # Where base_lr and weight_decay were chosen (set by sweeps).


def _model_fields():
  return dict(dropout=unset(float), attn_out_dropout=unset(float),
              embedding_dropout=unset(float), gelu_approximate=unset(bool), head_init=unset(str))


def get_config():
  config = ml_collections.ConfigDict()
  config.task = "dtd"  # One task; launch/main.py and launch/sweep.py also take "a+b", "all".
  config.method = "vpt_deep"  # A name in vpt_jax/methods/__init__.py; "a+b" for several.
  config.recipe = "paper"  # How each method trains (vpt_jax/training/recipes.py).
  config.phase = "final"  # "final": train800val200 -> test; "search": train800 -> val200.
  config.seed = 0

  # A published name (vpt_jax/models/backbones.py; downloaded once), a checkpoint file (.npz, .pth,
  # .pth.tar), or None (from scratch).
  config.backbone = "ViT-B_16"
  config.pretrained_cache_dir = unset(str)  # None: $VPT_JAX_CACHE/checkpoints.
  config.model = ml_collections.ConfigDict(dict(
      variant="B/16", depth=unset(int), pool_type="tok", representation_size=unset(int),
      remat=False, attention_impl=unset(str),
      # Outputs of the head (None: the task's classes); 196 for kitti_dist reproduces Han et al.'s
      # KITTI cells, whose code trains a 196-way head on its 4 classes (docs/protocol.md).
      head_classes=unset(int),
      # Stochastic depth at the last block (linear in depth, timm's rule); None: the recipe's
      # (0, none, unless it says).
      drop_path=unset(float), **_model_fields()))
  config.dtype = "float32"  # Compute dtype: float32 or bfloat16 (parameters stay float32).
  config.method_kwargs = ml_collections.ConfigDict(dict(
      prompt_tokens=unset(int), prompt_dropout=unset(float), prompt_project=unset(int),
      # VPT's prompt forms (vit.Model): unset is KMnP/vpt's (prompts carried through every block,
      # from block 0); recipe=mai sets prompt_carry False (PETL_Vision's: each set acts in the
      # block it enters); prompt_layers k: prompts from block depth - k (PETL_Vision's vpt_layer).
      prompt_carry=unset(bool), prompt_layers=unset(int),
      query_tokens=unset(int), query_dropout=unset(float),
      lora_rank=8, lora_alpha=8.0, adapter_dim=8, adapter_reduction=8, partial_k=1,
      # LoRA's form: unset is Hu et al.'s q/v ("qv"); recipe=mai sets "petl" (PETL_Vision's
      # model/lora.py: one down-projection shared by q, k, v, lora_alpha not read).
      lora_form=unset(str),
      # Mai et al.'s methods at OSU-MLB/PETL_Vision main.py's defaults; tuned_blocks -1 is its
      # configs' block 11 of ViT-B.
      adapter_bottleneck=64, adapter_scaler=0.1, convpass_bottleneck=8, convpass_scaler=10.0,
      convpass_xavier_init=False, repadapter_bottleneck=8, repadapter_scaler=1.0,
      repadapter_group=2, fact_dim=8, fact_scaler=1.0, tuned_blocks=(-1,),
      mlp_k=3,  # The VPT paper's MLP-3 (MODEL.MLP_NUM 2 hidden layers + the head).
      # Sidetune's side network: "alexnet" (torchvision's ImageNet AlexNet, as KMnP/vpt loads it;
      # downloaded once), a .pth file in its layout, or "" (its random initialisation).
      side_checkpoint="alexnet"))

  config.data = ml_collections.ConfigDict(dict(
      source="tfds",  # Where images come from (vpt_jax/data/sources.py).
      data_dir=unset(str),  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
      cache_dir=unset(str),  # None: $VPT_JAX_CACHE/arrays.
      resolution=224, normalization=unset(str), resize=unset(str), flip=unset(bool),
      # Images held at crop_from px and cropped to resolution on the device (random crop in
      # training, centre crop in evaluation; FGVC's recipe: 256); unset or 0: held at resolution.
      crop_from=unset(int),
      # timm's RandAugment string (e.g. "rand-m9-mstd0.5-inc1"; unset or "": none) and random
      # erasing probability (unset or 0: none), applied on the device in training.
      rand_augment=unset(str), random_erasing=unset(float),
      # How a training set held at crop_from px is cropped (vpt_jax/data/device.py
      # AUGMENTATIONS; unset: a random crop) and whether it is also flipped vertically.
      augment=unset(str), vertical_flip=unset(bool),
      # Many-shot tasks (cifar100-1k, resisc45-225, ...): a copy of OSU-MLB/PETL_Vision's
      # data/annotations, and which of the five search splits of the small sizes (unset: 0).
      split_dir=unset(str), split=unset(int),
      # A custom folder (task=folder:<path>, vpt_jax/data/layouts.py) without a val split gets one
      # carved from train: val_fraction of each class's images (of a single <class>/<image> tree,
      # which also gives test_fraction of each class to test), stratified and seeded by
      # split_seed (not config.seed: every seed of a sweep sees the same split). The carved lists
      # are written into the run folder. evaluate_on="val": a folder without a test split; the
      # final run trains on train and is scored on val.
      val_fraction=0.2, test_fraction=0.2, split_seed=0, evaluate_on="test",
      train_subset=unset(str), eval_subset=unset(str)))  # None: as config.phase says.

  config.optim = ml_collections.ConfigDict(_optim_fields())
  # The earlier stage of a two-stage method (ft_then_pt: "full", lp_ft: "linear") trains with
  # these (the recipe's choice where unset); config.optim is the tuned, last stage's.
  earlier_stages = dict.fromkeys(
      stage for method in methods.names() for stage in methods.stage_names(method)[:-1])
  config.stage_optim = ml_collections.ConfigDict({name: _optim_fields() for name in earlier_stages})
  config.stage_model = ml_collections.ConfigDict({name: _model_fields() for name in earlier_stages})
  # Per-method values below the explicit ones: {method: {section: {field: value}}}.
  config.method_overrides = ml_collections.ConfigDict()

  config.sharding_strategy = ((".*", "replicate"),)  # (regex, "replicate" | "fsdp") per parameter.
  config.eval_batch_size = 256
  config.eval_every_epochs = 0  # >0: train and eval loss/accuracy every N epochs (curves).
  # >0: a run scored on a validation subset (not a final run) evaluates it every epoch and stops
  # once this many evaluations fell below its best since that best (PETL_Vision's EarlyStop);
  # selection then takes its best validation accuracy (val_accuracy_best). Unset: the recipe's.
  config.early_stop_patience = unset(int)
  # Corrupted test copies ("gaussian_noise:3", ...; vpt_jax/data/shifts.py) the main job and
  # launch/robustness.py evaluate finished final runs on.
  config.eval_shifts = ()
  config.checkpoint_every_epochs = 10
  config.checkpoints_to_keep = 2

  # launch/sweep.py: base_lr x weight_decay on val200 (ties -> smaller lr), then `seeds` runs on
  # train800val200 scored on test. protocol "data_scale" repeats that for each train size in
  # `sizes` (with N/4 validation examples); "kshot" trains on `shots` examples per class.
  # protocol "kshot": `shots` per class from train800 to train and from val200 to validate in the
  # search, 2 x shots from train800val200 for the final runs (VPT-or-FT's DATA.EVEN_SEPARETE),
  # the same images for every seed unless kshot_per_seed.
  config.sweep = ml_collections.ConfigDict(dict(
      base_lrs=unset(tuple), weight_decays=unset(tuple), seeds=unset(int),
      seed_values=unset(tuple), protocol="vtab1k", sizes=(400, 800, 2000, 5000, 10000, 20000),
      shots=1, kshot_per_seed=False,
      # More axes of the grid: ((field, values), ...), e.g. (("method_kwargs.lora_rank",
      # (1, 8, 32)),); naming optim.base_lr or optim.weight_decay replaces that axis. Unset: the
      # recipe's (none for paper and google).
      grid=unset(tuple),
      pack=1))  # Grid points or seeds trained at once in one compiled program (in-process).
  # JAX's persistent compilation cache: "auto" ($VPT_JAX_CACHE/xla), "off", or a directory.
  config.compilation_cache = "auto"
  config.workdir = unset(str)  # None: runs/<config file>_<argument>.
  return config


def set_arguments(config, args: dict) -> ml_collections.ConfigDict:
  """Writes a config file's arguments (task, method, recipe, phase, seed) into `config`, after
  checking the names, so that a typo fails before anything runs."""
  tasks_lib.expand(args["task"])
  for method in args["method"].split("+"):
    if method not in methods.names():
      raise ValueError(f"method={method!r} is not a tuning method; choose from: "
                       f"{', '.join(methods.names())}.")
  if args["phase"] not in ("final", "search"):
    raise ValueError(f"phase={args['phase']!r} must be 'final' or 'search'.")
  for key in ("task", "method", "recipe", "phase", "seed"):
    config[key] = args[key]
  # FGVC is read from its JSON lists, a custom folder from its own; --config.data.source wins.
  config.data.source = tasks_lib.default_source(args["task"])
  return config
