"""The `mai` recipe: Mai et al.'s VTAB-1k settings as OSU-MLB/PETL_Vision runs them."""

import jax.numpy as jnp
import numpy as np

from configs import vtab as vtab_config
from vpt_jax.data import device
from vpt_jax.training import recipes


def test_mai_recipe_values():
  for method in ("full", "vpt_deep", "lora", "ft_then_pt"):
    config = recipes.resolve(vtab_config.get_config(f"task=dtd,method={method},recipe=mai"))
    # engine/optimizer.py: torch.optim.AdamW(tune_parameters, lr, weight_decay), one group.
    assert config.optim.name == "adamw" and config.optim.decay_rules == ((".*", True),)
    assert not config.optim.scale_lr and config.optim.grad_clip_norm is None
    # default_vtab_processed.yml: batch 64, 100 epochs, 10 warm-up, drop_path_rate 0.1.
    assert (config.optim.batch_size, config.optim.epochs, config.optim.warmup_epochs) == (64, 100, 10)
    assert config.optim.schedule == "epoch"
    assert config.model.drop_path == 0.1 and config.model.dropout == 0.0
    assert config.model.gelu_approximate is False
    # normalized: False (vtab_processed.py: ToTensor only).
    assert config.data.normalization == "unit" and config.data.flip is False
    # lr_wd_vtab_processed.yml; experiment/run.py: one final run at random_seed 42.
    assert tuple(config.sweep.base_lrs) == (0.001, 0.01)
    assert tuple(config.sweep.weight_decays) == (0.0001, 0.001)
    assert config.sweep.seeds == 1 and tuple(config.sweep.seed_values) == (42,)
    assert config.method_kwargs.prompt_tokens == 10 and config.method_kwargs.prompt_dropout == 0.1
  ft_then_pt = recipes.resolve(vtab_config.get_config("task=dtd,method=ft_then_pt,recipe=mai"))
  assert ft_then_pt.stage_optim.full.name == "adamw"
  assert ft_then_pt.stage_model.full.drop_path == 0.1


def test_command_line_wins_and_unit_normalization():
  config = vtab_config.get_config("task=dtd,method=full,recipe=mai")
  config.model.drop_path = 0.2
  assert recipes.resolve(config).model.drop_path == 0.2
  images = jnp.asarray([[[[0, 51, 255]]]], jnp.uint8)
  np.testing.assert_allclose(np.asarray(device.normalize(images, "unit")), [[[[0.0, 0.2, 1.0]]]])
