"""Inspect a Google ViT checkpoint: layout, architecture, parameter count, optional logit parity.

  python launch/inspect_checkpoint.py --checkpoint=ViT-B_16          # published name (downloads once)
  python launch/inspect_checkpoint.py --checkpoint=path/to/model.npz \
      --expected=path/to/expected.npz                                 # images + logits to compare

`--expected` is an .npz with `images` (N,H,W,3 in the checkpoint's input range) and `logits`, such
as tests/parity_reference.py writes. The model is built from the checkpoint's own shapes.
"""

import sys

from absl import flags
import jax
import numpy as np

from vpt_jax.checkpoints import pretrained
from vpt_jax.utils import cli
from vpt_jax import models

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "An .npz path or a published name.",
                                  required=True)
_EXPECTED = flags.DEFINE_string("expected", None, "An .npz with `images` and `logits`.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Where published checkpoints are cached.")


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", "highest")
  try:
    path = pretrained.resolve(_CHECKPOINT.value, _CACHE_DIR.value)
    raw = pretrained.read(path)
    kwargs = pretrained.describe(raw)
    model = models.build(**kwargs)
    image_size = 224
    if _EXPECTED.value:
      expected = np.load(_EXPECTED.value)
      image_size = expected["images"].shape[1]
    params = pretrained.load(path, model, image_size=image_size, keep_head=True)
  except (pretrained.CheckpointError, OSError) as e:
    sys.exit(f"error: {e}")

  layout = "big_vision" if any(k.startswith("params/") for k in raw) else "vision_transformer"
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"checkpoint   {path}")
  print(f"layout       {layout} ({len(raw)} arrays)")
  print(f"model        {', '.join(f'{k}={v}' for k, v in kwargs.items())}")
  print(f"parameters   {count:,} at {image_size}x{image_size}")
  if _EXPECTED.value:
    logits, _ = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, expected["images"])
    difference = np.abs(np.asarray(logits, np.float64) - expected["logits"]).max()
    agree = (np.argmax(logits, -1) == np.argmax(expected["logits"], -1)).mean()
    print(f"parity       max |logits - expected| = {difference:.2e} over "
          f"{len(expected['images'])} images; top-1 agreement {agree:.0%}")


if __name__ == "__main__":
  cli.run(main)
