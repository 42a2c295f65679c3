"""Pre-trained checkpoint loading against an independent implementation (tests/parity_reference.py
and, when present, the oracle directory), conversions, strictness, downloads."""

import http.server
import json
import os
import subprocess
import sys
import threading

import chex
import flax.traverse_util
import jax
import numpy as np
import pytest
import scipy.ndimage

from conftest import GENERATED_CASES, ORACLE_DIR, oracle_cases
from vpt_jax.checkpoints import pretrained
from vpt_jax.models import vit

POSEMB = "Transformer/posembed_input/pos_embedding"


def case_model(directory, case, **overrides):
  spec = json.loads((directory / "cases.json").read_text())[case]
  kwargs = dict(num_classes=spec["num_classes"], variant=f"{spec['variant']}/{spec['patch']}",
                pool_type=spec["pool"], depth=spec.get("depth"))
  return vit.Model(**{**kwargs, **overrides})


def flat(params):
  return flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")


@pytest.mark.parametrize("source, case", [("generated", c) for c in GENERATED_CASES]
                         + [("oracle", c) for c in oracle_cases()])
def test_logits_match_independent_implementation(checkpoint_dir, forward, source, case):
  directory = checkpoint_dir if source == "generated" else ORACLE_DIR
  model = case_model(directory, case)
  params = pretrained.load(str(directory / f"{case}.npz"), model, image_size=224, keep_head=True)
  expected = np.load(directory / f"{case}.expected.npz")
  logits, _ = forward(model)(params, expected["images"])
  chex.assert_shape(logits, expected["logits"].shape)
  np.testing.assert_allclose(np.asarray(logits, np.float64), expected["logits"], rtol=0, atol=1e-4)


def test_big_vision_class_token_layout(checkpoint_dir, forward, tmp_path):
  # The same network written the big_vision way: the position embedding has no class-token row
  # and is added before the token is prepended, so that row's value moves into `cls`.
  original = pretrained.read(str(checkpoint_dir / "vit_ti16_tok.npz"))
  posemb = original.pop("Transformer/posembed_input/pos_embedding")
  bv = {"params/pos_embedding": posemb[:, 1:], "params/cls": original.pop("cls") + posemb[:, :1]}
  for key, value in original.items():
    for old, new in [("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"),
                     ("LayerNorm_2", "LayerNorm_1"), ("MlpBlock_3", "MlpBlock_0")]:
      key = key.replace(old, new)
    bv["params/" + key] = value
  np.savez(tmp_path / "bv_tok.npz", **bv)

  model = case_model(checkpoint_dir, "vit_ti16_tok")
  params = pretrained.load(str(tmp_path / "bv_tok.npz"), model, keep_head=True)
  expected = np.load(checkpoint_dir / "vit_ti16_tok.expected.npz")
  logits, _ = forward(model)(params, expected["images"])
  np.testing.assert_allclose(np.asarray(logits, np.float64), expected["logits"], atol=1e-4)


def test_posemb_resampled_for_higher_resolution(checkpoint_dir):
  model = case_model(checkpoint_dir, "vit_ti16_tok")
  original = pretrained.read(str(checkpoint_dir / "vit_ti16_tok.npz"))[POSEMB]
  params = flat(pretrained.load(str(checkpoint_dir / "vit_ti16_tok.npz"), model,
                                            image_size=384))
  posemb = params[POSEMB]
  chex.assert_shape(posemb, (1, 1 + 24 * 24, 192))
  np.testing.assert_array_equal(posemb[:, 0], original[:, 0])  # The class token's row.
  grid = posemb[0, 1:].reshape(24, 24, 192)
  old_grid = original[0, 1:].reshape(14, 14, 192)
  # Bilinear resampling keeps the corners and stays between the neighbouring source values.
  for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
    np.testing.assert_allclose(grid[corner], old_grid[corner], atol=1e-6)
  np.testing.assert_allclose(grid, scipy.ndimage.zoom(old_grid, (24 / 14, 24 / 14, 1), order=1),
                             atol=1e-6)
  assert grid.min() >= old_grid.min() - 1e-6 and grid.max() <= old_grid.max() + 1e-6


def test_posemb_resampled_without_class_token(checkpoint_dir):
  model = case_model(checkpoint_dir, "bv_ti16_gap_scan")
  params = flat(pretrained.load(str(checkpoint_dir / "bv_ti16_gap_scan.npz"), model,
                                            image_size=112))
  chex.assert_shape(params[POSEMB], (1, 49, 192))


def test_head_kept_only_when_asked_and_fitting(checkpoint_dir):
  path = str(checkpoint_dir / "vit_ti16_tok.npz")
  original = pretrained.read(path)
  kept = flat(pretrained.load(path, case_model(checkpoint_dir, "vit_ti16_tok"),
                                          keep_head=True))
  np.testing.assert_array_equal(kept["head/kernel"], original["head/kernel"])
  for keep_head, num_classes in [(False, 10), (True, 5)]:
    model = case_model(checkpoint_dir, "vit_ti16_tok", num_classes=num_classes)
    params = flat(pretrained.load(path, model, keep_head=keep_head))
    chex.assert_shape(params["head/kernel"], (192, num_classes))
    assert not params["head/kernel"].any() and not params["head/bias"].any()
    np.testing.assert_array_equal(params["embedding/kernel"], original["embedding/kernel"])
  headless = flat(pretrained.load(path, case_model(checkpoint_dir, "vit_ti16_tok",
                                                                 num_classes=0)))
  assert not any(k.startswith("head/") for k in headless)


def test_pre_logits_dropped_or_kept(checkpoint_dir, tmp_path):
  original = pretrained.read(str(checkpoint_dir / "vit_ti16_tok.npz"))
  rng = np.random.default_rng(0)
  with_pre_logits = {**original, "pre_logits/kernel": rng.normal(size=(192, 192)).astype(np.float32),
                     "pre_logits/bias": rng.normal(size=(192,)).astype(np.float32)}
  path = str(tmp_path / "with_pre_logits.npz")
  np.savez(path, **with_pre_logits)

  dropped = flat(pretrained.load(path, case_model(checkpoint_dir, "vit_ti16_tok")))
  assert not any(k.startswith("pre_logits") for k in dropped)
  kept = flat(pretrained.load(
      path, case_model(checkpoint_dir, "vit_ti16_tok", representation_size=192)))
  np.testing.assert_array_equal(kept["pre_logits/kernel"], with_pre_logits["pre_logits/kernel"])
  with pytest.raises(pretrained.CheckpointError,
                     match=r"2 missing \(pre_logits/bias \(192,\), pre_logits/kernel"):
    pretrained.load(str(checkpoint_dir / "vit_ti16_tok.npz"),
                                case_model(checkpoint_dir, "vit_ti16_tok", representation_size=192))


def test_strict_errors_list_every_problem(checkpoint_dir, tmp_path):
  broken = pretrained.read(str(checkpoint_dir / "vit_ti16_tok.npz"))
  del broken["Transformer/encoderblock_2/LayerNorm_2/scale"]
  broken["Transformer/encoderblock_0/extra/kernel"] = np.zeros((3, 3), np.float32)
  broken["embedding/bias"] = np.zeros((191,), np.float32)
  path = str(tmp_path / "broken.npz")
  np.savez(path, **broken)
  with pytest.raises(pretrained.CheckpointError) as error:
    pretrained.load(path, case_model(checkpoint_dir, "vit_ti16_tok"))
  message = str(error.value)
  assert path in message and "\n" not in message
  assert "1 missing (Transformer/encoderblock_2/LayerNorm_1/scale (192,))" in message
  assert "1 unexpected (Transformer/encoderblock_0/extra/kernel (3, 3))" in message
  assert "1 mismatched (embedding/bias (191,) vs model (192,))" in message


def test_wrong_variant_is_refused(checkpoint_dir):
  with pytest.raises(pretrained.CheckpointError, match="mismatched"):
    pretrained.load(str(checkpoint_dir / "vit_ti16_tok.npz"),
                                vit.Model(num_classes=10, variant="S/16"))


@pytest.mark.parametrize("content", ["truncated", "text", "missing"])
def test_unreadable_files_are_named(checkpoint_dir, tmp_path, content):
  path = tmp_path / "bad.npz"
  if content == "truncated":
    data = (checkpoint_dir / "vit_ti16_tok.npz").read_bytes()
    path.write_bytes(data[: len(data) // 2])
  elif content == "text":
    path.write_text("<html>Access denied</html>")
  with pytest.raises(pretrained.CheckpointError, match=str(path)):
    pretrained.load(str(path), case_model(checkpoint_dir, "vit_ti16_tok"))


@pytest.mark.parametrize("case", ["vit_ti16_tok", "bv_ti16_gap_scan"])
def test_export_load_round_trip_is_exact(checkpoint_dir, tmp_path, case):
  model = case_model(checkpoint_dir, case)
  params = pretrained.load(str(checkpoint_dir / f"{case}.npz"), model, keep_head=True)
  exported = str(tmp_path / "exported.npz")
  pretrained.export_npz(params, exported)
  written = pretrained.read(exported)
  if case == "vit_ti16_tok":  # Same layout in and out: the file itself comes back.
    original = pretrained.read(str(checkpoint_dir / f"{case}.npz"))
    assert written.keys() == original.keys()
    for key in original:
      np.testing.assert_array_equal(written[key], original[key], err_msg=key)
  assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in written
  reloaded = pretrained.load(exported, model, keep_head=True)
  chex.assert_trees_all_equal(reloaded, params)


def test_export_never_leaves_a_partial_file(tmp_path, monkeypatch):
  target = tmp_path / "model.npz"
  target.write_bytes(b"previous")

  def failing_savez(f, **arrays):
    f.write(b"half")
    raise OSError("disk full")
  monkeypatch.setattr(np, "savez", failing_savez)
  with pytest.raises(OSError, match="disk full"):
    pretrained.export_npz({"head": {"bias": np.zeros(2)}}, str(target))
  assert target.read_bytes() == b"previous"
  assert os.listdir(tmp_path) == ["model.npz"]


class _Server:
  """Serves files from a directory on loopback; `truncate` sends only half of each body."""

  def __init__(self, root, truncate=False):
    requests = self.requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        requests.append(self.path)
        data = (root / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if truncate else data)

      def log_message(self, *args):
        pass

    self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def published_root(checkpoint_dir, tmp_path):
  root = tmp_path / "remote"
  (root / "imagenet21k").mkdir(parents=True)
  (root / "imagenet21k" / "ViT-B_16.npz").write_bytes((checkpoint_dir / "vit_ti16_tok.npz").read_bytes())
  return root


def test_published_name_downloads_once(published_root, tmp_path):
  server = _Server(published_root)
  try:
    cache = tmp_path / "cache"
    first = pretrained.resolve("ViT-B_16", str(cache), base_url=server.url)
    second = pretrained.resolve("imagenet21k/ViT-B_16", str(cache), base_url=server.url)
  finally:
    server.close()
  assert first == second == str(cache / "imagenet21k" / "ViT-B_16.npz")
  assert server.requests == ["/imagenet21k/ViT-B_16.npz"]
  assert (cache / "imagenet21k" / "ViT-B_16.npz").read_bytes() == (
      published_root / "imagenet21k" / "ViT-B_16.npz").read_bytes()


def test_short_download_leaves_nothing(published_root, tmp_path):
  server = _Server(published_root, truncate=True)
  cache = tmp_path / "cache"
  try:
    with pytest.raises(pretrained.CheckpointError, match="stopped after"):
      pretrained.resolve("ViT-B_16", str(cache), base_url=server.url)
  finally:
    server.close()
  assert os.listdir(cache / "imagenet21k") == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
  probe = _Server(tmp_path)  # Take a free port, then close it: connections are refused at once.
  url = probe.url
  probe.close()
  with pytest.raises(pretrained.CheckpointError,
                     match=f"place it at {tmp_path / 'c' / 'imagenet21k' / 'ViT-L_16.npz'}"):
    pretrained.resolve("ViT-L_16", str(tmp_path / "c"), base_url=url)


def test_unknown_name_lists_published_ones():
  with pytest.raises(pretrained.CheckpointError, match="published names: ViT-B_16, ViT-B_32"):
    pretrained.resolve("ViT-Q_99")


def test_network_is_blocked_in_tests(tmp_path):
  with pytest.raises(pretrained.CheckpointError, match="may not touch the network"):
    pretrained.download("http://192.0.2.1/x.npz", str(tmp_path / "x.npz"), timeout_s=1)


def test_describe_reads_the_architecture(checkpoint_dir, tmp_path):
  assert pretrained.describe(pretrained.read(str(checkpoint_dir / "vit_ti16_tok.npz"))) == dict(
      variant="Ti/16", pool_type="tok", num_classes=10, representation_size=None, depth=3)
  assert pretrained.describe(pretrained.read(str(checkpoint_dir / "bv_ti16_gap_scan.npz"))) == dict(
      variant="Ti/16", pool_type="gap", num_classes=10, representation_size=None, depth=3)
  shallow = {k: v for k, v in pretrained.read(str(checkpoint_dir / "vit_ti16_tok.npz")).items()
             if not k.startswith("Transformer/encoderblock_")
             or k.split("/")[1] in ("encoderblock_0", "encoderblock_1")}
  assert pretrained.describe(shallow)["depth"] == 2
  with pytest.raises(pretrained.CheckpointError, match="Not a ViT checkpoint"):
    pretrained.describe({"weights": np.zeros(3)})


def test_inspect_command_reports_parity(checkpoint_dir):
  result = subprocess.run(
      [sys.executable, "launch/inspect_checkpoint.py",
       f"--checkpoint={checkpoint_dir / 'vit_ti16_tok.npz'}",
       f"--expected={checkpoint_dir / 'vit_ti16_tok.expected.npz'}"],
      capture_output=True, text=True, check=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(__file__)))
  assert "variant=Ti/16, pool_type=tok, num_classes=10" in result.stdout
  assert "parameters   1,522,570 at 224x224" in result.stdout  # Ti/16 of depth 3, 10 classes.
  difference = float(result.stdout.split("max |logits - expected| = ")[1].split()[0])
  assert difference < 1e-4
  failed = subprocess.run([sys.executable, "launch/inspect_checkpoint.py", "--checkpoint=nope.npz"],
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert failed.returncode == 1
  assert failed.stderr.strip().splitlines()[-1] == "error: Checkpoint file nope.npz does not exist."
