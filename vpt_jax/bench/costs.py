"""What a method's train step costs, from XLA's analysis of the compiled step (nothing runs, so
B/16 figures come from any machine): FLOPs per image, the step's memory, optimizer state.

  PYTHONPATH=. python launch/method_costs.py     # B/16 at 224 px, batch 2 -> benchmarks/
  PYTHONPATH=. python launch/method_costs.py --backbones=all   # per backbone, as runs build it
"""

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import methods, models
from vpt_jax.training import optim, recipes, steps
from vpt_jax.utils import paths

# The optimizer each method trains with under the paper recipe (vpt_jax/training/recipes.py).
OPTIMIZERS = {"full": "hf_adamw", "galore": "galore_adamw", "vqt": "adam"}
HPARAMS = dict(prompt_tokens=50, prompt_dropout=0.0, query_tokens=1, query_dropout=0.0,
               lora_rank=8, adapter_dim=8, partial_k=1)


def _bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def method_costs(method: str, variant: str = "B/16", depth: int | None = None,
                 image_size: int = 224, batch: int = 2, num_classes: int = 100) -> dict:
  base = models.build(num_classes=num_classes, variant=variant, depth=depth)
  stage = methods.for_model(method, **models.geometry(base), **HPARAMS)
  model = models.build(num_classes=num_classes, variant=variant, depth=depth, **stage.model_fields)
  name = OPTIMIZERS.get(method, "sgd")
  extra = {k: recipes.GALORE[k] for k in optim.GALORE_FIELDS} if name == "galore_adamw" else {}
  return {"method": method, "variant": variant,
          **step_costs(model, stage.rules, name, image_size, batch, momentum=0.9, **extra)}


def run_costs(run, batch: int = 1) -> dict:
  """The costs of a resolved run's tuned stage (a `spec.RunSpec`: its backbone's model with the
  method's modules, rules and optimizer, as training builds them) at `batch` images of the run's
  resolution."""
  stage = run.stages[-1]
  o = stage.optim
  extra = {k: getattr(o, k) for k in optim.GALORE_FIELDS} if o.name == "galore_adamw" else {}
  return {"backbone": run.backbone.checkpoint, "method": run.method, "recipe": run.recipe,
          "variant": stage.model.variant, "recipe_batch": o.batch_size,
          "prompt_tokens": stage.model.prompt_tokens,
          **step_costs(stage.model, stage.method.rules, o.name, run.data.resolution, batch,
                       momentum=o.momentum, lr_mults=dict(o.lr_mults),
                       decay_rules=o.decay_rules, grad_clip_norm=o.grad_clip_norm, **extra)}


def step_costs(model, rules, optimizer: str, image_size: int, batch: int, **optimizer_kwargs
               ) -> dict:
  """XLA's cost and memory analysis of `model`'s train step under (regex, group) `rules` and
  `optimizer` (vpt_jax/training/optim.py), from abstract shapes: nothing is allocated."""
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  groups = methods.labels(params, rules)
  trainable, frozen = methods.split(params, groups)
  tx = optim.make(optimizer, methods.split(groups, groups)[0], optim.warmup_cosine(1, 10),
                  **optimizer_kwargs)
  opt_state = jax.eval_shape(tx.init, trainable)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  compiled = jax.jit(steps.make_train_step(model, tx)).lower(
      trainable, opt_state, frozen, images, labels, jax.random.PRNGKey(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  head = paths.count(trainable.get("head", {})) + paths.count(trainable.get("projection", {}))
  return {"optimizer": optimizer, "image_size": image_size, "batch": batch,
          "trainable_parameters": paths.count(trainable),
          "trainable_without_head": paths.count(trainable) - head,
          "all_parameters": paths.count(params),
          "gflops_per_image": cost["flops"] / batch / 1e9,
          "temp_mb": memory.temp_size_in_bytes / 2**20,
          "optimizer_state_mb": _bytes(opt_state) / 2**20,
          "parameters_mb": _bytes(params) / 2**20}


def markdown(rows: list[dict]) -> str:
  base = {r["method"]: r for r in rows}
  lines = ["| method | optimizer | trainable | GFLOP/img (XLA) | vs full | step temp (MB) | "
           "optimizer state (MB) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    ratio = (f"{r['gflops_per_image'] / base['full']['gflops_per_image']:.2f}x"
             if "full" in base else "")
    lines.append(f"| {r['method']} | {r['optimizer']} | {r['trainable_parameters']:,} | "
                 f"{r['gflops_per_image']:.3g} | {ratio} | {r['temp_mb']:.0f} | "
                 f"{r['optimizer_state_mb']:.1f} |")
  return "\n".join(lines)


def backbone_markdown(rows: list[dict]) -> str:
  """One row per (backbone, method): the run's own model and optimizer (its recipe)."""
  lines = ["| backbone | method | recipe | prompts | trainable | without head | % of all | "
           "GFLOP/img (XLA) | vs full | step temp (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  full = {r["backbone"]: r["gflops_per_image"] for r in rows if r["method"] == "full"}
  for r in rows:
    ratio = (f"{r['gflops_per_image'] / full[r['backbone']]:.2f}x" if r["backbone"] in full
             else "")
    lines.append(
        f"| {r['backbone']} | {r['method']} | {r['recipe']} | {r['prompt_tokens'] or ''} | "
        f"{r['trainable_parameters']:,} | {r['trainable_without_head']:,} | "
        f"{100 * r['trainable_parameters'] / r['all_parameters']:.2f} | "
        f"{r['gflops_per_image']:.4g} | {ratio} | {r['temp_mb']:.0f} |")
  return "\n".join(lines)
