"""A sweep that compiles once: shared programs, the persistent compilation cache, packed runs,
and where the time goes."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_train import REPO, tiny_config
from vpt_jax.study import executors, sweep
from vpt_jax.training import programs, train
from vpt_jax.utils import files, timing


def quiet(*_):
  pass


def test_a_grid_and_its_seeds_compile_the_train_step_once(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=vpt_deep",
                       **{"optim.epochs": 1, "optim.warmup_epochs": 0, "sweep.seeds": 2,
                          "sweep.base_lrs": (0.5, 0.05), "sweep.weight_decays": (1e-3, 1e-4)})
  planner = sweep.Planner(config, sweep_dir=str(tmp_path / "sweep"))
  local = executors.local(planner)
  compiles = []

  def runner(run, workdir, log=print, env=None):
    before = timing.snapshot()
    local(run, workdir, log=quiet)
    spent = timing.since(before)
    compiles.append(spent["compiles"] + spent["cache_loads"])  # Built, or loaded from the cache.

  programs._programs.clear()
  counts = sweep.run_protocol(str(tmp_path / "sweep"), planner, runner, log=quiet)
  assert counts["ran"] == 6  # 4 grid points, then 2 seeds.
  # One program: the grid trains on the first 800 rows of the train800val200 array the seeds
  # train on, so search and final runs share its train step and its evaluation step.
  [program] = programs._programs.values()
  assert program.train_step._cache_size() == 1
  assert program.evaluator._step_logits._cache_size() == 1
  # Everything a run needs compiles with the first run; the others compile nothing but the
  # final runs' permutation of 1,000 (the search runs permute 800).
  assert compiles[0] > 0 and compiles[1:4] == [0, 0, 0] and compiles[5] == 0, compiles
  assert compiles[4] == 1, compiles


def test_the_persistent_compilation_cache(tmp_path):
  code = textwrap.dedent("""
      import sys, jax, jax.numpy as jnp
      from vpt_jax.utils import timing
      events = []
      jax.monitoring.register_event_listener(lambda e, **_: events.append(e))
      timing.enable_compilation_cache(sys.argv[1])
      jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((8, 8))).block_until_ready()
      print(sum(e.endswith("cache_hits") for e in events))""")
  run = lambda setting: subprocess.run([sys.executable, "-c", code, setting], cwd=REPO,
                                       capture_output=True, text=True, check=True).stdout
  assert run(str(tmp_path / "xla")).strip() == "0"
  assert any((tmp_path / "xla").iterdir())
  assert run(str(tmp_path / "xla")).strip() != "0"  # A second process loads what the first built.
  assert run("off").strip() == "0"


@pytest.mark.parametrize("method, lrs", [("vpt_deep", (0.1, 0.02)), ("lora", (0.1, 0.02)),
                                         ("full", (0.001, 0.0005))])
def test_packed_runs_equal_the_same_runs_one_by_one(method, lrs, fake_data_dir, tiny_backbone,
                                                    tmp_path):
  configs = []
  for seed, lr in zip((42, 44), lrs):  # Other settings, other seeds: other batches too.
    config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, f"task=dtd,method={method}",
                         **{"optim.base_lr": lr, "seed": seed, "method_kwargs.lora_rank": 2})
    configs.append(config)
  packed = train.train_and_evaluate_packed(
      configs, [str(tmp_path / f"packed{i}") for i in range(2)], log=quiet)
  for i, config in enumerate(configs):
    alone = train.train_and_evaluate(config, str(tmp_path / f"alone{i}"), log=quiet)
    assert packed[i]["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-5)
    assert packed[i]["test_accuracy"] == alone["test_accuracy"]
    ours = files.read_npz(str(tmp_path / f"packed{i}" / "artifact.npz"))
    theirs = files.read_npz(str(tmp_path / f"alone{i}" / "artifact.npz"))
    for key in theirs:
      if key != "__meta__":
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-4, err_msg=key)
    rows = [json.loads(line) for line in open(tmp_path / f"packed{i}" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
  assert packed[0]["test_loss"] != packed[1]["test_loss"]
  # A packed run resumes like any other: finished, it is reported, not retrained.
  again = train.train_and_evaluate_packed(configs, [str(tmp_path / f"packed{i}") for i in
                                                    range(2)], log=quiet)
  assert [r["test_loss"] for r in again] == [r["test_loss"] for r in packed]


def test_a_packed_sweep_says_where_its_time_went(tmp_path):
  command = [sys.executable, "launch/sweep.py",
             "--config=configs/demo.py:task=demo_count,method=vpt_deep",
             "--config.sweep.seeds=2", "--config.sweep.base_lrs=(0.4,0.1)",
             "--config.sweep.weight_decays=(0.0,)", "--config.optim.epochs=2",
             "--config.sweep.pack=2", f"--sweep_dir={tmp_path / 'sweep'}",
             f"--config.data.data_dir={tmp_path / 'tfds'}",
             f"--config.data.cache_dir={tmp_path / 'cache'}"]
  process = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  assert "Done: 4 ran, 0 already finished" in process.stdout
  summary = next(line for line in process.stdout.splitlines() if line.startswith("Wall time"))
  for phase in timing.PHASES:
    assert f"{phase} " in summary, summary
  assert "compilations" in summary and "programs from the compilation cache" in summary
  seeds = [json.loads((tmp_path / f"sweep/vtab1k/demo_count/vpt_deep/final/seed{s}/"
                       "result.json").read_text()) for s in (42, 44)]
  assert {r["seed"] for r in seeds} == {42, 44} and seeds[0]["test_loss"] != seeds[1]["test_loss"]
  assert set(seeds[0]["time_seconds"]) == {*timing.PHASES, *timing.COUNTS}
  shutil.rmtree(tmp_path / "tfds")
