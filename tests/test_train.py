"""The training engine end to end on offline data: every method, devices, resume, faults."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vtab as vtab_config
from vpt_jax import methods
from vpt_jax.data import tasks as tasks_lib
from vpt_jax.checkpoints import pretrained
from vpt_jax.training import artifacts, loop, metrics, optim, recipes, spec, steps, train
from vpt_jax.utils import config_lib, files, paths
from vpt_jax.models import vit

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY_OVERRIDES = {
    "model.variant": "Ti/16", "model.depth": 2, "data.resolution": 32, "optim.epochs": 2,
    "optim.warmup_epochs": 1, "optim.batch_size": 32, "eval_batch_size": 16,
    "checkpoint_every_epochs": 1, "method_kwargs.prompt_tokens": 2,
}


def tiny_config(fake_data_dir, tiny_backbone, tmp_path, arg="task=dtd,method=vpt_deep", **extra):
  config = vtab_config.get_config(arg)
  for key, value in {**TINY_OVERRIDES, "backbone": tiny_backbone, "data.data_dir": fake_data_dir,
                     "data.cache_dir": str(tmp_path / "cache"), **extra}.items():
    config_lib.set_path(config, key, value)
  return config


def cli_overrides(config):
  return [f"--config.{k}={v}" for k, v in {
      **TINY_OVERRIDES, "backbone": config.backbone, "data.data_dir": config.data.data_dir,
      "data.cache_dir": config.data.cache_dir}.items()]


# zero_shot needs a CLIP backbone and class names: tests/test_zero_shot.py runs it.
@pytest.mark.parametrize("method", [m for m in methods.names() if m != "zero_shot"])
def test_every_method_trains_and_evaluates(method, fake_data_dir, tiny_backbone, tmp_path,
                                           monkeypatch):
  if method == "sidetune":  # AlexNet's geometry at 8 channels: the run is tested, not its cost.
    from vpt_jax.models import side
    monkeypatch.setattr(side, "ALEXNET_CONVS", tuple((8,) + c[1:] for c in side.ALEXNET_CONVS))
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, f"task=dtd,method={method}",
                       **{"optim.epochs": 1, "optim.warmup_epochs": 0,
                          # Sidetune's AlexNet needs 63 px or more; offline, its random init.
                          **({"data.resolution": 64, "method_kwargs.side_checkpoint": ""}
                             if method == "sidetune" else {})})
  lines = []
  result = train.train_and_evaluate(config, str(tmp_path / "run"), log=lines.append)
  assert result["method"] == method and result["eval_examples"] == 37
  assert 0.0 <= result["test_accuracy"] <= 1.0 and np.isfinite(result["test_loss"])
  assert json.loads((tmp_path / "run" / "result.json").read_text()) == result
  stage_dirs = sorted(p.name for p in (tmp_path / "run").glob("stage*"))
  if method in ("ft_then_pt", "lp_ft"):
    assert [s["method"] for s in result["stages"]] == [d.split("_", 1)[1] for d in stage_dirs]
    first, last = result["stages"]
    resolved = recipes.resolve(config)
    assert first["base_lr"] == resolved.stage_optim[first["method"]].base_lr != \
        resolved.optim.base_lr
    assert first["weight_decay"] == resolved.stage_optim[first["method"]].weight_decay
    assert last["base_lr"] == resolved.optim.base_lr
    assert result["tuned_percent"] == 100.0  # Its full stage tuned everything.
  else:
    assert stage_dirs == []
    assert any("trainable parameters" in line for line in lines)
  assert len(metrics.read(str(tmp_path / "run" / (stage_dirs[-1] if stage_dirs else "")))) == 1


def test_vtab_config_follows_the_vpt_code():
  shallow, deep = (recipes.resolve(vtab_config.get_config(f"method={m}"))
                   for m in ("vpt_shallow", "vpt_deep"))
  assert (shallow.method_kwargs.prompt_dropout, deep.method_kwargs.prompt_dropout) == (0.0, 0.1)
  trainable = {"head": {"bias": 0, "kernel": 0}, "prompt": {"embeddings": 0}}
  assert optim.decay_mask(trainable, deep.optim.decay_rules) == {
      "head": {"bias": False, "kernel": True}, "prompt": {"embeddings": True}}
  assert recipes.resolve(vtab_config.get_config("method=full")).sweep.base_lrs == (
      0.005, 0.001, 0.0005, 0.0001)


def test_stage_optim_names_an_earlier_stage(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=ft_then_pt")
  resolved = recipes.resolve(config)
  assert resolved.stage_optim.full.base_lr == 0.001
  # The tuned (last) stage takes config.optim itself.
  assert [s.optim.base_lr for s in spec.from_resolved(resolved, "w").stages] \
      == [0.001, resolved.optim.base_lr]
  config.stage_optim.vpt_deep = {"base_lr": 1.0}
  with pytest.raises(ValueError, match="has no earlier stage called 'vpt_deep'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  del config.stage_optim["vpt_deep"]
  config.stage_optim.full.lr = 0.1
  with pytest.raises(ValueError, match=r"sets \['lr'\], which are not config.optim fields"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_run_outputs_and_artifact(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, eval_every_epochs=1)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  assert {"config.json", "metrics.jsonl", "result.json", "artifact.npz", "checkpoints",
          "tensorboard"} <= set(os.listdir(workdir))
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  rows = metrics.read(str(workdir))
  assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [32, 64]
  assert rows[-1]["eval_loss"] == pytest.approx(result["test_loss"])
  assert rows[-1]["eval_accuracy"] == pytest.approx(result["test_accuracy"])
  assert result["trainable_parameters"] == 47 * 192 + 47 + 2 * 2 * 192  # head + 2 x 2 prompts
  assert result["artifact_bytes"] < result["full_model_bytes"] / 20

  # The artifact alone, on the pre-trained backbone, reproduces the evaluation.
  trained, meta = artifacts.load(str(workdir / "artifact.npz"))
  assert meta["method"] == "vpt_deep"
  model = vit.Model(num_classes=47, variant="Ti/16", depth=2, prompt_tokens=2, prompt_deep=True)
  backbone = pretrained.load(tiny_backbone, vit.Model(num_classes=47, variant="Ti/16", depth=2),
                             image_size=32)
  params = paths.merge(backbone, trained)
  from vpt_jax.data import device, pipeline
  correct = total = 0
  for batch in pipeline.eval_batches(tasks_lib.get("dtd"), "test", 32, 16, fake_data_dir):
    logits, _ = model.apply({"params": params}, device.normalize(batch["image"], "imagenet"))
    correct += int(((np.argmax(logits, -1) == batch["label"]) & batch["mask"]).sum())
    total += int(batch["mask"].sum())
  assert (total, correct / total) == (37, pytest.approx(result["test_accuracy"]))


class Killed(Exception):
  pass


def _kill_at(monkeypatch, step):
  original = metrics.MetricWriter.write

  def write(self, at_step, **row):
    if at_step == step:
      raise Killed(f"killed at step {step}")
    return original(self, at_step, **row)
  monkeypatch.setattr(metrics.MetricWriter, "write", write)


def _artifact(workdir):
  return files.read_npz(str(workdir / "artifact.npz"))


def test_kill_and_resume_is_bitwise_identical(fake_data_dir, tiny_backbone, tmp_path, monkeypatch,
                                              caplog):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=mixed",
                       **{"optim.epochs": 4})
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"), log=lambda *_: None)

  workdir = tmp_path / "interrupted"
  with monkeypatch.context() as patch:
    _kill_at(patch, 3 * 32)  # During epoch 3, after the epoch-2 checkpoint.
    with pytest.raises(Killed):
      train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["32", "64"]
  assert not (workdir / "result.json").exists()
  lines = []
  resumed = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert "Resuming mixed from step 64 of 128" in "\n".join(lines)
  for key in ("test_accuracy", "test_loss", "trainable_parameters"):
    assert resumed[key] == reference[key], key
  assert metrics.read(str(workdir)) == metrics.read(str(tmp_path / "reference"))
  for key, value in _artifact(tmp_path / "reference").items():
    np.testing.assert_array_equal(_artifact(workdir)[key], value, err_msg=key)

  # A corrupt newest checkpoint: fall back to the one before it, with a warning, same result.
  second = tmp_path / "corrupt"
  with monkeypatch.context() as patch:
    _kill_at(patch, 3 * 32)
    with pytest.raises(Killed):
      train.train_and_evaluate(config, str(second), log=lambda *_: None)
  for path in (second / "checkpoints" / "64").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  lines = []
  with caplog.at_level(logging.WARNING):
    recovered = train.train_and_evaluate(config, str(second), log=lines.append)
  assert "Checkpoint at step 64" in caplog.text and "falling back" in caplog.text
  assert "Resuming mixed from step 32 of 128" in "\n".join(lines)
  assert recovered["test_loss"] == reference["test_loss"]
  assert [p.name.split("-")[0] for p in (second / "unreadable_checkpoints").iterdir()] == ["64"]


def test_restart_before_the_first_checkpoint_logs_each_epoch_once(fake_data_dir, tiny_backbone,
                                                                  tmp_path, monkeypatch):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, checkpoint_every_epochs=2)
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:
    _kill_at(patch, 64)  # Epoch 1 is logged; no checkpoint exists yet.
    with pytest.raises(Killed):
      train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  assert [r["epoch"] for r in metrics.read(str(workdir))] == [1]
  train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  assert [r["epoch"] for r in metrics.read(str(workdir))] == [1, 2]


def test_two_stage_method_resumes_in_its_second_stage(fake_data_dir, tiny_backbone, tmp_path,
                                                      monkeypatch):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=lp_ft")
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"), log=lambda *_: None)
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:
    calls = []  # Stage 1 logs twice; die at stage 2's second epoch.
    original = metrics.MetricWriter.write

    def write(self, step, **row):
      calls.append(self.path)
      if len(calls) == 4:
        raise Killed()
      return original(self, step, **row)
    patch.setattr(metrics.MetricWriter, "write", write)
    with pytest.raises(Killed):
      train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  assert (workdir / "stage1_linear" / "result.json").exists()
  lines = []
  result = train.train_and_evaluate(config, str(workdir), log=lines.append)
  assert "Stage 1 (linear) already finished." in lines
  assert result["test_loss"] == reference["test_loss"]


def _nan_after(count_limit):
  """A train step whose loss turns NaN once the optimizer has taken `count_limit` steps."""
  original = steps.make_train_step

  def make_train_step(model, tx):
    step = original(model, tx)

    def poisoned(trainable, opt_state, frozen, images, labels, rng, mask=None):
      counts = [x for path, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]
                if getattr(path[-1], "name", None) == "count"]
      trainable, opt_state, out = step(trainable, opt_state, frozen, images, labels, rng, mask)
      out["loss"] = jnp.where(counts[0] >= count_limit, jnp.nan, out["loss"])
      return trainable, opt_state, out
    return poisoned
  return make_train_step


def test_non_finite_loss_stops_and_keeps_good_checkpoints(fake_data_dir, tiny_backbone, tmp_path,
                                                          monkeypatch):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path,
                       **{"optim.epochs": 3, "optim.on_non_finite": "fail"})
  monkeypatch.setattr(steps, "make_train_step", _nan_after(40))
  workdir = tmp_path / "run"
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"Loss became nan at step 40 \(epoch 2\); stopped. Last good checkpoint: "
                           r"step 32"):
    train.train_and_evaluate(config, str(workdir), log=lambda *_: None)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["32"]
  assert not (workdir / "result.json").exists()
  assert [r["epoch"] for r in metrics.read(str(workdir))] == [1]


def test_config_arguments():
  config = recipes.resolve(vtab_config.get_config("task=svhn,method=full,phase=search,seed=3"))
  assert (config.task, config.method, config.seed) == ("svhn", "full", 3)
  assert (config.data.train_subset, config.data.eval_subset) == ("train800", "val200")
  assert config.method_kwargs.prompt_tokens == 50
  # Full fine-tuning as ChengHan111/VPT-or-FT trains it (configs/base-finetune.yaml, command.txt).
  assert config.optim.epochs == 100 and config.optim.warmup_epochs == 5
  assert config.optim.batch_size == 128 and config.optim.momentum == 0.9
  assert config.backbone == "ViT-B_16" and config.model.variant == "B/16"
  with pytest.raises(ValueError, match="valid keys: task, method, recipe, phase, backbone, seed, fsdp, bf16"):
    vtab_config.get_config("task=svhn,lr=0.1")
  with pytest.raises(ValueError, match="seed='x' must be an int"):
    vtab_config.get_config("seed=x")
  with pytest.raises(ValueError, match="task='imagenet21k' is not a VTAB-1k, FGVC, many-shot, ImageNet or demo task"):
    vtab_config.get_config("task=imagenet21k")
  with pytest.raises(ValueError, match="phase='test' must be 'final' or 'search'"):
    vtab_config.get_config("phase=test")


def test_unknown_method_and_bad_dtype(fake_data_dir, tiny_backbone, tmp_path):
  with pytest.raises(ValueError, match="method='vtp_deep' is not a tuning method"):
    vtab_config.get_config("task=dtd,method=vtp_deep")
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path)
  config.method = "vtp_deep"  # Past the config file's own check, e.g. an override.
  with pytest.raises(ValueError, match="Unknown method 'vtp_deep'"):
    train.train_and_evaluate(config, str(tmp_path / "a"), log=lambda *_: None)
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, dtype="float16")
  with pytest.raises(ValueError, match="dtype='float16' must be 'float32' or 'bfloat16'"):
    train.train_and_evaluate(config, str(tmp_path / "b"), log=lambda *_: None)
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, **{"optim.warmup_epochs": 2})
  with pytest.raises(ValueError, match=r"warm-up \(2 epochs\) must be shorter than training"):
    train.train_and_evaluate(config, str(tmp_path / "c"), log=lambda *_: None)


def run_main(args, env_extra=None):
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, "launch/main.py", *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=600)


def test_one_device_and_eight_devices_agree(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=full,fsdp=true")
  one = train.train_and_evaluate(config, str(tmp_path / "one"), log=lambda *_: None)
  assert jax.device_count() == 1
  process = run_main([f"--config={REPO}/configs/vtab.py:task=dtd,method=full,fsdp=true",
                      f"--workdir={tmp_path / 'eight'}", *cli_overrides(config)],
                     {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert process.returncode == 0, process.stderr[-3000:]
  assert "on 8 cpu device(s)" in process.stdout
  eight = json.loads((tmp_path / "eight" / "result.json").read_text())
  assert eight["test_loss"] == pytest.approx(one["test_loss"], abs=1e-4)
  assert eight["test_accuracy"] == one["test_accuracy"]
  for a, b in zip(metrics.read(str(tmp_path / "one")), metrics.read(str(tmp_path / "eight"))):
    assert a["train_loss_running"] == pytest.approx(b["train_loss_running"], abs=1e-4)


def test_command_line_errors_are_one_line(fake_data_dir, tiny_backbone, tmp_path):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path)
  process = run_main([f"--config={REPO}/configs/vtab.py:task=svhn", f"--workdir={tmp_path / 'w'}",
                      *cli_overrides(config)])
  assert process.returncode == 1
  last = process.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Task svhn (svhn_cropped:3.*.*) is not prepared")
  assert "python launch/prepare_data.py --tasks=svhn" in last


def test_relative_workdir(fake_data_dir, tiny_backbone, tmp_path, monkeypatch):
  config = tiny_config(fake_data_dir, tiny_backbone, tmp_path, "task=dtd,method=linear",
                       **{"optim.epochs": 1, "optim.warmup_epochs": 0})
  monkeypatch.chdir(tmp_path)
  result = train.train_and_evaluate(config, "runs/relative", log=lambda *_: None)
  assert (tmp_path / "runs" / "relative" / "checkpoints" / str(result["steps"])).is_dir()
