"""Offline mini-VTAB demo: VPT-deep and full fine-tuning of a tiny pre-trained ViT on 5 tasks.

  python launch/main.py --config=configs/demo.py            # workdir runs/demo

Everything is on the machine: the backbone (ViT-Ti/8, depth 2, pre-trained on rendered shapes by
launch/pretrain.py, in Google's npz layout) ships in vpt_jax/assets/, and the tasks are generated
by the mini_vtab TFDS builder (vpt_jax/data/demo.py): digits (natural, scikit-learn's real
handwritten digits), gratings (specialized), count, location and orientation (structured).
Same pipeline as VTAB-1k: train800val200 -> test, 32x32 images, the VPT protocol's optimiser
with a short schedule. Expected: both methods far above chance on every task (chance: 10, 20,
16.7, 16.7, 12.5%), in about 3 minutes on 2 CPU cores.
Arguments: task, method (names joined by +), mode, seed, as in configs/vtab.py.
"""

import os

import ml_collections

from vpt_jax import config_args, methods
from vpt_jax.data import tasks as tasks_lib

BACKBONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vpt_jax",
                        "assets", "demo_vit_ti8_depth2.npz")


def get_config(arg=None):
  args = config_args.parse(arg, task="+".join(tasks_lib.DEMO_TASKS), method="vpt_deep+full",
                           mode="final", seed=0)
  for task in args["task"].split("+"):
    tasks_lib.get(task)
  for method in args["method"].split("+"):
    if method not in methods.names():
      raise ValueError(f"method={method!r} is not a tuning method; choose from: "
                       f"{', '.join(methods.names())}.")
  if args["mode"] not in ("final", "search"):
    raise ValueError(f"mode={args['mode']!r} must be 'final' or 'search'.")
  final = args["mode"] == "final"
  moves_backbone = args["method"] in ("full", "mixed", "lp_ft", "ft_then_pt", "partial_k")

  config = ml_collections.ConfigDict()
  config.task, config.method, config.seed = args["task"], args["method"], args["seed"]
  config.backbone = BACKBONE
  config.checkpoint_cache_dir = None
  config.model = ml_collections.ConfigDict(dict(
      variant="Ti/8", pool_type="tok", representation_size=None, dropout=0.0, remat=False,
      attention_impl=ml_collections.FieldReference(None, field_type=str), depth=2))
  config.dtype = "float32"
  config.method_kwargs = ml_collections.ConfigDict(dict(
      prompt_tokens=8, prompt_dropout=0.0,
      prompt_project=ml_collections.FieldReference(None, field_type=int),
      lora_rank=4, lora_alpha=4.0, adapter_dim=8, partial_k=1))
  config.data = ml_collections.ConfigDict(dict(
      data_dir=ml_collections.FieldReference(None, field_type=str),
      cache_dir=ml_collections.FieldReference(None, field_type=str),
      resolution=32, normalization="inception", flip=False,
      train_subset="train800val200" if final else "train800",
      eval_subset="test" if final else "val200"))
  config.optim = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.08 if moves_backbone else 0.4, weight_decay=1e-4, momentum=0.9,
      batch_size=64, epochs=12, warmup_epochs=1, lr_mults=ml_collections.ConfigDict(),
      decay_rules=((".*", True),)))
  config.stage_optim = ml_collections.ConfigDict()  # Two-stage methods: both stages share optim.
  config.sharding_rules = ((".*", "replicate"),)
  config.eval_batch_size = 250
  config.eval_every_epochs = 0
  config.checkpoint_every_epochs = 6
  config.checkpoints_to_keep = 1
  config.sweep = ml_collections.ConfigDict(dict(
      base_lrs=(0.2, 0.08, 0.02) if moves_backbone else (1.0, 0.4, 0.1),
      weight_decays=(1e-3, 1e-4), seeds=3, protocol="vtab1k", sizes=(200, 400, 800), shots=1))
  config.workdir = "runs/demo"
  return config
