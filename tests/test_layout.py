"""The study's axes as registries, a resolved run that carries no config, and a training path that
needs neither TensorFlow nor ml_collections."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np

from vpt_jax import catalog, methods
from vpt_jax.data import pipeline, sources
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.models import backbones
from vpt_jax.training import recipes, spec, train

from test_benchmark import modules_imported_by
from test_train import REPO, tiny_config


def test_list_shows_every_entry_of_every_registry():
  listed = subprocess.run([sys.executable, "launch/main.py", "--list"], cwd=REPO, text=True,
                          capture_output=True, timeout=300)
  assert listed.returncode == 0, listed.stderr
  assert listed.stdout.splitlines() == catalog.lines()
  rows = [line for line in catalog.lines() if line.startswith("  ")]
  names = [line.split()[0] for line in rows if not line.startswith("  demo (shipped)")]
  expected = [*tasks_lib.TASKS, *sources.SOURCES, *backbones.BACKBONES, *methods.names(),
              *recipes.RECIPES]
  assert names == expected
  assert all(len(line.split()) > 1 for line in rows)
  assert "task=folder:<path>" in listed.stdout.splitlines()[0]
  assert [line for line in rows if "demo_vit_ti8_depth2.npz" in line][0].startswith("  demo (shipped)")
  recipe_rows = rows[-len(recipes.RECIPES):]
  assert all(line.endswith(".") and len(line) < 250 for line in recipe_rows), recipe_rows  # Whole sentences.


def _configs_in(value, seen=None) -> list:
  """Every ConfigDict reachable from `value` (dataclass fields, dicts, sequences)."""
  if isinstance(value, ml_collections.ConfigDict):
    return [value]
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return [c for f in dataclasses.fields(value) for c in _configs_in(getattr(value, f.name))]
  if isinstance(value, dict):
    return [c for v in value.values() for c in _configs_in(v)]
  if isinstance(value, (list, tuple)):
    return [c for v in value for c in _configs_in(v)]
  return []


def test_a_resolved_run_is_frozen_and_holds_no_config(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=ft_then_pt")
  run = spec.resolve_run(config, str(tmp_path / "w"))
  assert _configs_in(run) == []
  assert run.task is tasks_lib.get("dtd") and [s.method.name for s in run.stages] == [
      "full", "vpt_deep"]
  assert run.stages[0].optim.name == "hf_adamw" and run.stages[0].optim.decay == 0.01
  assert run.stages[1].workdir == str(tmp_path / "w" / "stage2_vpt_deep")
  assert run.record == json.loads(json.dumps(run.record))  # What config.json holds.
  try:
    run.stages[0].optim.batch_size = 1
  except dataclasses.FrozenInstanceError:
    pass
  else:
    raise AssertionError("the run spec can be changed")


def test_records_made_before_a_field_existed_still_match():
  record = {"task": "dtd", "data.resolution": 224}
  assert train.config_differences(record, {**record, "data.source": "tfds"}) == []
  assert train.config_differences(record, {**record, "data.source": "other"}) == ["data.source"]


def test_the_training_path_imports_neither_tensorflow_nor_ml_collections():
  assert modules_imported_by("vpt_jax.training.train, vpt_jax.training.loop, vpt_jax.catalog",
                             ("tensorflow", "tensorflow_datasets", "ml_collections")) == []


def test_a_run_on_cached_arrays_needs_no_tensorflow(fake_data_dir, tiny_backbone, tmp_path):
  """The GPU image has no TensorFlow: once train800val200 and test are cached (here, with
  TensorFlow), a run reads them with the dataset gone and TensorFlow unimportable."""
  cache = str(tmp_path / "cache")
  data = spec.resolve_run(tiny_config(fake_data_dir, tiny_backbone, tmp_path), "w").data
  for subset in ("train800val200", "test"):
    pipeline.load_arrays(data.task, subset, data.resolution, fake_data_dir, cache, data.resize)
  overrides = {"optim.epochs": 2, "optim.warmup_epochs": 1, "data.data_dir": str(tmp_path / "gone"),
               "data.cache_dir": cache}
  code = textwrap.dedent(f"""
      import json, sys
      # As if not installed: importing them fails, importlib.util.find_spec says None.
      sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
      sys.path.insert(0, {str(REPO / 'tests')!r})
      from test_train import tiny_config
      from vpt_jax.training import train
      config = tiny_config({fake_data_dir!r}, {tiny_backbone!r}, __import__("pathlib").Path(
          {str(tmp_path)!r}), **{overrides!r})
      result = train.train_and_evaluate(config, {str(tmp_path / 'run')!r}, log=lambda *_: None)
      print(json.dumps(result))""")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["eval_examples"] == 37 and 0 <= result["test_accuracy"] <= 1
  assert np.isfinite(result["test_loss"]) and result["steps"] > 0


def test_prepare_data_caches_subsets_for_tensorflow_free_runs(fake_data_dir, tmp_path):
  out = subprocess.run([sys.executable, "launch/prepare_data.py", "--tasks=dtd",
                        f"--data_dir={fake_data_dir}", "--cache_subsets=test,val200",
                        "--resolution=32", f"--cache_dir={tmp_path}"], cwd=REPO, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "Cached dtd/test: 37 images at 32 px." in out.stdout
  cached = pipeline.cached_arrays(tasks_lib.get("dtd"), "val200", 32, fake_data_dir,
                                  str(tmp_path), "tf1_bilinear")
  expected = pipeline.load_arrays(tasks_lib.get("dtd"), "val200", 32, fake_data_dir,
                                  str(tmp_path / "fresh"), "tf1_bilinear")
  np.testing.assert_array_equal(cached[0], expected[0])
  np.testing.assert_array_equal(cached[1], expected[1])
