"""Pre-training of the demo backbone: ViT-Ti/8 of depth 2, from scratch, on rendered shapes.

  python launch/pretrain.py --config=configs/demo_pretrain.py \
      --out=vpt_jax/assets/demo_vit_ti8_depth2.npz

demo_shapes: which of 6 shapes, in any colour, size and place (10,000 training images, 32x32).
AdamW, 30 epochs, batch 128; deterministic on CPU. Expected: validation accuracy near 100% in
roughly 10 minutes on 2 CPU cores. The result is a vision_transformer-layout npz with its
6-class head, which configs/demo.py loads like any Google checkpoint.
"""

import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.task, config.method, config.seed = "demo_shapes", "full", 0
  config.backbone = None  # From scratch.
  config.checkpoint_cache_dir = None
  config.model = ml_collections.ConfigDict(dict(
      variant="Ti/8", pool_type="tok", representation_size=None, dropout=0.0, remat=False,
      attention_impl=ml_collections.FieldReference(None, field_type=str), depth=2))
  config.dtype = "float32"
  config.method_kwargs = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(dict(
      data_dir=ml_collections.FieldReference(None, field_type=str),
      cache_dir=ml_collections.FieldReference(None, field_type=str),
      resolution=32, normalization="inception", flip=True,
      train_subset="train_full", eval_subset="val_full"))
  config.optim = ml_collections.ConfigDict(dict(
      name="adamw", base_lr=2e-3, weight_decay=0.05, momentum=0.9, batch_size=128, epochs=30,
      warmup_epochs=2, lr_mults=ml_collections.ConfigDict(),
      decay_rules=((r".*/(kernel|embeddings)", True), (".*", False))))
  config.sharding_rules = ((".*", "replicate"),)
  config.eval_batch_size = 500
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 5
  config.checkpoints_to_keep = 1
  config.workdir = "runs/demo_pretrain"
  return config
