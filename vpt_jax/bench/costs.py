"""What a method's train step costs, from XLA's analysis of the compiled step (nothing runs, so
B/16 figures come from any machine): FLOPs per image, the step's memory, optimizer state.

  PYTHONPATH=. python launch/method_costs.py     # B/16 at 224 px, batch 2 -> benchmarks/
"""

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import methods
from vpt_jax.training import optim, recipes, steps
from vpt_jax.utils import paths
from vpt_jax.models import vit

# The optimizer each method trains with under the paper recipe (vpt_jax/training/recipes.py).
OPTIMIZERS = {"full": "hf_adamw", "galore": "galore_adamw", "vqt": "adam"}
HPARAMS = dict(prompt_tokens=50, prompt_dropout=0.0, query_tokens=1, query_dropout=0.0,
               lora_rank=8, adapter_dim=8, partial_k=1)


def _bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def method_costs(method: str, variant: str = "B/16", depth: int | None = None,
                 image_size: int = 224, batch: int = 2, num_classes: int = 100) -> dict:
  stage = methods.get(method, depth=depth or vit.decode_variant(variant).depth, **HPARAMS)
  model = vit.Model(num_classes=num_classes, variant=variant, depth=depth, **stage.model_fields)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  groups = methods.labels(params, stage.rules)
  trainable, frozen = methods.split(params, groups)
  name = OPTIMIZERS.get(method, "sgd")
  extra = {k: recipes.GALORE[k] for k in optim.GALORE_FIELDS} if name == "galore_adamw" else {}
  tx = optim.make(name, methods.split(groups, groups)[0], optim.warmup_cosine(1, 10),
                  momentum=0.9, **extra)
  opt_state = jax.eval_shape(tx.init, trainable)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  compiled = jax.jit(steps.make_train_step(model, tx)).lower(
      trainable, opt_state, frozen, images, labels, jax.random.PRNGKey(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  return {"method": method, "optimizer": name, "variant": variant, "image_size": image_size,
          "batch": batch, "trainable_parameters": paths.count(trainable),
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
