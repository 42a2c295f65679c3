"""What a checkpoint file is, read off its keys and shapes: `Description`, which each reader
(pretrained, torch_vit, swin) gives for its files, and what follows from it: the model fields
that fit the file, the options of a config or a model that contradict it, and the one-line
messages that say so.

A description holds only what the file decides. Where a file does not say (the GELU form and
LayerNorm epsilon of a Google or timm-layout ViT, which vpt_jax's own exports write from any
model), the field is None and the run's recipe or the user chooses.
"""

import dataclasses
from typing import Any

from vpt_jax.models import swin, vit

# vit.Model's defaults: a description's model fields name only what differs from them.
_VIT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(vit.Model)
                 if f.default is not dataclasses.MISSING}
_FAMILY_NAMES = {"vit": "", "dinov2": "DINOv2", "clip": "CLIP", "swin": "Swin"}
# The fields whose contradiction changes which keys the model has (a load then fails on them);
# epsilon and GELU do not, so a load checks them before it fits the keys.
ARCHITECTURE_FIELDS = ("variant", "depth", "pool_type", "layer_scale", "register_tokens",
                       "pre_norm", "embedding_bias", "projection_dim")
GEOMETRY_FIELDS = ("variant", "depth")
GELU_FORMS = ("tanh", "erf", "quick")


def _error(message: str):
  from vpt_jax.checkpoints import pretrained  # pretrained imports this module.
  return pretrained.CheckpointError(message)


@dataclasses.dataclass(frozen=True)
class Description:
  """A checkpoint's architecture.

  family: "vit" (Google's files, timm's layout: MAE, MoCo v3, vpt_jax's exports), "dinov2",
    "clip" (an image tower in OpenAI's or open_clip's layout) or "swin".
  layout: "vision_transformer" or "big_vision" (.npz), "timm", "openai" (OpenAI's TorchScript
    archive), "open_clip", "swin" (microsoft/Swin-Transformer).
  width, depth, patch, heads, mlp_dim: the blocks (Swin: the stem's width and the first stage's
    heads; depth counts every block).
  pooling: "cls" (a class token), "gap" (the mean of the tokens, no class token) or "map"
    (big_vision's attention-pooling head); fc_norm: timm's norm after a mean pool (MAE
    fine-tuned).
  layer_scale, registers, pre_norm (CLIP's ln_pre), projection (CLIP's proj width),
    embedding_bias: read off the keys.
  gelu: the form the file was trained with where it decides it ("erf", "quick"), None where not;
    gelu_forms: the forms a model may use with it.
  norm_epsilon: where the family fixes it (CLIP 1e-5, DINOv2 1e-6, Swin 1e-5), else None.
  stage_depths, stage_heads, window: Swin's.
  """
  path: str
  family: str
  layout: str
  width: int
  depth: int
  patch: int
  heads: int
  mlp_dim: int
  pooling: str = "cls"
  fc_norm: bool = False
  layer_scale: bool = False
  registers: int = 0
  pre_norm: bool = False
  projection: int | None = None
  embedding_bias: bool = True
  gelu: str | None = None
  gelu_forms: tuple[str, ...] = GELU_FORMS
  norm_epsilon: float | None = None
  stage_depths: tuple[int, ...] = ()
  stage_heads: tuple[int, ...] = ()
  window: int | None = None

  @property
  def variant(self) -> str | None:
    """The model variant of this geometry ("B/16", "swin_B/4/w7"), None where no named size has it."""
    if self.family == "swin":
      for size in swin.SIZES:
        arch = swin.decode_variant(f"swin_{size}")
        if (arch.embed_dim, arch.heads) == (self.width, self.stage_heads) and (
            arch.depths == self.stage_depths or len(set(self.stage_depths)) == 1):
          return f"swin_{size}/{self.patch}/w{self.window}"
      return None
    for size in vit.SIZES:
      arch = vit.decode_variant(f"{size}/{self.patch}")
      if (arch.width, arch.mlp_dim, arch.num_heads) == (self.width, self.mlp_dim, self.heads):
        return f"{size}/{self.patch}"
    return None

  @property
  def config_depth(self) -> int | None:
    """config.model.depth for this file: None where its variant's own depth is the file's (Swin:
    every stage's depth)."""
    variant = self.variant
    if variant is None or self.depth == _architecture(variant).depth:
      return None
    return self.stage_depths[0] if self.family == "swin" else self.depth

  @property
  def pool_types(self) -> tuple[str, ...]:
    """The vit.Model pool types that load this file, its own first: a class-token file pools its
    token, or (timm's layouts) the patches under a fresh fc_norm as KMnP/vpt does for MAE, or (the
    npz reader drops the token) their mean."""
    if self.family == "swin":
      return ("gap",)
    if self.pooling == "map":
      return ()
    if self.fc_norm:
      return ("gap_fc_norm",)
    if self.pooling == "gap":
      return ("gap",)
    if self.family == "clip":
      return ("tok",)
    return ("tok", "gap") if self.layout in ("vision_transformer", "big_vision") else ("tok", "gap_fc_norm")

  def geometry(self) -> str:
    """"width 768, depth 12, patch 16, 12 heads" and what else the file has, for messages."""
    name = _FAMILY_NAMES[self.family]
    if self.family == "swin":
      return (f"Swin, embed width {self.width}, stage depths {'-'.join(map(str, self.stage_depths))}, "
              f"heads {'-'.join(map(str, self.stage_heads))}, patch {self.patch}, window {self.window}")
    extras = [text for present, text in (
        (self.layer_scale, "LayerScale"), (self.registers, f"{self.registers} registers"),
        (self.pre_norm, "ln_pre"), (self.projection, f"projection {self.projection}"),
        (self.gelu == "quick", "QuickGELU"), (self.pooling != "cls", f"pooling {self.pooling}"),
        (self.fc_norm, "fc_norm")) if present]
    return ", ".join(([name] if name else []) + [
        f"width {self.width}", f"depth {self.depth}", f"patch {self.patch}", f"{self.heads} heads"] + extras)

  def _variant_or_refuse(self) -> str:
    variant = self.variant
    if variant is None:
      sizes = ", ".join(swin.SIZES if self.family == "swin" else vit.SIZES)
      raise _error(f"Checkpoint {self.path} ({self.geometry()}) has no named model size: vpt_jax's "
                   f"sizes are {sizes} (vpt_jax/models/{'swin' if self.family == 'swin' else 'vit'}.py).")
    if not self.pool_types:
      raise _error(f"Checkpoint {self.path} pools with a MAP head (big_vision's MAPHead), which "
                   "vit.Model does not have: use a class-token or mean-pooled file.")
    return variant

  def model_fields(self) -> dict[str, Any]:
    """The config.model (vit.Model or swin.Model) fields this file needs, as a published record
    gives them (vpt_jax/models/backbones.py): the variant, its depth where the file's differs,
    the pool type, and the options that differ from vit.Model's defaults."""
    variant = self._variant_or_refuse()
    fields = {"variant": variant, "pool_type": self.pool_types[0]}
    if self.config_depth is not None:
      fields["depth"] = self.config_depth
    if self.family == "swin":
      return fields
    wanted = dict(layer_scale=self.layer_scale, register_tokens=self.registers, pre_norm=self.pre_norm,
                  embedding_bias=self.embedding_bias, projection_dim=self.projection,
                  norm_epsilon=self.norm_epsilon, **_gelu_fields(self.gelu))
    fields.update({k: v for k, v in wanted.items() if v is not None and v != _VIT_DEFAULTS[k]})
    return fields

  def contradictions(self, fields: dict[str, Any], given) -> dict[str, Any]:
    """{field: the value this file needs} for each field of `fields` (config.model's or a
    model's) that `given(field)` says was chosen and that does not fit the file."""
    needed = {}
    variant = self._variant_or_refuse()
    if given("variant") and not _same_geometry(fields.get("variant"), variant):
      needed["variant"] = variant
    chosen_variant = fields.get("variant") if given("variant") else variant
    if given("depth") and fields.get("depth") is not None and _depth(chosen_variant, fields["depth"]) != self.depth:
      needed["depth"] = self.config_depth if self.family == "swin" else self.depth
    if self.family == "swin":
      return needed
    if given("pool_type") and fields.get("pool_type") not in self.pool_types:
      needed["pool_type"] = self.pool_types[0]
    for field, value in (("layer_scale", self.layer_scale), ("register_tokens", self.registers),
                         ("pre_norm", self.pre_norm), ("embedding_bias", self.embedding_bias),
                         ("norm_epsilon", self.norm_epsilon)):
      if value is not None and given(field) and fields.get(field, _VIT_DEFAULTS[field]) != value:
        needed[field] = value
    # A model may leave CLIP's projection out (it then pools ln_post's output), not give another.
    if given("projection_dim") and fields.get("projection_dim") not in (None, self.projection):
      needed["projection_dim"] = self.projection
    forms = _chosen_gelu_forms(fields, given)
    if forms and not set(forms) & set(self.gelu_forms):
      form = self.gelu or self.gelu_forms[0]
      if form != "quick" and fields.get("quick_gelu"):
        needed["quick_gelu"] = False  # QuickGELU wins over gelu_approximate in vit.MlpBlock.
      needed.update(_gelu_fields(form))
    return needed

  def fixes(self, model) -> dict[str, Any]:
    """{field: value} that would make `model` (a vit.Model or swin.Model) fit this file; empty
    when it does, or when no option can (another family, no named size)."""
    if (self.family == "swin") != isinstance(model, swin.Model) or self.variant is None or not self.pool_types:
      return {}
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    needed = self.contradictions(fields, lambda field: field in fields)
    if _depth(needed.get("variant", fields["variant"]), needed.get("depth", fields["depth"])) != self.depth:
      needed["depth"] = self.config_depth  # A new variant whose own depth is not the file's.
    order = ("variant", "depth")  # The geometry first, as messages name it.
    return {k: needed[k] for k in sorted(needed, key=lambda k: order.index(k) if k in order else len(order))}


def _architecture(variant: str):
  return swin.decode_variant(variant) if swin.is_variant(variant) else vit.decode_variant(variant)


def _depth(variant: str | None, depth: int | None) -> int | None:
  """All blocks of `variant` with config.model.depth (every Swin stage's) applied."""
  try:
    arch = _architecture(variant)
  except ValueError:
    return None
  if depth is None:
    return arch.depth
  return depth * len(arch.depths) if swin.is_variant(variant) else depth


def _same_geometry(given: str | None, needed: str) -> bool:
  """Whether variant `given` has the file's widths, heads and patch (its depth may be overridden)."""
  try:
    a, b = _architecture(given), _architecture(needed)
  except ValueError:
    return False
  if swin.is_variant(given) != swin.is_variant(needed):
    return False
  if swin.is_variant(needed):
    return (a.embed_dim, a.heads, a.patch_size, a.window) == (b.embed_dim, b.heads, b.patch_size, b.window)
  return (a.width, a.mlp_dim, a.num_heads, a.patch_size) == (b.width, b.mlp_dim, b.num_heads, b.patch_size)


def _gelu_fields(form: str | None) -> dict[str, Any]:
  """vit.Model's fields for a GELU form (QuickGELU wins over gelu_approximate in vit.MlpBlock)."""
  return {None: {}, "quick": {"quick_gelu": True}, "erf": {"gelu_approximate": False},
          "tanh": {"gelu_approximate": True}}[form]


def _chosen_gelu_forms(fields: dict[str, Any], given) -> tuple[str, ...]:
  """The GELU forms that chosen fields allow (none chosen: ()): QuickGELU, the tanh or erf form,
  or either of these two where quick_gelu is set False and gelu_approximate is the recipe's."""
  if given("quick_gelu") and fields.get("quick_gelu"):
    return ("quick",)
  if given("gelu_approximate") and fields.get("gelu_approximate") is not None:
    return ("tanh",) if fields["gelu_approximate"] else ("erf",)
  return ("tanh", "erf") if given("quick_gelu") else ()


def option(field: str, value, style: str = "config") -> str:
  """How a user writes `field`=`value`: on the command line or as a Python keyword."""
  return f"--config.model.{field}={value}" if style == "config" else f"{field}={value!r}"


def contradiction_message(description: Description, fields: dict[str, Any], needed: dict[str, Any],
                          style: str = "config") -> str:
  """"--config.model.variant=S/8 does not fit checkpoint X (width 768, ...): use
  --config.model.variant=B/16", every contradicted option in one line."""
  given = [option(k, fields.get(k, _VIT_DEFAULTS.get(k)), style) for k in needed]
  verb = "does" if len(given) == 1 else "do"
  return (f"{' and '.join(given)} {verb} not fit checkpoint {description.path} ({description.geometry()}): "
          f"use {' '.join(option(k, v, style) for k, v in needed.items())}.")


def model_geometry(model) -> str:
  arch = model.architecture
  if isinstance(model, swin.Model):
    return (f"Swin, embed width {arch.embed_dim}, stage depths {'-'.join(map(str, arch.depths))}, "
            f"heads {'-'.join(map(str, arch.heads))}, patch {arch.patch_size[0]}, window {arch.window}")
  return f"width {arch.width}, depth {arch.depth}, patch {arch.patch_size[0]}, {arch.num_heads} heads"
