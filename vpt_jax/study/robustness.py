"""Finished runs under distribution shift, and weight-space ensembles (WiSE-FT).

`shift_run` evaluates a finished run on corrupted copies of its test split (data/shifts.py) and
records the accuracies in <run>/shift.json. `wise` evaluates, for a method that moves the
backbone, theta(a) = (1 - a) * theta_0 + a * theta_1 along a grid of a, where theta_1 is the
trained model and theta_0 the same model at the start of its (last) stage: the pre-trained
backbone with the run's own initial head, prompts, ... (mlfoundations/wise-ft src/wise_ft.py
interpolates every key, the head included, from where fine-tuning started). a is chosen on
val200 by the run the sweep trained on train800 at the selected setting, and applied to the final
runs' test accuracy (clean and shifted), written to <method>/wise.json. A run whose head started
as CLIP's zero-shot head (model.head_init=zero_shot) has the zero-shot model as theta_0. Mode
"petl" is OSU-MLB/PETL_Vision's merge_petl.py instead (`interpolate`), in <method>/wise_petl.json.
"""

import functools
import os

import jax
import numpy as np

from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import sweep
from vpt_jax.training import artifacts, evaluate, sharding, train, zero_shot
from vpt_jax.utils import files, paths
from vpt_jax.models import vit

WISE_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # wise-ft's README: 0, 0.1, ..., 1.


def _evaluator(model: vit.Model, config: dict) -> evaluate.Evaluator:
  return _cached_evaluator(model, config["data.normalization"])


@functools.cache
def _cached_evaluator(model: vit.Model, normalization: str) -> evaluate.Evaluator:
  """One evaluator (compiled once per shape) for all the runs of a model."""
  return evaluate.Evaluator(sharding.make_mesh(), model, normalization)


def _accuracy(evaluator, params, config: dict, subset: str, shift: str | None = None) -> float:
  return evaluator.stream(params, tasks_lib.get(config["task"]), subset, config["data.resolution"],
                          config["eval_batch_size"], config.get("data.data_dir"),
                          config["data.resize"], shift=shift,
                          source=config.get("data.source", "tfds"))["accuracy"]


def shift_run(workdir: str, shifts, log=print) -> dict:
  """{"clean": test accuracy, shift: accuracy, ...} of a finished final run, kept in
  <workdir>/shift.json and reused while the run's artifact is the one it was made from."""
  path = os.path.join(workdir, "shift.json")
  result = files.read_json(os.path.join(workdir, "result.json"))
  stored = {}
  if os.path.exists(path):
    try:
      stored = files.read_json(path)
    except files.DamagedFileError:
      stored = {}
  if stored.get("artifact_sha256") != result.get("artifact_sha256"):
    stored = {"artifact_sha256": result.get("artifact_sha256"),
              "clean": result["test_accuracy"], "accuracy": {}}
  missing = [s for s in shifts if s not in stored["accuracy"]]
  if missing:
    model, params, config = artifacts.load_trained(workdir)
    evaluator = _evaluator(model, config)
    for shift in missing:
      stored["accuracy"][shift] = _accuracy(evaluator, params, config, "test", shift)
      log(f"{workdir}: {shift} {100 * stored['accuracy'][shift]:.1f}% "
          f"(clean {100 * stored['clean']:.1f}%)")
    files.write_json(path, stored)
  return stored


def initial_params(workdir: str, model: vit.Model, trained: dict, config: dict) -> dict:
  """theta_0 of a finished run: its last stage's starting point, as train.create_train_state
  made it. The pre-trained backbone and earlier stages' artifacts (their head only when the
  method carries it over), what the stage initialised from the run's seed as training drew it
  (train.run_keys), and, for model.head_init=zero_shot, CLIP's zero-shot head of the task's class
  names instead of a fresh head (so WiSE-FT interpolates from the zero-shot model)."""
  init_rng = train.run_keys(config["seed"])[0]
  images = np.zeros((1, config["data.resolution"], config["data.resolution"], 3), np.float32)
  fresh = jax.jit(model.init)(init_rng, images)["params"]
  base = artifacts.pretrained_backbone(config, model.num_classes)
  stages = artifacts.stage_dirs(workdir)
  earlier = paths.merge({}, *[artifacts.load(os.path.join(d, artifacts.FILENAME))[0]
                              for d in stages[:-1]])
  if earlier and not _method_of(config, model).carry_head:
    earlier = {k: v for k, v in earlier.items() if k != "head"}  # spec.StageSpec.start_from.
  start = paths.merge(fresh, base, earlier)
  if zero_shot.uses(model) and "head" not in earlier:
    start["head"] = zero_shot.head(config["backbone"], config.get("pretrained_cache_dir"), model,
                                   tasks_lib.get(config["task"]).class_names)
  missing = set(paths.flatten(trained)) - set(paths.flatten(start))
  if missing:
    raise ValueError(f"{workdir}: no starting value for {sorted(missing)[:3]}.")
  return start


def _method_of(config: dict, model: vit.Model):
  kwargs = {k.removeprefix("method_kwargs."): v for k, v in config.items()
            if k.startswith("method_kwargs.")}
  return methods.get(config["method"], depth=model.architecture.depth,
                     width=model.architecture.width, **kwargs)


WISE_MODES = ("model", "petl")
# --wise_mode=petl, OSU-MLB/PETL_Vision's merge_petl.py: the head (PETL_Vision's CLIP head is
# Sequential(proj, classifier), experiment/build_model.py L122-124, so `projection` here) from its
# initial value (the zero-shot head) to the trained one, and each inserted module's output times
# alpha (its merge_factor: model/lora.py L27, adapter.py L50-52, convpass.py L49, repadapter.py
# L25, fact.py L65-116), which in weight space is the module's last linear map times alpha.
# Everything else (the frozen backbone, VPT's prompts, SSF, BitFit's biases, which no
# merge_factor reaches) stays as trained.
_PETL_RULES = (
    (r"head/.*|projection/.*", "interpolate"),
    (r".*/lora_(query|value)_b|.*/(petl|adapter)_(attention|mlp)/up(/.*|_kernel|_bias)|"
     r"Transformer/fact/v", "scale"),
    (r".*", "keep"))


def suits(workdir: str, mode: str) -> bool:
  """Whether WiSE-FT `mode` applies to a finished run, as PETL_Vision's README (L239-243) splits
  the methods: "model" (its merge_model.py) for runs that tuned pre-trained weights (full,
  BitFit, LayerNorm, ...), "petl" (merge_petl.py) for runs that inserted parameters (LoRA,
  adapters, prompts, ...). The head (with CLIP's projection, PETL_Vision's head too) counts as
  neither."""
  config = files.read_json(os.path.join(workdir, "config.json"))
  trained, _ = artifacts.load(os.path.join(artifacts.stage_dirs(workdir)[-1], artifacts.FILENAME))
  num_classes, _ = artifacts.model_of_record(config)
  pretrained = set(paths.flatten(artifacts.pretrained_backbone(config, num_classes)))
  tuned = {p for p in paths.flatten(trained) if not p.startswith(("head/", "projection/"))}
  return bool(tuned & pretrained) if mode == "model" else bool(tuned - pretrained)


def interpolate(theta_0: dict, theta_1: dict, alpha: float, mode: str = "model") -> dict:
  """WiSE-FT's theta(alpha): "model" (mlfoundations/wise-ft), every parameter
  (1 - alpha) * theta_0 + alpha * theta_1; "petl" (PETL_Vision's merge_petl.py), the head so,
  the inserted modules' output maps alpha * theta_1, the rest theta_1."""
  if mode == "model":
    return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, theta_0, theta_1)
  if mode != "petl":
    raise ValueError(f"wise_mode={mode!r} must be one of {', '.join(WISE_MODES)}.")
  rule = paths.flatten(paths.first_match(theta_1, _PETL_RULES))
  start = paths.flatten(theta_0)
  out = {}
  for path, b in paths.flatten(theta_1).items():
    if rule[path] == "interpolate":
      out[path] = (1 - alpha) * start[path] + alpha * b
    else:
      out[path] = alpha * b if rule[path] == "scale" else b
  return paths.unflatten(out)


def selection_run(method_dir: str) -> str | None:
  """The search run of the setting best.json selected (trained on train800, scored on val200)."""
  try:
    best = files.read_json(os.path.join(method_dir, "best.json"))
  except (FileNotFoundError, files.DamagedFileError):
    return None
  chosen = os.path.join(method_dir, "search", sweep.point_name(
      best["base_lr"], best["weight_decay"], best.get("grid", {}).items()))
  return chosen if os.path.exists(os.path.join(chosen, "result.json")) else None


def wise_curve(workdir: str, subset: str, shifts=(), alphas=WISE_ALPHAS, mode: str = "model") -> dict:
  """{"clean": [accuracy per alpha], shift: [...]} of a finished run on `subset`, interpolated
  as `mode` says (`interpolate`)."""
  model, trained, config = artifacts.load_trained(workdir)
  theta_0 = initial_params(workdir, model, trained, config)
  evaluator = _evaluator(model, config)
  curve = {"clean": []} | {s: [] for s in shifts}
  for alpha in alphas:
    params = interpolate(theta_0, trained, alpha, mode)
    curve["clean"].append(_accuracy(evaluator, params, config, subset))
    for shift in shifts:
      curve[shift].append(_accuracy(evaluator, params, config, subset, shift))
  return curve


def wise_file(mode: str) -> str:
  """Where `wise` keeps a mode's results in a method's directory: wise.json (model),
  wise_petl.json (petl), so that neither mode's results replace the other's."""
  return "wise.json" if mode == "model" else f"wise_{mode}.json"


def wise(method_dir: str, selection_run: str, final_runs: list[str], shifts=(),
         alphas=WISE_ALPHAS, log=print, mode: str = "model") -> dict:
  """WiSE-FT of one (task, method): a picked by `selection_run` on the split it was scored on
  (VTAB-1k's val200, FGVC's val, a folder task's val list), test accuracies of `final_runs`
  along a (clean and shifted), interpolated as `mode` says; written, with the mode, to
  <method_dir>/wise_file(mode)."""
  subset = files.read_json(os.path.join(selection_run, "config.json"))["data.eval_subset"]
  val = wise_curve(selection_run, subset, (), alphas, mode)["clean"]
  best = int(np.argmax(val))  # Ties -> the smaller a (closer to the pre-trained model).
  runs = {os.path.relpath(run, method_dir): wise_curve(run, "test", shifts, alphas, mode)
          for run in final_runs}
  out = {"mode": mode, "alphas": list(alphas), subset: val, "selection_subset": subset,
         "selected_alpha": alphas[best], "selected_in": os.path.relpath(selection_run, method_dir),
         "test": runs}
  files.write_json(os.path.join(method_dir, wise_file(mode)), out)
  log(f"{method_dir}: a = {alphas[best]} on {subset}; test at a: "
      + ", ".join(f"{100 * r['clean'][best]:.1f}%" for r in runs.values())
      + " (a = 1: " + ", ".join(f"{100 * r['clean'][-1]:.1f}%" for r in runs.values()) + ")")
  return out
