"""Offline mini-VTAB demo: VPT-deep and full fine-tuning of a tiny pre-trained ViT on 5 tasks.

  python launch/main.py --config=configs/demo.py            # workdir runs/demo

Everything is on the machine: the backbone (ViT-Ti/8, depth 2, pre-trained on rendered shapes by
launch/pretrain.py, in Google's npz layout) ships in vpt_jax/assets/, and the tasks are generated
by the mini_vtab TFDS builder (vpt_jax/data/demo.py): digits (natural, scikit-learn's real
handwritten digits), gratings (specialized), count, location and orientation (structured).
Same pipeline as VTAB-1k: train800val200 -> test, 32x32 images, the VPT recipe with a short
schedule. Expected: both methods far above chance on every task (chance: 10, 20, 16.7, 16.7,
12.5%), in about 3 minutes on 2 CPU cores.
Arguments: task, method (names joined by +), recipe, phase, seed, as in configs/vtab.py.
"""

import os

from configs import default
from vpt_jax import config_lib, methods

BACKBONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vpt_jax",
                        "assets", "demo_vit_ti8_depth2.npz")


def get_config(arg=None):
  args = config_lib.parse_arg(arg, task="demo", method="vpt_deep+full", recipe="vpt",
                              phase="final", seed=0)
  config = default.set_arguments(default.get_config(), args)
  config.backbone = BACKBONE
  config.model.variant, config.model.depth = "Ti/8", 2
  config.method_kwargs.prompt_tokens, config.method_kwargs.prompt_dropout = 8, 0.0
  config.method_kwargs.lora_rank, config.method_kwargs.lora_alpha = 4, 4.0
  config.data.resolution, config.data.normalization = 32, "inception"
  config.optim.weight_decay, config.optim.epochs, config.optim.warmup_epochs = 1e-4, 12, 1
  config.optim.decay_rules = ((".*", True),)
  config.sweep.weight_decays, config.sweep.seeds, config.sweep.sizes = (1e-3, 1e-4), 3, (200, 400,
                                                                                          800)
  # A short schedule takes larger steps than the recipe's 100 epochs would.
  config.method_overrides = {
      name: dict(optim=dict(base_lr=0.08), sweep=dict(base_lrs=(0.2, 0.08, 0.02)))
      if methods.moves_backbone(name) else
      dict(optim=dict(base_lr=0.4), sweep=dict(base_lrs=(1.0, 0.4, 0.1)))
      for name in methods.names()}
  config.eval_batch_size = 250
  config.checkpoint_every_epochs, config.checkpoints_to_keep = 6, 1
  config.workdir = "runs/demo"
  return config
