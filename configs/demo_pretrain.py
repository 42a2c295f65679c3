"""Pre-training of the demo backbone: ViT-Ti/8 of depth 2, from scratch, on rendered shapes.

  python launch/pretrain.py --config=configs/demo_pretrain.py \
      --out=vpt_jax/assets/demo_vit_ti8_depth2.npz

demo_shapes: which of 6 shapes, in any colour, size and place (10,000 training images, 32x32).
AdamW, 30 epochs, batch 128; deterministic on CPU. Expected: validation accuracy near 100% in
roughly 10 minutes on 2 CPU cores. The result is a vision_transformer-layout npz with its
6-class head, which configs/demo.py loads like any Google checkpoint.
"""

from configs import default


def get_config(arg=None):
  del arg
  config = default.get_config()
  config.task, config.method, config.seed = "demo_shapes", "full", 0
  config.backbone = None  # From scratch.
  config.model.variant, config.model.depth, config.model.dropout = "Ti/8", 2, 0.0
  config.data.resolution, config.data.normalization, config.data.flip = 32, "inception", True
  config.data.train_subset, config.data.eval_subset = "train_full", "val_full"
  config.optim.update(dict(name="adamw", base_lr=2e-3, weight_decay=0.05, batch_size=128,
                           epochs=30, warmup_epochs=2,
                           decay_rules=((r".*/(kernel|embeddings)", True), (".*", False))))
  config.eval_batch_size = 500
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs, config.checkpoints_to_keep = 5, 1
  config.workdir = "runs/demo_pretrain"
  return config
