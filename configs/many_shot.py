"""Mai et al.'s many-shot benchmark (OSU-MLB/PETL_Vision): CIFAR-100 at 500 / 1k / 5k / 10k /
full, RESISC45 at 225 / 450 / 900 / 2250 / 4500 / 9000 / full, CLEVR-distance full, with
ViT-B/16 ImageNet-21k and the `mai` recipe's many-shot settings (AdamW, batch 64, 40 epochs or
100 for the small sizes, lr x wd x drop-path grid, RandomResizedCrop and flips; docs/protocol.md).

  # Data: CIFAR-100 and CLEVR from TFDS (launch/prepare_data.py --tasks=cifar100+clevr_count);
  # RESISC45's images (NWPU-RESISC45, its class folders) anywhere; the split files from a copy
  # of PETL_Vision: git clone https://github.com/OSU-MLB/PETL_Vision
  python launch/main.py --config=configs/many_shot.py:task=cifar100,size=1k,method=lora \
      --config.data.split_dir=PETL_Vision/data/annotations --workdir=runs/cifar1k_lora
  python launch/sweep.py --config=configs/many_shot.py:task=resisc45,size=all,method=lora+full \
      --config.data.split_dir=PETL_Vision/data/annotations \
      --config.data.data_dir=/data/NWPU-RESISC45 --sweep_dir=sweeps/many_shot
  python launch/report.py --sweep_dir=sweeps/many_shot --published   # table + many_shot.png

Arguments: task (cifar100, resisc45, clevr_dist, or several joined by "+" that share a data
source: cifar100+clevr_dist from TFDS, resisc45 from its folder), size (one of the dataset's sizes, e.g.
1k or 225, several joined by "+", or all), method (names joined by +), phase, seed, backbone,
bf16, as configs/vtab.py's. A single run trains on PETL_Vision's combined set and scores the
test set (phase=final), or trains on its split_train and scores split_val (phase=search;
data.split picks one of the five search splits of cifar100-500, resisc45-225 and resisc45-450).
The sweep (sweep.protocol=many_shot) trains every point of lr {5e-4, 1e-3} x wd {1e-4, 1e-3} x
drop-path {0, 0.1, 0.2} on the search split(s) (CLEVR: lr only, wd 1e-4, drop-path 0), takes the
best last-epoch validation top-1 (the mean over the five splits where there are five), and
trains the final run (seed 42) on the combined set.

Expected test top-1, from the authors' released raw results (not their printed tables;
vpt_jax/study/published.py): full fine-tuning cifar100-1k 44.3, cifar100-500 34.3, cifar100-full
87.5, clevr_dist-full 91.4, resisc45-225 73.0, resisc45-full 97.3; LoRA (rank 8) cifar100-500
79.8, cifar100-full 92.4, clevr_dist-full 91.8, resisc45-225 66.7, resisc45-full 96.9.
CIFAR-100 from TFDS is put in torchvision's order by TFDS's example ids, which assumes that
CIFAR-100's binary release lists the images as its Python release does (not checked here: see
docs/protocol.md); --config.data.source=folder reads a folder whose train.txt lists them in
torchvision's order instead.
"""

from configs import default, vtab
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.utils import config_lib


def task_names(task: str, size: str) -> str:
  """"cifar100" and "1k" -> "cifar100-1k"; size "all" -> every size of each dataset, "+"-joined."""
  datasets = task.split("+")
  names = []
  for dataset in datasets:
    if dataset not in tasks_lib.MANY_SHOT_SIZES:
      raise ValueError(f"task={dataset!r} is not a many-shot dataset; choose one of: "
                       f"{', '.join(tasks_lib.MANY_SHOT_SIZES)} (several joined by +).")
    sizes = tasks_lib.MANY_SHOT_SIZES[dataset]
    chosen = sizes if size == "all" else [s for s in str(size).split("+") if s in sizes]
    if not chosen:
      raise ValueError(f"size={size!r} is not a size of {dataset}; choose one of: "
                       f"{', '.join(sizes)} (or all, several joined by +).")
    names += [f"{dataset}-{s}" for s in chosen]
  return "+".join(names)


def get_config(arg=None):
  args = config_lib.parse_arg(arg, task="cifar100", size="1k", method="lora", recipe="mai",
                              phase="final", backbone=default.get_config().backbone, seed=0,
                              fsdp=False, bf16=False)
  tasks = task_names(args.pop("task"), args.pop("size"))
  if len({tasks_lib.get(name).sources[0] for name in tasks.split("+")}) > 1:
    raise ValueError("CIFAR-100 and CLEVR are read from TFDS, RESISC45 from its image folder: "
                     "run them in two commands (task=cifar100+clevr_dist, then task=resisc45; "
                     "the same --sweep_dir reports both).")
  arg = ",".join(f"{k}={v}" for k, v in {**args, "task": tasks}.items())
  config = vtab.get_config(arg)
  config.sweep.protocol = tasks_lib.MANY_SHOT
  return config
