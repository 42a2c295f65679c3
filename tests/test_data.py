"""VTAB data: task table, labels, subsets, cache, streaming, device batching, preparation."""

import collections
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import fake_tfds
from vpt_jax.data import device, pipeline, prepare, tfds_source
from vpt_jax.data import tasks as tasks_lib

RES = 16


@pytest.fixture
def data_dir(fake_data_dir):
  return fake_data_dir


def examples_of(data_dir, builder, split):
  """(index, split id) pairs stored under a TFDS split string, read straight from TFDS."""
  ds = tfds.builder(builder, data_dir=data_dir).as_dataset(split=split)
  return examples_in([ex["image"] for ex in ds.as_numpy_iterator()])


def num_examples(task_name, subset, data_dir):
  task = tasks_lib.get(task_name)
  builder = tfds_source.builder(task, data_dir)
  split = tasks_lib.split_for(task, subset, tfds_source.split_sizes(builder))
  return builder.info.splits[split].num_examples


def examples_in(images):
  """The examples' (index, split id), or (index % 256,) for single-channel sources."""
  return collections.Counter(
      (fake_tfds.decode_index(im), int(im[0, 0, 2])) if im.shape[-1] == 3 else (int(im[0, 0, 0]),)
      for im in images)


# --- The task table ------------------------------------------------------------------------------

VTAB_SPLITS = {  # task: (train800, val200, test), as docs/vtab1k.md lists them
    "cifar100": ("train[:800]", "train[45000:45200]", "test"),
    "caltech101": ("train[:800]", "train[2754:2954]", "test"),
    "dtd": ("train[:800]", "validation[:200]", "test"),
    "oxford_flowers102": ("train[:800]", "validation[:200]", "test"),
    "oxford_iiit_pet": ("train[:800]", "train[2944:3144]", "test"),
    "svhn": ("train[:800]", "train[65931:66131]", "test"),
    "sun397": ("train[:800]", "validation[:200]", "test"),
    "patch_camelyon": ("train[:800]", "validation[:200]", "test"),
    "eurosat": ("train[:800]", "train[16200:16400]", "train[21600:]"),
    "resisc45": ("train[:800]", "train[18900:19100]", "train[25200:]"),
    "diabetic_retinopathy": ("train[:800]", "validation[:200]", "test"),
    "clevr_count": ("train[:800]", "train[63000:63200]", "validation"),
    "clevr_dist": ("train[:800]", "train[63000:63200]", "validation"),
    "dmlab": ("train[:800]", "validation[:200]", "test"),
    "kitti_dist": ("train[:800]", "validation[:200]", "test"),
    "dsprites_loc": ("train[:800]", "train[589824:590024]", "train[663552:]"),
    "dsprites_ori": ("train[:800]", "train[589824:590024]", "train[663552:]"),
    "smallnorb_azi": ("train[:800]", "test[:200]", "test[50%:]"),
    "smallnorb_ele": ("train[:800]", "test[:200]", "test[50%:]"),
}
NUM_CLASSES = {"cifar100": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102,
               "oxford_iiit_pet": 37, "svhn": 10, "sun397": 397, "patch_camelyon": 2,
               "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5, "clevr_count": 8,
               "clevr_dist": 6, "dmlab": 6, "kitti_dist": 4, "dsprites_loc": 16,
               "dsprites_ori": 16, "smallnorb_azi": 18, "smallnorb_ele": 9}


def test_all_19_tasks_and_their_splits():
  assert tasks_lib.VTAB_TASKS == tuple(VTAB_SPLITS)
  for name, (train, val, test) in VTAB_SPLITS.items():
    task = tasks_lib.get(name)
    assert tasks_lib.split_for(task, "train800") == train
    assert tasks_lib.split_for(task, "val200") == val
    assert tasks_lib.split_for(task, "train800val200") == f"{train}+{val}"
    assert tasks_lib.split_for(task, "test") == test
    assert task.num_classes == NUM_CLASSES[name]
  assert [len(tasks_lib.by_group(g)) for g in tasks_lib.GROUPS] == [7, 4, 8]


def test_every_builder_resolves_offline(tmp_path):
  for name in tasks_lib.VTAB_TASKS:
    builder = tfds.builder(tasks_lib.get(name).builder, data_dir=str(tmp_path))
    assert not builder.is_prepared()


# --- Labels --------------------------------------------------------------------------------------

def clevr_scene(depths):
  n = len(depths)
  return {"objects": {"size": tf.zeros([n], tf.int64),
                      "pixel_coords": tf.constant([[0.0, 0.0, d] for d in depths], shape=(n, 3))}}


def kitti_scene(objects):  # [(type, z)]
  n = len(objects)
  return {"objects": {"type": tf.constant([t for t, _ in objects], tf.int64, shape=(n,)),
                      "location": tf.constant([[0.0, 0.0, z] for _, z in objects], shape=(n, 3))}}


def test_clevr_labels():
  assert int(tasks_lib.clevr_count(clevr_scene([9.0] * 5))) == 2
  assert int(tasks_lib.clevr_count(clevr_scene([9.0] * 3))) == 0
  assert int(tasks_lib.clevr_count(clevr_scene([9.0] * 10))) == 7
  for depths, label in [([12.0, 8.7, 30.0], 2), ([8.0], 0), ([8.01], 1), ([9.5], 3),
                        ([9.51], 4), ([10.5, 11.0], 5), ([7.9], 0)]:
    assert int(tasks_lib.clevr_dist(clevr_scene(depths))) == label, depths


def test_kitti_labels():
  assert int(tasks_lib.kitti_dist(kitti_scene([]))) == 3  # Empty scene: no vehicle.
  assert int(tasks_lib.kitti_dist(kitti_scene([(3, 2.0), (4, 5.0)]))) == 3  # Pedestrians only.
  for objects, label in [([(0, 5.0)], 0), ([(1, 8.0)], 0), ([(2, 8.5)], 1), ([(0, 20.0)], 1),
                         ([(0, 25.0)], 2), ([(3, 2.0), (0, 15.0)], 1), ([(0, 40.0), (1, 6.0)], 0)]:
    assert int(tasks_lib.kitti_dist(kitti_scene(objects))) == label, objects


def test_dsprites_bins_at_their_edges():
  loc = {0: 0, 1: 0, 2: 1, 30: 15, 31: 15}
  for x, label in loc.items():
    assert int(tasks_lib.dsprites_loc({"label_x_position": tf.constant(x, tf.int64)})) == label
  ori = {0: 0, 2: 0, 3: 1, 5: 2, 37: 14, 38: 15, 39: 15}
  for o, label in ori.items():
    assert int(tasks_lib.dsprites_ori({"label_orientation": tf.constant(o, tf.int64)})) == label


def test_preprocess_binary_grayscale_to_rgb():
  task = tasks_lib.get("dsprites_loc")
  image = np.zeros((64, 64, 1), np.uint8)
  image[:32] = 1
  out = tfds_source.preprocess_fn(task, 32)({"image": tf.constant(image),
                                          "label_x_position": tf.constant(7, tf.int64)})
  out = {k: v.numpy() for k, v in out.items()}
  assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.uint8
  assert out["image"][0, 0].tolist() == [255, 255, 255] and out["image"][-1, -1].tolist() == [0, 0, 0]
  assert out["label"] == 3


# --- Subsets from (generated) TFDS data ------------------------------------------------------------

def test_train800val200_is_exactly_the_two_slices(data_dir, tmp_path):
  images, labels = pipeline.load_arrays(tasks_lib.get("dtd"), "train800val200", RES, data_dir, str(tmp_path))
  assert images.shape == (1000, RES, RES, 3) and images.dtype == np.uint8
  assert examples_in(images) == (examples_of(data_dir, "dtd:3.*.*", "train[:800]")
                                 + examples_of(data_dir, "dtd:3.*.*", "validation[:200]"))
  np.testing.assert_array_equal(labels, [fake_tfds.decode_index(im) % 47 for im in images])


def test_grayscale_task_with_its_own_label(data_dir, tmp_path):
  images, labels = pipeline.load_arrays(tasks_lib.get("smallnorb_azi"), "val200", RES, data_dir, str(tmp_path))
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # Tiled to 3 channels.
  assert examples_in(images[..., :1]) == examples_of(data_dir, "smallnorb:2.*.*", "test[:200]")
  np.testing.assert_array_equal(labels, images[:, 0, 0, 0] % 18)


def test_cache_is_read_on_the_second_load(data_dir, tmp_path, monkeypatch):
  first = pipeline.load_arrays(tasks_lib.get("dtd"), "val200", RES, data_dir, str(tmp_path))
  cached = list(tmp_path.rglob("*.npz"))
  assert [p.name for p in cached] == ["dtd_3.0.1_val200_16px_bilinear.npz"]

  def no_tfds(*args, **kwargs):
    raise AssertionError("read TFDS although the subset is cached")
  monkeypatch.setattr(tfds_source, "_dataset", no_tfds)
  second = pipeline.load_arrays(tasks_lib.get("dtd"), "val200", RES, data_dir, str(tmp_path))
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  other_resolution = tmp_path / "dtd" / "dtd_3.0.1_val200_24px_bilinear.npz"
  with pytest.raises(AssertionError, match="read TFDS"):
    pipeline.load_arrays(tasks_lib.get("dtd"), "val200", 24, data_dir, str(tmp_path))
  assert not other_resolution.exists()


def test_streamed_test_batches_count_every_example_once(data_dir):
  batches = list(pipeline.eval_batches(tasks_lib.get("dtd"), "test", RES, batch_size=16, data_dir=data_dir))
  assert len(batches) == 3
  for batch in batches:
    assert batch["image"].shape == (16, RES, RES, 3) and batch["label"].shape == (16,)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 37 and not masks[37:].any()
  seen = collections.Counter()
  for batch in batches:
    seen += examples_in(batch["image"][batch["mask"]])
  assert seen == examples_of(data_dir, "dtd:3.*.*", "test")
  assert not batches[-1]["image"][~batches[-1]["mask"]].any()  # Padding is zeros.
  assert num_examples("dtd", "test", data_dir) == 37


def test_data_scale_subsets(data_dir):
  task = tasks_lib.get("dtd")
  sizes = {"train": 850, "validation": 250, "test": 37}
  assert tasks_lib.split_for(task, "scale800_train", sizes) == "train[:800]"
  assert tasks_lib.split_for(task, "scale800_val", sizes) == "validation[:200]"
  assert tasks_lib.split_for(task, "scale400_trainval", sizes) == "train[:400]+validation[:100]"
  with pytest.raises(ValueError, match=r"\(1000 train \+ 250 val\).*largest possible size is 848"):
    tasks_lib.split_for(task, "scale1000_train", sizes)
  with pytest.raises(ValueError, match="multiple of 4"):
    tasks_lib.split_for(task, "scale1001_train", sizes)
  cifar = tasks_lib.get("cifar100")
  assert tasks_lib.split_for(cifar, "scale20000_val", {"train": 50000}) == "train[45000:50000]"
  with pytest.raises(ValueError, match="largest possible size is 20000"):
    tasks_lib.split_for(cifar, "scale24000_train", {"train": 50000})
  assert num_examples("dtd", "scale400_trainval", data_dir) == 500


def vpt_or_ft_even_separate(items, labels, k, seed):
  """ChengHan111/VPT-or-FT's DATA.EVEN_SEPARETE restated: random.seed, classes in the order they
  first appear, random.sample of each class's items (not positions)."""
  random.seed(seed)
  by_class = collections.defaultdict(list)
  for item, label in zip(items, labels):
    by_class[label].append(item)
  chosen = []
  for _, class_items in by_class.items():
    chosen += random.sample(class_items, min(len(class_items), k))
  return chosen


def test_kshot_indices_follow_the_reference_sampler():
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.arange(300) % 10)
  labels[labels == 3] = 4  # Class 3 missing, class 4 doubled.
  items = [f"image{i}" for i in range(300)]
  for k, seed in [(1, 0), (2, 0), (5, 3), (100, 0)]:
    chosen = pipeline.even_separate_indices(labels, k, seed)
    assert [items[i] for i in chosen] == vpt_or_ft_even_separate(items, labels.tolist(), k, seed)
  one = pipeline.even_separate_indices(labels, 1, seed=0)
  assert sorted(labels[one]) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
  five = pipeline.even_separate_indices(labels, 5, seed=0)
  assert collections.Counter(labels[five].tolist()) == {c: 5 for c in (0, 1, 2, 4, 5, 6, 7, 8, 9)}
  assert not np.array_equal(pipeline.even_separate_indices(labels, 1, seed=1), one)
  # A class with fewer than k examples gives what it has (the reference's min(len, k)).
  assert collections.Counter(labels[pipeline.even_separate_indices(labels, 31, 0)].tolist())[4] \
      == 31
  assert collections.Counter(labels[pipeline.even_separate_indices(labels, 31, 0)].tolist())[0] \
      == 30


def test_one_shot_subsets_from_tfds(data_dir, tmp_path):
  images, labels = pipeline.load_arrays(tasks_lib.get("dtd"), "1shot_seed0", RES, data_dir, str(tmp_path))
  assert sorted(labels.tolist()) == list(range(47))
  np.testing.assert_array_equal(labels, [fake_tfds.decode_index(im) % 47 for im in images])
  assert set(examples_in(images)) <= set(examples_of(data_dir, "dtd:3.*.*", "train[:800]"))
  again, _ = pipeline.load_arrays(tasks_lib.get("dtd"), "1shot_train800_seed0", RES, data_dir,
                                  str(tmp_path / "other"))
  np.testing.assert_array_equal(again, images)
  other_seed, _ = pipeline.load_arrays(tasks_lib.get("dtd"), "1shot_seed1", RES, data_dir, str(tmp_path))
  assert examples_in(other_seed) != examples_in(images)
  val, _ = pipeline.load_arrays(tasks_lib.get("dtd"), "1shot_val200_seed0", RES, data_dir, str(tmp_path))
  assert {int(im[0, 0, 2]) for im in val} == {fake_tfds.SPLIT_IDS["validation"]}
  final, final_labels = pipeline.load_arrays(tasks_lib.get("dtd"), "2shot_train800val200_seed0", RES, data_dir,
                                             str(tmp_path))
  assert collections.Counter(final_labels.tolist()) == {c: 2 for c in range(47)}
  assert tasks_lib.parse_kshot("2shot_train800val200_seed7") == (2, "train800val200", 7)
  assert tasks_lib.parse_kshot("1shot_seed3") == (1, "train800", 3)
  assert tasks_lib.parse_kshot("train800") is None


def test_unprepared_task_fails_at_once_with_the_command(tmp_path):
  with pytest.raises(pipeline.DataNotPreparedError,
                     match=f"python launch/prepare_data.py --tasks=svhn --data_dir={tmp_path}"):
    pipeline.load_arrays(tasks_lib.get("svhn"), "train800val200", RES, str(tmp_path), str(tmp_path))


def test_bad_names():
  with pytest.raises(ValueError, match="Unknown task 'dtdd'; choose one of: cifar100"):
    tasks_lib.get("dtdd")
  with pytest.raises(ValueError, match="Unknown subset 'train1000'"):
    tasks_lib.split_for(tasks_lib.get("dtd"), "train1000")


def test_data_dir_defaults_to_tfds_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert pipeline.default_data_dir() == str(tmp_path)
  with pytest.raises(pipeline.DataNotPreparedError, match=f"--data_dir={tmp_path}"):
    tfds_source.builder(tasks_lib.get("dtd"))


# --- Device-side batching ------------------------------------------------------------------------

def test_normalizations():
  pixels = jnp.array([[[[0, 255, 128]]]], jnp.uint8)
  np.testing.assert_allclose(device.normalize(pixels, "inception")[0, 0, 0],
                             [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)
  expected = (np.array([0, 1, 128 / 255]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(device.normalize(pixels, "imagenet")[0, 0, 0], expected, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown normalization 'vtab'"):
    device.normalize(pixels, "vtab")


def test_device_epochs_reshuffle_and_cover_the_set():
  images = jnp.arange(10, dtype=jnp.uint8).reshape(10, 1, 1, 1) * jnp.ones((1, 2, 2, 3), jnp.uint8)
  labels = jnp.arange(10)
  steps = device.steps_per_epoch(10, 5)
  take = jax.jit(device.take_batch, static_argnums=4)
  orders = []
  for epoch in range(2):
    permutation = device.epoch_permutation(jax.random.PRNGKey(0), epoch, 10)
    batches = [take(images, labels, permutation, step, 5) for step in range(steps)]
    order = np.concatenate([np.asarray(b[1]) for b in batches])
    assert sorted(order) == list(range(10))
    np.testing.assert_array_equal(np.concatenate([b[0][:, 0, 0, 0] for b in batches]), order)
    assert all(np.asarray(b[2]).all() for b in batches)
    orders.append(order)
  assert not np.array_equal(orders[0], orders[1])
  # A batch size that does not divide the set: a short last batch, padded and masked.
  assert device.steps_per_epoch(10, 4) == 3 and device.steps_per_epoch(1000, 64) == 16
  batches = [take(images, labels, permutation, step, 4) for step in range(3)]
  masks = np.concatenate([np.asarray(b[2]) for b in batches])
  np.testing.assert_array_equal(masks, [True] * 10 + [False] * 2)
  real = np.concatenate([np.asarray(b[1]) for b in batches])[masks]
  assert sorted(real) == list(range(10))
  # A set smaller than the batch is one short batch, every example once (one-shot sets).
  assert device.steps_per_epoch(10, 16) == 1
  small_images, small_labels, mask = take(images, labels, permutation, 0, 16)
  assert small_images.shape[0] == 16 and int(np.asarray(mask).sum()) == 10
  assert sorted(np.asarray(small_labels)[np.asarray(mask)]) == list(range(10))
  with pytest.raises(ValueError, match="training set is empty"):
    device.steps_per_epoch(0, 16)


def test_random_flip():
  image = jnp.arange(4, dtype=jnp.uint8).reshape(1, 1, 4, 1) * jnp.ones((8, 1, 4, 3), jnp.uint8)
  flipped, _, _ = device.take_batch(image, jnp.arange(8), jnp.arange(8), 0, 8,
                                 flip_rng=jax.random.PRNGKey(3))
  rows = np.asarray(flipped[:, 0, :, 0])
  assert {tuple(r) for r in rows} == {(0, 1, 2, 3), (3, 2, 1, 0)}


# --- Preparation ---------------------------------------------------------------------------------

def test_prepare_reports_readiness(data_dir):
  assert len(tasks_lib.expand("all")) == 19
  assert tasks_lib.expand("structured,dtd")[-1] == "dtd"
  assert tasks_lib.expand("dtd+svhn,dtd") == ["dtd", "svhn"]
  assert tasks_lib.expand("demo") == list(tasks_lib.DEMO_TASKS)
  rows = prepare.prepare(["dtd", "smallnorb_azi", "smallnorb_ele", "cifar100"], data_dir,
                         download=False, log=lambda *_: None)
  assert [r.status for r in rows] == ["ready", "ready", "ready", "not prepared"]
  assert rows[0].sizes == "train 850, validation 250, test 37"
  table = prepare.table(rows)
  assert "| cifar100 | cifar100:3.*.* | not prepared |  |" in table


def test_manual_tasks_print_their_steps(tmp_path):
  printed = []
  rows = prepare.prepare(["resisc45"], str(tmp_path), manual_dir=str(tmp_path / "manual"),
                         download=True, log=printed.append)
  assert rows[0].status == "manual download needed"
  assert "NWPU-RESISC45.rar" in printed[-1]
