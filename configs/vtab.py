"""One VTAB-1k run: a task, a tuning method, a backbone (ViT-B/16 ImageNet-21k unless named),
trained as its recipe says.

  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep --workdir=runs/dtd_vpt
  python launch/main.py --config=configs/vtab.py:task=svhn,method=full,phase=search \
      --config.optim.base_lr=0.005 --workdir=runs/svhn_full_search
  python launch/sweep.py --config=configs/vtab.py:task=all,method=vpt_deep+full --sweep_dir=sweeps/a
  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep,backbone=mae_vitb16 \
      --workdir=runs/dtd_vpt_mae

Arguments (after the colon): task (one of the 19; for several runs "all", a group or names joined
by "+"), method (see vpt_jax/methods/__init__.py; several joined by "+"), recipe (vpt_jax/training/recipes.py),
phase ("final": train on train800val200 and score the test split; "search": train on train800
and score val200), backbone (a published name, `python launch/main.py --list`: sets the
architecture and pooling the VPT code uses for it, and its own input normalization where its
pre-training did not see Google's [-1, 1] inputs), seed, fsdp (shard large parameters over the
data axis), bf16 (bfloat16 compute). Everything else comes from configs/default.py and the
recipe; any field can be overridden, e.g. --config.optim.base_lr=2.5.

Expected test top-1 with VPT-deep (VPT paper, Table 1): e.g. dtd 65.8, svhn 78.1,
clevr_count 68.5; with full fine-tuning dtd 64.3, svhn 87.4, clevr_count 56.3 (all in
vpt_jax/study/published.py).
"""

from configs import default
from vpt_jax import checkpoints
from vpt_jax.models import backbones
from vpt_jax.utils import config_lib


def set_backbone(config, name: str):
  """The published backbone `name` with the model fields and normalization its record gives
  (checkpoints.set_backbone; no file is read). A file goes in --config.backbone, whose model
  fields the launchers then take from the file (checkpoints.configure)."""
  if name not in backbones.BACKBONES:
    raise ValueError(f"backbone={name!r} is not a published backbone; choose from: "
                     f"{', '.join(backbones.BACKBONES)} (a file goes in --config.backbone).")
  return checkpoints.set_backbone(config, name)


def get_config(arg=None):
  args = config_lib.parse_arg(arg, task="dtd", method="vpt_deep", recipe="paper", phase="final",
                              backbone=default.get_config().backbone, seed=0, fsdp=False,
                              bf16=False)
  config = set_backbone(default.set_arguments(default.get_config(), args), args["backbone"])
  config.dtype = "bfloat16" if args["bf16"] else "float32"
  if args["fsdp"]:
    config.sharding_strategy = ((".*", "fsdp"),)
  return config
