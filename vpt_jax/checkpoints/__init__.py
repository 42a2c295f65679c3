"""Pre-trained checkpoints: one reader per file format, and what a user calls:

  describe(name_or_path)           what a file is (`Description`: family, width, depth, ...)
  build(name_or_path, num_classes) the model and its parameters, for a published name or a file
  load(name_or_path, model)        a file's parameters for a model made elsewhere
  set_backbone(config, name)       a run's config.model as a published record or a file needs
  configure(config, explicit)      the same for config.backbone when it is a file (the launchers)

A file's reader is picked by what the file is: an .npz by Google's reader (`pretrained`), a
PyTorch or safetensors file by the Swin reader when it holds window attention's relative position
tables and by `torch_vit` otherwise; a published name's download is checked by its record's
`checkpoint_format` (vpt_jax/models/backbones.py). Every reader converts to its model's tree and
refuses a file that does not fit in one line: the file's geometry and the options that would fit
it where options can, else every missing, unexpected and mis-shaped key.
"""

import dataclasses
import functools
import os

from vpt_jax import models
from vpt_jax.checkpoints import alexnet
from vpt_jax.checkpoints import description as description_lib
from vpt_jax.checkpoints import pretrained, swin, torch_vit
from vpt_jax.checkpoints.description import Description
from vpt_jax.models import backbones
from vpt_jax.models import swin as swin_model
from vpt_jax.models import vit

__all__ = ["CheckpointError", "Description", "build", "configure", "describe", "load", "set_backbone"]
CheckpointError = pretrained.CheckpointError

READERS = {"vit_npz": pretrained, "torch_vit": torch_vit, "swin_pth": swin}
_SUFFIXES = {".npz": "vit_npz", ".pth": "torch_vit", ".pth.tar": "torch_vit", ".pt": "torch_vit",
             ".bin": "torch_vit", ".safetensors": "torch_vit"}
# The inputs each family's pre-training saw, as their published records say; a Google or
# timm-layout file does not say (the recipe's normalization).
_NORMALIZATION = {"clip": "clip", "dinov2": "imagenet", "swin": "imagenet"}
_ACTIVATION_FIELDS = ("norm_epsilon", "quick_gelu", "gelu_approximate")
_GELU_FIELDS = ("quick_gelu", "gelu_approximate")
# config.model fields configs/default.py leaves None for the recipe: any value is a choice.
_RECIPE_FIELDS = ("gelu_approximate",)
_VIT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(vit.Model)
                 if f.default is not dataclasses.MISSING}


def checkpoint_format(name_or_path: str) -> str:
  """The reader's name for a published name or a file (by its suffix; `load` then looks inside
  a PyTorch file for Swin's tables)."""
  published = None if os.path.exists(name_or_path) else backbones.find(name_or_path)
  if published is not None:
    return published.checkpoint_format
  suffix = next((s for s in _SUFFIXES if name_or_path.endswith(s)), None)
  if suffix is None:
    raise pretrained.CheckpointError(
        f"Checkpoint {name_or_path!r} is neither a published name ({', '.join(backbones.BACKBONES)}) "
        f"nor a file ending in {', '.join(_SUFFIXES)}.")
  return _SUFFIXES[suffix]


def _resolve(name_or_path: str, cache_dir: str | None, base_url: str | None) -> str:
  pretrained.refuse_missing_file(name_or_path, _published(name_or_path))  # Said first, whatever its suffix.
  return pretrained.resolve(name_or_path, cache_dir, base_url,
                            check=READERS[checkpoint_format(name_or_path)].read)


def _read(path: str):
  """The reader of what the file at `path` is, and the arrays it read."""
  if checkpoint_format(path) == "vit_npz":
    return pretrained, pretrained.read(path)
  state = torch_vit.read_state(path)
  return (swin if swin.is_swin(state) else torch_vit), state


@functools.lru_cache(maxsize=16)
def _describe_file(path: str, _mtime_ns: int, _size: int) -> Description:
  reader, state = _read(path)
  return reader.description(path, state)


def describe(name_or_path: str, cache_dir: str | None = None, base_url: str | None = None) -> Description:
  """What a checkpoint file (or a published name's file, downloaded once) is, read off its keys
  and shapes by its format's reader."""
  path = _resolve(name_or_path, cache_dir, base_url)
  stat = os.stat(path)
  return _describe_file(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def load(name_or_path: str, model, image_size: int = 224, keep_head: bool = False,
         cache_dir: str | None = None, base_url: str | None = None) -> dict:
  """`model`'s parameters (nested dict of float32 arrays) from a published name (downloaded once
  into $VPT_JAX_CACHE/checkpoints or `cache_dir`; offline, the error says where to put the file)
  or a checkpoint file. The position grid is resampled to `image_size`; the head is the file's
  only with `keep_head` and when it fits, else zeros. A file the model does not fit, its GELU
  form and LayerNorm epsilon included where the file's family fixes them, is refused in one line
  that names the options that would fit it."""
  path = _resolve(name_or_path, cache_dir, base_url)
  reader, state = _read(path)
  try:
    described = reader.description(path, state)
  except pretrained.CheckpointError:
    described = None  # Not a layout a description reads: the fit below lists every key.
  if described is not None:
    _refuse_other_family(described, model)
  fixes = described.fixes(model) if described is not None else {}
  if fixes and not set(fixes) - set(_ACTIVATION_FIELDS):
    raise pretrained.CheckpointError(_misfit_line(described, model, fixes))
  try:
    params = reader.load_state(path, state, model, image_size, keep_head)
  except pretrained.MismatchError as error:
    raise pretrained.CheckpointError(_misfit(error, described, model, fixes, lambda fixed: reader.load_state(
        path, state, fixed, image_size, keep_head))) from None
  if fixes:  # Keys that fit a model of other options (e.g. a projection it may leave out).
    raise pretrained.CheckpointError(_misfit_line(described, model, fixes))
  return params


def _refuse_other_family(described: Description, model) -> None:
  if described.family == "swin" and not isinstance(model, swin_model.Model):
    swin.refuse_vit_model(described.path, described)
  if described.family != "swin" and isinstance(model, swin_model.Model):
    raise pretrained.CheckpointError(
        f"{described.path} is a ViT checkpoint ({described.geometry()}), not a Swin: use "
        f"--config.model.variant={described.variant or 'B/16'}.")


def _options(fixes: dict) -> str:
  return " ".join(description_lib.option(k, v) for k, v in fixes.items())


def _misfit_line(described: Description, model, fixes: dict) -> str:
  return (f"Checkpoint {described.path} ({described.geometry()}) does not fit the model "
          f"({', '.join(f'{k}={getattr(model, k)}' for k in fixes)}): use {_options(fixes)}.")


def _misfit(error, described: Description | None, model, fixes: dict, retry) -> str:
  """The one line for a file whose keys do not fit `model`: where the file's geometry differs
  and the options that fix it make it fit, that geometry and those options, then the first
  mismatches; otherwise every key (`error`), then the options that would fit the file."""
  if not fixes:
    return str(error)
  if set(fixes) & set(description_lib.GEOMETRY_FIELDS):
    try:
      retry(model.clone(**fixes))
    except pretrained.CheckpointError:
      pass
    else:
      return (f"Checkpoint {error.path} does not fit the model: the file is {described.geometry()}, "
              f"the model {description_lib.model_geometry(model)}: use {_options(fixes)} "
              f"({error.summary}).")
  return (f"Checkpoint {error.path} does not fit the model: {error.listing}. The file is "
          f"{described.geometry()}: use {_options(fixes)}.")


def _record_fields(record: backbones.Backbone) -> dict:
  return {"variant": record.variant, "pool_type": record.pool_type, **dict(record.model)}


def _published(name_or_path: str) -> backbones.Backbone | None:
  return None if os.path.exists(name_or_path) else backbones.find(name_or_path)


def set_backbone(config, name_or_path: str, explicit=()):
  """`config` (a run's ConfigDict) with backbone `name_or_path` and the model fields it needs:
  a published name's from its record, without reading the file (LayerScale, registers, CLIP's
  ln_pre and projection, ...: its record.model pairs), and its input normalization where its
  pre-training did not see Google's [-1, 1] inputs; a file's from `describe`.

  For a file, a field counts as chosen when it is in `explicit` (config.model field names set on
  the command line) or holds something other than None and vit.Model's default (any value, for
  gelu_approximate, which configs/default.py leaves to the recipe): ml_collections keeps no other
  trace of who set a value, so a choice equal to the default is seen only on the command line.
  A chosen field that contradicts the file is refused in one line naming the option and the
  value the file needs; the fields left to choose are set as the file needs, and the
  normalization, where unset, as its family's records give it."""
  record = _published(name_or_path)
  config.backbone = name_or_path
  if record is not None:
    with config.unlocked():
      for field, value in _record_fields(record).items():
        config.model[field] = value
      # Google's backbones are normalised as each recipe says (the VPT code used ImageNet's
      # statistics for them too); any other backbone sees the inputs its pre-training saw.
      if record.normalization != "inception":
        config.data.normalization = record.normalization
    return config
  described = describe(name_or_path, config.get("pretrained_cache_dir"))
  current = config.model.to_dict()
  explicit = set(explicit)

  def given(field):
    value = current.get(field)
    return field in explicit or (value is not None and (
        value != _VIT_DEFAULTS.get(field) or field in _RECIPE_FIELDS))

  needed = described.contradictions(current, given)
  if needed:
    raise pretrained.CheckpointError(description_lib.contradiction_message(described, current, needed))
  fields = described.model_fields()
  if any(given(field) for field in _GELU_FIELDS):  # The user's form, which fits the file.
    fields = {k: v for k, v in fields.items() if k not in _GELU_FIELDS}
  with config.unlocked():
    for field, value in fields.items():
      if not given(field):
        config.model[field] = value
    if config.data.get("normalization") is None and described.family in _NORMALIZATION:
      config.data.normalization = _NORMALIZATION[described.family]
  return config


def configure(config, explicit=()):
  """`set_backbone` for config.backbone when it is a file (a published name's fields come from
  its record when the config file names it; None trains from scratch): what launch/main.py and
  launch/sweep.py do with a parsed config, `explicit` being the config.model fields set on their
  command line."""
  backbone = config.get("backbone")
  if backbone and _published(backbone) is None:
    set_backbone(config, backbone, explicit)
  return config


def build(name_or_path: str, num_classes: int = 0, image_size: int = 224, keep_head: bool = False,
          cache_dir: str | None = None, base_url: str | None = None, **fields):
  """(model, params) for a published name (its record's fields) or a checkpoint file (its
  description's), e.g. `model, params = checkpoints.build("ViT-B_16")`; `num_classes` 0: the
  model returns its features, else a zero head (the file's with `keep_head`, where it fits).
  `fields` are further fields of the backbone (vit.Model's or swin.Model's: dropout, drop_path,
  depth, ...; a method's modules come from vpt_jax.methods); one that contradicts a file is
  refused in one line."""
  record = _published(name_or_path)
  if record is not None:
    base = _record_fields(record)
  else:
    described = describe(name_or_path, cache_dir, base_url)
    needed = described.contradictions(fields, lambda field: field in fields)
    if needed:
      raise pretrained.CheckpointError(
          description_lib.contradiction_message(described, fields, needed, style="python"))
    base = described.model_fields()
    if any(field in fields for field in _GELU_FIELDS):
      base = {k: v for k, v in base.items() if k not in _GELU_FIELDS}
  model = models.build(num_classes=num_classes, **{**base, **fields})
  return model, load(name_or_path, model, image_size, keep_head, cache_dir, base_url)


# Pre-trained parts a method adds beside the backbone: Sidetune's side network, by name or file.
SIDE_NETWORKS = {alexnet.NAME: alexnet}


def load_side(name_or_path: str, cache_dir: str | None = None, base_url: str | None = None) -> dict:
  """Sidetune's side network (vit.Model's "side" subtree) from torchvision's ImageNet AlexNet
  ("alexnet", downloaded once; offline, the error says where to put the file) or a file in its
  layout (vpt_jax/checkpoints/alexnet.py)."""
  return alexnet.load(name_or_path, cache_dir, base_url)
