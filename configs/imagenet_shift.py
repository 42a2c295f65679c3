"""Mai et al.'s robustness study: CLIP ViT-B/16 tuned on 100-shot ImageNet, scored on ImageNet's
validation set and four natural shifts (ImageNet-V2, -Sketch, -A, -R), with WiSE-FT curves, as
OSU-MLB/PETL_Vision runs it (experiment/config/clip_fs_imagenet.yml; the `mai` recipe's ImageNet
section, vpt_jax/training/recipes.py; docs/protocol.md).

  python launch/sweep.py --config=configs/imagenet_shift.py:method=full+lora+vpt_deep \\
      --sweep_dir=sweeps/imagenet --config.data.data_dir=/data/petl
  python launch/robustness.py --sweep_dir=sweeps/imagenet --eval_sets=imagenet_shifts
  python launch/report.py --sweep_dir=sweeps/imagenet

data.data_dir is PETL_Vision's --data_path: it holds annotations/{imagenet,imagenet-v2,
imagenet-s,imagenet-a,imagenet-r}/ (PETL_Vision's data/annotations/ folders with their list
files) and the images at the paths those lists name (imagenet/images/train/..., imagenet-a/...,
imagenetv2-matched-frequency-format-val/...). The sweep searches drop_path in {0, 0.1} on
val_size_10_seed_1992 and trains the final run on train_shot_100_seed_1992, scored on
val_meta.list (ImageNet's validation set); launch/robustness.py then scores every final run on
the four shifted sets (ImageNet-A and -R over their 200 classes) and the WiSE-FT mixtures
alpha = 0, 0.1, ..., 1 on all five; launch/report.py prints the ID / OOD table, the published
rows and the WiSE curve figure.

Arguments as configs/vtab.py's (method, recipe, phase, backbone, seed, fsdp, bf16); task is
`imagenet` (the shifted sets are evaluation sets only).

Expected top-1 (the authors' released result files, OSU-MLB/PETL_Vision
tune_output/clip_fs_imagenet/, commit c4b0227; not the paper's printed table): full fine-tuning
ImageNet 74.95, V2 62.83, Sketch 36.43, A 18.43, R 52.32; LoRA-32 76.56, 66.95, 46.31, 40.29,
70.2; VPT-deep 75.04, 65.23, 46.11, 38.31, 71.01; the zero-shot model 67.69, 61.09, 47.75, 48.89, 76.95.
"""

from configs import default, vtab
from vpt_jax.utils import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, task="imagenet", method="full", recipe="mai", phase="final",
                              backbone="clip_vitb16", seed=0, fsdp=False, bf16=False)
  if args["task"] != "imagenet":
    raise ValueError(f"task={args['task']!r}: this study trains on task=imagenet; the shifted "
                     "sets are scored by launch/robustness.py --eval_sets=imagenet_shifts.")
  config = vtab.set_backbone(default.set_arguments(default.get_config(), args), args["backbone"])
  config.dtype = "bfloat16" if args["bf16"] else "float32"
  if args["fsdp"]:
    config.sharding_strategy = ((".*", "fsdp"),)
  return config
