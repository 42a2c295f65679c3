"""Data sources by name (config.data.source): where a task's images come from.

A source is one small record: what it reads, the module that decodes it (imported only when
examples must really be decoded, so a run on cached arrays needs none of its libraries), and a
cheap look at what is prepared on disk, which names the array cache without that module.

A reader module has
  prepare(task, data_dir)                   makes generated data, else fails if not prepared;
  version(task, data_dir) -> str            the prepared data's identity, part of cache names;
  examples(task, subset, resolution, data_dir, resize, shift=None) -> iterator of
      {"image": (R, R, 3) uint8, "label": int32}, in the subset's order;
  batches(task, subset, resolution, batch_size, data_dir, resize, shift=None) -> iterator of
      such dicts batched (the last one short);
and, a source of image files (Source.image_files), for `pipeline.check_data`:
  check(task, data_dir, subsets, log) -> str   every check short of decoding; the version;
  decode_all(task, data_dir) -> int            decodes every image once (one-line errors).
"""

import dataclasses
import importlib
import os
import re
from typing import Callable

from vpt_jax.data import lists
from vpt_jax.data import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  about: str
  reader_module: str
  # (task, data_dir) -> the version `reader.version` would give, read off the disk without the
  # reader's libraries; None when nothing (or more than one candidate) is prepared.
  prepared_version: Callable[[tasks_lib.Task, str], str | None]
  # Whether the reader's `prepare` reports missing data itself (its libraries print nothing);
  # else the pipeline's one-line error with the TFDS preparation command is raised before it loads.
  reports_missing: bool = False
  # Whether its data are image files that `pipeline.check_data` checks and decodes before a run
  # (its reader has `check` and `decode_all`); TFDS's were checked when they were prepared.
  image_files: bool = False

  def reader(self):
    try:
      return importlib.import_module(self.reader_module)
    except ImportError as e:
      raise ImportError(f"Data source {self.name!r} needs {e.name}, which is not installed here "
                        "(pip install -e . installs it); a run whose subsets are already cached "
                        "as arrays does not.") from None


def _tfds_prepared_version(task: tasks_lib.Task, data_dir: str) -> str | None:
  """The newest prepared version of the task's builder that its version pattern admits, as
  TFDS's full name with "/" -> "_" (e.g. "dtd_3.0.1", "sun397_tfds_4.0.0")."""
  name, _, pattern = task.builder.partition(":")
  directory = os.path.join(data_dir, *name.split("/"))
  if not os.path.isdir(directory):
    return None
  admitted = re.compile(re.escape(pattern or "*.*.*").replace(r"\*", r"\d+"))
  versions = [v for v in os.listdir(directory) if admitted.fullmatch(v)
              and os.path.exists(os.path.join(directory, v, "dataset_info.json"))]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(int(part) for part in v.split(".")))
  return f"{name}/{newest}".replace("/", "_")


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
  SOURCES[source.name] = source
  return source


register(Source("tfds", "TensorFlow Datasets builders (VTAB-1k's, the demo's mini_vtab), prepared "
                "by launch/prepare_data.py", "vpt_jax.data.tfds_source", _tfds_prepared_version))


register(Source("folder", "image folders with split lists: VTAB-1k as NOAH's get_vtab1k.py writes it "
                "(<data_dir>/<task>/train800.txt ...), custom datasets (task=folder:<path>: list "
                "files, JSON lists, class subfolders or one class tree)",
                "vpt_jax.data.folder_source", lists.txt_version, reports_missing=True, image_files=True))
register(Source("json", "FGVC as KMnP/vpt reads it: a dataset folder with train.json, val.json, "
                "test.json (image path -> class id)", "vpt_jax.data.json_source",
                lists.json_version, reports_missing=True, image_files=True))
register(Source("imagenet", "few-shot ImageNet and ImageNet-V2/-Sketch/-A/-R as OSU-MLB/PETL_Vision "
                "reads them: its list files in <data_dir>/annotations/<set>/, images under "
                "data_dir", "vpt_jax.data.imagenet_source", lists.imagenet_version,
                reports_missing=True, image_files=True))


def get(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f"data.source={name!r} is not a data source; choose one of: "
                     f"{', '.join(SOURCES)}.")
  return SOURCES[name]
