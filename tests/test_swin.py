"""Swin backbones: VPT on Swin against a float64 PyTorch restatement of KMnP/vpt's prompted Swin
(tests/torch_swin_reference.py; no library has its prompts), the reader's one-line errors, the
methods that apply to Swin and those refused, the registry, and a Swin run whose trainable part
is its method's parameters. The Swin authors' files' parity with timm's SwinTransformer (through
timm's swin checkpoint_filter_fn) is tests/test_against_timm.py's."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_swin_reference as reference
from configs import vtab as vtab_config
from vpt_jax import checkpoints, methods, models
from vpt_jax.checkpoints import pretrained
from vpt_jax.models import backbones, swin
from vpt_jax.training import spec

TOLERANCE = 1e-4


def images(n, size=224, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def reference_model(variant, depth, num_classes=5, prompts=0, deep=False, seed=0):
  arch = swin.decode_variant(variant)
  model = reference.SwinTransformer(224, arch.patch_size[0], arch.embed_dim, (depth,) * 4, arch.heads,
                                    arch.window, num_classes, prompts, deep)
  return reference.randomize(model, seed)


def reference_outputs(model, x):
  with torch.no_grad():
    features, logits = model(torch.from_numpy(x).double().permute(0, 3, 1, 2))
  return features.numpy(), logits.numpy()


def ours(model, params, x):
  logits, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
  return np.asarray(aux["pre_logits"], np.float64), np.asarray(logits, np.float64)


def flat(params):
  return flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")


def max_difference(a, b):
  assert a.shape == b.shape
  return float(np.max(np.abs(a - b)))


# VPT-shallow at one block per stage (prompts through every stage and patch merging), VPT-deep at
# two (shifted windows with prompts, a deep set replacing them before every block but the first).
@pytest.mark.parametrize("deep, depth, batch", [(False, 1, 1), (True, 2, 2)])
def test_vpt_on_swin_matches_the_vpt_code(deep, depth, batch, tmp_path):
  """Prompts as KMnP/vpt's PromptedSwinTransformer puts them (stage widths of the toy size, 224
  px so windows are 7x7), against the restatement: timm's Swin has no prompts. At batch 1, and
  for VPT-deep at any batch, the reference's window-to-prompt pairing is each image's own
  (swin.py's docstring)."""
  ref = reference_model("swin_mu/4/w7", depth, prompts=3, deep=deep, seed=1)
  path = str(tmp_path / "swin.pth")
  reference.save_checkpoint(ref, path)
  plain = swin.Model(num_classes=5, variant="swin_mu/4/w7", depth=depth)
  backbone = checkpoints.load(path, plain, image_size=224, keep_head=True)
  model = swin.Model(num_classes=5, variant="swin_mu/4/w7", depth=depth, prompt_tokens=3,
                     prompt_deep=deep)
  params = flat(backbone)
  params["prompt/embeddings"] = ref.prompt_embeddings.detach().numpy()
  if deep:
    for i in range(4):
      params[f"prompt/deep_{i}"] = getattr(ref, f"deep_prompt_embeddings_{i}").detach().numpy()
    assert params["prompt/deep_0"].shape == (1, 3, 16) and params["prompt/deep_3"].shape == (2, 3, 128)
  x = images(batch, seed=2)
  expected_features, expected_logits = reference_outputs(ref, x)
  features, logits = ours(model, flax.traverse_util.unflatten_dict(params, sep="/"), x)
  errors = max_difference(features, expected_features), max_difference(logits, expected_logits)
  print(f"vpt deep={deep}: features {errors[0]:.2e}, logits {errors[1]:.2e}")
  assert max(errors) <= TOLERANCE


def test_prompt_init_follows_the_vpt_code():
  prompts = swin.Prompts(4, swin.decode_variant("swin_mu/4/w2"), deep=True)
  params = prompts.init(jax.random.PRNGKey(0), 1, False)["params"]
  bound = (6.0 / (3 * 4 * 4 + 16)) ** 0.5  # The stem width for every stage's prompts.
  shapes = {k: v.shape for k, v in params.items()}
  assert shapes == {"embeddings": (1, 4, 16), "deep_1": (1, 4, 32), "deep_2": (1, 4, 64),
                    "deep_3": (1, 4, 128)}  # Stage 0 has one block: no deep set of its own.
  values = np.concatenate([np.ravel(v) for v in params.values()])
  assert np.all(np.abs(values) <= bound) and np.max(np.abs(values)) > 0.8 * bound


def test_reader_lists_missing_unexpected_and_misshaped_keys(tmp_path):
  """The restatement's model only supplies tensors in the authors' names (no parity is asserted)."""
  ref = reference_model("swin_mu/4/w7", 1)
  state = {k: v.float() for k, v in ref.state_dict().items()}
  del state["layers.1.blocks.0.mlp.fc2.bias"]
  state["layers.0.blocks.0.attn.extra.weight"] = torch.zeros(2, 2)
  state["layers.2.downsample.reduction.weight"] = torch.zeros(3, 3)
  path = str(tmp_path / "broken.pth")
  torch.save({"model": state}, path)
  with pytest.raises(pretrained.CheckpointError) as error:
    checkpoints.load(path, swin.Model(num_classes=5, variant="swin_mu/4/w7", depth=1))
  message = str(error.value)
  assert "\n" not in message
  assert "1 missing (layers_1_blocks_0/mlp/fc2/bias" in message
  assert "1 unexpected (layers_0_blocks_0/attn/extra/kernel (2, 2))" in message
  assert "1 mismatched (layers_2_downsample/reduction/kernel (3, 3) vs model (256, 128))" in message
  with pytest.raises(pretrained.CheckpointError, match="224 px with 7x7 windows"):
    checkpoints.load(path, swin.Model(num_classes=5, variant="swin_mu/4/w7", depth=1), image_size=448)


def test_methods_on_swin():
  geometry = models.geometry(swin.Model(num_classes=5, variant="swin_B"))
  assert geometry == dict(depth=24, width=1024, stage_depths=(2, 2, 18, 2))
  for name in ("adapter", "ssf", "vqt", "fact_tk", "convpass", "mlp_k", "selective_blocks"):
    with pytest.raises(ValueError, match=f"Method '{name}' does not apply to a Swin backbone; on "
                       "Swin: linear, full, bitfit"):
      methods.for_model(name, **geometry, adapter_reduction=8, query_tokens=1, query_dropout=0.0,
                        fact_dim=8, fact_scaler=1.0, mlp_k=3, tuned_blocks=(-1,),
                        convpass_bottleneck=8, convpass_scaler=10.0)
  # partial-k as the VPT code's Swin: partial-4 = stage 3, stage 2's last two blocks and its
  # patch merging, and the final norm.
  pattern = methods.swin_partial_k_pattern((2, 2, 18, 2), 4)
  assert pattern == ("(layers_2_blocks_16|layers_2_blocks_17|layers_3_blocks_0|layers_3_blocks_1|"
                     "layers_2_downsample|norm)/.*")
  model = swin.Model(num_classes=5, variant="swin_mu/4/w2", depth=2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  trained = {}
  for name in ("bitfit", "layernorm", "partial_k"):
    method = methods.for_model(name, **models.geometry(model), partial_k=1)
    groups = flax.traverse_util.flatten_dict(methods.labels(params, method.rules), sep="/")
    trained[name] = {k for k, g in groups.items() if g not in (methods.FROZEN, "head")}
  assert "layers_1_blocks_0/attn/relative_position_bias_table" in trained["bitfit"]
  assert all(k.endswith(("bias", "relative_position_bias_table")) for k in trained["bitfit"])
  assert {k for k in trained["layernorm"] if k.endswith("scale")} == {
      "patch_embed/norm/scale", "norm/scale"} | {f"layers_{s}_blocks_{j}/norm{n}/scale"
                                                 for s in range(4) for j in range(2) for n in (1, 2)} | {
      f"layers_{s}_downsample/norm/scale" for s in range(3)}
  assert {k.split("/")[0] for k in trained["partial_k"]} == {"layers_3_blocks_1", "norm"}
  with pytest.raises(ValueError, match="prompt_project does not apply to Swin"):
    models.build(5, variant="swin_B", prompt_tokens=5, prompt_project=64)
  with pytest.raises(ValueError, match="model.representation_size=768 is a ViT setting"):
    models.build(5, variant="swin_B", representation_size=768)
  # The ViT choices Swin fixes itself pass (a recipe's GELU form, pooling).
  assert isinstance(models.build(5, variant="swin_B", gelu_approximate=True, pool_type="tok"),
                    swin.Model)


def test_registry_and_config():
  record = backbones.BACKBONES["swinb_imagenet22k_224"]
  assert record.host + record.file == ("https://github.com/SwinTransformer/storage/releases/download/"
                                       "v1.0.0/swin_base_patch4_window7_224_22k.pth")
  assert backbones.BACKBONES["swinl_imagenet22k_224"].file.endswith("swin_large_patch4_window7_224_22k.pth")
  config = vtab_config.get_config("task=dtd,method=vpt_deep,backbone=swinl_imagenet22k_224")
  assert (config.model.variant, config.data.normalization) == ("swin_L/4/w7", "imagenet")
  assert checkpoints.READERS[checkpoints.checkpoint_format("swinl_imagenet22k_224")] is \
      checkpoints.swin


def swin_config(method, **extra):
  config = vtab_config.get_config(f"task=dtd,method={method}")
  config.backbone = None
  config.model.variant, config.model.depth, config.data.resolution = "swin_mu/4/w2", 1, 32
  for key, value in extra.items():
    config.method_kwargs[key] = value
  return config


def test_swin_run_trains_only_its_method(tmp_path):
  with pytest.raises(ValueError, match="Method 'adapter' does not apply to a Swin backbone"):
    spec.resolve_run(swin_config("adapter"), str(tmp_path / "refused"))
  assert not (tmp_path / "refused").exists()
  config = swin_config("vpt_deep", prompt_tokens=2)
  config.model.variant, config.data.resolution = "swin_mu/4/w7", 64
  with pytest.raises(ValueError, match="Swin stage 0 is 16x16 tokens, which 7x7 windows do not tile"):
    spec.resolve_run(config, str(tmp_path / "refused"))
  run = spec.resolve_run(swin_config("vpt_deep", prompt_tokens=2), str(tmp_path / "run"))
  assert isinstance(run.backbone.model, swin.Model)
  stage = run.stages[-1]
  model = stage.model
  assert isinstance(model, swin.Model) and model.prompt_deep and model.prompt_tokens == 2
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  groups = methods.labels(shapes, stage.method.rules)
  trainable, frozen = methods.split(shapes, groups)
  # Only the prompts (the shallow set and every stage's deep sets) and the head are differentiated
  # and updated (steps.make_train_step takes `trainable` apart from `frozen`).
  assert set(trainable) == {"prompt", "head"}
  assert set(trainable["prompt"]) == {"embeddings", "deep_1", "deep_2", "deep_3"}
  assert {"patch_embed", "norm", "layers_0_blocks_0", "layers_2_downsample"} <= set(frozen)
  assert "prompt" not in frozen and "head" not in frozen
