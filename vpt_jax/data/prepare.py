"""Download and prepare the VTAB tasks' TFDS datasets, and report which tasks are ready."""

import dataclasses

import tensorflow_datasets as tfds

from vpt_jax.data import tfds_source
from vpt_jax.data import tasks as tasks_lib


@dataclasses.dataclass
class Row:
  task: str
  builder: str
  status: str  # "ready", "not prepared", "manual download needed" or "failed: ..."
  sizes: str = ""


def prepare(task_names: list[str], data_dir: str, manual_dir: str | None = None,
            download: bool = True, log=print) -> list[Row]:
  """Prepares each task's builder once (tasks may share one) unless `download` is False."""
  rows, done = [], {}
  for name in task_names:
    task = tasks_lib.get(name)
    if task.builder not in done:
      done[task.builder] = _prepare_builder(task, data_dir, manual_dir, download, log)
    status, sizes = done[task.builder]
    rows.append(Row(task.name, task.builder, status, sizes))
  return rows


def _prepare_builder(task, data_dir, manual_dir, download, log):
  try:
    builder = tfds.builder(task.builder, data_dir=data_dir)
  except Exception as e:  # A builder TFDS cannot construct here, whatever the reason.
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0]}", ""
  if not builder.is_prepared() and download:
    log(f"Preparing {task.builder} in {data_dir} ...")
    try:
      with tfds_source.preparation_lock(data_dir, task.builder):
        builder = tfds.builder(task.builder, data_dir=data_dir)
        if not builder.is_prepared():
          builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
              manual_dir=manual_dir))
    except AssertionError as e:  # TFDS's way of saying the manual files are missing.
      if task.manual_download:
        log(f"Manual step for {task.name}: {task.manual_download}\n  TFDS says: {e}")
        return "manual download needed", ""
      return f"failed: {str(e).splitlines()[0]}", ""
    except Exception as e:
      return f"failed: {type(e).__name__}: {str(e).splitlines()[0]}", ""
  if not builder.is_prepared():
    if task.manual_download:
      log(f"Manual step for {task.name}: {task.manual_download}")
    return "not prepared", ""
  sizes = ", ".join(f"{split} {info.num_examples:,}" for split, info in builder.info.splits.items())
  return "ready", sizes


def table(rows: list[Row]) -> str:
  lines = ["| task | TFDS builder | status | examples |", "|---|---|---|---|"]
  lines += [f"| {r.task} | {r.builder} | {r.status} | {r.sizes} |" for r in rows]
  return "\n".join(lines)
