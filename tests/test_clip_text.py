"""CLIP's text tower and zero-shot head: vit.Model's normalize_features, one-line errors, the
ImageNet lists, the text parameters' names and CLIP's tokenizer (open_clip's, when installed; no
network). The files' parity with open_clip's encode_text and zero-shot classifier (OpenAI's
TorchScript archive and open_clip's .bin / .safetensors) is tests/test_against_timm.py's; the
float64 PyTorch restatement (tests/torch_clip_text_reference.py) here only writes CLIP files in
the tests that assert no parity."""

import importlib.util
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest
import safetensors.torch
import torch

import torch_clip_text_reference as reference
import torch_dinov2_clip_reference as image_reference
from vpt_jax.checkpoints import clip_text as clip_text_reader
from vpt_jax.checkpoints import pretrained
from vpt_jax.data import imagenet_classes
from vpt_jax.models import clip_text, vit


def image_model(embed_dim, num_classes=0, quick_gelu=True, **kwargs):
  """vit.Model of random_clip's image tower (32 wide, 1 block, 32 px)."""
  return vit.Model(num_classes=num_classes, variant="mu/16", depth=1, pre_norm=True, norm_epsilon=1e-5,
                   embedding_bias=False, projection_dim=embed_dim, quick_gelu=quick_gelu,
                   gelu_approximate=False, **kwargs)


def save(ref, path):
  if path.endswith(".pt"):
    image_reference.save_openai_torchscript(ref, path, 32)
  elif path.endswith(".bin"):
    torch.save(image_reference.clip_state(ref), path)
  else:
    safetensors.torch.save_file(image_reference.clip_state(ref), path)


def fake_tokenize(texts, context_length=16, vocab_size=100):
  """A deterministic stand-in for CLIP's BPE on the tiny model's vocabulary: one id per word."""
  tokens = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = [1 + sum(ord(c) * 31 ** i for i, c in enumerate(word)) % (vocab_size - 3) for word in text.split()]
    tokens[row, :len(ids) + 2] = [vocab_size - 2] + ids + [vocab_size - 1]
  return tokens


def test_normalize_features_is_off_by_default_and_normalises_the_head_input():
  model = vit.Model(num_classes=3, variant="Ti/16", depth=1, projection_dim=8)
  images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), images)
  params = {**variables["params"], "head": {"kernel": np.random.default_rng(4).normal(size=(8, 3)).astype(np.float32),
                                            "bias": np.array([0.1, -0.2, 0.3], np.float32)}}
  logits, aux = model.apply({"params": params}, images)
  explicit, _ = model.clone(normalize_features=False).apply({"params": params}, images)
  np.testing.assert_array_equal(logits, explicit)
  normalized, normalized_aux = model.clone(normalize_features=True).apply({"params": params}, images)
  features = np.asarray(aux["pre_logits"], np.float64)
  unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
  np.testing.assert_allclose(normalized_aux["pre_logits"], unit, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(normalized, unit @ params["head"]["kernel"] + params["head"]["bias"], rtol=1e-5,
                             atol=1e-5)


def test_a_file_without_a_text_tower_is_a_one_line_error(tmp_path):
  """The restatement's CLIP only supplies a file (no parity is asserted)."""
  ref = reference.random_clip(3)
  path = str(tmp_path / "image_tower.bin")
  torch.save({k: v for k, v in image_reference.clip_state(ref).items() if k.startswith("visual.")}, path)
  with pytest.raises(pretrained.CheckpointError) as error:
    clip_text_reader.load(path, image_model(24))
  message = str(error.value)
  assert "\n" not in message and message.startswith(
      f"Checkpoint {path} has no CLIP text tower (no token_embedding.weight among its ")
  assert "open_clip_pytorch_model.bin" in message


def test_every_text_key_is_accounted_for_in_one_error(tmp_path):
  """The restatement's CLIP only supplies a file (no parity is asserted)."""
  ref = reference.random_clip(4)
  state = image_reference.clip_state(ref)
  del state["transformer.resblocks.1.mlp.c_fc.bias"]
  state["logit_bias"] = torch.zeros([])
  path = str(tmp_path / "damaged.bin")
  torch.save(state, path)
  with pytest.raises(pretrained.CheckpointError) as error:
    clip_text_reader.load(path, image_model(16), num_heads=4)  # The image tower projects to 16, the text to 24.
  assert str(error.value) == (
      f"Checkpoint {path}'s CLIP text tower does not fit: 1 missing (transformer.resblocks.1.mlp.c_fc.bias (256,)); "
      "1 unexpected (logit_bias ()); 1 mismatched (text_projection (64, 24) vs (64, 16)).")


def test_imagenet_lists_as_petl_vision_uses_them():
  names, templates = imagenet_classes.CLASS_NAMES, imagenet_classes.TEMPLATES
  assert len(names) == 1000 and len(templates) == 80 and len(set(templates)) == 80
  assert (names[0], names[1], names[151], names[409], names[999]) == (
      "tench", "goldfish", "Chihuahua", "analog clock", "toilet paper")
  assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
  assert len(set(names)) == 998
  assert all(t.count("{}") == 1 for t in templates)
  assert (templates[0], templates[39], templates[79]) == (
      "a bad photo of a {}.", "a photo of a {}.", "a tattoo of the {}.")


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                    reason="CLIP's tokenizer needs open_clip_torch (pip install -e '.[clip]')")
def test_clip_tokenizer_ids_and_imagenet_prompts_fit_the_context():
  tokens = clip_text.tokenize(["a photo of a dog.", "A  Photo of a DOG."])
  assert tokens.shape == (2, 77) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens[:, :8], [[49406, 320, 1125, 539, 320, 1929, 269, 49407]] * 2)
  assert not tokens[:, 8:].any()
  # No prompt is cut: the longest template's tokens plus the longest name's fit in 77.
  lengths = lambda texts: (clip_text.tokenize(texts) != 0).sum(axis=-1)
  longest = lengths([t.format("") for t in imagenet_classes.TEMPLATES]).max() + lengths(
      imagenet_classes.CLASS_NAMES).max() - 2
  assert longest <= 77


def test_missing_tokenizer_package_is_a_one_line_error(monkeypatch):
  clip_text._open_clip_tokenizer.cache_clear()
  monkeypatch.setitem(sys.modules, "open_clip", None)
  try:
    with pytest.raises(ImportError, match=(r"^CLIP's tokenizer needs open_clip's BPE vocabulary: "
                                           r"pip install open_clip_torch \(vpt_jax's \[clip\] extra\)\.$")):
      clip_text.tokenize(["a photo of a dog."])
  finally:
    clip_text._open_clip_tokenizer.cache_clear()


def test_text_parameters_are_float32_under_the_documented_names(tmp_path):
  """The restatement's CLIP only supplies a file (no parity is asserted)."""
  ref = reference.random_clip(5)
  path = str(tmp_path / "clip.safetensors")
  save(ref, path)
  tower = clip_text_reader.load(path, image_model(24), num_heads=4)
  names = set(flax.traverse_util.flatten_dict(tower.params, sep="/"))
  assert {"token_embedding/embedding", "positional_embedding", "ln_final/scale", "text_projection",
          "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel",
          "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"} <= names
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(tower.params))
