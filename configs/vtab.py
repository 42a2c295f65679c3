"""One VTAB-1k run: a task, a tuning method, ViT-B/16 ImageNet-21k, the VPT protocol's schedule.

  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep --workdir=runs/dtd_vpt
  python launch/main.py --config=configs/vtab.py:task=svhn,method=full,mode=search \
      --config.optim.base_lr=0.05 --workdir=runs/svhn_full_search

Arguments (after the colon): task (one of the 19), method (see vpt_jax.methods), mode ("final":
train on train800val200 and score the test split; "search": train on train800 and score val200),
seed, fsdp (shard large parameters over the data axis), bf16 (bfloat16 compute).
For launch/sweep.py, task may also be "all", a group (natural, specialized, structured) or names
joined by "+", and method names joined by "+"; `config.sweep` holds the grid and the protocol:

  python launch/sweep.py --config=configs/vtab.py:task=all,method=vpt_deep+full --sweep_dir=sweeps/a

Protocol (Jia et al. 2022; Han et al. 2024): 100 epochs with 10 of linear warm-up, batch 64, SGD
with momentum 0.9, coupled L2 weight decay, lr = base_lr * batch / 256 with cosine decay; the paper
picks base_lr x weight_decay per task on val200 (launch/sweep.py). Prompt lengths are the published
per-task ones. The lr grids are those of the VPT code (tune_vtab.py): {0.005, 0.001, 0.0005,
0.0001} for methods that move the backbone, {50 ... 0.05} for the rest. Two-stage methods
(ft_then_pt, lp_ft): the sweep tunes the last stage; the first runs with `config.stage_optim`.
Expected test top-1 with VPT-deep (VPT paper, Table 1): e.g. dtd 65.8, svhn 78.1,
clevr_count 68.5; with full fine-tuning dtd 64.3, svhn 87.4, clevr_count 56.3 (all in
vpt_jax/published.py).
"""

import ml_collections

from vpt_jax import config_args, methods
from vpt_jax.data import tasks as tasks_lib

PROMPT_TOKENS = {  # VPT-deep prompt length per task, as the published configs list them.
    "cifar100": 10, "caltech101": 10, "dtd": 10, "oxford_flowers102": 1, "oxford_iiit_pet": 1,
    "svhn": 50, "sun397": 5, "patch_camelyon": 100, "eurosat": 100, "resisc45": 10,
    "diabetic_retinopathy": 1, "clevr_count": 100, "clevr_dist": 200, "dmlab": 100,
    "kitti_dist": 100, "dsprites_loc": 100, "dsprites_ori": 100, "smallnorb_azi": 200,
    "smallnorb_ele": 200}

# Methods whose tuned (last) stage moves the backbone take smaller steps than those that train a
# few parameters.
_BACKBONE_METHODS = ("full", "mixed", "lp_ft", "partial_k")

# The first stage of a two-stage method runs with the shared optim settings plus these: FT-then-PT
# fine-tunes at a typical full-FT choice, LP-FT probes at a typical linear-probe one.
_FIRST_STAGE_OPTIM = {"ft_then_pt": {"full": dict(base_lr=0.001, weight_decay=1e-4)},
                      "lp_ft": {"linear": dict(base_lr=1.0, weight_decay=0.0)}}


def get_config(arg=None):
  args = config_args.parse(arg, task="dtd", method="vpt_deep", mode="final", seed=0, fsdp=False,
                           bf16=False)
  if args["mode"] not in ("final", "search"):
    raise ValueError(f"mode={args['mode']!r} must be 'final' or 'search'.")
  task_names = expand_tasks(args["task"])
  for method in args["method"].split("+"):
    if method not in methods.names():
      raise ValueError(f"method={method!r} is not a tuning method; choose from: "
                       f"{', '.join(methods.names())}.")
  config = ml_collections.ConfigDict()
  config.task = args["task"]
  config.method = args["method"]
  config.seed = args["seed"]

  config.backbone = "ViT-B_16"  # Published name (downloaded once), an .npz path, or None (scratch).
  config.checkpoint_cache_dir = None  # None: $VPT_JAX_CACHE/checkpoints.
  config.model = ml_collections.ConfigDict(dict(
      variant="B/16", pool_type="tok", representation_size=None, dropout=0.0, remat=False,
      attention_impl=ml_collections.FieldReference(None, field_type=str),
      depth=ml_collections.FieldReference(None, field_type=int)))
  config.dtype = "bfloat16" if args["bf16"] else "float32"
  config.method_kwargs = ml_collections.ConfigDict(dict(
      # The VPT code drops prompt tokens out only in the deep variant.
      prompt_tokens=PROMPT_TOKENS[task_names[0]],
      prompt_dropout=0.0 if args["method"] == "vpt_shallow" else 0.1,
      prompt_project=ml_collections.FieldReference(None, field_type=int),
      lora_rank=8, lora_alpha=8.0, adapter_dim=8, partial_k=1))

  config.data = ml_collections.ConfigDict(dict(
      data_dir=ml_collections.FieldReference(None, field_type=str),
      cache_dir=ml_collections.FieldReference(None, field_type=str),
      resolution=224, normalization="imagenet", flip=False,
      train_subset="train800val200" if args["mode"] == "final" else "train800",
      eval_subset="test" if args["mode"] == "final" else "val200"))

  moves_backbone = args["method"] in _BACKBONE_METHODS
  config.optim = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.001 if moves_backbone else 0.5, weight_decay=1e-4,
      momentum=0.9, batch_size=64, epochs=100, warmup_epochs=10,
      # As the VPT code: no decay on the classifier's bias.
      lr_mults=ml_collections.ConfigDict(), decay_rules=((r"head/bias", False), (".*", True))))
  config.stage_optim = ml_collections.ConfigDict(_FIRST_STAGE_OPTIM.get(args["method"], {}))

  config.sharding_rules = ((".*", "fsdp"),) if args["fsdp"] else ((".*", "replicate"),)
  config.eval_batch_size = 256
  config.eval_every_epochs = 0  # >0: train and eval loss/accuracy every N epochs (curves).
  config.checkpoint_every_epochs = 10
  config.checkpoints_to_keep = 2

  # launch/sweep.py: pick base_lr x weight_decay on val200 (ties -> smaller lr), then `seeds` runs
  # on train800val200 scored on test. protocol "data_scale" repeats that for each train size in
  # `sizes` (with N/4 validation examples); "kshot" trains on `shots` examples per class.
  config.sweep = ml_collections.ConfigDict(dict(
      base_lrs=(0.005, 0.001, 0.0005, 0.0001) if moves_backbone else
      (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05),
      weight_decays=(0.01, 0.001, 0.0001, 0.0), seeds=5, protocol="vtab1k",
      sizes=(400, 800, 2000, 5000, 10000, 20000), shots=1))
  return config


def expand_tasks(spec: str) -> list[str]:
  """"dtd", "all", "structured" or "dtd+svhn" -> task names."""
  names = []
  for item in spec.split("+"):
    if item == "all":
      names += tasks_lib.VTAB_TASKS
    elif item in tasks_lib.GROUPS:
      names += tasks_lib.by_group(item)
    elif item in PROMPT_TOKENS:
      names.append(item)
    else:
      raise ValueError(f"task={item!r} is not a VTAB-1k task; choose one of: "
                       f"{', '.join(PROMPT_TOKENS)} (or all, a group, names joined by +).")
  return list(dict.fromkeys(names))
