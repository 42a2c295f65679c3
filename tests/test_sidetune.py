"""Sidetune as KMnP/vpt builds it (src/models/vit_models.py setup_side / forward): torchvision's
AlexNet features (read from its state dict), a bias-free projection, a sigmoid-mixed alpha."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import vtab as vtab_config
from test_train import TINY_OVERRIDES
from vpt_jax import checkpoints, methods
from vpt_jax.checkpoints import alexnet, pretrained
from vpt_jax.models import side, vit
from vpt_jax.training import programs, sharding, spec, train
from vpt_jax.utils import config_lib, paths

BASE = dict(num_classes=3, variant="Ti/16", depth=1)
SIZE = 96  # AlexNet's last map is 2x2 here, so the adaptive pooling is not a copy.


ALEXNET_WIDTHS = tuple(conv[0] for conv in side.ALEXNET_CONVS)  # torchvision's: 64 ... 256.
NARROW = (16, 24, 32, 24, 16)  # The same geometry at a fraction of the cost.


def torch_alexnet(seed: int = 0, widths=ALEXNET_WIDTHS) -> torch.nn.Module:
  """torchvision's AlexNet restated (features and avgpool as torchvision's, at `widths`; its
  classifier in the same key layout but narrow, to keep the file small), random weights."""
  torch.manual_seed(seed)
  nn = torch.nn
  a, b, c, d, e = widths
  model = nn.Module()
  model.features = nn.Sequential(
      nn.Conv2d(3, a, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(a, b, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(b, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, d, 3, padding=1), nn.ReLU(),
      nn.Conv2d(d, e, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
  model.avgpool = nn.AdaptiveAvgPool2d((6, 6))
  model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(e * 36, 4), nn.ReLU(), nn.Dropout(),
                                   nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 10))
  return model


def narrow_alexnet(monkeypatch):
  """side.py's AlexNet at NARROW widths for this test (its kernels, strides and pools kept)."""
  monkeypatch.setattr(side, "ALEXNET_CONVS", tuple(
      (width,) + conv[1:] for width, conv in zip(NARROW, side.ALEXNET_CONVS)))


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
  model = torch_alexnet()
  path = str(tmp_path_factory.mktemp("alexnet") / "alexnet-owt-7be5be79.pth")
  torch.save(model.state_dict(), path)
  return model, path


def _sidetune_model():
  """(method, model, params, images) of a tiny ViT with Sidetune, every parameter random (no zero
  head to stop gradients; shapes from eval_shape, which compiles nothing)."""
  method = methods.get("sidetune", depth=1)
  model = vit.Model(**BASE, **method.model_fields)
  images = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), shapes)
  return method, model, params, images


def test_forward_is_the_vpt_codes_sidetune(monkeypatch, tmp_path):
  narrow_alexnet(monkeypatch)
  torch_model, path = torch_alexnet(widths=NARROW), str(tmp_path / "narrow_alexnet.pth")
  torch.save(torch_model.state_dict(), path)  # Read back through the checkpoint reader.
  _, model, params, images = _sidetune_model()
  params = paths.merge(params, {"side": checkpoints.load_side(path), "side_alpha": np.float32(0.4)})
  logits, _ = jax.jit(model.apply)({"params": params}, images)

  plain = vit.Model(**BASE)
  vit_params = {k: v for k, v in params.items() if not k.startswith("side")}
  _, aux = jax.jit(plain.apply)({"params": vit_params}, images)
  # vit_models.py forward L168-181: side(x).view(N, -1), side_projection, then the mix.
  with torch.no_grad():
    x = torch.tensor(images).permute(0, 3, 1, 2)
    side_out = torch_model.avgpool(torch_model.features(x)).reshape(2, -1)
    side_out = side_out @ torch.tensor(np.asarray(params["side_projection"]["kernel"]))
    alpha = torch.sigmoid(torch.tensor(0.4))
    mixed = alpha * torch.tensor(np.asarray(aux["pre_logits"])) + (1 - alpha) * side_out
  head = jax.device_get(params["head"])
  reference = mixed.numpy() @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
  assert np.abs(side_out.numpy()).max() > 1e-3  # The side path carries signal.


@pytest.mark.parametrize("size", [2, 7, 13])
def test_adaptive_pooling_is_pytorchs(size):
  x = np.random.default_rng(size).normal(size=(1, 3, size, size + 1)).astype(np.float32)
  rows, cols = side._adaptive_average(size, 6), side._adaptive_average(size + 1, 6)
  ours = np.einsum("ih,nchw,jw->ncij", rows, x, cols)
  theirs = torch.nn.AdaptiveAvgPool2d((6, 6))(torch.tensor(x)).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_only_the_side_network_its_mix_and_the_head_train(monkeypatch):
  narrow_alexnet(monkeypatch)
  method, model, params, images = _sidetune_model()
  groups = paths.flatten(methods.labels(params, method.rules))
  trained = sorted(p for p, g in groups.items() if g != methods.FROZEN)
  assert trained == sorted(["head/bias", "head/kernel", "side_alpha", "side_projection/kernel"] + [
      f"side/conv_{i}/{k}" for i in range(5) for k in ("bias", "kernel")])
  trainable, frozen = methods.split(params, methods.labels(params, method.rules))

  def loss(trainable):
    logits, _ = model.apply({"params": paths.merge(trainable, frozen)}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 2])).mean()
  grads = paths.flatten(jax.jit(jax.grad(loss))(trainable))
  assert all(np.any(g) for g in grads.values()), [p for p, g in grads.items() if not np.any(g)]


def test_b16_count():
  method = methods.get("sidetune", depth=12)
  model = vit.Model(num_classes=100, variant="B/16", **method.model_fields)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))["params"]
  trainable, _ = methods.split(params, methods.labels(params, method.rules))
  # AlexNet's features 2,469,696 + the 9216 -> 768 projection 7,077,888 + alpha.
  assert methods.count_trained({k: v for k, v in trainable.items() if k != "head"},
                               methods.labels(params, method.rules)) == 9_547_585


def test_reader_reads_torchvisions_layout_and_refuses_others_in_one_line(alexnet_file, tmp_path):
  torch_model, path = alexnet_file
  loaded = checkpoints.load_side(path)
  for i, index in enumerate((0, 3, 6, 8, 10)):  # OIHW -> HWIO; the classifier dropped.
    conv = torch_model.features[index]
    np.testing.assert_array_equal(loaded[f"conv_{i}"]["kernel"],
                                  conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded[f"conv_{i}"]["bias"], conv.bias.detach().numpy())
  assert sorted(loaded) == [f"conv_{i}" for i in range(5)]
  assert loaded["conv_0"]["kernel"].shape == (11, 11, 3, 64)

  state = torch_alexnet(1).state_dict()
  state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
  del state["features.10.bias"]
  state["extra.weight"] = torch.zeros(1)
  path = str(tmp_path / "bad.pth")
  torch.save(state, path)
  with pytest.raises(pretrained.CheckpointError) as caught:
    checkpoints.load_side(path)
  message = str(caught.value)
  assert "\n" not in message
  assert ("missing: features.10.bias; unexpected: extra.weight; mis-shaped: features.3.weight "
          "(192, 64, 3, 3) (expected (192, 64, 5, 5))") in message
  with pytest.raises(pretrained.CheckpointError, match="neither 'alexnet'"):
    checkpoints.load_side("alexnet_v2")


def test_offline_the_download_says_where_to_put_the_file(tmp_path):
  with pytest.raises(pretrained.CheckpointError) as caught:
    alexnet.resolve("alexnet", cache_dir=str(tmp_path))
  message = str(caught.value)
  assert "\n" not in message
  assert message.startswith("Could not download https://download.pytorch.org/models/"
                            "alexnet-owt-7be5be79.pth")
  assert str(tmp_path / "torchvision" / "alexnet-owt-7be5be79.pth") in message


def test_a_run_starts_from_the_side_checkpoint(monkeypatch, fake_data_dir, tiny_backbone,
                                               tmp_path):
  narrow_alexnet(monkeypatch)
  path = str(tmp_path / "narrow_alexnet.pth")
  torch.save(torch_alexnet(2, NARROW).state_dict(), path)
  config = vtab_config.get_config("task=dtd,method=sidetune")
  for key, value in {**TINY_OVERRIDES, "backbone": tiny_backbone, "data.data_dir": fake_data_dir,
                     "data.cache_dir": str(tmp_path / "cache"), "data.resolution": 64,
                     "method_kwargs.side_checkpoint": path}.items():
    config_lib.set_path(config, key, value)
  run = spec.resolve_run(config, str(tmp_path / "run"))
  assert run.stages[0].optim.name == "sgd" and run.stages[0].optim.batch_size == 32
  mesh = sharding.make_mesh()
  _, _, state = train.create_train_state(run, run.stages[0], programs.backbone(run), None, mesh,
                                         programs.training_set(run.data, mesh), lambda *_: None)
  expected = alexnet.convert(alexnet.read(path))
  for i in range(5):
    np.testing.assert_array_equal(state["trainable"]["side"][f"conv_{i}"]["kernel"],
                                  expected[f"conv_{i}"]["kernel"])
  assert float(state["trainable"]["side_alpha"]) == 0.0  # sigmoid(0) = 0.5: an even mix.
