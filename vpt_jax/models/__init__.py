"""Model definitions: the Vision Transformer (vit.py) and the Swin Transformer (swin.py).

`build` is the one place a model is made from config.model's fields: the variant names the
family ("swin_B/4/w7" is a Swin, "B/16" a ViT), so a Swin backbone in the config gives a Swin
model everywhere with no other change.
"""

import dataclasses

from vpt_jax.models import swin, vit

# vit.Model fields a Swin model has no use for. Those in _SWIN_IGNORES are ViT choices the Swin
# family fixes itself (it mean-pools every token; exact GELU, LayerNorm epsilon 1e-5 and one
# dropout rate as trained), so a recipe's ViT values pass; the others must stay off.
_SWIN_IGNORES = ("pool_type", "gelu_approximate", "norm_epsilon", "attn_out_dropout",
                 "embedding_dropout")
_VIT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(vit.Model)
                 if f.default is not dataclasses.MISSING}
_SWIN_FIELDS = {f.name for f in dataclasses.fields(swin.Model)} - {"parent", "name"}


def is_swin(variant) -> bool:
  return swin.is_variant(variant)


def build(num_classes: int, **fields):
  """`vit.Model` or `swin.Model` (by `fields["variant"]`) with config.model's fields."""
  if not is_swin(fields.get("variant")):
    return vit.Model(num_classes=num_classes, **fields)
  kept = {}
  for field, value in fields.items():
    if field == "prompt_project" and value is not None:
      raise ValueError("prompt_project does not apply to Swin (the VPT code's Swin builds the "
                       "projection but never applies it); leave method_kwargs.prompt_project unset.")
    if field in _SWIN_FIELDS:
      kept[field] = value
    elif field == "attention_impl":
      if value not in (None, "auto"):
        raise ValueError(f"model.attention_impl={value!r}: the Swin model computes its window "
                         "attention explicitly (bias and mask); leave it None or 'auto'.")
    elif field not in _SWIN_IGNORES and value not in (None, _VIT_DEFAULTS.get(field)):
      raise ValueError(f"model.{field}={value!r} is a ViT setting the Swin model does not have; "
                       "leave it unset for a Swin variant.")
  return swin.Model(num_classes=num_classes, **kept)


def geometry(model) -> dict:
  """What a method's parameter rules need to know of `model` (methods.get's arguments)."""
  arch = model.architecture
  if isinstance(model, swin.Model):
    return dict(depth=arch.depth, width=arch.width, stage_depths=arch.depths)
  return dict(depth=arch.depth, width=arch.width)


def architecture(variant: str, depth: int | None = None):
  """The architecture a variant names (`depth` overrides the ViT's depth, or every Swin stage's);
  `.depth` counts all blocks, `.width` is the pooled feature width, `.patch_size` the stem's."""
  if is_swin(variant):
    return swin.Model(num_classes=0, variant=variant, depth=depth).architecture
  return vit.Model(num_classes=0, variant=variant, depth=depth).architecture


def check_resolution(variant: str, resolution: int) -> None:
  """Refuses, in one line, an input size the variant cannot tile (Swin's stages must be whole
  windows; a ViT needs a multiple of its patch size, which recipes.validate checks)."""
  if is_swin(variant):
    swin.stage_geometry(swin.decode_variant(variant), resolution)
