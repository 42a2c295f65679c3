"""VPT-shallow (both forms), VPT-deep in the last k blocks and PETL_Vision's LoRA against PyTorch
restatements of OSU-MLB/PETL_Vision's code (tests/torch_petl_reference.py: no library has
PETL_Vision's modules, and timm, whose ViT it subclasses, does not install beside the test
extra's CPU torch), their trainable counts on ViT-B/16 against the restated modules', and
`recipe=mai` choosing them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import vtab as vtab_config
import torch_petl_reference
from vpt_jax import methods
from vpt_jax.inference import merge
from vpt_jax.models import vit
from vpt_jax.training import recipes
from vpt_jax.utils import paths

HEADS, IMAGE = 2, 16  # mu/4 at depth 3: 32 wide, 16 patches.


def _model(**fields):
  return vit.Model(num_classes=5, variant="mu/4", depth=3, gelu_approximate=False, **fields)


def _random_params(model, seed=0):
  """Every parameter random, LoRA's up-projection included (so no zero hides a wrong path)."""
  images = jnp.zeros((1, IMAGE, IMAGE, 3))
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  rng = np.random.default_rng(seed)
  return {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in paths.flatten(params).items()}


def _compare(model, **options):
  params = _random_params(model)
  images = np.random.default_rng(2).uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)
  ours = np.asarray(model.apply({"params": paths.unflatten(params)}, images)[0])
  reference = torch_petl_reference.from_flax(params, HEADS, **options)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  return float(np.max(np.abs(ours - theirs)))


@pytest.mark.parametrize("carry", [False, True])
def test_vpt_shallow_both_forms(carry):
  # carry False: PETL_Vision's (prompts in block 0 only); True: KMnP/vpt's (through every block).
  model = _model(prompt_tokens=4, prompt_carry=carry)
  _compare(model, vpt_mode="shallow", vpt_num=4, carry=carry)
  if not carry:  # The forms differ: a test that passes for both would test nothing.
    params = paths.unflatten(_random_params(model))
    images = jnp.ones((1, IMAGE, IMAGE, 3))
    assert not np.allclose(model.apply({"params": params}, images)[0],
                           _model(prompt_tokens=4).apply({"params": params}, images)[0], atol=1e-3)


def test_vpt_deep_in_the_last_blocks():
  model = _model(prompt_tokens=3, prompt_deep=True, prompt_carry=False, prompt_layers=2)
  assert _random_params(model)["prompt/embeddings"].shape == (2, 3, 32)
  _compare(model, vpt_mode="deep", vpt_num=3, vpt_layer=2)
  _compare(_model(prompt_tokens=3, prompt_deep=True, prompt_carry=False), vpt_mode="deep", vpt_num=3)


def test_petl_lora_forward_init_and_merge():
  model = _model(peft=vit.PeftModules(lora_rank=4, lora_form="petl"))
  _compare(model, lora_bottleneck=4)
  fresh = paths.flatten(model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE, IMAGE, 3)))["params"])
  attention = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
  assert not np.any(fresh[attention + "lora_up"])  # model/lora.py: zeros_ on lora_b.
  down = np.asarray(fresh[attention + "lora_down"])  # kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(32)).
  assert down.shape == (32, 4) and np.abs(down).max() <= 32 ** -0.5 and np.abs(down).max() > 0.8 * 32 ** -0.5
  params = _random_params(model)
  plain, merged = merge.merge(model, params)
  images = np.random.default_rng(3).uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)
  np.testing.assert_allclose(plain.apply({"params": merged}, images)[0],
                             model.apply({"params": paths.unflatten(params)}, images)[0], rtol=1e-4, atol=1e-4)


def _trained_without_head(name, **hparams):
  method = methods.get(name, depth=12, width=768, **hparams)
  model = vit.Model(num_classes=10, variant="B/16", **method.model_fields)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
  return methods.count_trained(shapes, methods.labels(shapes, method.rules)) - (768 * 10 + 10)


@pytest.mark.parametrize("rank", [1, 8, 32])
def test_trainable_counts_are_petl_visions(rank):
  lora = torch_petl_reference.LoRA(768, 12, rank)  # One per block of ViT-B/16.
  assert _trained_without_head("lora", lora_rank=rank, lora_form="petl") == 12 * sum(
      p.numel() for p in lora.parameters())
  if rank == 8:
    # ViT-B/16's width and depth (a 1-wide MLP keeps the restated model small).
    vit_b = dict(width=768, depth=12, heads=12, mlp_dim=1, patch=16, tokens=1, num_classes=1)
    shallow = torch_petl_reference.PetlViT(**vit_b, vpt_mode="shallow", vpt_num=10)
    deep = torch_petl_reference.PetlViT(**vit_b, vpt_mode="deep", vpt_num=10, vpt_layer=4)
    assert _trained_without_head("vpt_shallow", prompt_tokens=10, prompt_dropout=0.1,
                                 prompt_carry=False) == shallow.prompt_embeddings.numel() == 7680
    assert _trained_without_head("vpt_deep", prompt_tokens=10, prompt_dropout=0.1, prompt_carry=False,
                                 prompt_layers=4) == deep.prompt_embeddings.numel() == 30720


def test_mai_recipe_picks_petl_forms_and_paper_keeps_kmnp():
  def resolved(method, recipe):
    config = recipes.resolve(vtab_config.get_config(f"task=dtd,method={method},recipe={recipe}"))
    return config, methods.get(method, depth=12, **config.method_kwargs.to_dict())
  config, shallow = resolved("vpt_shallow", "mai")
  assert shallow.model_fields["prompt_carry"] is False
  config, lora = resolved("lora", "mai")
  assert lora.model_fields["peft"].lora_form == "petl"
  assert tuple(config.sweep.grid) == (("method_kwargs.lora_rank", (1, 8, 16, 32)),)
  _, shallow = resolved("vpt_shallow", "paper")
  assert "prompt_carry" not in shallow.model_fields and "prompt_layers" not in shallow.model_fields
  _, lora = resolved("lora", "paper")
  assert lora.model_fields["peft"].lora_form == "qv"
  config = vtab_config.get_config("task=dtd,method=vpt_deep,recipe=mai")
  config.method_kwargs.prompt_layers = 13
  with pytest.raises(ValueError, match="method_kwargs.prompt_layers=13 must be an integer in"):
    recipes.resolve(config)
