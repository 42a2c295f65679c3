"""Sweeps that never lie: stale results, concurrency, damaged files, checksums, one-line errors,
nonsense configs, wall time across restarts, lost peers."""

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vtab as vtab_config
from test_train import REPO, cli_overrides, tiny_config
from vpt_jax.checkpoints import pretrained
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.study import executors, report, sweep
from vpt_jax.training import checkpointing, metrics, recipes, train
from vpt_jax.utils import cli, config_lib, files
from vpt_jax.data import pipeline


def quiet(*_):
  pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_dir, tiny_backbone):
  """A finished linear run and a finished lp_ft run, to copy and damage."""
  root = tmp_path_factory.mktemp("finished")
  runs = {}
  for method in ("linear", "lp_ft"):
    config = tiny_config(fake_data_dir, tiny_backbone, root, f"task=dtd,method={method}")
    result = train.train_and_evaluate(config, str(root / method), log=quiet)
    runs[method] = (config, root / method, result)
  return runs


def copy_of(finished, method, tmp_path):
  config, workdir, result = finished[method]
  target = tmp_path / method
  shutil.copytree(workdir, target)
  return config, target, result


# --- 1. Stale results -----------------------------------------------------------------------------

def test_a_changed_configuration_redoes_the_runs_and_the_report_counts_the_current_ones(
    fake_data_dir, tiny_backbone, tmp_path):
  sweep_dir = str(tmp_path / "sweep")

  def protocol(**fields):
    config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                         **{"optim.epochs": 1, "optim.warmup_epochs": 0, "sweep.seeds": 2,
                            "sweep.base_lrs": (0.5,), "sweep.weight_decays": (0.0,), **fields})
    planner = sweep.Planner(config, sweep_dir=sweep_dir)
    lines = []
    counts = sweep.run_protocol(sweep_dir, planner, executors.local(planner), log=lines.append)
    return counts, lines

  assert protocol()[0]["ran"] == 3
  counts, lines = protocol(**{"optim.epochs": 2})  # More epochs: nothing of before counts.
  assert counts == {"skipped": 0, "ran": 3, "failed": 0, "infeasible": 0}
  assert any("optim.epochs: 1 -> 2" in line and "superseded" in line for line in lines)
  final = json.loads((tmp_path / "sweep/vtab1k/dtd/linear/final/seed42/result.json").read_text())
  assert final["epochs"] == 2
  assert (tmp_path / "sweep/vtab1k/dtd/linear/superseded/lr0.5_wd0/seed42/result.json").exists()
  assert protocol(**{"optim.epochs": 2})[0]["skipped"] == 3
  protocol(**{"optim.epochs": 2, "sweep.seeds": 1})
  text = report.write(sweep_dir, str(tmp_path / "report"))
  assert "over 1 seeds" in text
  assert "## Final runs of an earlier sweep configuration (not counted)" in text
  assert "- vtab1k/dtd/linear/final/seed44" in text
  cells, _, _ = report.collect(sweep_dir)
  assert len(cells["vtab1k"][("dtd", "linear")].accuracies) == 1


# --- 2, 3. Concurrency ----------------------------------------------------------------------------

def test_two_processes_prepare_one_dataset_safely(tmp_path):
  code = textwrap.dedent(f"""
      from vpt_jax.data import tasks, tfds_source
      tfds_source.builder(tasks.get("demo_count"), {str(tmp_path)!r})
      print("ready")""")
  processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-2000:]
    assert out.strip().endswith("ready")
  assert sum("Generating mini_vtab/count" in out for out, _ in outputs) == 1  # Prepared once.
  assert len(list(tmp_path.glob("mini_vtab/count/1.0.0/*.tfrecord*"))) == 3


def hold_lock(workdir, seconds):
  """Another process that owns `workdir` for a while."""
  code = (f"import time; from vpt_jax.utils import files; lock = files.RunLock({str(workdir)!r})"
          f".acquire(); print('locked', flush=True); time.sleep({seconds})")
  process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
  assert process.stdout.readline().strip() == "locked"
  return process


def test_one_owner_per_run_directory(fake_data_dir, tiny_backbone, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  owner = hold_lock(workdir, 60)
  try:
    config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear")
    with pytest.raises(files.BusyError, match=rf"is being trained by another process \(pid "
                                             rf"{owner.pid}\)"):
      train.train_and_evaluate(config, str(workdir), log=quiet)
    assert not (workdir / "config.json").exists()
  finally:
    owner.kill()
    owner.wait()
  assert not files.is_locked(str(workdir))  # The OS dropped the lock with its process.

  # A sweep leaves a run another process owns to it, waits, and then finds it done.
  monkeypatch.setattr(sweep, "BUSY_POLL_SECONDS", 0.2)
  run = sweep.Run("vtab1k", "dtd", "linear", "search", 0.5, 0.0, 0)
  owned = tmp_path / "sweep" / run.workdir
  owner = hold_lock(owned, 2)
  ran, lines = [], []

  def runner(run, workdir, log=print, env=None):
    ran.append(workdir)
  (owned / "result.json").write_text(json.dumps({"val_accuracy": 0.5}))
  started = time.time()
  counts = sweep.execute(str(tmp_path / "sweep"), [run], runner, log=lines.append)
  owner.wait()
  assert counts["skipped"] == 1 and ran == [] and time.time() - started > 1.5
  assert lines[0].startswith("Waiting for 1 run(s) that another process is training")


def test_killing_the_parent_of_parallel_runs_stops_its_children(tmp_path):
  # The child sleeps far longer than the test waits: only the watcher can end it in time.
  child = ("import time; from vpt_jax.study import executors; executors.exit_with_parent(0.1); "
           "print('watching', flush=True); time.sleep(600)")
  parent = textwrap.dedent(f"""
      import os, subprocess, sys, time
      from vpt_jax.study import executors
      env = {{**os.environ, executors.PARENT_ENV: str(os.getpid())}}
      child = subprocess.Popen([sys.executable, "-c", {child!r}], env=env)
      print(child.pid, flush=True)
      time.sleep(600)""")
  process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
  child_pid = int(process.stdout.readline())
  # The child shares the parent's stdout: wait until its watcher runs, however slow the start.
  assert process.stdout.readline().strip() == "watching"
  process.send_signal(signal.SIGKILL)
  process.wait()
  deadline = time.time() + 120  # A bound for a loaded machine, far below the child's 600 s.
  while time.time() < deadline:
    try:
      os.kill(child_pid, 0)
      time.sleep(0.1)
    except ProcessLookupError:
      break
  else:
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the child outlived its sweep by 120 s")


# --- 4, 5. Damaged files and checksums ------------------------------------------------------------

def test_a_damaged_result_is_set_aside_and_the_run_finished_again(finished, tmp_path):
  config, workdir, result = copy_of(finished, "linear", tmp_path)
  text = (workdir / "result.json").read_text()
  (workdir / "result.json").write_text(text[:100])
  lines = []
  again = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert again["test_accuracy"] == result["test_accuracy"]
  assert any(str(workdir / "result.json") in line and "damaged" in line for line in lines)
  assert (workdir / "result.json.damaged").read_text() == text[:100]
  # In a sweep directory the report names it instead of failing.
  sweep_dir = tmp_path / "sweep"
  final = sweep_dir / "vtab1k/dtd/linear/final/seed42"
  final.mkdir(parents=True)
  (final / "result.json").write_text(text[:100])
  written = report.write(str(sweep_dir), str(tmp_path / "report"))
  assert "- vtab1k/dtd/linear/final/seed42/result.json" in written


def test_damaged_metrics_and_config_are_rebuilt_on_resume(finished, tmp_path, caplog):
  config, workdir, result = copy_of(finished, "linear", tmp_path)
  os.unlink(workdir / "result.json")
  rows = metrics.read(str(workdir))
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 99, "epo')  # A write cut short.
  (workdir / "config.json").write_text('{"task": "dt')
  lines = []
  with caplog.at_level(logging.WARNING):
    again = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert again["test_accuracy"] == result["test_accuracy"]
  assert metrics.read(str(workdir)) == rows
  assert "line 3 is damaged" in caplog.text and "metrics.jsonl" in caplog.text
  assert json.loads((workdir / "config.json").read_text())["task"] == "dtd"
  assert any("config.json is damaged" in line for line in lines)


def test_a_damaged_data_cache_is_rebuilt(fake_data_dir, tmp_path, caplog):
  first = pipeline.load_arrays(tasks_lib.get("dtd"), "val200", 16, fake_data_dir, str(tmp_path))
  [cache] = tmp_path.rglob("*.npz")
  cache.write_bytes(cache.read_bytes()[:1000])
  with caplog.at_level(logging.WARNING):
    again = pipeline.load_arrays(tasks_lib.get("dtd"), "val200", 16, fake_data_dir, str(tmp_path))
  assert f"Data cache {cache} is damaged" in caplog.text
  np.testing.assert_array_equal(again[0], first[0])
  np.testing.assert_array_equal(files.read_npz(str(cache))["images"], first[0])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_first_stage_artifact_finishes_the_stage_again(finished, tmp_path, damage):
  config, workdir, result = copy_of(finished, "lp_ft", tmp_path)
  os.unlink(workdir / "result.json")
  artifact = workdir / "stage1_linear" / "artifact.npz"
  data = bytearray(artifact.read_bytes())
  if damage == "truncate":
    artifact.write_bytes(bytes(data[:len(data) // 2]))
  elif damage == "flip":  # Inside the arrays, where only the checksum notices.
    for i in range(len(data) // 3, len(data) // 3 + 10):
      data[i] ^= 0xFF
    artifact.write_bytes(bytes(data))
  else:
    artifact.unlink()
  lines = []
  again = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert any("Stage 1 (linear) is finished again" in line for line in lines)
  assert again["test_loss"] == result["test_loss"]
  assert files.sha256_file(str(artifact)) == again["stages"][0]["artifact_sha256"]


def test_bit_rot_in_a_checkpoint_is_caught_by_its_checksum(fake_data_dir, tiny_backbone, tmp_path,
                                                          caplog):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                       **{"optim.epochs": 3})
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"), log=quiet)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir), log=quiet)
  os.unlink(workdir / "result.json")
  os.unlink(workdir / "artifact.npz")
  newest = max((workdir / "checkpoints" / "96").rglob("*"), key=lambda p: p.stat().st_size
               if p.is_file() else 0)
  data = bytearray(newest.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 10):
    data[i] ^= 0x55
  newest.write_bytes(bytes(data))
  lines = []
  with caplog.at_level(logging.WARNING):
    again = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert "Checkpoint at step 96" in caplog.text
  assert "Resuming linear from step 64 of 96" in "\n".join(lines)
  assert again["test_loss"] == reference["test_loss"]


def test_a_downloaded_checkpoint_is_verified_on_later_loads(checkpoint_dir, tmp_path, caplog):
  from test_pretrained import _Server
  root = tmp_path / "remote" / "imagenet21k"
  root.mkdir(parents=True)
  (root / "ViT-B_16.npz").write_bytes((checkpoint_dir / "vit_ti16_tok.npz").read_bytes())
  server = _Server(tmp_path / "remote")
  try:
    local = pretrained.resolve("ViT-B_16", str(tmp_path / "cache"), base_url=server.url)
    assert pathlib.Path(local + ".sha256").read_text().strip() == files.sha256_file(local)
    data = bytearray(pathlib.Path(local).read_bytes())
    data[len(data) // 2] ^= 1
    pathlib.Path(local).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
      again = pretrained.resolve("ViT-B_16", str(tmp_path / "cache"), base_url=server.url)
  finally:
    server.close()
  assert again == local and len(server.requests) == 2
  assert "no longer matches the SHA-256 recorded at its download" in caplog.text
  assert pathlib.Path(local).read_bytes() == (root / "ViT-B_16.npz").read_bytes()


# --- 6, 8. One-line errors, before anything is written ----------------------------------------------

def test_user_errors_are_one_line(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path)
  base = [f"--config={REPO}/configs/vtab.py:task=dtd", *cli_overrides(config)]
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  cases = {
      "field": ([*base, "--config.nope=1"], "--config.nope: the config has no field 'nope'"),
      "task": ([f"--config={REPO}/configs/vtab.py:task=nope"], "task='nope' is not a VTAB-1k"),
      "argument": ([f"--config={REPO}/configs/vtab.py:tsk=x"], "valid keys: task, method"),
      "batch": ([*base, "--config.optim.batch_size=0"], "optim.batch_size=0 must be ≥ 1"),
      "eval_batch": ([*base, "--config.eval_batch_size=0"], "eval_batch_size=0 must be ≥ 1"),
      "workdir": ([*base, f"--workdir={a_file}"], "is a file, not a directory"),
      "distributed": ([*base, "--distributed"], "could not join the other processes"),
      "config_file": ([f"--config={tmp_path}/missing.py"], "missing.py"),
  }
  processes = {}
  for name, (args, _) in cases.items():
    if not any(a.startswith("--workdir") for a in args):
      args = [*args, f"--workdir={tmp_path / name}"]
    processes[name] = subprocess.Popen([sys.executable, "launch/main.py", *args], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for name, process in processes.items():
    _, err = process.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 1, (name, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-2000:])
    assert cases[name][1] in lines[0], (name, lines[0])
    assert not (tmp_path / name / "config.json").exists()


def test_a_full_disk_is_one_line_and_leaves_no_temporaries(tmp_path, monkeypatch):
  with pytest.raises(SystemExit, match="error: no space left on the device"):
    with cli.errors(ValueError):
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1)
  original = checkpointer._manager.save

  def full_disk_save(step, args, force):
    (tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-123").mkdir()
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(checkpointer._manager, "save", full_disk_save)
  with pytest.raises(OSError):
    checkpointer.save(5, {"x": np.zeros(3)})
  assert os.listdir(tmp_path / "checkpoints") == []
  monkeypatch.setattr(checkpointer._manager, "save", original)


def test_background_checkpoints_save_what_the_state_was_and_report_failures(tmp_path,
                                                                            monkeypatch):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 2, background=True)
  original, release = checkpointer._manager.save, threading.Event()

  def slow_save(*args, **kwargs):
    assert release.wait(60)  # The write waits until the caller has moved on.
    return original(*args, **kwargs)
  monkeypatch.setattr(checkpointer._manager, "save", slow_save)
  state = {"x": jnp.arange(4.0)}
  checkpointer.save(3, state)  # Returns while the write is held back.
  state["x"] = state["x"] + 100  # Training goes on.
  release.set()
  assert checkpointer.steps() == [3]
  abstract = {"x": jax.ShapeDtypeStruct((4,), jnp.float32)}
  step, restored = checkpointer.restore_latest(abstract)
  assert step == 3 and np.asarray(restored["x"]).tolist() == [0.0, 1.0, 2.0, 3.0]

  def full_disk_save(step, args, force):
    (tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-9").mkdir()
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(checkpointer._manager, "save", full_disk_save)
  checkpointer.save(4, state)
  with pytest.raises(OSError, match="No space left"):
    checkpointer.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


def test_a_rejected_config_does_not_block_its_fix(fake_data_dir, tiny_backbone, tmp_path):
  workdir = str(tmp_path / "run")
  bad = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                    **{"optim.epochs": 0})
  with pytest.raises(ValueError, match="optim.epochs=0 must be ≥ 1"):
    train.train_and_evaluate(bad, workdir, log=quiet)
  assert not os.path.exists(workdir)
  good = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                     **{"optim.epochs": 1, "optim.warmup_epochs": 0})
  assert train.train_and_evaluate(good, workdir, log=quiet)["epochs"] == 1


# --- 7. Nonsense --------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("optim.base_lr", -0.4, "optim.base_lr=-0.4 must be > 0"),
    ("optim.weight_decay", -1.0, "optim.weight_decay=-1.0 must be ≥ 0"),
    ("optim.momentum", 5.0, r"optim.momentum=5.0 must be in \[0, 1\)"),
    ("optim.warmup_epochs", -1, "optim.warmup_epochs=-1 must be ≥ 0"),
    ("data.resolution", 30, "data.resolution=30 must be a positive multiple of the patch size 16"),
    ("checkpoints_to_keep", 0, "checkpoints_to_keep=0 must be ≥ 1"),
    ("checkpoint_every_epochs", -1, "checkpoint_every_epochs=-1 must be ≥ 0"),
    ("data.eval_subset", "train800", "data.eval_subset='train800' must be held-out data"),
    ("sweep.seeds", 0, "sweep.seeds=0 must be ≥ 1"),
    ("sweep.base_lrs", (), r"sweep.base_lrs=\(\) must be one or more learning rates > 0"),
    ("method_kwargs.prompt_tokens", -3, "method_kwargs.prompt_tokens=-3 must be an integer ≥ 1"),
])
def test_nonsense_is_refused_with_the_valid_range(field, value, message):
  config = vtab_config.get_config("task=dtd,method=vpt_deep")
  config_lib.set_path(config, field, value)
  with pytest.raises(ValueError, match=message):
    recipes.resolve(config)


# --- 9. Wall time ---------------------------------------------------------------------------------

def test_wall_time_adds_up_across_restarts(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "elapsed.json").write_text(json.dumps({"seconds": 1000.0}))  # Earlier attempts.
  started = time.time()
  result = train.train_and_evaluate(config, str(workdir), log=quiet)
  assert 1000 < result["wall_seconds"] < 1000 + time.time() - started + 1
  assert json.loads((workdir / "elapsed.json").read_text())["seconds"] > 1000


# --- 10. Several processes ------------------------------------------------------------------------

def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_lost_peer_stops_the_survivor_in_one_line(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=full",
                       **{"optim.epochs": 50})
  port = free_port()
  common = [sys.executable, "launch/main.py", f"--config={REPO}/configs/vtab.py:task=dtd,"
            "method=full", *cli_overrides(config), "--config.optim.epochs=50", "--distributed",
            f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  survivor = subprocess.Popen([*common, "--process_id=0", f"--workdir={tmp_path / 'a'}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO, env=env)
  peer = subprocess.Popen([*common, "--process_id=1", f"--workdir={tmp_path / 'b'}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
  try:
    deadline = time.time() + 240
    while not (tmp_path / "a" / "metrics.jsonl").exists():  # Training together.
      assert time.time() < deadline and survivor.poll() is None, survivor.stderr.read()[-3000:]
      time.sleep(0.2)
    peer.kill()
    killed = time.time()
    _, err = survivor.communicate(timeout=120)
    took = time.time() - killed
  finally:
    for process in (survivor, peer):
      if process.poll() is None:
        process.kill()
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert survivor.returncode == 1 and took < 30, (took, err[-3000:])
  assert len(lines) == 1 and "lost a peer process" in lines[0], err[-3000:]


# --- 11. Wording and file modes ---------------------------------------------------------------------

def test_infeasible_sizes_are_counted_apart_and_files_share_one_mode(finished, tmp_path):
  run = sweep.Run("scale99999", "dtd", "linear", "search", 0.5, 0.0, 0)

  def runner(run, workdir, log=print, env=None):
    raise sweep.tasks_lib.InfeasibleSubsetError("dtd cannot hold data-scale size 99999")
  counts = sweep.execute(str(tmp_path), [run], runner, log=quiet)
  assert counts == {"skipped": 0, "ran": 0, "failed": 0, "infeasible": 1}
  assert "infeasible size: dtd cannot hold" in report.write(str(tmp_path), str(tmp_path / "r"))
  _, workdir, _ = finished["linear"]
  cache = next(pathlib.Path(finished["linear"][0].data.cache_dir).rglob("*.npz"))
  for path in (workdir / "artifact.npz", workdir / "result.json", workdir / "config.json", cache):
    assert oct(path.stat().st_mode & 0o777) == "0o644", path
