"""Few-shot ImageNet and its shifted test sets (PETL_Vision's lists), the -A/-R class masks, the
on-device RandAugment and random erasing, the imagenet_shift recipe and study."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vpt_jax.data import imagenet_source, lists, pipeline
from vpt_jax.data import tasks as tasks_lib

# A handful of ImageNet's 1000 classes: 6 (stingray) and 11 (goldfinch) are in ImageNet-A's 200
# (positions 0 and 1 there), 1 (goldfish) and 2 in ImageNet-R's (positions 0 and 1).
CLASSES = (1, 2, 6, 11)
SUBSET_POSITIONS = {"imagenet_a": {6: 0, 11: 1}, "imagenet_r": {1: 0, 2: 1}}


def _jpeg(path, rng):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  height, width = rng.integers(12, 30, 2)
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, "JPEG")


def write_imagenet(root, seed=0, per_class=(3, 1, 2)):
  """<root>/annotations/<set>/<list> in PETL_Vision's formats, images under <root> at the
  paths its lists use (the train and val lists from ImageNet's train folder)."""
  rng = np.random.default_rng(seed)
  listed = {}
  for split, n in zip(("train_shot_100_seed_1992", "val_size_10_seed_1992", "val_meta.list"),
                      per_class):
    lines = []
    for c in CLASSES:
      for i in range(n):
        folder = "val" if split == "val_meta.list" else f"train/n{c:08d}"
        path = f"imagenet/images/{folder}/{split[:5]}_{c}_{i}.JPEG"
        _jpeg(os.path.join(root, path), rng)
        lines.append(f"{path} {c}")
    listed[("imagenet", split)] = lines
  for folder, kept in (("imagenet-v2", CLASSES), ("imagenet-s", CLASSES),
                       ("imagenet-a", (6, 11)), ("imagenet-r", (1, 2))):
    name = {"imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r"}.get(folder)
    lines = []
    for c in kept:
      for i in range(2):
        path = f"{folder}/n{c:08d}/a photo {i}.jpg"  # A space in the name, as -A's have.
        _jpeg(os.path.join(root, path), rng)
        lines.append(f"{path} {SUBSET_POSITIONS[name][c] if name else c}")
    listed[(folder, "val_meta.list")] = lines
  for (folder, split), lines in listed.items():
    os.makedirs(os.path.join(root, "annotations", folder), exist_ok=True)
    with open(os.path.join(root, "annotations", folder, split), "w") as f:
      f.write("".join(line + "\n" for line in lines))
  return str(root)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  return write_imagenet(tmp_path_factory.mktemp("imagenet"))


def test_tasks_lists_and_class_masks(imagenet_dir):
  names = tasks_lib.expand("imagenet+imagenet_shifts")
  assert names == ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
  imagenet, a, r = (tasks_lib.get(n) for n in ("imagenet", "imagenet_a", "imagenet_r"))
  assert (imagenet.num_classes, a.num_classes, r.num_classes) == (1000, 200, 200)
  assert imagenet.class_names[:2] == ("tench", "goldfish") and len(imagenet.class_names) == 1000
  # PETL_Vision's lists label -A's first class (n01498041, stingray) 0: 1000-way index 6.
  assert a.class_subset[:3] == (6, 11, 13) and r.class_subset[:3] == (1, 2, 4)
  assert a.class_names[0] == "stingray" and r.class_names[0] == "goldfish"
  assert len(set(a.class_subset)) == 200 and list(a.class_subset) == sorted(a.class_subset)
  assert tasks_lib.phase_subsets(imagenet, "final") == ("train", "test")
  assert tasks_lib.phase_subsets(imagenet, "search") == ("train", "val")
  train = imagenet_source.entries(imagenet, "train", imagenet_dir)
  assert [e.label for e in train] == [c for c in CLASSES for _ in range(3)]
  assert train[0].path == os.path.join(imagenet_dir, "imagenet/images/train/n00000001/train_1_0.JPEG")
  shifted = imagenet_source.entries(a, "test", imagenet_dir)
  assert [e.label for e in shifted] == [0, 0, 1, 1] and shifted[0].path.endswith("a photo 0.jpg")
  images, labels = pipeline.load_arrays(r, "test", 24, imagenet_dir, os.path.join(imagenet_dir, "c"),
                                        "squash_bicubic", source="imagenet")
  assert images.shape == (4, 24, 24, 3) and labels.tolist() == [0, 0, 1, 1]
  assert lists.imagenet_version(imagenet, imagenet_dir).startswith("imagenet_")


def test_bad_lists_are_one_line_errors(tmp_path):
  root = write_imagenet(tmp_path / "data", per_class=(1, 1, 1))
  folder = os.path.join(root, "annotations", "imagenet-a")
  listed = open(os.path.join(folder, "val_meta.list")).read().splitlines()
  cases = [(listed + [listed[0]], "is listed twice (first at line 1)", 5),
           (listed[:1] + ["imagenet-a/x.jpg 200"], "label 200 of imagenet-a/x.jpg is out of "
                                                     "range [0, 200)", 2),
           (listed[:2] + ["imagenet-a/x.jpg"], "expected 'relative/path label'", 3)]
  for lines, message, line in cases:
    with open(os.path.join(folder, "val_meta.list"), "w") as f:
      f.write("\n".join(lines) + "\n")
    with pytest.raises(lists.BadDataError) as error:
      imagenet_source.entries(tasks_lib.get("imagenet_a"), "test", root)
    assert str(error.value).startswith(f"{folder}/val_meta.list, line {line}: ")
    assert message in str(error.value) and "\n" not in str(error.value)
  os.unlink(os.path.join(root, "annotations", "imagenet", "val_size_10_seed_1992"))
  with pytest.raises(pipeline.DataNotPreparedError, match="val_size_10_seed_1992 does not exist"):
    imagenet_source.entries(tasks_lib.get("imagenet"), "val", root)


def test_class_mask_excludes_outputs_outside_the_subset():
  """The highest logit at a class outside ImageNet-A's 200 must not be predicted: the 200
  outputs are the logits, in the subset's order (PETL_Vision's outputs[:, A_CLASS_SUBLIST_MASK])."""
  from vpt_jax.training import steps
  subset = tasks_lib.get("imagenet_a").class_subset

  class Fixed:  # A "model" whose logits are its input.
    def apply(self, variables, images, example_mask=None):
      return images, None
  logits = np.zeros((2, 1000), np.float32)
  logits[:, 0] = 10.0  # tench: not one of -A's classes.
  logits[0, subset[5]] = 3.0
  logits[1, subset[7]] = 2.0
  labels = np.array([5, 6])
  sums, kept = steps.make_eval_step(Fixed(), subset)(None, jnp.asarray(logits), labels,
                                                     jnp.ones(2, bool))
  assert kept.shape == (2, 200) and int(sums["correct"]) == 1  # Example 0: 5; example 1: 7 != 6.
  full, _ = steps.make_eval_step(Fixed())(None, jnp.asarray(logits), labels, jnp.ones(2, bool))
  assert int(full["correct"]) == 0


# ---------------------------------------------------------------------------------------------
# RandAugment and random erasing on the device (vpt_jax/data/augment.py).

def _image(seed=0, shape=(12, 14, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


ZERO_IS_IDENTITY = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
                    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                    "SharpnessIncreasing", "SolarizeIncreasing", "SolarizeAdd")


@jax.jit
def _all_ops(x, board):
  """Every op the tests look at, in one compiled program (op by op costs seconds on a CPU)."""
  from vpt_jax.data import augment
  fill = (123, 117, 104)
  out = {f"zero_{name}": augment.apply_op(name, x, 0.0, -1.0) for name in ZERO_IS_IDENTITY}
  out.update(
      posterize9=augment.apply_op("PosterizeIncreasing", x, 9.0, 1.0),
      solarize9=augment.apply_op("SolarizeIncreasing", x, 9.0, 1.0),
      solarize_add9=augment.apply_op("SolarizeAdd", x, 9.0, 1.0),
      brightness9=augment.apply_op("BrightnessIncreasing", x, 9.0, -1.0),
      board_rotate90=augment.rotate(board, 90.0, (1, 2, 3)),
      board_translate=augment.translate_x(board, 0.25, (1, 2, 3)),
      auto_contrast=augment.auto_contrast(x), equalize=augment.equalize(x),
      posterize3=augment.posterize(x, 3), invert=augment.invert(x),
      rotate23=augment.rotate(x, 23.0, fill), shear_x=augment.shear_x(x, 0.2, fill))
  for factor in (0.3, 1.7):
    out.update({f"color{factor}": augment.color(x, factor),
                f"contrast{factor}": augment.contrast(x, factor),
                f"sharpness{factor}": augment.sharpness(x, factor)})
  return out


def test_augment_ops_on_values_and_against_pillow():
  """Magnitude 0 leaves an image be; timm's level maps; rotation and translation of a
  checkerboard; and the ops against Pillow itself (timm calls these Pillow functions): the point
  ops equal, autocontrast, the enhancements and the affine ops within one level (float32 and
  fused multiply-adds here, double there)."""
  from PIL import ImageEnhance, ImageOps
  image = _image(1, (12, 14, 3))
  board = np.kron((np.indices((4, 4)).sum(0) % 2) * 255, np.ones((4, 4)))[..., None].repeat(3, -1)
  out = {k: np.asarray(v) for k, v in _all_ops(jnp.asarray(image, jnp.float32),
                                               jnp.asarray(board, jnp.float32)).items()}
  for name in ZERO_IS_IDENTITY:
    np.testing.assert_array_equal(out[f"zero_{name}"], image, err_msg=name)
  # Magnitude 9: posterize keeps 4 - int(3.6) = 1 bit, solarize at 256 - int(230.4) = 26,
  # solarize_add adds int(99) below 128, brightness's factor 1 - 0.81.
  np.testing.assert_array_equal(out["posterize9"], image & 0x80)
  np.testing.assert_array_equal(out["solarize9"], np.where(image >= 26, 255 - image, image))
  np.testing.assert_array_equal(out["solarize_add9"],
                                np.where(image < 128, np.minimum(255, image.astype(int) + 99), image))
  np.testing.assert_array_equal(out["brightness9"], np.floor(image * np.float32(0.19)))
  # 90 degrees is np.rot90 (counter-clockwise, as PIL's); 0.25 x width moves columns left and
  # fills the rest with the fill colour.
  np.testing.assert_allclose(out["board_rotate90"], np.rot90(board), atol=1)
  np.testing.assert_array_equal(out["board_translate"][:, :12], board[:, 4:])
  np.testing.assert_array_equal(out["board_translate"][:, 12:], np.broadcast_to([1, 2, 3], (16, 4, 3)))
  pil = Image.fromarray(image)
  fill = (123, 117, 104)
  exact = {"equalize": ImageOps.equalize(pil), "posterize3": ImageOps.posterize(pil, 3),
           "invert": ImageOps.invert(pil)}
  for name, theirs in exact.items():
    np.testing.assert_array_equal(out[name], np.asarray(theirs), err_msg=name)
  near = {"auto_contrast": ImageOps.autocontrast(pil),
          "rotate23": pil.rotate(23.0, resample=Image.BICUBIC, fillcolor=fill),
          "shear_x": pil.transform(pil.size, Image.AFFINE, (1, 0.2, 0, 0, 1, 0),
                                   resample=Image.BICUBIC, fillcolor=fill)}
  for factor in (0.3, 1.7):  # Compiled: a fused multiply-add (augment.blend).
    near.update({f"color{factor}": ImageEnhance.Color(pil).enhance(factor),
                 f"contrast{factor}": ImageEnhance.Contrast(pil).enhance(factor),
                 f"sharpness{factor}": ImageEnhance.Sharpness(pil).enhance(factor)})
  for name, theirs in near.items():
    difference = np.abs(out[name] - np.asarray(theirs, np.float32))
    assert difference.max() <= 1 and np.mean(difference == 0) > 0.9, name


def test_rand_augment_and_erasing_are_keyed_per_example():
  from vpt_jax.data import augment, device
  spec = augment.parse("rand-m9-mstd0.5-inc1")
  assert spec == augment.RandAugment(9.0, 2, 0.5, True) and len(spec.ops) == 15
  with pytest.raises(ValueError, match="cannot read 'w0'"):
    augment.parse("rand-m9-w0")
  images = jnp.asarray(np.stack([_image(i) for i in range(4)]))
  rng = jax.random.PRNGKey(3)
  flat = jnp.full((4, 12, 14, 3), 7.0)

  @jax.jit
  def run(permutation, epoch, batch_size_4_keys):
    keys = device.batch_keys(rng, epoch, permutation, 0, 4, 1)
    augmented = device.rand_augment_batch(images[permutation], keys, spec, (1, 2, 3))
    return keys, augmented, device.erase_batch(flat, batch_size_4_keys, 1.0)

  # An example's augmentation depends on (run key, epoch, index) alone, not on its batch.
  order = jnp.asarray([2, 0, 3, 1])
  keys, out, erased = run(order, 5, jax.random.split(rng, 4))
  keys_again, out_again, _ = run(order[::-1], 5, jax.random.split(rng, 4))
  np.testing.assert_array_equal(jax.random.key_data(keys[::-1]), jax.random.key_data(keys_again))
  np.testing.assert_array_equal(out[::-1], out_again)
  assert out.dtype == jnp.uint8 and (np.asarray(out) != np.asarray(images[order])).any()
  _, other_epoch, _ = run(order, 6, jax.random.split(rng, 4))
  assert (np.asarray(other_epoch) != np.asarray(out)).any()
  # Erasing at probability 1: one rectangle of N(0, 1) values in each image.
  for one in np.asarray(erased):
    changed = (one != 7.0).any(-1)
    rows, cols = np.nonzero(changed)
    assert changed.any() and changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert 0.01 < changed.sum() / changed.size < 0.4 and abs(one[changed].mean()) < 1.5


def test_imagenet_recipe_is_clip_fs_imagenets():
  """configs/imagenet_shift.py with the mai recipe: PETL_Vision's clip_fs_imagenet.yml,
  lr_wd_clip_imagenet.yml, vpt_deep_50.yml and few_shot.py's transforms."""
  from configs import imagenet_shift
  from vpt_jax.training import recipes
  resolved = recipes.resolve(imagenet_shift.get_config("method=vpt_deep"))
  o, d = resolved.optim, resolved.data
  assert (o.name, o.base_lr, o.weight_decay, o.batch_size, o.epochs, o.warmup_epochs) == (
      "adamw", 3e-5, 5e-3, 256, 100, 10)
  assert (d.source, d.train_subset, d.eval_subset, d.normalization, d.resize, d.crop_from,
          d.resolution, d.flip, d.augment, d.rand_augment, d.random_erasing) == (
      "imagenet", "train", "test", "clip", "squash_bicubic", 256, 224, True,
      "random_resized_crop", "rand-m9-mstd0.5-inc1", 0.25)
  assert resolved.sweep.grid == (("model.drop_path", (0.0, 0.1)),)
  assert resolved.early_stop_patience == 10
  assert (resolved.model.drop_path, resolved.model.head_init,
          resolved.method_kwargs.prompt_tokens) == (0.0, "zero_shot", 50)
  assert recipes.resolve(imagenet_shift.get_config("phase=search")).data.eval_subset == "val"
  with pytest.raises(ValueError, match="data.random_erasing"):
    config = imagenet_shift.get_config()
    config.data.random_erasing = 1.5
    recipes.resolve(config)
  with pytest.raises(ValueError, match="this study trains on task=imagenet"):
    imagenet_shift.get_config("task=imagenet_a")


def test_early_stop_is_petl_visions_and_resumes_from_the_metrics(tmp_path):
  """utils/misc.py EarlyStop: the first evaluation is the best; equal ones do not count; `patience`
  worse ones since the last best stop the run. A resumed run replays its metrics.jsonl."""
  import dataclasses
  import json
  from vpt_jax.training import loop
  stopper = loop.EarlyStop(2)
  assert [stopper.update(a) for a in (0.5, 0.5, 0.4, 0.6, 0.6, 0.55, 0.6, 0.5)] == [False] * 7 + [True]
  assert (stopper.best, stopper.worse) == (0.6, 2)
  rows = [{"step": 10 * (e + 1), "epoch": e + 1, "eval_accuracy": a}
          for e, a in enumerate((0.5, 0.7, 0.6))]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

  @dataclasses.dataclass
  class Run:
    eval: object
    final_run: bool = False

  member = loop.Member(Run(type("E", (), {"early_stop_patience": 2})), type(
      "S", (), {"workdir": str(tmp_path)}), {}, None, {}, 0, None)
  replayed = loop._early_stop(member, 20)  # Rows after the restart step are not replayed.
  assert (replayed.best, replayed.worse) == (0.7, 0) and loop._early_stop(member, 30).worse == 1
  member.run.final_run = True  # Final runs never stop early (PETL_Vision's early_patience 100).
  assert loop._early_stop(member, 30) is None


def test_imagenet_shift_study_end_to_end(tmp_path, tiny_backbone):
  """launch/sweep.py -> launch/robustness.py -> launch/report.py on a generated ImageNet folder:
  the final run scored on the four shifted sets, WiSE-FT curves on all five, the ID / OOD table
  with the released rows, and the WiSE figure."""
  import json
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  data = write_imagenet(tmp_path / "data", seed=4)
  sweep = tmp_path / "sweep"
  done = subprocess.run(
      [sys.executable, "launch/sweep.py",
       "--config=configs/imagenet_shift.py:method=full,backbone=ViT-B_16", f"--sweep_dir={sweep}",
       f"--config.data.data_dir={data}", f"--config.backbone={tiny_backbone}",
       "--config.model.variant=Ti/16", "--config.model.depth=2", "--config.data.resolution=32",
       "--config.data.crop_from=40", "--config.optim.epochs=2", "--config.optim.warmup_epochs=1",
       "--config.optim.batch_size=8", "--config.eval_batch_size=16",
       "--config.model.head_init=zeros",  # The tiny backbone has no text tower.
       # RandAugment and erasing are tested above; compiling them here costs seconds.
       "--config.data.rand_augment=", "--config.data.random_erasing=0",
       "--config.sweep.grid=((\"model.drop_path\", (0.0,)),)",
       f"--config.data.cache_dir={tmp_path / 'cache'}"],
      cwd=repo, text=True, capture_output=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  method_dir = sweep / "imagenet" / "imagenet" / "full"
  (final,) = method_dir.glob("final/*/result.json")
  result = json.loads(final.read_text())
  assert (result["train_subset"], result["eval_subset"], result["eval_examples"]) == (
      "train", "test", 8)
  # The search run evaluated val each epoch for early stopping; selection took its best.
  (search,) = method_dir.glob("search/*/result.json")
  searched = json.loads(search.read_text())
  assert searched["early_stop"]["patience"] == 10
  assert searched["val_accuracy_best"] == max(
      json.loads(line)["eval_accuracy"] for line in (search.parent / "metrics.jsonl").open())
  assert json.loads((method_dir / "best.json").read_text())["val_accuracy"] == searched[
      "val_accuracy_best"] and "early_stop" not in result
  config = json.loads((final.parent / "config.json").read_text())
  assert (config["data.augment"], config["data.rand_augment"]) == ("random_resized_crop", "")
  done = subprocess.run([sys.executable, "launch/robustness.py", f"--sweep_dir={sweep}"],
                        cwd=repo, text=True, capture_output=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  scored = json.loads((final.parent / "eval_sets.json").read_text())["accuracy"]
  assert set(scored) == {"imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
  assert scored["imagenet"] == result["test_accuracy"] and all(0 <= v <= 1 for v in scored.values())
  wise = json.loads((method_dir / "wise_sets.json").read_text())
  (curve,) = wise["runs"].values()
  assert wise["alphas"][0] == 0.0 and len(curve["accuracy"]["imagenet_a"]) == 11
  assert curve["mode"] == "model"  # Full fine-tuning: merge_model.py's mixing of every weight.
  # a = 1 is the trained model: its ImageNet-A top-1 is eval_sets.json's.
  assert curve["accuracy"]["imagenet_a"][-1] == scored["imagenet_a"]
  assert curve["accuracy"]["imagenet"][-1] == result["test_accuracy"]
  done = subprocess.run([sys.executable, "launch/report.py", f"--sweep_dir={sweep}", "--published"],
                        cwd=repo, text=True, capture_output=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "## imagenet: ImageNet (ID) and its natural shifts (OOD)" in done.stdout
  assert ("| full (full; PETL_Vision released results (A3)) | 74.95 | 62.83 | 36.43 | 18.43 | "
          "52.32 | 42.50 |") in done.stdout
  assert (sweep / "report" / "imagenet_wise.png").exists()


def test_tiny_clip_zero_shot_on_generated_imagenet(tmp_path, monkeypatch):
  """The CLIP path of configs/imagenet_shift.py on the generated folder: a tiny random CLIP (its
  text tower builds the zero-shot head of ImageNet's 1000 class names; test_zero_shot's
  tokenizer stand-in), method zero_shot through launch/main.py, then the shifted sets with
  ImageNet-A/-R's masks: their accuracy is the argmax over the 200 kept outputs."""
  from test_zero_shot import EMBED, run_main, tiny_clip
  from test_clip_text import fake_tokenize
  from vpt_jax.data import pipeline
  from vpt_jax.models import clip_text
  from vpt_jax.study import imagenet_shift
  from vpt_jax.training import artifacts
  from vpt_jax.training import zero_shot
  monkeypatch.setattr(clip_text, "tokenize", lambda texts, context_length: fake_tokenize(
      texts, context_length))
  # Two of the 80 templates: 1000 classes x 80 prompts through even a tiny text tower cost
  # seconds; the templates' averaging is test_zero_shot's.
  monkeypatch.setattr(zero_shot, "TEMPLATES", zero_shot.TEMPLATES[:2])
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  checkpoint = str(tmp_path / "open_clip_pytorch_model.bin")
  tiny_clip(checkpoint, seed=5)
  data = write_imagenet(tmp_path / "data", seed=5, per_class=(1, 1, 2))
  run_main(["--config=configs/imagenet_shift.py:method=zero_shot", f"--config.backbone={checkpoint}",
            "--config.model.variant=mu/16", "--config.model.depth=1",
            f"--config.model.projection_dim={EMBED}", f"--config.data.data_dir={data}",
            "--config.data.resolution=32", "--config.data.crop_from=40", "--config.eval_batch_size=8",
            f"--config.data.cache_dir={tmp_path / 'cache'}", f"--workdir={tmp_path / 'run'}"],
           monkeypatch)
  run = str(tmp_path / "run")
  scored = imagenet_shift.evaluate_sets(run, ("imagenet_a", "imagenet_r"))["accuracy"]
  model, params, config = artifacts.load_trained(run)
  assert model.head_init == "zero_shot" and params["head"]["kernel"].shape[-1] == 1000
  forward = jax.jit(lambda images: model.apply({"params": params}, images)[0])
  for name in ("imagenet_a", "imagenet_r"):
    task = tasks_lib.get(name)
    batch = next(pipeline.eval_batches(task, "test", 40, 8, data, "squash_bicubic", source="imagenet"))
    images = jnp.asarray(batch["image"][:, 4:36, 4:36], jnp.float32)  # The centre 32 of 40.
    logits = forward((images / 255.0 - jnp.asarray((0.48145466, 0.4578275, 0.40821073)))
                     / jnp.asarray((0.26862954, 0.26130258, 0.27577711)))
    predicted = np.argmax(np.asarray(logits)[:, list(task.class_subset)], -1)
    n = int(batch["mask"].sum())
    assert scored[name] == pytest.approx(np.mean(predicted[:n] == batch["label"][:n]))
