"""Mai et al.'s robustness study: runs trained on few-shot ImageNet, scored on named evaluation
sets (ImageNet-V2, -Sketch, -A, -R), WiSE-FT curves over all of them, the ID / OOD table and the
authors' released numbers.

`evaluate_sets` scores a finished run on each named set (its Task.class_subset applied to the
logits) into <run>/eval_sets.json, reusing what is there while the run's artifact is unchanged.
`wise_sets` evaluates WiSE-FT's theta(a) (vpt_jax/study/robustness.py's theta_0, the zero-shot
model for head_init=zero_shot, and its interpolation) at a = 0, 0.1, ..., 1 on ImageNet's test set
and every named set, for each final run, into <method>/wise_sets.json. As PETL_Vision's README
assigns its scripts, a run that inserted parameters is mixed as merge_petl.py does (mode "petl"),
any other as merge_model.py (mode "model", every parameter); both evaluate every alpha on
fs-imagenet and the four eval_imagenet-* sets and keep the whole curve (no alpha is chosen).
`markdown` and `curves` read those files back for launch/report.py.
"""

import glob
import os

import numpy as np

from vpt_jax.data import tasks as tasks_lib
from vpt_jax.training import artifacts, evaluate, sharding
from vpt_jax.utils import files

EVAL_SETS_FILE = "eval_sets.json"
WISE_FILE = "wise_sets.json"
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # merge_model.py's list.
COLUMNS = ("imagenet",) + tasks_lib.IMAGENET_SHIFTS
SHORT = {"imagenet": "ImageNet", "imagenet_v2": "V2", "imagenet_sketch": "Sketch",
         "imagenet_a": "A", "imagenet_r": "R"}

# Released raw results of OSU-MLB/PETL_Vision (tune_output/clip_fs_imagenet/fs/imagenet/, commit
# c4b0227: each method folder's <set>_result.json avg_acc; A4: merge_result.json, in stored order, which is
# presumably alpha = 0, 0.1, ..., 1). Not the paper's printed table (none was reachable). Keys:
# our method names; the folder names carry their capacity (lora_32, fact_tk_32, ...).
SOURCE = "PETL_Vision released results (A3)"
PUBLISHED = {  # method: (folder, ImageNet, V2, Sketch, A, R)
    "adaptformer": ("adaptformer", 75.62, 65.81, 46.88, 40.6, 71.21),
    "bitfit": ("bitfit", 75.27, 65.51, 46.03, 39.47, 70.77),
    "difffit": ("difffit", 75.39, 65.39, 45.99, 39.23, 70.77),
    "fact_tk": ("fact_tk_32", 74.69, 65.11, 46.8, 41.07, 71.51),
    "full": ("full", 74.95, 62.83, 36.43, 18.43, 52.32),
    "linear": ("linear", 74.28, 65.15, 46.86, 44.11, 71.42),
    "lora": ("lora_32", 76.56, 66.95, 46.31, 40.29, 70.2),
    "rand_h_adapter": ("rand_h_adapter_32", 75.01, 65.6, 47.73, 41.91, 72.5),
    "vpt_deep": ("vpt_deep", 75.04, 65.23, 46.11, 38.31, 71.01),
    "zero_shot": ("zero_shot", 67.69, 61.09, 47.75, 48.89, 76.95),
}
PUBLISHED_WISE = {  # method: {set: 11 accuracies (%)}, merge_result.json (A4).
    "full": {"imagenet": [67.69, 71.22, 73.98, 75.8, 77.04, 77.69, 77.73, 77.57, 77.02, 76.02, 74.95],
             "imagenet_v2": [61.09, 64.11, 66.15, 67.39, 67.96, 68.19, 67.47, 66.58, 65.47, 64.4, 62.83],
             "imagenet_sketch": [47.75, 50.06, 51.06, 51.28, 50.95, 49.75, 48.2, 46.03, 43.48, 40.26, 36.43],
             "imagenet_a": [48.89, 49.51, 48.19, 46.08, 43.24, 39.23, 34.87, 30.4, 26.15, 22.08, 18.43],
             "imagenet_r": [76.96, 77.96, 77.95, 77.0, 75.33, 72.86, 69.55, 65.87, 61.63, 56.98, 52.32]},
    "lora": {"imagenet": [67.69, 69.48, 71.11, 72.58, 73.77, 74.92, 75.79, 76.39, 76.75, 76.82, 76.56],
             "imagenet_v2": [61.09, 62.59, 64.09, 65.6, 66.71, 67.3, 67.66, 68.08, 68.19, 67.61, 66.95],
             "imagenet_sketch": [47.75, 48.76, 49.52, 50.05, 50.5, 50.69, 50.58, 50.12, 49.21, 47.96, 46.31],
             "imagenet_a": [48.89, 49.21, 49.59, 49.47, 49.33, 48.8, 47.92, 46.73, 45.01, 42.57, 40.29],
             "imagenet_r": [76.96, 77.48, 77.81, 78.02, 77.82, 77.41, 76.75, 75.63, 74.29, 72.52, 70.2]},
    "bitfit": {"imagenet": [67.69, 69.23, 70.6, 71.82, 72.9, 73.91, 74.73, 75.34, 75.59, 75.6, 75.27],
               "imagenet_v2": [61.09, 62.32, 63.5, 64.46, 65.4, 65.97, 66.4, 66.76, 66.7, 66.22, 65.51],
               "imagenet_sketch": [47.75, 48.67, 49.36, 49.94, 50.21, 50.27, 50.1, 49.58, 48.77, 47.67, 46.03],
               "imagenet_a": [48.89, 49.04, 49.03, 48.68, 48.41, 47.76, 46.96, 45.69, 43.73, 41.79, 39.47],
               "imagenet_r": [76.96, 77.36, 77.61, 77.69, 77.51, 77.03, 76.44, 75.58, 74.39, 72.9, 70.77]},
}


def mean_ood(row: dict) -> float | None:
  values = [row.get(name) for name in tasks_lib.IMAGENET_SHIFTS]
  return None if any(v is None for v in values) else float(np.mean(values))


def expand_sets(spec: str) -> tuple[str, ...]:
  """Named evaluation sets from "imagenet_shifts" or names joined by "," or "+"."""
  names = tuple(tasks_lib.expand(spec)) if spec else ()
  for name in names:
    if tasks_lib.get(name).group != tasks_lib.IMAGENET:
      raise ValueError(f"--eval_sets: {name} is not an evaluation set of few-shot ImageNet "
                       f"(choose from {', '.join(tasks_lib.IMAGENET_SHIFTS)}).")
  return names


def is_imagenet_run(workdir: str) -> bool:
  try:
    return files.read_json(os.path.join(workdir, "config.json"))["task"] in tasks_lib.IMAGENET_TASKS
  except (FileNotFoundError, files.DamagedFileError, KeyError):
    return False


_EVALUATORS = {}


def _evaluator(model, config: dict, task: tasks_lib.Task) -> evaluate.Evaluator:
  """One evaluator per (model, normalisation, crop, class subset), compiled once."""
  crop = config["data.resolution"] if config.get("data.crop_from") else None
  key = (model, config["data.normalization"], crop, task.class_subset)
  if key not in _EVALUATORS:
    _EVALUATORS[key] = evaluate.Evaluator(sharding.make_mesh(), model,
                                          config["data.normalization"], crop, task.class_subset)
  return _EVALUATORS[key]


def accuracy(model, params, config: dict, name: str, subset: str = "test") -> float:
  """Top-1 of `params` on a named set's `subset`, read and cropped as the run's data was."""
  task = tasks_lib.get(name)
  return _evaluator(model, config, task).stream(
      params, task, subset, config.get("data.crop_from") or config["data.resolution"],
      config["eval_batch_size"], config.get("data.data_dir"), config["data.resize"],
      source=config.get("data.source", "tfds"))["accuracy"]


def evaluate_sets(workdir: str, names, log=print) -> dict:
  """{"artifact_sha256", "accuracy": {set: top-1}} of a finished run, in <run>/eval_sets.json:
  the run's own test accuracy under its task's name, the named sets evaluated once per artifact
  (a changed artifact starts the file again; result.json is never touched)."""
  path = os.path.join(workdir, EVAL_SETS_FILE)
  result = files.read_json(os.path.join(workdir, "result.json"))
  try:
    stored = files.read_json(path)
  except (FileNotFoundError, files.DamagedFileError):
    stored = {}
  if stored.get("artifact_sha256") != result.get("artifact_sha256"):
    stored = {"artifact_sha256": result.get("artifact_sha256"), "accuracy": {}}
  config = files.read_json(os.path.join(workdir, "config.json"))
  stored["accuracy"][config["task"]] = result["test_accuracy"]
  missing = [name for name in names if name not in stored["accuracy"]]
  if missing:
    model, params, config = artifacts.load_trained(workdir)
    for name in missing:
      stored["accuracy"][name] = accuracy(model, params, config, name)
      log(f"{workdir}: {name} {100 * stored['accuracy'][name]:.2f}%")
  files.write_json(path, stored)
  return stored


def wise_sets(method_dir: str, final_runs: list[str], names, alphas=ALPHAS, log=print) -> dict:
  """WiSE-FT curves of a method's final runs on ImageNet's test set and every named set, into
  <method_dir>/wise_sets.json; reused while the runs' artifacts are those it was made from."""
  from vpt_jax.study import robustness  # theta_0 and the interpolation are that module's.
  path = os.path.join(method_dir, WISE_FILE)
  try:
    stored = files.read_json(path)
  except (FileNotFoundError, files.DamagedFileError):
    stored = {}
  runs = {}
  for workdir in final_runs:
    relative = os.path.relpath(workdir, method_dir)
    sha = files.read_json(os.path.join(workdir, "result.json")).get("artifact_sha256")
    old = stored.get("runs", {}).get(relative, {})
    mode = "petl" if robustness.suits(workdir, "petl") else "model"  # robustness.suits's split.
    if (old.get("artifact_sha256") == sha and old.get("mode") == mode
        and stored.get("alphas") == list(alphas)
        and all(n in old.get("accuracy", {}) for n in names)):
      runs[relative] = old
      continue
    model, trained, config = artifacts.load_trained(workdir)
    theta_0 = robustness.initial_params(workdir, model, trained, config)
    curve = {name: [] for name in (config["task"],) + tuple(names)}
    for alpha in alphas:
      params = robustness.interpolate(theta_0, trained, alpha, mode)
      for name in curve:
        curve[name].append(accuracy(model, params, config, name))
    runs[relative] = {"artifact_sha256": sha, "mode": mode, "accuracy": curve}
    log(f"{workdir}: WiSE-FT ({mode}) a = 0 .. 1, ImageNet " + " ".join(
        f"{100 * v:.1f}" for v in curve[config["task"]]))
  out = {"alphas": list(alphas), "runs": runs}
  files.write_json(path, out)
  return out


def _method_dirs(sweep_dir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(sweep_dir, tasks_lib.IMAGENET, "imagenet", "*")))


def rows(sweep_dir: str) -> dict:
  """{method: {set: mean top-1 (%) over the current final runs' eval_sets.json}}."""
  from vpt_jax.study import report
  current, _ = report.final_dirs(sweep_dir)
  by_method = {}
  for workdir in current:
    path = os.path.join(workdir, EVAL_SETS_FILE)
    if not os.path.exists(path) or not is_imagenet_run(workdir):
      continue
    method = os.path.basename(os.path.dirname(os.path.dirname(workdir)))
    by_method.setdefault(method, []).append(files.read_json(path)["accuracy"])
  return {method: {name: 100 * float(np.mean([r[name] for r in results]))
                   for name in COLUMNS if all(name in r for r in results)}
          for method, results in by_method.items()}


def curves(sweep_dir: str, with_published: bool = False) -> dict:
  """{label: {"alphas", set: [mean top-1 (%) per alpha]}} of wise_sets.json (averaged over a
  method's final runs), with the released merge_result.json curves when `with_published`."""
  out = {}
  for method_dir in _method_dirs(sweep_dir):
    path = os.path.join(method_dir, WISE_FILE)
    if not os.path.exists(path):
      continue
    wise = files.read_json(path)
    runs = list(wise["runs"].values())
    if not runs:
      continue
    out[os.path.basename(method_dir)] = {"alphas": wise["alphas"]} | {
        name: list(100 * np.mean([r["accuracy"][name] for r in runs], axis=0))
        for name in COLUMNS if all(name in r["accuracy"] for r in runs)}
  if with_published and out:  # Beside measured curves only.
    for method, curve in PUBLISHED_WISE.items():
      out[f"{method} ({SOURCE.replace('A3', 'A4')})"] = {"alphas": list(ALPHAS)} | curve
  return out


def _cells(row: dict) -> str:
  values = [row.get(name) for name in COLUMNS] + [mean_ood(row)]
  return " | ".join("—" if v is None else f"{v:.2f}" for v in values)


def markdown(sweep_dir: str, with_published: bool = False) -> str:
  """The ID / OOD table per method (and per WiSE-FT alpha), with the released rows marked."""
  measured, wise = rows(sweep_dir), curves(sweep_dir)
  if not measured and not wise:
    return ""
  header = ("| method | " + " | ".join(SHORT[name] for name in COLUMNS)
            + " | mean OOD |\n|---|" + "---|" * (len(COLUMNS) + 1))
  lines = [f"| {method} | {_cells(row)} |" for method, row in sorted(measured.items())]
  if with_published:
    lines += [f"| {method} ({folder}; {SOURCE}) | {_cells(dict(zip(COLUMNS, values)))} |"
              for method, (folder, *values) in PUBLISHED.items()]
  parts = ["\n## imagenet: ImageNet (ID) and its natural shifts (OOD), test top-1 (%), mean over "
           "final runs (launch/robustness.py; A and R over their 200 classes)\n\n"
           + header + "\n" + "\n".join(lines)]
  wise_lines = []
  for label, curve in wise.items():
    for i, alpha in enumerate(curve["alphas"]):
      row = {name: curve[name][i] for name in COLUMNS if name in curve}
      wise_lines.append(f"| {label} | {alpha:.1f} | {_cells(row)} |")
  if with_published:
    for method, curve in PUBLISHED_WISE.items():
      for i, alpha in enumerate(ALPHAS):
        row = {name: curve[name][i] for name in COLUMNS}
        wise_lines.append(f"| {method} (merge_result.json; {SOURCE.replace('A3', 'A4')}) | "
                          f"{alpha:.1f} | {_cells(row)} |")
  if wise_lines:
    parts.append("\n## imagenet: WiSE-FT from the run's start (the zero-shot model with "
                 "head_init=zero_shot) at a = 0 to the fine-tuned model at a = 1, test top-1 (%)"
                 "\n\n| method | a | " + " | ".join(SHORT[name] for name in COLUMNS)
                 + " | mean OOD |\n|---|---|" + "---|" * (len(COLUMNS) + 1) + "\n"
                 + "\n".join(wise_lines))
  return "\n".join(parts)
