"""Mai et al.'s modules (OSU-MLB/PETL_Vision model/*.py) and the VPT code's MLP head
(KMnP/vpt src/models/mlp.py) against PyTorch restatements of the reference modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vpt_jax.models import peft

WIDTH, TOKENS, BATCH = 16, 10, 3  # 10 tokens: [CLS, 3 x 3 patches].


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _random_params(module, x, *args):
  """Every parameter random (no zero-initialised up-projection hides a wrong path)."""
  params = module.init(jax.random.PRNGKey(0), x, *args)["params"]
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(1)
  return jax.tree.unflatten(tree, [rng.normal(size=v.shape).astype(np.float32) * 0.3 for v in leaves])


def _linear(kernel, bias=None):
  layer = torch.nn.Linear(*kernel.shape, bias=bias is not None)
  layer.weight.data = torch.tensor(np.asarray(kernel).T)
  if bias is not None:
    layer.bias.data = torch.tensor(np.asarray(bias))
  return layer


@pytest.mark.parametrize("residual", [False, True])
def test_adapter_is_petl_visions(residual):
  spec = peft.Insert("adapter", "parallel", 4, 0.3, "lora_kaiming")
  x = _x((BATCH, TOKENS, WIDTH))
  module = peft.PetlAdapter(spec)
  params = _random_params(module, x, False)
  ours = module.apply({"params": params}, x, False, residual)
  down, up = _linear(params["down"]["kernel"], params["down"]["bias"]), _linear(
      params["up"]["kernel"], params["up"]["bias"])
  xt = torch.tensor(x)
  # model/adapter.py forward (eval mode): up(dropout(relu(down(x)))) * scale [+ residual].
  reference = up(torch.relu(down(xt))) * 0.3 + (xt if residual else 0)
  np.testing.assert_allclose(ours, reference.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv_xavier", [False, True])
def test_convpass_is_petl_visions(conv_xavier):
  spec = peft.Insert("convpass", "parallel", 4, 10.0, normed_input=True, conv_xavier=conv_xavier)
  x = _x((BATCH, TOKENS, WIDTH))
  module = peft.ConvPass(spec)
  init = module.init(jax.random.PRNGKey(0), x, False)["params"]
  if not conv_xavier:  # convpass.py: zeros, then eye at the centre tap; bias zero.
    expected = np.zeros((3, 3, 4, 4), np.float32)
    expected[1, 1] = np.eye(4)
    np.testing.assert_array_equal(init["conv"]["kernel"], expected)
  params = _random_params(module, x, False)
  ours = module.apply({"params": params}, x, False)
  quick_gelu = lambda t: t * torch.sigmoid(1.702 * t)
  down, up = _linear(params["down"]["kernel"], params["down"]["bias"]), _linear(
      params["up"]["kernel"], params["up"]["bias"])
  conv = torch.nn.Conv2d(4, 4, 3, 1, 1)
  conv.weight.data = torch.tensor(np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1))
  conv.bias.data = torch.tensor(np.asarray(params["conv"]["bias"]))
  # ConvPass.forward with patch_num 3.
  xt = torch.tensor(x)
  b, n, _ = xt.shape
  x_down = quick_gelu(down(xt))
  x_patch = conv(x_down[:, 1:].reshape(b, 3, 3, 4).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, 9, 4)
  x_cls = conv(x_down[:, :1].reshape(b, 1, 1, 4).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, 1, 4)
  reference = up(quick_gelu(torch.cat([x_cls, x_patch], dim=1))) * 10.0
  np.testing.assert_allclose(ours, reference.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_repadapter_is_petl_visions():
  spec = peft.Insert("repadapter", "sequential_before", 4, 0.5, groups=2)
  x = _x((BATCH, TOKENS, WIDTH))
  module = peft.RepAdapter(spec)
  params = _random_params(module, x, False)
  ours = module.apply({"params": params}, x, False)
  conv_a = torch.nn.Conv1d(WIDTH, 4, 1, groups=1, bias=True)
  conv_a.weight.data = torch.tensor(np.asarray(params["down"]["kernel"]).T[:, :, None])
  conv_a.bias.data = torch.tensor(np.asarray(params["down"]["bias"]))
  conv_b = torch.nn.Conv1d(4, WIDTH, 1, groups=2, bias=True)
  # Group g's (bottleneck / g, width / g) block is the torch weight's rows g * width / g onwards.
  kernel = np.asarray(params["up_kernel"])  # (groups, in / groups, out / groups)
  conv_b.weight.data = torch.tensor(np.concatenate([k.T for k in kernel])[:, :, None])
  conv_b.bias.data = torch.tensor(np.asarray(params["up_bias"]))
  xt = torch.tensor(x).transpose(1, 2)
  reference = (conv_b(conv_a(xt)) * 0.5 + xt).transpose(1, 2)
  np.testing.assert_allclose(ours, reference.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fact_type", ["tk", "tt"])
def test_fact_updates_are_petl_visions(fact_type):
  d, depth, block, scale = 3, 2, 1, 0.7
  module = peft.FacTParams(fact_type, d, depth)
  params = _random_params(module, WIDTH)
  params = module.apply({"params": params}, WIDTH)
  cores = peft.fact_cores(params, fact_type, block)
  t = {k: torch.tensor(np.asarray(v)) for k, v in params.items() if not isinstance(v, dict)}
  u, v = _linear(params["u"]), _linear(params["v"])
  x, hidden = _x((BATCH, TOKENS, WIDTH)), _x((BATCH, TOKENS, 4 * WIDTH), seed=1)
  xt, ht = torch.tensor(x), torch.tensor(hidden)
  b, n, c = xt.shape
  if fact_type == "tk":  # FacT.forward, tk branch.
    start = block * 12
    attn = t["c"] @ t["p"][:, start:start + 4]
    mlp = t["c"] @ t["p"][:, start + 4:start + 12]
    qkv = [v(u(xt) @ attn[:, :, i]) for i in range(3)]
    proj = v(u(xt) @ attn[:, :, 3])
    fc1 = v((u(xt) @ mlp[:, :, :4].reshape(d, 4 * d)).reshape(b, n, 4, d)).reshape(b, n, 4 * c)
    fc2 = v(u(ht.reshape(b, n, 4, c)).reshape(b, n, 4 * d) @ mlp[:, :, 4:].reshape(d, 4 * d).t())
  else:  # tt branch: per-block Linear(d, d) cores, fc1 Linear(d, 4d), fc2 Linear(4d, d).
    lin = {name: _linear(params[f"block_{block}"][name]) for name in ("q", "k", "v", "out", "fc1", "fc2")}
    qkv = [v(lin[name](u(xt))) for name in "qkv"]
    proj = v(lin["out"](u(xt)))
    fc1 = v(lin["fc1"](u(xt)).reshape(b, n, 4, d)).reshape(b, n, 4 * c)
    fc2 = v(lin["fc2"](u(ht.reshape(b, n, 4, c)).reshape(b, n, 4 * d)))
  no_dropout = lambda z: z
  for name, reference, inputs in (("q", qkv[0], x), ("k", qkv[1], x), ("v", qkv[2], x),
                                  ("out", proj, x), ("fc1", fc1, x), ("fc2", fc2, hidden)):
    ours = peft.fact_delta(params, cores, name, jnp.asarray(inputs), no_dropout, scale)
    np.testing.assert_allclose(ours, reference.detach().numpy() * scale, rtol=1e-4, atol=1e-5,
                               err_msg=name)


def test_fact_init_is_petl_visions():
  params = peft.FacTParams("tk", 8, 12).init(jax.random.PRNGKey(0), 768)["params"]
  assert not np.any(params["v"])  # FacTv from zero.
  # xavier_uniform_: C (8, 8, 8) bound sqrt(6 / (64 + 64)); P (8, 144) bound sqrt(6 / 152).
  assert np.abs(params["c"]).max() <= np.sqrt(6 / 128) and np.abs(params["c"]).max() > 0.9 * np.sqrt(6 / 128)
  assert np.abs(params["p"]).max() <= np.sqrt(6 / 152) and np.abs(params["p"]).max() > 0.9 * np.sqrt(6 / 152)
  assert np.abs(params["u"]).max() <= 1 / np.sqrt(768)  # nn.Linear's default.


def test_mlp_head_layer_is_the_vpt_codes_in_training_mode():
  layer = peft.MlpHeadLayer(WIDTH, dropout=0.0)
  x = _x((6, WIDTH))
  params = _random_params(layer, x, None, False)
  mask = np.array([True, True, True, True, False, False])
  ours = layer.apply({"params": params}, x, mask, True)
  # mlp.py L38-49: Linear -> ReLU -> BatchNorm1d -> Dropout, here with BatchNorm in training mode
  # (batch statistics) on the real examples only and dropout off.
  bn = torch.nn.BatchNorm1d(WIDTH)
  bn.weight.data = torch.tensor(np.asarray(params["bn_scale"]))
  bn.bias.data = torch.tensor(np.asarray(params["bn_bias"]))
  bn.train()
  dense = _linear(params["dense"]["kernel"], params["dense"]["bias"])
  reference = bn(torch.relu(dense(torch.tensor(x[mask]))))
  np.testing.assert_allclose(np.asarray(ours)[mask], reference.detach().numpy(), rtol=1e-4, atol=1e-4)
  # Init: kaiming_normal_(fan_out) kernel, nn.Linear's default bias; BatchNorm1d's 1 and 0.
  init = peft.MlpHeadLayer(768).init(jax.random.PRNGKey(0), np.zeros((4, 768), np.float32), None,
                                     False)["params"]
  assert abs(np.std(init["dense"]["kernel"]) - np.sqrt(2 / 768)) < 2e-3
  assert np.abs(init["dense"]["bias"]).max() <= 1 / np.sqrt(768)
  assert np.all(init["bn_scale"] == 1) and not np.any(init["bn_bias"])
  assert not np.any(init["running_mean"]) and np.all(init["running_var"] == 1)


def test_mlp_head_running_averages_are_batchnorm1ds():
  """Three training batches (the last padded) update the running averages as BatchNorm1d's
  (momentum 0.1, unbiased variance of the real examples); evaluation normalises by them."""
  layer = peft.MlpHeadLayer(WIDTH, dropout=0.0)
  batches = [_x((6, WIDTH), seed) for seed in (2, 3, 4)]
  masks = [np.ones(6, bool), np.ones(6, bool), np.array([True] * 4 + [False] * 2)]
  params = _random_params(layer, batches[0], None, False)
  params = {**params, "running_mean": np.zeros(WIDTH, np.float32),
            "running_var": np.ones(WIDTH, np.float32)}
  dense = _linear(params["dense"]["kernel"], params["dense"]["bias"])
  bn = torch.nn.BatchNorm1d(WIDTH)
  bn.weight.data = torch.tensor(np.asarray(params["bn_scale"]))
  bn.bias.data = torch.tensor(np.asarray(params["bn_bias"]))
  bn.train()
  for x, mask in zip(batches, masks):
    _, updated = layer.apply({"params": params}, x, mask, True,
                             mutable=[peft.STATISTICS_UPDATES])
    params = {**params, **updated[peft.STATISTICS_UPDATES]}
    bn(torch.relu(dense(torch.tensor(x[mask]))))
  np.testing.assert_allclose(params["running_mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["running_var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
  assert np.abs(params["running_mean"]).max() > 0.1  # Moved from the init.
  x = _x((5, WIDTH), 5)
  bn.eval()
  reference = bn(torch.relu(dense(torch.tensor(x)))).detach().numpy()
  np.testing.assert_allclose(layer.apply({"params": params}, x, None, False), reference,
                             rtol=1e-5, atol=1e-5)
  # Without the updates collection (another caller's training forward) nothing is written.
  assert layer.apply({"params": params}, x, None, True).shape == (5, WIDTH)
