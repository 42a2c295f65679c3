"""The checkpoint readers against the authors' own libraries: random weights in timm's and open_clip's
models, written in each release's file layout, read by vpt_jax and compared with the library's forward
(float32 on both sides).

  * MAE and MoCo v3: timm's VisionTransformer (MAE's models_vit.py subclasses it; MoCo v3's vits.py
    too), its global-pool form for MAE, loaded from a pre-training file as KMnP/vpt loads it
    (non-strictly: fc_norm keeps its fresh init).
  * DINOv2: timm's `vit_*_patch14[_reg4]_dinov2`, filled from a file in the DINOv2 hub layout by
    timm's own `checkpoint_filter_fn` (registers, class token, position grid resampled 37 -> 16).
  * CLIP: open_clip's CLIP, saved in open_clip's layout (.bin, .safetensors) and as OpenAI's
    TorchScript archive; encode_image and encode_text (tokens from open_clip's tokenizer) and the
    zero-shot classifier (open_clip's build_zero_shot_classifier); timm's CLIP ViT, filled from
    the same files by its `checkpoint_filter_fn`, as a second check of the image tower.
  * Swin: timm's SwinTransformer, written in the Swin authors' layout (downsample at the end of a
    stage, `head`, the derived buffers) that timm's swin `checkpoint_filter_fn` reads back exactly.

Measured once (these sizes, CPU): features and logits agree within 1.5e-6 of their largest
magnitude; TOLERANCE (1e-5) leaves room for other CPUs' float32 summation orders. What no library
has (the VPT code's and PETL_Vision's prompt insertion, KMnP/vpt's prompted Swin) stays tested
against the PyTorch restatements in tests/torch_*_reference.py."""

import copy
import functools
import importlib
import math
import os
import re

import flax.traverse_util
import jax
import numpy as np
import pytest
import safetensors.torch
import torch


def _library(name):
  # CI installs both with the test extra (setup.cfg): there a missing one fails instead of
  # skipping the file.
  if os.environ.get("CI"):
    return importlib.import_module(name)
  return pytest.importorskip(name, reason=f"{name} is not installed (pip install -c constraints.txt -e '.[test]')")


timm = _library("timm")
open_clip = _library("open_clip")

from timm.models import swin_transformer, vision_transformer  # noqa: E402
from open_clip import zero_shot_classifier  # noqa: E402

from vpt_jax import checkpoints  # noqa: E402
from vpt_jax.checkpoints import clip_text as clip_text_reader  # noqa: E402
from vpt_jax.data import imagenet_classes  # noqa: E402
from vpt_jax.models import clip_text, swin, vit  # noqa: E402

TOLERANCE = 1e-5  # Of the reference's largest magnitude.
_WIDTH_NAMES = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H"}


def randomize(module, seed):
  """Every parameter drawn afresh: the libraries' inits leave biases at zero, norms at one and
  LayerScale at 1e-5, under which a misplaced bias, norm or scale would go unseen."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name == "logit_scale":
        p.fill_(math.log(100.0))  # CLIP's trained temperature.
        continue
      noise = torch.randn(p.shape, generator=generator)
      leaf = name.rsplit(".", 1)[-1]
      if leaf == "bias":
        p.copy_(0.1 * noise)
      elif leaf == "weight" and p.ndim == 1:  # LayerNorm.
        p.copy_(1 + 0.1 * noise)
      elif leaf == "gamma":  # LayerScale.
        p.copy_(0.3 * noise)
      elif p.ndim >= 2 and not any(s in name for s in ("pos", "token", "embedding")):
        p.copy_(noise / math.sqrt(p[0].numel()))  # Fan-in scaled: activations stay O(1).
      else:  # Class, register and mask tokens, position and token embeddings.
        p.copy_(0.5 * noise)
  return module.eval()


def images(n, size, seed):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def nchw(x):
  return torch.from_numpy(x).permute(0, 3, 1, 2)


def ours(model, params, x):
  logits, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
  return np.asarray(aux["pre_logits"], np.float64), np.asarray(logits, np.float64)


def timm_outputs(model, x):
  """(pre-logits features, logits) of a timm model on NHWC images."""
  with torch.no_grad():
    features = model.forward_features(nchw(x))
    return (model.forward_head(features, pre_logits=True).double().numpy(),
            model.forward_head(features).double().numpy())


def assert_close(actual, expected, what=""):
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  error = float(np.max(np.abs(actual - expected))) / max(1.0, float(np.max(np.abs(expected))))
  print(f"{what}: relative error {error:.1e}")
  assert error <= TOLERANCE, (what, error)


def flat(params):
  return flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")


def as_float32(state):
  return {k: v.detach().float().contiguous() for k, v in state.items()}


# --- MAE and MoCo v3: timm's VisionTransformer. ---

def timm_vit(variant, depth, seed, image_size=224, **kwargs):
  arch = vit.decode_variant(variant)
  size = {v: k for k, v in _WIDTH_NAMES.items()}[variant.split("/")[0]]
  name = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}[size]
  model = timm.create_model(f"vit_{name}_patch{arch.patch_size[0]}_224", pretrained=False, depth=depth,
                            img_size=image_size, **kwargs)
  return randomize(model, seed) if seed is not None else model.eval()


# (variant, depth): every published MAE width, head count and patch size at a few blocks.
@pytest.mark.parametrize("variant, depth", [("B/16", 3), ("L/16", 2), ("H/14", 2)])
def test_mae_pretraining_file_as_kmnp_vpt_loads_it_into_timm(variant, depth, tmp_path):
  """MAE's {"model": encoder} file (its final norm, a pre-training run's decoder, no fc_norm or
  head) loaded non-strictly into timm's global-pool ViT, as KMnP/vpt loads it: fc_norm keeps
  timm's fresh init, the norm goes unused."""
  encoder = timm_vit(variant, depth, seed=0, num_classes=0)
  state = as_float32(encoder.state_dict())
  width = encoder.embed_dim
  decoder = {"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, width),
             "decoder_embed.bias": torch.randn(16), "decoder_pos_embed": torch.randn(1, 197, 16),
             "decoder_blocks.0.norm1.weight": torch.randn(16), "decoder_norm.weight": torch.randn(16),
             "decoder_pred.weight": torch.randn(768, 16)}
  path = str(tmp_path / "mae_pretrain_vit.pth")
  torch.save({"model": {**state, **decoder}}, path)
  pooled = timm_vit(variant, depth, seed=None, num_classes=0, global_pool="avg")
  missing, unexpected = pooled.load_state_dict(torch.load(path)["model"], strict=False)
  assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight"]
  assert sorted(unexpected) == sorted(["norm.weight", "norm.bias", *decoder])
  model = vit.Model(num_classes=0, variant=variant, depth=depth, pool_type="gap_fc_norm", gelu_approximate=False)
  params = checkpoints.load(path, model, image_size=224)
  loaded = flat(params)
  assert not any("encoder_norm" in k for k in loaded)
  np.testing.assert_array_equal(loaded["fc_norm/scale"], 1.0)
  np.testing.assert_array_equal(loaded["fc_norm/bias"], 0.0)
  x = images(2, 224, seed=0)
  assert_close(ours(model, params, x)[0], timm_outputs(pooled, x)[0], f"MAE {variant} features")


def test_mae_finetuned_file_with_fc_norm_and_head(tmp_path):
  """MAE's fine-tuned file: timm's global-pool ViT (no final norm, fc_norm, head) as saved."""
  ref = timm_vit("Ti/16", 2, seed=1, image_size=32, num_classes=10, global_pool="avg")
  assert "fc_norm.weight" in ref.state_dict() and "norm.weight" not in ref.state_dict()
  path = str(tmp_path / "mae_finetuned.pth")
  torch.save({"model": as_float32(ref.state_dict())}, path)
  model = vit.Model(num_classes=10, variant="Ti/16", depth=2, pool_type="gap_fc_norm", gelu_approximate=False)
  x = images(3, 32, seed=1)
  (features, logits), (expected_features, expected_logits) = (
      ours(model, checkpoints.load(path, model, image_size=32, keep_head=True), x), timm_outputs(ref, x))
  assert_close(features, expected_features, "MAE fine-tuned features")
  assert_close(logits, expected_logits, "MAE fine-tuned logits")


def test_mocov3_linear_file(tmp_path):
  """MoCo v3's linear-probe file: {"state_dict": ...} under DistributedDataParallel's `module.`,
  with its ImageNet-1k head; timm's class-token ViT (MoCo v3's vits.py subclasses it)."""
  ref = timm_vit("B/16", 3, seed=2, num_classes=1000)
  path = str(tmp_path / "mocov3_linear-vit-b-300ep.pth.tar")
  torch.save({"epoch": 90, "arch": "vit_base",
              "state_dict": {f"module.{k}": v for k, v in as_float32(ref.state_dict()).items()}}, path)
  model = vit.Model(num_classes=1000, variant="B/16", depth=3, pool_type="tok", gelu_approximate=False)
  x = images(2, 224, seed=2)
  (features, logits), (expected_features, expected_logits) = (
      ours(model, checkpoints.load(path, model, keep_head=True), x), timm_outputs(ref, x))
  assert_close(features, expected_features, "MoCo v3 features")
  assert_close(logits, expected_logits, "MoCo v3 logits")
  # As KMnP/vpt uses it, the ImageNet-1k head is dropped: a new task's head starts at zeros.
  headless = flat(checkpoints.load(path, model.clone(num_classes=47)))
  assert headless["head/kernel"].shape == (768, 47) and not headless["head/kernel"].any()


def test_mocov3_pretraining_file_reads_the_base_encoder(tmp_path):
  """MoCo v3's pre-training file: `module.base_encoder.` (its projection MLP as `head.*`, as
  moco/builder.py replaces timm's head), `module.momentum_encoder.` and `module.predictor.`."""
  ref = timm_vit("Ti/16", 2, seed=3, image_size=32, num_classes=0)
  encoder = as_float32(ref.state_dict())
  projector = {"head.0.weight": torch.randn(64, 192), "head.1.weight": torch.randn(64),
               "head.1.running_mean": torch.zeros(64), "head.3.weight": torch.randn(16, 64)}
  state = {f"module.base_encoder.{k}": v for k, v in {**encoder, **projector}.items()}
  state.update({f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()})
  state["module.predictor.0.weight"] = torch.randn(32, 16)
  path = str(tmp_path / "vit-b-300ep.pth.tar")
  torch.save({"epoch": 300, "state_dict": state}, path)
  model = vit.Model(num_classes=0, variant="Ti/16", depth=2, gelu_approximate=False)
  x = images(2, 32, seed=3)
  assert_close(ours(model, checkpoints.load(path, model, image_size=32), x)[0], timm_outputs(ref, x)[0],
               "MoCo v3 base encoder features")


# --- DINOv2: timm's ViT through timm's checkpoint_filter_fn. ---

def dinov2_hub_state(model):
  """timm's DINOv2 as DINOv2's hub file holds it: a bare state dict with `mask_token`; with
  registers, `register_tokens` and a position embedding that has the class token's row (timm
  folds that row into its cls_token: vision_transformer._convert_dinov2 undone)."""
  state = as_float32(model.state_dict())
  generator = torch.Generator().manual_seed(99)
  if "reg_token" in state:
    row = 0.5 * torch.randn(1, 1, model.embed_dim, generator=generator)
    state["register_tokens"] = state.pop("reg_token")
    state["cls_token"] = state["cls_token"] - row
    state["pos_embed"] = torch.cat([row, state["pos_embed"]], dim=1)
  state["mask_token"] = 0.5 * torch.randn(1, model.embed_dim, generator=generator)
  return state


# (timm name, timm overrides, depth, hub image size, image size): every published width and head
# count with and without registers, the hub's 37x37 grid resampled to 224 px's 16x16, and one
# file at its own grid.
DINOV2_CASES = [("vit_base_patch14_dinov2", {}, 3, 518, 224), ("vit_small_patch14_dinov2", {}, 2, 518, 224),
                ("vit_large_patch14_dinov2", {}, 2, 518, 224), ("vit_base_patch14_reg4_dinov2", {}, 2, 518, 224),
                ("vit_small_patch14_reg4_dinov2", {}, 2, 518, 224),
                ("vit_small_patch14_reg4_dinov2", dict(embed_dim=192, num_heads=3), 2, 56, 56)]


@pytest.mark.parametrize("name, overrides, depth, hub_size, size", DINOV2_CASES)
def test_dinov2_hub_file_through_timms_filter(name, overrides, depth, hub_size, size, tmp_path):
  hub = randomize(timm.create_model(name, pretrained=False, depth=depth, img_size=hub_size, num_classes=0,
                                    **overrides), seed=4)
  path = str(tmp_path / "dinov2_pretrain.pth")
  torch.save(dinov2_hub_state(hub), path)
  ref = timm.create_model(name, pretrained=False, depth=depth, img_size=size, num_classes=0, **overrides).eval()
  # What timm's pretrained loading does with the file (load_pretrained: filter, then strict).
  ref.load_state_dict(vision_transformer.checkpoint_filter_fn(torch.load(path), ref), strict=True)
  registers = ref.num_reg_tokens
  model = vit.Model(num_classes=0, variant=f"{_WIDTH_NAMES[ref.embed_dim]}/14", depth=depth, layer_scale=True,
                    register_tokens=registers, gelu_approximate=False)
  params = checkpoints.load(path, model, image_size=size)
  loaded, grid = flat(params), size // 14
  assert loaded["Transformer/posembed_input/pos_embedding"].shape[1] == 1 + grid * grid
  assert ("registers" in loaded) == bool(registers) and not any("mask" in k for k in loaded)
  if hub_size == size:  # At the file's own grid nothing is resampled.
    np.testing.assert_array_equal(loaded["Transformer/posembed_input/pos_embedding"],
                                  torch.load(path)["pos_embed"].numpy())
  x = images(2, size, seed=4)
  assert_close(ours(model, params, x)[0], timm_outputs(ref, x)[0],
               f"{name} {ref.embed_dim} wide, {hub_size} -> {size} px")


# --- CLIP: open_clip's CLIP, and timm's CLIP ViT through its checkpoint_filter_fn. ---

def open_clip_model(seed, embed_dim, vision, text, quick_gelu):
  model = open_clip.model.CLIP(embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)
  return randomize(model, seed)


def clip_image_model(variant, depth, embed_dim, quick_gelu, **kwargs):
  return vit.Model(variant=variant, depth=depth, pre_norm=True, norm_epsilon=1e-5, embedding_bias=False,
                   projection_dim=embed_dim, quick_gelu=quick_gelu, gelu_approximate=False, **kwargs)


def save_openai_archive(model, path):
  """OpenAI's `ViT-B-16.pt`: a TorchScript archive of the whole CLIP, traced as open_clip's
  trace_model traces it (forward, encode_image, encode_text; trace_model itself takes the image
  size for an int, which open_clip 3.3's towers keep as a pair), its state dict holding
  input_resolution, context_length and vocab_size beside the weights as OpenAI's archives do
  (OpenAI's and open_clip's builders drop those three)."""
  archived = copy.deepcopy(model)
  for key in ("context_length", "vocab_size"):  # Plain ints on open_clip's model: tensors here.
    delattr(archived, key)
  for module in archived.modules():  # A traced archive persists every buffer; OpenAI's causal mask
    for key in list(module._non_persistent_buffers_set):  # is a plain attribute, not a weight.
      value = module._buffers.pop(key)
      module._non_persistent_buffers_set.discard(key)
      setattr(module, key, value)
  size = archived.visual.image_size[0]
  archived.register_buffer("input_resolution", torch.tensor(size))
  archived.register_buffer("context_length", torch.tensor(model.context_length))
  archived.register_buffer("vocab_size", torch.tensor(model.vocab_size))
  example_images = torch.ones(1, 3, size, size)
  example_text = torch.zeros(1, model.context_length, dtype=torch.int)
  torch.jit.save(torch.jit.trace_module(archived, inputs=dict(
      forward=(example_images, example_text), encode_text=(example_text,), encode_image=(example_images,)),
      # The re-trace check trips on nn.MultiheadAttention's fast path; only the weights are read.
      check_trace=False), path)


def encode(clip, x=None, tokens=None):
  with torch.no_grad():
    if x is not None:
      return clip.encode_image(nchw(x)).double().numpy()
    return clip.encode_text(tokens).double().numpy()


def ours_text(tower, tokens):
  return np.asarray(jax.jit(lambda p, t: tower.model.apply({"params": p}, t))(tower.params, tokens), np.float64)


TEXTS = ["a photo of a dog.", "A  Photo of a DOG.", "an origami tench, folded", "", "a tattoo of the toilet paper."]


def test_openai_archive_image_and_text_towers_at_vit_b16_text_size(tmp_path):
  """OpenAI's TorchScript archive of a QuickGELU CLIP: ViT-B/16's image tower at three blocks
  and ViT-B/16's whole text tower (12 blocks, 512 wide, 8 heads, CLIP's 49408-token vocabulary,
  77-token context), fed open_clip's tokens. open_clip's own loader of OpenAI files
  (load_openai_model) reads the archive back, and timm's CLIP ViT does too."""
  vision = dict(image_size=224, patch_size=16, width=768, layers=3, head_width=64)
  text = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
  ref = open_clip_model(5, 512, vision, text, quick_gelu=True)
  path = str(tmp_path / "ViT-B-16.pt")
  save_openai_archive(ref, path)
  archive = torch.jit.load(path).state_dict()
  assert {"input_resolution", "context_length", "vocab_size"} <= set(archive)
  # open_clip's reader of OpenAI files rebuilds the same model (through float16: OpenAI's files
  # are half precision, so its copy rounds every weight).
  rebuilt = open_clip.load_openai_model(path, precision="fp32", device="cpu")
  for key, value in rebuilt.state_dict().items():
    torch.testing.assert_close(value, ref.state_dict()[key].float(), rtol=1e-3, atol=1e-4)

  model = clip_image_model("B/16", 3, 512, quick_gelu=True, num_classes=0)
  x = images(2, 224, seed=5)
  expected = encode(ref, x)
  assert_close(ours(model, checkpoints.load(path, model, image_size=224), x)[0], expected,
               "OpenAI archive image features")
  vit_b16 = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, depth=3,
                              num_classes=512).eval()
  vit_b16.load_state_dict(vision_transformer.checkpoint_filter_fn(archive, vit_b16), strict=True)
  assert_close(timm_outputs(vit_b16, x)[1], expected, "timm's CLIP ViT on the archive")

  tower = clip_text_reader.load(path, model)
  assert (tower.model.config.depth, tower.model.config.num_heads, tower.model.config.quick_gelu) == (12, 8, True)
  tokens = open_clip.tokenize(TEXTS)
  np.testing.assert_array_equal(clip_text.tokenize(TEXTS), tokens.numpy())
  assert tower.logit_scale == pytest.approx(math.log(100.0), rel=1e-6)
  ids = tokens.numpy().astype(np.int32)
  assert_close(ours_text(tower, ids), encode(ref, tokens=tokens), "OpenAI archive text features")
  # The mask is causal: what follows EOT (here, more ids instead of padding) changes nothing.
  tail = np.where(ids == 0, 7, ids)
  assert np.max(np.abs(ours_text(tower, tail) - ours_text(tower, ids))) <= 1e-6


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_open_clip_files_image_and_text_towers(suffix, tmp_path):
  """open_clip's `open_clip_pytorch_model.bin` and `.safetensors` of a GELU CLIP (its LAION
  models' form): ViT-B/32's image tower at two blocks, a 2-block 64-wide text tower (4 heads)
  on CLIP's vocabulary with a 16-token context."""
  vision = dict(image_size=224, patch_size=32, width=768, layers=2, head_width=64)
  text = dict(context_length=16, vocab_size=49408, width=64, heads=4, layers=2)
  ref = open_clip_model(6, 64, vision, text, quick_gelu=False)
  path = str(tmp_path / f"open_clip_model{suffix}")
  state = as_float32(ref.state_dict())
  torch.save(state, path) if suffix == ".bin" else safetensors.torch.save_file(state, path)
  model = clip_image_model("B/32", 2, 64, quick_gelu=False, num_classes=0)
  x = images(2, 224, seed=6)
  expected = encode(ref, x)
  assert_close(ours(model, checkpoints.load(path, model, image_size=224), x)[0], expected,
               f"open_clip {suffix} image features")
  vit_b32 = timm.create_model("vit_base_patch32_clip_224", pretrained=False, depth=2, num_classes=64).eval()
  vit_b32.load_state_dict(vision_transformer.checkpoint_filter_fn(state, vit_b32), strict=True)
  assert_close(timm_outputs(vit_b32, x)[1], expected, "timm's CLIP ViT on the open_clip file")

  tokens = open_clip.tokenize(TEXTS, context_length=16)
  tower = clip_text_reader.load(path, model, num_heads=4)
  expected_text = encode(ref, tokens=tokens)
  assert_close(ours_text(tower, tokens.numpy().astype(np.int32)), expected_text, f"open_clip {suffix} text features")
  # The layout leaves the activation to the image model: QuickGELU computes something else.
  quick = clip_text_reader.load(path, model.clone(quick_gelu=True), num_heads=4)
  assert np.max(np.abs(ours_text(quick, tokens.numpy().astype(np.int32)) - expected_text)) > 1e-3


def test_zero_shot_head_and_logits_equal_open_clips_classifier(tmp_path):
  """vpt_jax's zero-shot head (models/clip_text.py) against open_clip's build_zero_shot_classifier
  on a tiny QuickGELU CLIP (32 px, 1 block of 64 wide, a 2-block text tower), with open_clip's
  tokenizer on both sides; logits exp(logit_scale) * cosine similarity as open_clip's
  zero-shot evaluation computes them."""
  vision = dict(image_size=32, patch_size=16, width=192, layers=1, head_width=64)
  text = dict(context_length=16, vocab_size=49408, width=64, heads=4, layers=2)
  ref = open_clip_model(7, 24, vision, text, quick_gelu=True)
  path = str(tmp_path / "tiny_clip.bin")
  torch.save(as_float32(ref.state_dict()), path)
  names, templates = imagenet_classes.CLASS_NAMES[:5], imagenet_classes.TEMPLATES[:6]
  model = clip_image_model("Ti/16", 1, 24, quick_gelu=True, num_classes=len(names), normalize_features=True)
  tower = clip_text_reader.load(path, model, num_heads=4)
  head = clip_text.zero_shot_head(tower.model, tower.params, tower.logit_scale, names, templates,
                                  functools.partial(clip_text.tokenize, context_length=16))
  classifier = zero_shot_classifier.build_zero_shot_classifier(
      ref, functools.partial(open_clip.tokenize, context_length=16), names, templates, num_classes_per_batch=None)
  scale = ref.logit_scale.exp().item()
  assert_close(np.asarray(head["kernel"], np.float64), scale * classifier.double().numpy(), "zero-shot head")
  params = {**checkpoints.load(path, model, image_size=32), "head": head}
  x = images(3, 32, seed=7)
  with torch.no_grad():
    features = torch.nn.functional.normalize(ref.encode_image(nchw(x)), dim=-1)
    expected = (scale * features @ classifier).double().numpy()
  assert_close(ours(model, params, x)[1], expected, "zero-shot logits")
  # Each column is exp(logit_scale) = 100 times a unit vector; without normalize_features the
  # logits are something else.
  np.testing.assert_allclose(np.linalg.norm(head["kernel"], axis=0), 100.0, rtol=1e-5)
  assert np.max(np.abs(ours(model.clone(normalize_features=False), params, x)[1] - expected)) > 1.0


# --- Swin: timm's SwinTransformer in the Swin authors' layout. ---

def swin_authors_state(model):
  """timm's Swin as microsoft/Swin-Transformer saves it ({"model": ...}): patch merging at the end
  of stage i (timm: the start of stage i + 1), `head` (timm: `head.fc`), and the derived buffers
  relative_position_index and attn_mask (shifted blocks only) that timm does not persist."""
  state = {}
  for key, value in {**model.state_dict(), **dict(model.named_buffers())}.items():
    if (match := re.match(r"layers\.(\d+)\.downsample\.(.+)", key)):
      key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
    state[key.replace("head.fc.", "head.")] = value.detach().contiguous()
  return {"model": {k: v.float() if v.is_floating_point() else v for k, v in state.items()}}


# (variant, blocks per stage, batch): the toy widths and Swin-B's, with two blocks per stage so
# every stage but the last (one window) has a shifted block.
@pytest.mark.parametrize("variant, depth, batch", [("swin_mu/4/w7", 2, 2), ("swin_B/4/w7", 2, 1)])
def test_swin_authors_file_through_timms_filter(variant, depth, batch, tmp_path):
  arch = swin.decode_variant(variant)
  make = functools.partial(swin_transformer.SwinTransformer, img_size=224, patch_size=arch.patch_size[0],
                           embed_dim=arch.embed_dim, depths=(depth,) * 4, num_heads=arch.heads,
                           window_size=arch.window, num_classes=5)
  ref = randomize(make(), seed=8)
  path = str(tmp_path / "swin.pth")
  state = swin_authors_state(ref)
  assert "layers.0.downsample.reduction.weight" in state["model"]
  assert "layers.3.downsample.norm.weight" not in state["model"]
  assert "layers.0.blocks.1.attn_mask" in state["model"] and "layers.0.blocks.0.attn_mask" not in state["model"]
  torch.save(state, path)
  # timm's reader of the authors' files maps it back onto timm's model, every tensor in place.
  reread = make().eval()
  reread.load_state_dict(swin_transformer.checkpoint_filter_fn(torch.load(path), reread), strict=True)
  for key, value in ref.state_dict().items():
    torch.testing.assert_close(reread.state_dict()[key], value, rtol=0, atol=0)
  model = swin.Model(num_classes=5, variant=variant, depth=depth)
  x = images(batch, 224, seed=8)
  (features, logits), (expected_features, expected_logits) = (
      ours(model, checkpoints.load(path, model, image_size=224, keep_head=True), x), timm_outputs(ref, x))
  assert_close(features, expected_features, f"{variant} features")
  assert_close(logits, expected_logits, f"{variant} logits")
