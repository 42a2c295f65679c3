"""A finished run as files other tools load (launch/export.py), with a model card.

Mergeable runs (merge.py) become a plain ViT: model.safetensors under timm's keys (the card's
"timm" entry builds the architecture) and model.npz in Google's layout, which vpt_jax reads as a
backbone (config.backbone=<file>, with the card's vpt_jax model fields). Other runs keep their
modules: parameters.safetensors holds every parameter the run trained (all stages', head
included, under the model's '/'-joined names), to be put on the backbone the card names; the
card and the command say that they are not mergeable, and why.
"""

import dataclasses
import os

import jax
import numpy as np

from vpt_jax.checkpoints import pretrained
from vpt_jax.inference import merge, timm_vit
from vpt_jax.inference.run import FinishedRun
from vpt_jax.models import backbones
from vpt_jax.training import artifacts
from vpt_jax.utils import files, paths

CARD = "model_card.json"
MERGED_FILES = ("model.safetensors", "model.npz")
PARAMETERS_FILE = "parameters.safetensors"
_RESULT_HYPERPARAMETERS = ("recipe", "seed", "train_subset", "optimizer", "base_lr", "lr", "weight_decay",
                           "batch_size", "epochs", "steps", "schedule", "dropout")


def _save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
  try:
    import safetensors.numpy
  except ImportError:
    raise ValueError("Writing .safetensors files needs the safetensors package: pip install safetensors") from None
  tmp = path + ".tmp"
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
  os.replace(tmp, path)


def _json_value(value):
  if dataclasses.is_dataclass(value):
    return {k: _json_value(v) for k, v in dataclasses.asdict(value).items()}
  if isinstance(value, tuple):
    return list(value)
  return value if value is None or isinstance(value, (bool, int, float, str, list, dict)) else str(value)


def model_fields(model) -> dict:
  """The model's dataclass fields that differ from their defaults (what building it takes)."""
  fields = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name"):
      continue
    value = getattr(model, field.name)
    if field.default is dataclasses.MISSING or value != field.default:
      fields[field.name] = _json_value(value)
  return fields


def _backbone(config: dict) -> dict:
  """The pre-trained backbone the run started from: its name or path, published source and the
  SHA-256 of its file where the file is on this machine."""
  name = config["backbone"]
  record = {"name": name}
  published = None if os.path.exists(name) else backbones.find(name)
  path = name if os.path.exists(name) else None
  if published is not None:
    record.update(about=published.about, url=published.host + published.file)
    cached = os.path.join(config.get("pretrained_cache_dir") or files.cache_dir("checkpoints"), published.file)
    path = cached if os.path.exists(cached) else None
  if path is not None:
    record.update(file=os.path.abspath(path), sha256=files.sha256_file(path))
  return record


def _trained_parameters(workdir: str) -> dict:
  """Every parameter any stage trained, later stages over earlier ones (as load_trained applies
  them)."""
  trained = {}
  for stage in artifacts.stage_dirs(workdir):
    trained = paths.merge(trained, artifacts.load(os.path.join(stage, artifacts.FILENAME))[0])
  return trained


def _hyperparameters(run: FinishedRun) -> dict:
  out = {k: run.result[k] for k in _RESULT_HYPERPARAMETERS if k in run.result}
  out["method_fields"] = {k: v for k, v in model_fields(run.model).items() if k in merge.METHOD_FIELDS}
  if run.result.get("stages"):
    out["stages"] = [{k: s[k] for k in ("method",) + _RESULT_HYPERPARAMETERS if k in s}
                     for s in run.result["stages"]]
  return out


def mergeable(run: FinishedRun) -> str:
  """"" when the run merges into a plain timm ViT, else why not."""
  reason = merge.reason_not_mergeable(run.model)
  if not reason:
    try:
      timm_vit.architecture(merge.plain_model(run.model), run.preprocessing.resolution)
    except merge.NotMergeableError as e:
      reason = str(e).rstrip(".")
  return reason


def _file_record(out_dir: str, name: str, holds: str) -> dict:
  path = os.path.join(out_dir, name)
  return {"name": name, "sha256": files.sha256_file(path), "bytes": os.path.getsize(path), "holds": holds}


def _write_merged(run: FinishedRun, out_dir: str) -> tuple[list[dict], dict]:
  plain, params = merge.merge(run.model, run.params)
  resolution = run.preprocessing.resolution
  timm = timm_vit.architecture(plain, resolution)
  meta = {"format": "pt", "vpt_jax_run": run.workdir, "timm_model": timm["model"]}
  _save_safetensors(os.path.join(out_dir, MERGED_FILES[0]), timm_vit.state_dict(plain, params), meta)
  pretrained.export_npz(params, os.path.join(out_dir, MERGED_FILES[1]))
  written = [_file_record(out_dir, MERGED_FILES[0], f"the merged ViT under timm's keys ({timm['model']})"),
             _file_record(out_dir, MERGED_FILES[1], "the merged ViT in Google's npz layout (a vpt_jax backbone)")]
  sections = {"timm": timm,
              "vpt_jax": {"backbone": MERGED_FILES[1], "model": model_fields(plain), "image_size": resolution,
                          "use": "checkpoints.load(<model.npz>, vit.Model(**model), image_size, keep_head=True); "
                                 "or config.backbone=<model.npz> with these model fields"}}
  return written, sections


def _write_parameters(run: FinishedRun, out_dir: str) -> tuple[list[dict], dict]:
  trained = {k: np.asarray(v, np.float32) for k, v in paths.flatten(jax.device_get(
      _trained_parameters(run.workdir))).items()}
  _save_safetensors(os.path.join(out_dir, PARAMETERS_FILE), trained, {"vpt_jax_run": run.workdir})
  written = [_file_record(out_dir, PARAMETERS_FILE,
                          "every parameter the run trained (method modules and head), '/'-joined vpt_jax names")]
  sections = {"vpt_jax": {"backbone": run.config["backbone"], "model": model_fields(run.model),
                          "image_size": run.preprocessing.resolution,
                          "use": "the backbone's parameters (checkpoints.load) with parameters.safetensors "
                                 "merged over them (paths.unflatten + paths.merge), applied by vit.Model(**model)"}}
  return written, sections


def export(run: FinishedRun, out_dir: str, merged: bool | None = None) -> dict:
  """Writes the export and its card into `out_dir`; returns the card. `merged`: None merges what
  merges; True refuses (NotMergeableError) a run that does not; False writes parameters."""
  reason = mergeable(run)
  if merged and reason:
    raise merge.NotMergeableError(f"{run.method} is not mergeable into a plain ViT: {reason}. Export it without "
                                  "--merged: its parameters and head, to use on the backbone.")
  merged = not reason if merged is None else merged
  os.makedirs(out_dir, exist_ok=True)
  written, sections = (_write_merged if merged else _write_parameters)(run, out_dir)
  card = {
      "run": os.path.abspath(run.workdir), "task": run.config["task"], "method": run.method,
      "merged": merged,
      "mergeable": not reason,
      "not_mergeable_because": reason or None,
      "backbone": _backbone(run.config),
      "hyperparameters": _hyperparameters(run),
      "num_classes": run.num_classes, "class_names": run.class_names,
      "preprocessing": run.preprocessing.card(),
      "accuracy": run.accuracy,
      "files": written,
      **sections,
  }
  files.write_json(os.path.join(out_dir, CARD), card)
  return card
