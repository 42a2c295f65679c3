"""The base config: every field a run reads. vtab.py, demo.py and demo_pretrain.py extend it.

A field left unset (None) here is decided per task and method by the run's recipe
(config.recipe, see vpt_jax/recipes.py), unless a config file or the command line sets it:
`--config.optim.base_lr=0.1` wins over the recipe. The settings a run really used are in its
<workdir>/config.json.
"""

import ml_collections

from vpt_jax import config_lib, methods
from vpt_jax.data import tasks as tasks_lib

unset = config_lib.unset


def _optim_fields():
  return dict(
      name=unset(str), base_lr=unset(float), weight_decay=unset(float), momentum=unset(float),
      batch_size=unset(int), epochs=unset(int), warmup_epochs=unset(int),
      decay_rules=unset(tuple), lr_mults=ml_collections.ConfigDict())


def get_config():
  config = ml_collections.ConfigDict()
  config.task = "dtd"  # One task; launch/main.py and launch/sweep.py also take "a+b", "all".
  config.method = "vpt_deep"  # A name in vpt_jax/methods.py; "a+b" for several.
  config.recipe = "vpt"  # How each method trains (vpt_jax/recipes.py).
  config.phase = "final"  # "final": train800val200 -> test; "search": train800 -> val200.
  config.seed = 0

  config.backbone = "ViT-B_16"  # Published name (downloaded once), an .npz path, or None (scratch).
  config.pretrained_cache_dir = unset(str)  # None: $VPT_JAX_CACHE/checkpoints.
  config.model = ml_collections.ConfigDict(dict(
      variant="B/16", depth=unset(int), pool_type="tok", representation_size=unset(int),
      dropout=unset(float), remat=False, attention_impl=unset(str)))
  config.dtype = "float32"  # Compute dtype: float32 or bfloat16 (parameters stay float32).
  config.method_kwargs = ml_collections.ConfigDict(dict(
      prompt_tokens=unset(int), prompt_dropout=unset(float), prompt_project=unset(int),
      lora_rank=8, lora_alpha=8.0, adapter_dim=8, partial_k=1))

  config.data = ml_collections.ConfigDict(dict(
      data_dir=unset(str),  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
      cache_dir=unset(str),  # None: $VPT_JAX_CACHE/arrays.
      resolution=224, normalization="imagenet", flip=False,
      train_subset=unset(str), eval_subset=unset(str)))  # None: as config.phase says.

  config.optim = ml_collections.ConfigDict(_optim_fields())
  # The earlier stage of a two-stage method (ft_then_pt: "full", lp_ft: "linear") trains with
  # these (the recipe's choice where unset); config.optim is the tuned, last stage's.
  config.stage_optim = ml_collections.ConfigDict({
      name: _optim_fields() for name in dict.fromkeys(
          stage for method in methods.names() for stage in methods.stage_names(method)[:-1])})
  # Per-method values below the explicit ones: {method: {section: {field: value}}}.
  config.method_overrides = ml_collections.ConfigDict()

  config.sharding_strategy = ((".*", "replicate"),)  # (regex, "replicate" | "fsdp") per parameter.
  config.eval_batch_size = 256
  config.eval_every_epochs = 0  # >0: train and eval loss/accuracy every N epochs (curves).
  config.checkpoint_every_epochs = 10
  config.checkpoints_to_keep = 2

  # launch/sweep.py: base_lr x weight_decay on val200 (ties -> smaller lr), then `seeds` runs on
  # train800val200 scored on test. protocol "data_scale" repeats that for each train size in
  # `sizes` (with N/4 validation examples); "kshot" trains on `shots` examples per class.
  config.sweep = ml_collections.ConfigDict(dict(
      base_lrs=unset(tuple), weight_decays=unset(tuple), seeds=unset(int), protocol="vtab1k",
      sizes=(400, 800, 2000, 5000, 10000, 20000), shots=1))
  config.workdir = unset(str)  # None: runs/<config file>_<argument>.
  return config


def set_arguments(config, args: dict) -> ml_collections.ConfigDict:
  """Writes a config file's arguments (task, method, recipe, phase, seed) into `config`, after
  checking the names, so that a typo fails before anything runs."""
  tasks_lib.expand(args["task"])
  for method in args["method"].split("+"):
    if method not in methods.names():
      raise ValueError(f"method={method!r} is not a tuning method; choose from: "
                       f"{', '.join(methods.names())}.")
  if args["phase"] not in ("final", "search"):
    raise ValueError(f"phase={args['phase']!r} must be 'final' or 'search'.")
  for key in ("task", "method", "recipe", "phase", "seed"):
    config[key] = args[key]
  return config
