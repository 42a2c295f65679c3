"""Offline mini-VTAB demo: VPT-deep and full fine-tuning of a tiny pre-trained ViT on 5 tasks.

  python launch/main.py --config=configs/demo.py            # workdir runs/demo
  python launch/main.py --config=configs/demo.py:task=folder:/data/pets,method=linear+full
      # your own images with the demo's backbone: workdir runs/demo_task_folder_data_pets_...

Everything is on the machine: the backbone (ViT-Ti/8, depth 2, pre-trained on rendered shapes by
launch/pretrain.py, in Google's npz layout) ships in vpt_jax/assets/, and the tasks are generated
by the mini_vtab TFDS builder (vpt_jax/data/demo.py): digits (natural, scikit-learn's real
handwritten digits), gratings (specialized), count, location and orientation (structured).
Same pipeline as VTAB-1k: train800val200 -> test, 32x32 images, the `paper` recipe (full
fine-tuning with VPT-or-FT's AdamW, batch 128 and dropout 0.1; VPT-deep with SGD at batch 64; the
VPT code's head init and per-epoch schedule, whose first epoch trains at lr 0) over a short
schedule of 12 epochs. Expected: both methods above chance on every task (chance: 10, 20, 16.7,
16.7, 12.5%), full fine-tuning ahead on this 2-layer backbone, then both on shifted copies of
the test sets (config.eval_shifts), in about 4 minutes on 2 CPU cores.
Arguments: task, method (names joined by +), recipe, phase, seed, as in configs/vtab.py.

Learning rates: base_lr 0.1 for the methods that keep the backbone frozen and 0.001 for those
that move it. The paper recipe applies KMnP/vpt's rule lr = base_lr x batch / 256 to its SGD
methods (tune_vtab.py setup()), so VPT-deep (batch 64) trains at a peak of 0.025 and the linear
probe (base-linear.yaml's batch 1024) at 0.4. A training set smaller than 1,024 images (the
demo's 1,000, most own folders) gives the linear probe one step per epoch at that rate, and its
loss can swing from epoch to epoch; `--config.optim.base_lr=0.025` (0.1 applied) is steadier.
"""

import os

from configs import default
from vpt_jax import methods
from vpt_jax.utils import config_lib

BACKBONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vpt_jax",
                        "assets", "demo_vit_ti8_depth2.npz")


def get_config(arg=None):
  args = config_lib.parse_arg(arg, task="demo", method="vpt_deep+full", recipe="paper",
                              phase="final", seed=0)
  config = default.set_arguments(default.get_config(), args)
  config.backbone = BACKBONE
  config.model.variant, config.model.depth = "Ti/8", 2
  config.method_kwargs.prompt_tokens = 8
  config.method_kwargs.lora_rank, config.method_kwargs.lora_alpha = 4, 4.0
  config.data.resolution, config.data.normalization = 32, "inception"
  config.optim.weight_decay, config.optim.epochs, config.optim.warmup_epochs = 1e-4, 12, 1
  config.sweep.weight_decays, config.sweep.seeds, config.sweep.sizes = (1e-3, 1e-4), 3, (200, 400,
                                                                                          800)
  # The demo's own learning rates and small grids (chosen on the demo's tasks; the recipe's are
  # for ViT-B/16 over 100 epochs).
  config.method_overrides = {
      name: dict(optim=dict(base_lr=0.001), sweep=dict(base_lrs=(0.004, 0.001, 0.00025)))
      if methods.moves_backbone(name) else
      dict(optim=dict(base_lr=0.1), sweep=dict(base_lrs=(0.4, 0.1, 0.025)))
      for name in methods.names()}
  config.eval_batch_size = 250
  config.eval_shifts = ("gaussian_noise:3", "gaussian_blur:3", "contrast:3", "jpeg:3")
  config.checkpoint_every_epochs, config.checkpoints_to_keep = 6, 1
  # The demo's own runs in runs/demo; any other arguments (a folder of your own, other methods) in
  # a workdir named after them (launch/main.py's default), so no command overwrites another's table.
  config.workdir = "runs/demo" if not arg else ""
  return config
