"""Shared test setup: float32-exact matmuls, generated Google checkpoints with reference logits,
and a guard against network access."""

import functools
import importlib.util
import json
import os
import pathlib
import socket
import tempfile

# torch's Linux wheels bring Triton, whose libtriton.so holds its own LLVM. TensorFlow loads its
# libraries with RTLD_GLOBAL and exports LLVM symbols, which libtriton's static initialisers then
# bind to: a Triton loaded after TensorFlow crashes the process (a segfault in
# llvm::DebugCounter), and torchvision, torch._dynamo and so timm and open_clip load Triton. Loaded
# first, each keeps its own LLVM (libtriton is RTLD_LOCAL), whatever a worker imports after.
if importlib.util.find_spec("triton") is not None:
  import triton  # noqa: F401

# The suite's programs are tiny and compiled once each, so compiling dominates its time: LLVM's
# lowest optimisation level (XLA:CPU's backend only; the HLO passes and so the programs' FLOP
# counts and memory are unchanged) nearly halves it. Set before JAX starts its CPU client; the
# subprocesses the tests start inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0") if f)

import jax  # noqa: E402
import numpy as np
import pytest

import parity_reference

jax.config.update("jax_default_matmul_precision", "highest")
# Caches (downloads, arrays, compiled programs) of the suite's own, never the user's; the
# subprocesses the tests start inherit it and share compiled programs through it.
os.environ.setdefault("VPT_JAX_CACHE", tempfile.mkdtemp(prefix="vpt_jax_test_cache_"))

# Optional extra parity cases (checkpoints with logits from another implementation) in the same
# format as the generated ones: <case>.npz, <case>.expected.npz and cases.json.
ORACLE_DIR = pathlib.Path(os.environ.get(
    "VPT_JAX_ORACLE_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "oracle"))

# Random checkpoints in both published layouts, checked against tests/parity_reference.py.
GENERATED_CASES = {
    "vit_ti16_tok": dict(layout="vit", variant="Ti", patch=16, image_size=224, num_classes=10,
                         pool="tok", scan=False, depth=3, seed=1),
    "bv_ti16_gap_scan": dict(layout="bv", variant="Ti", patch=16, image_size=224, num_classes=10,
                             pool="gap", scan=True, depth=3, seed=2),
}


def oracle_cases() -> list[str]:
  path = ORACLE_DIR / "cases.json"
  return sorted(json.loads(path.read_text())) if path.exists() else []


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
  """<case>.npz, <case>.expected.npz (images in [-1, 1], float64 logits) and cases.json."""
  root = tmp_path_factory.mktemp("google_checkpoints")
  images = np.random.default_rng(0).uniform(-1, 1, (4, 224, 224, 3)).astype(np.float32)
  for name, spec in GENERATED_CASES.items():
    weights = parity_reference.random_checkpoint(
        spec["layout"], spec["variant"], spec["patch"], spec["image_size"], spec["depth"],
        spec["num_classes"], spec["pool"], spec["scan"], spec["seed"])
    np.savez(root / f"{name}.npz", **weights)
    np.savez(root / f"{name}.expected.npz", images=images,
             logits=parity_reference.logits(weights, images, spec["pool"]))
  (root / "cases.json").write_text(json.dumps(GENERATED_CASES))
  return root


_real_connect = socket.socket.connect


def _loopback_only_connect(sock, address):
  host = address[0] if isinstance(address, tuple) else address
  if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
    raise OSError(f"Tests may not touch the network (tried to connect to {address}).")
  return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory):
  """Small dtd and smallnorb datasets, written by TFDS under their real builder names."""
  import fake_tfds
  root = str(tmp_path_factory.mktemp("tfds"))
  fake_tfds.prepare("dtd:3.*.*", root, {"train": 850, "validation": 250, "test": 37},
                    fake_tfds.dtd_example)
  fake_tfds.prepare("smallnorb:2.*.*", root, {"train": 810, "test": 400},
                    fake_tfds.smallnorb_example)
  return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
  """A random 'pre-trained' Ti/16 of depth 2 in the vision_transformer layout."""
  from vpt_jax.checkpoints import pretrained
  from vpt_jax.models import vit
  model = vit.Model(num_classes=10, variant="Ti/16", depth=2)
  params = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 32, 32, 3)))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  path = str(tmp_path_factory.mktemp("backbone") / "tiny.npz")
  pretrained.export_npz(params, path)
  return path


@functools.cache
def jitted_apply(model):
  """One compiled forward pass per model configuration, shared by all tests of a worker."""
  return jax.jit(lambda params, images: model.apply({"params": params}, images))


@pytest.fixture
def forward():
  return jitted_apply
