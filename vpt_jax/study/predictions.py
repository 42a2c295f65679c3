"""What final runs predicted: error disagreement between methods and prediction ensembles.

Every final run stores its test logits (float16) and labels in split order (train.PREDICTIONS).
Two methods "err differently" on an example when exactly one of them is wrong; a prediction
ensemble averages the members' softmax probabilities (Mai et al. 2024 find that PEFT methods of
equal accuracy make different mistakes). Methods are compared seed by seed: the run of seed s of
one method with the run of seed s of the other, then averaged over the seeds both have.
"""

import collections
import itertools
import os

import numpy as np

from vpt_jax.utils import files


def load(final_dirs: list[str]) -> dict:
  """{(task, method): {seed: (logits float32 (N, C), labels (N,))}} of the runs that have them."""
  out = collections.defaultdict(dict)
  for workdir in final_dirs:
    try:
      result = files.read_json(os.path.join(workdir, "result.json"))
      if "predictions" not in result:
        continue
      arrays = files.read_npz(os.path.join(workdir, result["predictions"]))
    except (FileNotFoundError, files.DamagedFileError):
      continue
    out[(result["task"], result["method"])][result["seed"]] = (
        arrays["logits"].astype(np.float32), arrays["labels"])
  return dict(out)


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def ensemble_accuracy(members: list[tuple[np.ndarray, np.ndarray]]) -> float:
  """Accuracy of the mean of the members' softmax probabilities."""
  labels = members[0][1]
  if any(len(m[1]) != len(labels) or not np.array_equal(m[1], labels) for m in members):
    raise ValueError("Ensemble members were evaluated on different examples.")
  probabilities = np.mean([_softmax(logits) for logits, _ in members], axis=0)
  return float(np.mean(probabilities.argmax(-1) == labels))


def error_disagreement(a: tuple, b: tuple) -> float:
  """Fraction of the examples on which exactly one of the two runs errs."""
  wrong_a = a[0].argmax(-1) != a[1]
  wrong_b = b[0].argmax(-1) != b[1]
  return float(np.mean(wrong_a != wrong_b))


def analyse(runs: dict, ensembles: list[tuple[str, ...]]) -> dict:
  """Per task: methods, the seed-averaged disagreement matrix, single-method accuracies, each
  method's all-seed ensemble and each requested ensemble (mean and std over common seeds)."""
  tasks = sorted({task for task, _ in runs})
  out = {}
  for task in tasks:
    by_method = {m: runs[(t, m)] for t, m in runs if t == task}
    names = sorted(by_method)
    matrix = np.full((len(names), len(names)), np.nan)
    for (i, a), (j, b) in itertools.product(enumerate(names), repeat=2):
      seeds = sorted(set(by_method[a]) & set(by_method[b]))
      if seeds:
        matrix[i, j] = np.mean([error_disagreement(by_method[a][s], by_method[b][s])
                                for s in seeds])
    single = {m: float(np.mean([ensemble_accuracy([r]) for r in by_method[m].values()]))
              for m in names}
    seed_ensembles = {m: ensemble_accuracy(list(by_method[m].values())) for m in names
                      if len(by_method[m]) > 1}
    chosen = {}
    for members in ensembles:
      if not all(m in by_method for m in members):
        continue
      seeds = sorted(set.intersection(*(set(by_method[m]) for m in members)))
      if seeds:
        accuracies = [ensemble_accuracy([by_method[m][s] for m in members]) for s in seeds]
        chosen["+".join(members)] = (float(np.mean(accuracies)), float(np.std(accuracies)),
                                     len(seeds))
    out[task] = {"methods": names, "disagreement": matrix, "single": single,
                 "seed_ensembles": seed_ensembles, "ensembles": chosen}
  return out


def markdown(analysis: dict) -> str:
  parts = []
  for task, a in analysis.items():
    names = a["methods"]
    lines = [f"### {task}", "",
             "Examples (%) on which exactly one of two methods errs (seed-matched runs):", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, a["disagreement"]):
      lines.append(f"| {name} | " + " | ".join(
          "—" if np.isnan(v) else f"{100 * v:.1f}" for v in row) + " |")
    lines += ["", "| predictor | test top-1 (%) |", "|---|---|"]
    for name in names:
      lines.append(f"| {name} (mean of seeds) | {100 * a['single'][name]:.1f} |")
      if name in a["seed_ensembles"]:
        lines.append(f"| {name} (ensemble of its seeds) | "
                     f"{100 * a['seed_ensembles'][name]:.1f} |")
    for members, (mean, std, n) in a["ensembles"].items():
      lines.append(f"| {members} (ensemble, {n} seeds) | {100 * mean:.1f} ± {100 * std:.1f} |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)
