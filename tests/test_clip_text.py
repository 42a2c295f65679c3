"""CLIP's text tower and zero-shot head: OpenAI's TorchScript and open_clip's .bin / .safetensors
files read into models/clip_text.py against a float64 PyTorch restatement
(tests/torch_clip_text_reference.py), the zero-shot logits of a tiny random CLIP, vit.Model's
normalize_features, one-line errors, the ImageNet lists and CLIP's tokenizer (open_clip's, when
installed; no network)."""

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
from vpt_jax import checkpoints
from vpt_jax.checkpoints import clip_text as clip_text_reader
from vpt_jax.checkpoints import pretrained
from vpt_jax.data import imagenet_classes
from vpt_jax.models import clip_text, vit

TOLERANCE = 1e-4


def image_model(embed_dim, num_classes=0, quick_gelu=True, **kwargs):
  """vit.Model of random_clip's image tower (32 wide, 1 block, 32 px)."""
  return vit.Model(num_classes=num_classes, variant="mu/16", depth=1, pre_norm=True, norm_epsilon=1e-5,
                   embedding_bias=False, projection_dim=embed_dim, quick_gelu=quick_gelu,
                   gelu_approximate=False, **kwargs)


def random_tokens(n, context_length, vocab_size, seed):
  """[SOT, random ids, EOT, zeros] rows of different lengths; SOT and EOT are the two largest ids."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((n, context_length), np.int64)
  for row, length in enumerate(rng.integers(1, context_length - 1, size=n)):
    tokens[row, 0], tokens[row, 1 + length] = vocab_size - 2, vocab_size - 1
    tokens[row, 1:1 + length] = rng.integers(1, vocab_size - 2, size=length)
  return tokens


def reference_text(ref, tokens):
  with torch.no_grad():
    return ref.encode_text(torch.from_numpy(tokens)).numpy()


def ours_text(tower, tokens):
  return np.asarray(jax.jit(lambda p, t: tower.model.apply({"params": p}, t))(tower.params, tokens), np.float64)


def max_difference(a, b):
  assert a.shape == b.shape
  return float(np.max(np.abs(a - b)))


def save(ref, path):
  if path.endswith(".pt"):
    image_reference.save_openai_torchscript(ref, path, 32)
  elif path.endswith(".bin"):
    torch.save(image_reference.clip_state(ref), path)
  else:
    safetensors.torch.save_file(image_reference.clip_state(ref), path)


def test_openai_torchscript_text_tower_at_full_size_matches_reference(tmp_path):
  # ViT-B/16's text tower: 12 blocks, 512 wide, 8 heads (512 // 64), CLIP's vocabulary and context.
  ref = reference.random_clip(0, embed_dim=512, vocab_size=49408, context_length=77, width=512, depth=12, heads=8)
  path = str(tmp_path / "ViT-B-16.pt")
  save(ref, path)
  tower = clip_text_reader.load(path, image_model(512))
  config = tower.model.config
  assert (config.depth, config.width, config.num_heads, config.vocab_size, config.context_length,
          config.embed_dim, config.quick_gelu) == (12, 512, 8, 49408, 77, 512, True)
  assert tower.logit_scale == pytest.approx(np.log(100.0), rel=1e-6)
  shapes = jax.eval_shape(tower.model.init, jax.random.PRNGKey(0), np.zeros((1, 77), np.int32))["params"]
  assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, tower.params)
  tokens = random_tokens(4, 77, 49408, seed=0)
  assert max_difference(ours_text(tower, tokens), reference_text(ref, tokens)) <= TOLERANCE
  # The mask is causal: what follows EOT (here, more ids instead of padding) changes nothing.
  tail = tokens.copy()
  tail[tail == 0] = 7
  assert max_difference(ours_text(tower, tail), ours_text(tower, tokens)) <= 1e-6


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_open_clip_text_tower_matches_reference(suffix, tmp_path):
  ref = reference.random_clip(1, quick_gelu=False)
  path = str(tmp_path / f"open_clip_model{suffix}")
  save(ref, path)
  tower = clip_text_reader.load(path, image_model(24, quick_gelu=False), num_heads=4)
  tokens = random_tokens(5, 16, 100, seed=1)
  expected = reference_text(ref, tokens)
  assert max_difference(ours_text(tower, tokens), expected) <= TOLERANCE
  quick = clip_text_reader.load(path, image_model(24, quick_gelu=True), num_heads=4)
  assert max_difference(ours_text(quick, tokens), expected) > 1e-3


def fake_tokenize(texts, context_length=16, vocab_size=100):
  """A deterministic stand-in for CLIP's BPE on the tiny model's vocabulary: one id per word."""
  tokens = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = [1 + sum(ord(c) * 31 ** i for i, c in enumerate(word)) % (vocab_size - 3) for word in text.split()]
    tokens[row, :len(ids) + 2] = [vocab_size - 2] + ids + [vocab_size - 1]
  return tokens


def test_zero_shot_logits_of_a_tiny_clip_equal_reference(tmp_path):
  ref = reference.random_clip(2)
  path = str(tmp_path / "tiny_clip.pt")
  save(ref, path)
  names, templates = imagenet_classes.CLASS_NAMES[:4], imagenet_classes.TEMPLATES[:6]
  model = image_model(24, num_classes=len(names), normalize_features=True)
  tower = clip_text_reader.load(path, model, num_heads=4)
  head = clip_text.zero_shot_head(tower.model, tower.params, tower.logit_scale, names, templates, fake_tokenize)
  assert head["kernel"].shape == (24, 4) and not np.any(head["bias"])
  # Each column is exp(logit_scale) = 100 times a unit vector.
  np.testing.assert_allclose(np.linalg.norm(head["kernel"], axis=0), 100.0, rtol=1e-5)
  params = {**checkpoints.load(path, model, image_size=32), "head": head}
  images = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype(np.float32)
  logits, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
  tokens = torch.from_numpy(np.stack([fake_tokenize([t.format(n) for t in templates]) for n in names]))
  with torch.no_grad():
    expected = reference.zero_shot_logits(ref, torch.from_numpy(images).double().permute(0, 3, 1, 2), tokens)
  assert max_difference(np.asarray(logits, np.float64), expected.numpy()) <= TOLERANCE
  np.testing.assert_allclose(np.linalg.norm(aux["pre_logits"], axis=-1), 1.0, rtol=1e-5)
  unnormalized, _ = model.clone(normalize_features=False).apply({"params": params}, images)
  assert max_difference(np.asarray(unnormalized, np.float64), expected.numpy()) > 1.0


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
  ref = reference.random_clip(5)
  path = str(tmp_path / "clip.safetensors")
  save(ref, path)
  tower = clip_text_reader.load(path, image_model(24), num_heads=4)
  names = set(flax.traverse_util.flatten_dict(tower.params, sep="/"))
  assert {"token_embedding/embedding", "positional_embedding", "ln_final/scale", "text_projection",
          "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel",
          "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"} <= names
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(tower.params))
