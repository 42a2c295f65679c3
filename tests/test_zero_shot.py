"""CLIP's zero-shot head as a method (zero_shot) and a head initialisation (model.head_init=zero_shot),
and WiSE-FT from the zero-shot model (whole model, and PETL_Vision's merge_petl.py mode), on a tiny
random CLIP written in OpenAI's and open_clip's layouts and a generated image folder with class
names. CLIP's BPE tokenizer (open_clip's) is replaced by test_clip_text's one-id-per-word stand-in
on the tiny model's vocabulary."""

import glob
import json
import os
import sys

import jax
import numpy as np
import pytest
import torch
from absl import flags

import torch_clip_text_reference as reference
from test_clip_text import fake_tokenize, save
from test_folder_data import write_images
from test_train import REPO
from vpt_jax import checkpoints, methods
from vpt_jax.models import clip_text, vit
from vpt_jax.study import robustness
from vpt_jax.training import artifacts, recipes, spec, zero_shot
from vpt_jax.utils import paths

NAMES = ("cat", "dog", "bird")
EMBED = 24


def tiny_clip(path, seed):
  """A random CLIP (image tower 32 wide, 1 block, 32 px; text tower 64 wide, 1 block, one head:
  width // 64, as the reader assumes) written to `path` (.pt: OpenAI's TorchScript; .bin:
  open_clip's state dict)."""
  ref = reference.random_clip(seed, embed_dim=EMBED, depth=1, heads=1)
  save(ref, str(path))
  return ref


def image_model(**fields):
  return vit.Model(num_classes=len(NAMES), variant="mu/16", depth=1, pre_norm=True, norm_epsilon=1e-5,
                   embedding_bias=False, projection_dim=EMBED, quick_gelu=True, gelu_approximate=False,
                   **fields)


@pytest.fixture
def tokenizer(monkeypatch):
  monkeypatch.setattr(clip_text, "tokenize", lambda texts, context_length: fake_tokenize(texts, context_length))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_logits_equal_a_numpy_restatement(tmp_path, tokenizer):
  path = str(tmp_path / "ViT-B-16.pt")  # OpenAI's TorchScript layout (launch/main's test: open_clip's).
  ref = tiny_clip(path, seed=11)
  model = image_model(head_init="zero_shot")
  head = zero_shot.head(path, None, model, NAMES)
  # NumPy: each class's 80 prompts through the reference text tower (float64), each embedding
  # normalised, averaged, normalised again, times exp(logit_scale) = 100.
  with torch.no_grad():
    text = [ref.encode_text(torch.from_numpy(fake_tokenize([t.format(n) for t in zero_shot.TEMPLATES])
                                             .astype(np.int64))).numpy() for n in NAMES]
  classifier = np.stack([unit(unit(t).mean(axis=0)) for t in text], axis=1) * 100.0
  assert len(zero_shot.TEMPLATES) == 80 and head["kernel"].shape == (EMBED, 3) and not head["bias"].any()
  assert np.abs(head["kernel"] - classifier).max() <= 1e-4
  # head_init=zero_shot normalises the head's input: logits = unit(image @ proj) @ classifier.
  images = np.random.default_rng(11).normal(size=(4, 32, 32, 3)).astype(np.float32)
  params = {**checkpoints.load(path, model, image_size=32), "head": head}
  logits, _ = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
  with torch.no_grad():
    features = ref.visual(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
  assert np.abs(np.asarray(logits, np.float64) - unit(features) @ classifier).max() <= 1e-4


def folder_task(root, rng):
  for split, n in {"train": 6, "val": 3, "test": 6}.items():
    names = [f"pics/{split}_{i}.png" for i in range(n)]
    write_images(root, names, rng, "PNG")
    (root / f"{split}.txt").write_text("".join(f"{name} {i % 3}\n" for i, name in enumerate(names)))
  (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
  return f"folder:{root}"


def vtab_config(arg, **overrides):
  from configs import vtab
  config = vtab.get_config(arg)
  for key, value in overrides.items():
    config_lib_set(config, key, value)
  return config


def config_lib_set(config, key, value):
  from vpt_jax.utils import config_lib
  config_lib.set_path(config, key, value)


def test_zero_shot_is_refused_in_one_line_without_class_names_or_a_clip_backbone(tmp_path):
  task = folder_task(tmp_path / "data", np.random.default_rng(0))
  with pytest.raises(ValueError) as error:  # Google's ViT: no projection, no text tower.
    spec.resolve_run(vtab_config(f"task={task},method=zero_shot"), "x")
  assert str(error.value).startswith("model.head_init=zero_shot (and method zero_shot) needs a CLIP "
                                     "backbone") and "\n" not in str(error.value)
  with pytest.raises(ValueError, match=r"^model.head_init=zero_shot \(and method zero_shot\) needs the task's "
                                       r"class names; task dtd has none"):
    spec.resolve_run(vtab_config("task=dtd,method=linear,recipe=mai,backbone=clip_vitb16",
                                 **{"model.head_init": "zero_shot"}), "x")
  with pytest.raises(ValueError, match=r"^model.head_init='bogus' must be zeros, vpt or zero_shot"):
    spec.resolve_run(vtab_config("task=dtd,method=linear", **{"model.head_init": "bogus"}), "x")


def test_a_sweep_searches_one_point_for_zero_shot(tmp_path):
  from vpt_jax.study import sweep
  task = folder_task(tmp_path / "data", np.random.default_rng(1))
  config = recipes.resolve(vtab_config(f"task={task},method=linear,recipe=mai,backbone=clip_vitb16"))
  searched = {m: sweep.search_runs("vtab1k", task, m, config.sweep) for m in ("zero_shot", "linear")}
  assert len(searched["linear"]) > 1 and [(r.base_lr, r.weight_decay, r.extra) for r in searched["zero_shot"]] == [
      (r.base_lr, r.weight_decay, r.extra) for r in searched["linear"][:1]]
  assert not methods.trains("zero_shot") and methods.trains("linear")


def run_main(argv, monkeypatch):
  """launch/main.py in this process (so that the tokenizer stand-in holds): ml_collections reads a
  config's --config.* overrides from sys.argv, which therefore holds the command line too."""
  import launch.main as main_module  # Its flags are defined on import.
  monkeypatch.setattr(sys, "argv", ["launch/main.py", *argv])
  # Parsing --config defines a flag per config field; a parse earlier in this process (another
  # test's run_main) left its own, which absl would refuse to define twice.
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS(sys.argv)
  try:
    main_module.main([])
  finally:
    flags.FLAGS.unparse_flags()


def test_main_runs_zero_shot_and_wise_starts_from_it(tmp_path, tokenizer, monkeypatch):
  """launch/main.py: zero_shot, and linear from the zero-shot head; WiSE-FT's alpha = 0 is the
  zero-shot model and alpha = 1 the fine-tuned one, in both modes."""
  monkeypatch.chdir(REPO)
  checkpoint = str(tmp_path / "open_clip_pytorch_model.bin")
  tiny_clip(checkpoint, seed=12)
  task = folder_task(tmp_path / "data", np.random.default_rng(12))
  run_main([f"--config=configs/vtab.py:task={task},method=zero_shot+linear,recipe=mai,backbone=clip_vitb16",
            f"--config.backbone={checkpoint}", "--config.model.variant=mu/16", "--config.model.depth=1",
            f"--config.model.projection_dim={EMBED}", "--config.model.head_init=zero_shot",
            "--config.data.resolution=32", "--config.optim.epochs=1", "--config.optim.warmup_epochs=0",
            "--config.optim.base_lr=0.05", "--config.optim.batch_size=9", "--config.eval_batch_size=6",
            f"--config.data.cache_dir={tmp_path / 'cache'}", f"--workdir={tmp_path / 'runs'}"], monkeypatch)
  runs = {os.path.basename(os.path.dirname(p)): os.path.dirname(p)
          for p in glob.glob(str(tmp_path / "runs" / "**" / "result.json"), recursive=True)}
  assert sorted(runs) == ["linear", "zero_shot"]
  result = {m: json.loads(open(os.path.join(d, "result.json")).read()) for m, d in runs.items()}
  assert result["zero_shot"]["steps"] == 0 and result["linear"]["steps"] == 1
  assert not os.path.exists(os.path.join(runs["zero_shot"], "checkpoints"))  # Nothing trained.

  zs_model, zs_params, _ = artifacts.load_trained(runs["zero_shot"])
  expected_head = zero_shot.head(checkpoint, None, image_model(head_init="zero_shot"), NAMES)
  assert zs_model.head_init == "zero_shot" and zs_model.projection_dim == EMBED
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(zs_params["head"][name], expected_head[name])
  model, trained, config = artifacts.load_trained(runs["linear"])
  assert model == zs_model
  theta_0 = robustness.initial_params(runs["linear"], model, trained, config)
  assert paths.flatten(theta_0).keys() == paths.flatten(zs_params).keys()
  for path, value in paths.flatten(robustness.interpolate(theta_0, trained, 0.0)).items():
    np.testing.assert_array_equal(value, paths.flatten(zs_params)[path], err_msg=path)  # The zero-shot model.
  assert np.abs(trained["head"]["kernel"] - expected_head["kernel"]).max() > 1e-3  # The head did train.
  curve = robustness.wise_curve(runs["linear"], "test", alphas=(0.0, 1.0))["clean"]
  assert curve == [result["zero_shot"]["test_accuracy"], result["linear"]["test_accuracy"]]
  for alpha, end in ((0.0, zs_params), (1.0, trained)):  # merge_petl's mode: the same endpoints.
    for path, value in paths.flatten(robustness.interpolate(theta_0, trained, alpha, "petl")).items():
      np.testing.assert_array_equal(value, paths.flatten(end)[path], err_msg=f"{alpha} {path}")
  # launch/robustness.py's choice (PETL_Vision's README): linear tuned neither pre-trained weights
  # nor inserted ones; a LoRA artifact (written here on the same run) inserted some.
  assert [robustness.suits(runs["linear"], mode) for mode in robustness.WISE_MODES] == [False, False]
  lora_run = tmp_path / "lora"
  lora_run.mkdir()
  (lora_run / "config.json").write_text(open(os.path.join(runs["linear"], "config.json")).read())
  lora_b = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/lora_query_b"
  head_only, _ = artifacts.load(os.path.join(runs["linear"], artifacts.FILENAME))
  assert set(head_only) <= {"head", "projection"}  # PETL_Vision's head: proj and the classifier.
  artifacts.save(str(lora_run / artifacts.FILENAME), {**head_only, **paths.unflatten({lora_b: np.ones(2)})}, {})
  assert [robustness.suits(str(lora_run), mode) for mode in robustness.WISE_MODES] == [False, True]


def test_petl_mode_is_merge_petl(tmp_path):
  """merge_petl.py's mode: the head from its start, each inserted module's output map (LoRA's B,
  the adapters' up) times alpha, the frozen backbone, LoRA's A and SSF as trained."""
  model = image_model(peft=vit.PeftModules(lora_rank=2, adapter_dim=4, ssf=True))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
  rng = np.random.default_rng(0)
  theta_0, theta_1 = (jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), shapes)
                      for _ in range(2))
  half = paths.flatten(robustness.interpolate(theta_0, theta_1, 0.5, "petl"))
  start, end = paths.flatten(theta_0), paths.flatten(theta_1)
  kinds = {"head": 0, "scaled": 0, "as trained": 0}
  for path, value in half.items():
    if path.startswith(("head/", "projection/")):
      kinds["head"] += 1
      np.testing.assert_allclose(value, 0.5 * start[path] + 0.5 * end[path], rtol=1e-6, err_msg=path)
    elif path.endswith(("lora_query_b", "lora_value_b")) or "/up/" in path:
      kinds["scaled"] += 1
      np.testing.assert_array_equal(value, 0.5 * end[path], err_msg=path)
    else:
      kinds["as trained"] += 1
      np.testing.assert_array_equal(value, end[path], err_msg=path)
  assert kinds == {"head": 3, "scaled": 6, "as trained": len(half) - 9}  # Two adapters per block.
  assert any("lora_query_a" in p for p in half) and any("ssf_" in p for p in half)
  model_half = robustness.interpolate(theta_0, theta_1, 0.5)
  for path, value in paths.flatten(model_half).items():
    np.testing.assert_allclose(value, 0.5 * start[path] + 0.5 * end[path], rtol=1e-6, err_msg=path)
  with pytest.raises(ValueError, match=r"^wise_mode='heads' must be one of model, petl\.$"):
    robustness.interpolate(theta_0, theta_1, 0.5, "heads")
  assert (robustness.wise_file("model"), robustness.wise_file("petl")) == ("wise.json", "wise_petl.json")
