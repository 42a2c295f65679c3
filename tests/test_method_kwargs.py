"""Range checks of the methods' capacity and scale settings (recipes.validate): one line naming
the field, the bad value and the valid range."""


import pytest

from configs import vtab as vtab_config
from vpt_jax.training import recipes
from vpt_jax.utils import config_lib


def resolved(arg, **fields):
  config = vtab_config.get_config(arg)
  for path, value in fields.items():
    config_lib.set_path(config, path.replace("__", "."), value)
  return recipes.resolve(config)

BAD = [  # (method, field, bad value, the range the message states)
    ("lora", "lora_rank", 0, "an integer in [1, 768]"),
    ("lora", "lora_rank", 2.5, "an integer in [1, 768]"),
    ("lora", "lora_alpha", -1.0, "a number ≥ 0"),
    ("adapter_houlsby", "adapter_dim", 0, "an integer ≥ 1"),
    ("adapter", "adapter_reduction", 0, "an integer in [1, 768]"),
    ("adapter", "adapter_reduction", 1000, "an integer in [1, 768]"),
    ("partial_k", "partial_k", 13, "an integer in [1, 12]"),
    ("mlp_k", "mlp_k", 1, "an integer ≥ 2"),
    ("adaptformer", "adapter_bottleneck", 0, "an integer ≥ 1"),
    ("rand_h_adapter", "adapter_scaler", 0.0, "a number > 0"),
    ("lora_p_adapter", "adapter_bottleneck", -4, "an integer ≥ 1"),
    ("convpass", "convpass_bottleneck", 0, "an integer ≥ 1"),
    ("convpass", "convpass_scaler", -10.0, "a number > 0"),
    ("convpass", "convpass_xavier_init", "yes", "True or False"),
    ("repadapter", "repadapter_bottleneck", 0, "an integer ≥ 1"),
    ("repadapter", "repadapter_group", 3, "a divisor of repadapter_bottleneck=8"),
    ("repadapter", "repadapter_scaler", 0.0, "a number > 0"),
    ("fact_tk", "fact_dim", 0, "an integer in [1, 768]"),
    ("fact_tt", "fact_scaler", -0.1, "a number > 0"),
    ("selective_mlp", "tuned_blocks", (12,), "one or more block indices in [-12, 11]"),
    ("selective_blocks", "tuned_blocks", (), "one or more block indices"),
    ("sidetune", "side_checkpoint", "alexnet_v2", "'alexnet' (torchvision's ImageNet AlexNet"),
]


@pytest.mark.parametrize("method,field,value,valid", BAD, ids=[f"{m}-{f}-{v}" for m, f, v, _ in BAD])
def test_out_of_range_method_kwargs_are_refused_in_one_line(method, field, value, valid):
  with pytest.raises(ValueError) as caught:
    resolved(f"task=dtd,method={method}", **{f"method_kwargs__{field}": value})
  message = str(caught.value)
  assert "\n" not in message
  assert message.startswith(f"method_kwargs.{field}={value!r} must be {valid}"), message


def test_sidetune_needs_images_its_alexnet_can_pool():
  with pytest.raises(ValueError, match=r"^data\.resolution=32 must be ≥ 63 for sidetune"):
    resolved("task=dtd,method=sidetune", data__resolution=32, model__variant="Ti/16")


def test_fields_of_methods_not_run_are_not_checked():
  config = resolved("task=dtd,method=linear", method_kwargs__lora_rank=0, method_kwargs__mlp_k=0)
  assert config.method == "linear"


def test_defaults_pass_for_every_method_they_belong_to():
  for method in ("lora", "adapter", "adapter_houlsby", "partial_k", "mlp_k", "adaptformer",
                 "convpass", "repadapter", "fact_tk", "selective_attention"):
    assert resolved(f"task=dtd,method={method}").method == method


# --- The `mai` recipe per method (OSU-MLB/PETL_Vision experiment/config/method/<name>.yml) -----

MAI_GRIDS = {  # method: {field: values} as its .yml lists them.
    "adaptformer": {"adapter_bottleneck": (4, 16, 32), "adapter_scaler": (0.05, 0.1, 0.2)},
    "convpass": {"convpass_scaler": (0.01, 0.1, 1, 10, 100), "convpass_bottleneck": (8, 16),
                 "convpass_xavier_init": (True, False)},
    "fact_tk": {"fact_dim": (16, 32, 64), "fact_scaler": (0.01, 0.1, 1, 10, 100)},
    "fact_tt": {"fact_dim": (8, 16, 32), "fact_scaler": (0.01, 0.1, 1, 10, 100)},
    "repadapter": {"repadapter_bottleneck": (8, 16, 32), "repadapter_scaler": (0.1, 0.5, 1, 5, 10)},
    "lora_p_adapter": {"adapter_scaler": (0.01, 0.1, 1, 10), "adapter_bottleneck": (4, 8, 16, 32, 64)},
    "rand_p_adapter": {"adapter_scaler": (0.01, 0.1, 1, 10), "adapter_bottleneck": (4, 8, 16, 32)},
    "rand_h_adapter": {"adapter_scaler": (0.01, 0.1, 1, 10), "adapter_bottleneck": (4, 8, 16, 32)},
    "vpt_deep": {"prompt_tokens": (5, 10, 50, 100)},
    "vpt_shallow": {"prompt_tokens": (5, 10, 50, 100, 200)},
    "difffit": {}, "selective_attention": {}, "selective_mlp": {}, "selective_blocks": {},
}
# default_vtab_processed.yml L21-40.
MAI_DEFAULTS = dict(adapter_bottleneck=64, adapter_scaler=0.1, convpass_bottleneck=8,
                    convpass_scaler=10, convpass_xavier_init=False, repadapter_bottleneck=8,
                    repadapter_scaler=1, repadapter_group=2, fact_dim=8, fact_scaler=1.0,
                    prompt_tokens=10, prompt_dropout=0.1, tuned_blocks=(-1,))


@pytest.mark.parametrize("method", sorted(MAI_GRIDS))
def test_mai_sets_each_methods_capacity_and_searches_its_yml_lists(method):
  config = resolved(f"task=dtd,method={method},recipe=mai")
  for field, value in MAI_DEFAULTS.items():
    assert config.method_kwargs[field] == value, field
  grid = {field.removeprefix("method_kwargs."): tuple(values)
          for field, values in (config.sweep.grid or ())}
  assert grid == MAI_GRIDS[method]
  assert tuple(config.sweep.base_lrs) == (0.001, 0.01)  # lr_wd_vtab_processed.yml
  assert tuple(config.sweep.weight_decays) == (0.0001, 0.001)


def test_a_grid_the_config_sets_wins_over_mais():
  config = resolved("task=dtd,method=adaptformer,recipe=mai",
                    sweep__grid=(("method_kwargs.adapter_bottleneck", (8,)),))
  assert tuple(config.sweep.grid) == (("method_kwargs.adapter_bottleneck", (8,)),)
