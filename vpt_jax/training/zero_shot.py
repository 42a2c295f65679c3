"""CLIP's zero-shot classifier as a run's initial head (model.head_init="zero_shot", method zero_shot).

OSU-MLB/PETL_Vision builds its CLIP model's head from the same CLIP model's text tower
(experiment/build_clip_zs_classifier.py, init_imagenet_clip): every class name in each of the 80
templates, the template embeddings L2-normalised, averaged, normalised again, the columns times
exp(logit_scale), applied to L2-normalised image embeddings after `proj` (ClassificationHead
with normalize=True). models/clip_text.py computes that head; here it is made once per run, on
the host, from the backbone's own file (the text tower sits beside the image tower in CLIP's
files) and the task's class names, with those templates for every task (PETL_Vision has only
ImageNet's). The train step never sees the text tower: the head enters the run's initial
parameters like any other initial value.
"""

import numpy as np

from vpt_jax.data import imagenet_classes
from vpt_jax.models import clip_text

TEMPLATES = imagenet_classes.TEMPLATES
HEAD_INIT = "zero_shot"

_heads: dict = {}  # One text-tower pass per (file, image tower, class names) in a process.


def uses(model) -> bool:
  """Whether `model` starts from the zero-shot head (models without the field never do)."""
  return getattr(model, "head_init", None) == HEAD_INIT


def check(task, head_classes: int, checkpoint: str | None, model) -> None:
  """Refuses, in one line, a run that cannot have a zero-shot head: a task without class names,
  a head of another size, or a backbone that is not a CLIP image tower (no projection)."""
  if not task.class_names:
    raise ValueError(
        f"model.head_init=zero_shot (and method zero_shot) needs the task's class names; task "
        f"{task.name} has none (a folder task: one class name a line, in label order, in its "
        "classes.txt).")
  if len(task.class_names) != head_classes:
    raise ValueError(
        f"model.head_init=zero_shot builds a {len(task.class_names)}-class head (task {task.name}'s "
        f"class names), not model.head_classes={head_classes}.")
  if not checkpoint or getattr(model, "projection_dim", None) is None:
    raise ValueError(
        f"model.head_init=zero_shot (and method zero_shot) needs a CLIP backbone, whose file also "
        f"holds the text tower (clip_vitb16, clip_vitb32, openclip_vitb16_laion2b, "
        f"openclip_vitb32_laion2b, or such a file with model.projection_dim set), not "
        f"backbone={checkpoint!r}.")


def head(checkpoint: str, cache_dir: str | None, model, class_names) -> dict:
  """{"kernel": (projection_dim, classes), "bias": zeros}, float32 NumPy: the zero-shot
  classifier of `class_names` from the text tower of `checkpoint` (a published CLIP name or a
  CLIP file), for `model`, the vit.Model of its image tower (its activation and projection
  width). Built on first use in a process (the text tower is jit-ed and run once per class)."""
  key = (checkpoint, cache_dir, model.quick_gelu, model.projection_dim, tuple(class_names))
  if key not in _heads:
    from vpt_jax.checkpoints import clip_text as clip_text_reader  # Reads torch files.
    tower = clip_text_reader.load(checkpoint, model, cache_dir=cache_dir)
    config = tower.model.config

    def tokenize(texts):
      tokens = clip_text.tokenize(texts, config.context_length)
      if tokens.max() >= config.vocab_size:
        raise ValueError(f"Checkpoint {checkpoint}'s text tower knows {config.vocab_size} tokens, "
                         f"fewer than CLIP's tokenizer gives (id {int(tokens.max())}): it is not "
                         "a CLIP text tower the BPE tokenizer fits.")
      return tokens

    built = clip_text.zero_shot_head(tower.model, tower.params, tower.logit_scale, class_names,
                                     TEMPLATES, tokenize)
    _heads[key] = {k: np.asarray(v, np.float32) for k, v in built.items()}
  return {k: v.copy() for k, v in _heads[key].items()}
