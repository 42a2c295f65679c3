"""XLA's cost analysis of each method's compiled train step (FLOPs, memory, optimizer state).

  PYTHONPATH=. python launch/method_costs.py                       # B/16, 224 px, batch 2
  PYTHONPATH=. python launch/method_costs.py --methods=vqt,vpt_deep --variant=Ti/16 --depth=2
  PYTHONPATH=. python launch/method_costs.py --backbones=all       # each backbone family
  PYTHONPATH=. python launch/method_costs.py --backbones=mae_vitb16 --methods=vpt_deep --task=svhn

Nothing is trained or even allocated (abstract shapes), so the B/16 figures need no GPU.
Writes benchmarks/method_costs_<variant>.md and prints it; with --backbones, each run as
configs/vtab.py builds it (task, method, backbone; the `paper` recipe, `mai` for the backbones
`paper` refuses) at --batch images of 224 px, into benchmarks/<date>_flops.md.
"""

import datetime
import os

from absl import app, flags

from configs import vtab
from vpt_jax.utils import files
from vpt_jax.bench import costs
from vpt_jax.training import recipes, spec

_METHODS = flags.DEFINE_list("methods", ["linear", "vpt_deep", "vqt", "full", "galore"],
                             "Methods to analyse.")
_VARIANT = flags.DEFINE_string("variant", "B/16", "ViT variant.")
_DEPTH = flags.DEFINE_integer("depth", None, "Override the depth.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image size.")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch (FLOPs are per image).")
_OUT_DIR = flags.DEFINE_string("out_dir", "benchmarks", "Where the Markdown goes.")
_BACKBONES = flags.DEFINE_list(
    "backbones", [], "Published backbone names (configs/vtab.py backbone=...), or 'all': one of "
    "each family. Set: the runs' own train steps, per backbone and method.")
_TASK = flags.DEFINE_string("task", "dtd", "With --backbones: the task (head size, prompt length).")
# A representative of each registered family (vpt_jax/models/backbones.py).
ALL_BACKBONES = ("ViT-B_16", "sup_vitb16_224", "mae_vitb16", "mae_vitl16", "mae_vith14",
                 "mocov3_vitb16", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitb14_reg4",
                 "dinov2_vitl14", "clip_vitb16", "clip_vitb32", "swinb_imagenet22k_224",
                 "swinl_imagenet22k_224")


def backbone_rows(names, method_names, task: str, batch: int, log=print):
  """(costs.run_costs of each (backbone, method) run as configs/vtab.py resolves it, the pairs a
  backbone's model cannot run, with why)."""
  rows, skipped = [], []
  for name in names:
    recipe = "paper" if recipes.backbone_family(name) else "mai"
    for method in method_names:
      try:
        config = recipes.resolve(vtab.get_config(
            f"task={task},method={method},backbone={name},recipe={recipe}"))
        rows.append(costs.run_costs(spec.from_resolved(config, "unused"), batch))
      except ValueError as e:  # A method the backbone's model has no modules for.
        skipped.append(f"{name} {method}: {str(e).splitlines()[0]}")
        log(f"skipped {skipped[-1]}")
        continue
      log(costs.backbone_markdown(rows).splitlines()[-1])
  return rows, skipped


def main(argv):
  del argv
  if _BACKBONES.value:
    names = _BACKBONES.value
    if names == ["all"]:  # Swin's where its record is registered.
      names = [n for n in ALL_BACKBONES if n in vtab.backbones.BACKBONES]
    methods = (_METHODS.value if _METHODS.present else ["full", "linear", "vpt_deep", "lora"])
    rows, skipped = backbone_rows(names, methods, _TASK.value, _BATCH.value)
    text = (f"# Train-step costs per backbone: task {_TASK.value}, 224 px, batch {_BATCH.value}, "
            "float32 (XLA cost and memory analysis, CPU compile)\n\n"
            f"Made by `PYTHONPATH=. python launch/method_costs.py --backbones="
            f"{','.join(_BACKBONES.value)} --batch={_BATCH.value} --task={_TASK.value}`. "
            "Each run as `configs/vtab.py:task=...,method=...,backbone=...` resolves it: the "
            "backbone's architecture, the method's modules and the recipe's optimizer and prompt "
            "length (`paper`; `mai` for DINOv2 and CLIP, which `paper` refuses). Trainable counts "
            "include the head (and CLIP's projection, trained with it); `without head` is what the "
            "method adds or unfreezes. GFLOP/img: XLA's count for one train step (forward, "
            "backward, update) over the batch, per image.\n\n"
            + costs.backbone_markdown(rows) + "\n"
            + "".join(f"\nNot run: {line}" for line in skipped))
    path = os.path.join(_OUT_DIR.value, f"{datetime.date.today().isoformat()}_flops.md")
    files.write_text(path, text)
    print(text)
    print(f"wrote {path}")
    return
  rows = []
  for method in _METHODS.value:
    rows.append(costs.method_costs(method, _VARIANT.value, _DEPTH.value, _IMAGE_SIZE.value,
                                   _BATCH.value))
    print(costs.markdown(rows).splitlines()[-1], flush=True)
  text = (f"# Train-step costs: {_VARIANT.value}"
          f"{f' depth {_DEPTH.value}' if _DEPTH.value else ''} at {_IMAGE_SIZE.value} px, "
          f"batch {_BATCH.value}, float32 (XLA cost and memory analysis, CPU compile)\n\n"
          + costs.markdown(rows) + "\n")
  path = os.path.join(_OUT_DIR.value,
                      f"method_costs_{_VARIANT.value.replace('/', '')}.md")
  files.write_text(path, text)
  print(text)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
