"""One VTAB-1k run: a task, a tuning method, ViT-B/16 ImageNet-21k, trained as its recipe says.

  python launch/main.py --config=configs/vtab.py:task=dtd,method=vpt_deep --workdir=runs/dtd_vpt
  python launch/main.py --config=configs/vtab.py:task=svhn,method=full,phase=search \
      --config.optim.base_lr=0.005 --workdir=runs/svhn_full_search
  python launch/sweep.py --config=configs/vtab.py:task=all,method=vpt_deep+full --sweep_dir=sweeps/a

Arguments (after the colon): task (one of the 19; for several runs "all", a group or names joined
by "+"), method (see vpt_jax/methods/__init__.py; several joined by "+"), recipe (vpt_jax/training/recipes.py),
phase ("final": train on train800val200 and score the test split; "search": train on train800
and score val200), seed, fsdp (shard large parameters over the data axis), bf16 (bfloat16
compute). Everything else comes from configs/default.py and the recipe; any field can be
overridden, e.g. --config.optim.base_lr=2.5.

Expected test top-1 with VPT-deep (VPT paper, Table 1): e.g. dtd 65.8, svhn 78.1,
clevr_count 68.5; with full fine-tuning dtd 64.3, svhn 87.4, clevr_count 56.3 (all in
vpt_jax/study/published.py).
"""

from configs import default
from vpt_jax.utils import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, task="dtd", method="vpt_deep", recipe="paper", phase="final",
                              seed=0, fsdp=False, bf16=False)
  config = default.set_arguments(default.get_config(), args)
  config.dtype = "bfloat16" if args["bf16"] else "float32"
  if args["fsdp"]:
    config.sharding_strategy = ((".*", "fsdp"),)
  return config
