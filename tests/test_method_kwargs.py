"""Range checks of the methods' capacity and scale settings (recipes.validate): one line naming
the field, the bad value and the valid range."""


import pytest

from test_recipes import resolved

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
]


@pytest.mark.parametrize("method,field,value,valid", BAD, ids=[f"{m}-{f}-{v}" for m, f, v, _ in BAD])
def test_out_of_range_method_kwargs_are_refused_in_one_line(method, field, value, valid):
  with pytest.raises(ValueError) as caught:
    resolved(f"task=dtd,method={method}", **{f"method_kwargs__{field}": value})
  message = str(caught.value)
  assert "\n" not in message
  assert message.startswith(f"method_kwargs.{field}={value!r} must be {valid}"), message


def test_fields_of_methods_not_run_are_not_checked():
  config = resolved("task=dtd,method=linear", method_kwargs__lora_rank=0, method_kwargs__mlp_k=0)
  assert config.method == "linear"


def test_defaults_pass_for_every_method_they_belong_to():
  for method in ("lora", "adapter", "adapter_houlsby", "partial_k", "mlp_k", "adaptformer",
                 "convpass", "repadapter", "fact_tk", "selective_attention"):
    assert resolved(f"task=dtd,method={method}").method == method
