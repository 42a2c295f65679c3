"""Parameter-efficient modules of Mai et al.'s study (OSU-MLB/PETL_Vision model/*.py) and the VPT
code's MLP head (KMnP/vpt src/models/mlp.py), restated in Flax.

PETL_Vision inserts a module on a block's attention or MLP branch in one of three ways
(model/block.py): "parallel" (its output added to the branch's, fed the block input `x` with
ft_*_ln "before" or the normed input with "after"), "sequential_after" (it maps the branch's
output, with the residual inside) and "sequential_before" (it maps the normed input the branch
reads). Its modules use dropout 0.1 in training (model/adapter.py, convpass.py, repadapter.py,
fact.py) whatever the backbone's own dropout.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

DROPOUT = 0.1
INITS = ("lora_kaiming", "lora_xavier", "xavier")
TORCH_LINEAR = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # kaiming_uniform_(a=sqrt(5)).


@dataclasses.dataclass(frozen=True)
class Insert:
  """One PETL_Vision module on one branch: `kind` "adapter", "convpass" or "repadapter"; `mode`
  "parallel", "sequential_after" or "sequential_before"; `normed_input` (parallel only): it reads
  the branch's normed input (ft_*_ln "after") rather than the block input ("before")."""
  kind: str
  mode: str
  bottleneck: int
  scale: float
  init: str = "lora_xavier"
  normed_input: bool = False
  conv_xavier: bool = False  # ConvPass: xavier conv kernel instead of the identity.
  groups: int = 2  # RepAdapter's grouped up-projection.


def _down_up_inits(init: str) -> tuple[dict, dict]:
  """model/utils.py init_weight for (down, up) as flax Dense initialisers."""
  if init not in INITS:
    raise ValueError(f"PETL init {init!r} must be one of {', '.join(INITS)}.")
  zeros = nn.initializers.zeros
  if init == "xavier":
    tiny = nn.initializers.normal(stddev=1e-6)
    return (dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=tiny),
            dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=tiny))
  down = TORCH_LINEAR if init == "lora_kaiming" else nn.initializers.xavier_uniform()
  return dict(kernel_init=down, bias_init=zeros), dict(kernel_init=zeros, bias_init=zeros)


class PetlAdapter(nn.Module):
  """model/adapter.py: up(dropout(ReLU(down(x)))) x scale, plus x when `residual`."""
  spec: Insert
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool, residual: bool = False):
    down_init, up_init = _down_up_inits(self.spec.init)
    y = nn.relu(nn.Dense(self.spec.bottleneck, dtype=self.dtype, name="down", **down_init)(x))
    y = nn.Dropout(DROPOUT)(y, deterministic=not train)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, name="up", **up_init)(y) * self.spec.scale
    return x + y if residual else y


def _quick_gelu(x):
  return x * nn.sigmoid(1.702 * x)


class ConvPass(nn.Module):
  """model/convpass.py: down, QuickGELU, a 3x3 convolution over the patch grid (the class token
  alone as a 1x1 image, so only the kernel's centre reaches it), QuickGELU, dropout, up, x scale.
  Tokens are [CLS, patches] on a square grid."""
  spec: Insert
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    n, tokens, width = x.shape
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
      raise ValueError(f"ConvPass needs [CLS, square patch grid] tokens, got {tokens}: no prompts, "
                       "registers or gap pooling with it.")
    b = self.spec.bottleneck
    down_init, up_init = _down_up_inits(self.spec.init)

    def identity_centre(key, shape, dtype):  # zeros, eye at the centre tap (convpass_xavier_init False).
      del key
      return jnp.zeros(shape, dtype).at[1, 1].set(jnp.eye(shape[2], shape[3], dtype=dtype))

    conv = nn.Conv(b, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="conv",
                   kernel_init=nn.initializers.xavier_uniform() if self.spec.conv_xavier
                   else identity_centre, bias_init=nn.initializers.zeros)
    y = _quick_gelu(nn.Dense(b, dtype=self.dtype, name="down", **down_init)(x))
    patches = conv(y[:, 1:].reshape(n, side, side, b)).reshape(n, side * side, b)
    cls = conv(y[:, :1].reshape(n, 1, 1, b)).reshape(n, 1, b)
    y = nn.Dropout(DROPOUT)(_quick_gelu(jnp.concatenate([cls, patches], axis=1)), deterministic=not train)
    return nn.Dense(width, dtype=self.dtype, name="up", **up_init)(y) * self.spec.scale


class RepAdapter(nn.Module):
  """model/repadapter.py: x + up(dropout(down(x))) x scale, no activation; `up` is a grouped
  1x1 convolution (`groups` blocks of bottleneck / groups inputs to width / groups outputs)."""
  spec: Insert
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    width, groups = x.shape[-1], self.spec.groups
    if self.spec.bottleneck % groups or width % groups:
      raise ValueError(f"RepAdapter's bottleneck {self.spec.bottleneck} and width {width} must be "
                       f"multiples of its groups {groups}.")
    down_init, up_init = _down_up_inits(self.spec.init)
    y = nn.Dense(self.spec.bottleneck, dtype=self.dtype, name="down", **down_init)(x)
    y = nn.Dropout(DROPOUT)(y, deterministic=not train)
    # Conv1d(groups=g) weight (width, bottleneck / g, 1): group i maps inputs block i to outputs block i.
    y = y.reshape(y.shape[:-1] + (groups, self.spec.bottleneck // groups))
    # torch's xavier_uniform_ on that weight: fan_in bottleneck / g, fan_out width.
    kernel_init = (_symmetric_uniform(math.sqrt(6 / (self.spec.bottleneck // groups + width)))
                   if self.spec.init == "xavier" else up_init["kernel_init"])
    kernel = self.param("up_kernel", kernel_init,
                        (groups, self.spec.bottleneck // groups, width // groups), jnp.float32)
    bias = self.param("up_bias", up_init["bias_init"], (width,), jnp.float32)
    y = jnp.einsum("...gi,gio->...go", y, kernel.astype(y.dtype)).reshape(x.shape) + bias.astype(y.dtype)
    return x + y * self.spec.scale


MODULES = {"adapter": PetlAdapter, "convpass": ConvPass, "repadapter": RepAdapter}


def petl_module(spec: Insert | None, dtype, name: str):
  """The module `spec` asks for (None for none)."""
  if spec is None:
    return None
  if spec.kind not in MODULES:
    raise ValueError(f"PETL module {spec.kind!r} must be one of {', '.join(MODULES)}.")
  if not ((spec.mode == "parallel") or (spec.mode == "sequential_after" and spec.kind == "adapter")
          or (spec.mode == "sequential_before" and spec.kind == "repadapter")):
    raise ValueError(f"PETL mode {spec.mode!r} with {spec.kind!r} is not one PETL_Vision runs.")
  return MODULES[spec.kind](spec, dtype=dtype, name=name)


def petl_branch(spec: Insert | None, module, branch, x, normed, train: bool):
  """The output of a block's branch (`branch(normed input)`) with `spec`'s `module` inserted as
  PETL_Vision's BlockPETL.forward does; `x` is the block input the branch's norm reads."""
  if spec is None:
    return branch(normed)
  if spec.mode == "parallel":
    return branch(normed) + module(normed if spec.normed_input else x, train)
  if spec.mode == "sequential_after":
    return module(branch(normed), train, residual=True)
  return branch(module(normed, train))


class DiffFitScale(nn.Module):
  """DiffFit's per-channel gamma on a residual branch (model/block.py difffit_gamma1/2), from 1."""

  @nn.compact
  def __call__(self, y):
    return y * self.param("gamma", nn.initializers.ones, y.shape[-1:], jnp.float32).astype(y.dtype)


# ---------------------------------------------------------------------------------------------
# FacT (model/fact.py): one pair of factors U (width -> d) and V (d -> width, from zero) shared by
# every block; the update of each of a block's 12 weight matrices (q, k, v, out and the four
# width-sized slices of fc1 and of fc2) is U core V. TT: a core per matrix group and block; TK:
# the cores are a d x d x d tensor C times per-matrix columns of P (d x 12 depth).

FACT_TYPES = ("tk", "tt")
FACT_MATRICES = 12  # TOTAL_WEIGHT_MATRIX.


class FacTParams(nn.Module):
  """FacT's parameters, made once at the encoder and handed to every block."""
  fact_type: str
  dim: int
  depth: int

  @nn.compact
  def __call__(self, width: int) -> dict:
    d = self.dim
    if self.fact_type not in FACT_TYPES:
      raise ValueError(f"fact_type={self.fact_type!r} must be 'tk' or 'tt'.")
    params = {"u": self.param("u", TORCH_LINEAR, (width, d), jnp.float32),
              "v": self.param("v", nn.initializers.zeros, (d, width), jnp.float32)}
    if self.fact_type == "tk":
      # torch xavier_uniform_ on (d, d, d): fan_in = fan_out = d * d; on P (d, 12 depth) as a matrix.
      params["c"] = self.param("c", _symmetric_uniform(math.sqrt(3) / d), (d, d, d), jnp.float32)
      params["p"] = self.param("p", _symmetric_uniform(math.sqrt(6 / (d + FACT_MATRICES * self.depth))),
                               (d, FACT_MATRICES * self.depth), jnp.float32)
    else:
      for i in range(self.depth):
        params[f"block_{i}"] = {
            name: self.param(f"block_{i}_{name}", TORCH_LINEAR, shape, jnp.float32)
            for name, shape in (("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("out", (d, d)),
                                ("fc1", (d, 4 * d)), ("fc2", (4 * d, d)))}
    return params


def _symmetric_uniform(bound: float):
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def fact_cores(params: dict, fact_type: str, block: int) -> dict:
  """The (d, d) cores of `block` for q, k, v, out, and (d, 4d) for fc1, (4d, d) for fc2, as
  FacT.forward builds them (torch's Linear(x) = x W^T is a right product by the kernel here)."""
  if fact_type == "tt":
    return params[f"block_{block}"]
  d = params["u"].shape[1]
  start = block * FACT_MATRICES
  attention = params["c"] @ params["p"][:, start:start + 4]  # (d, d, 4)
  mlp = params["c"] @ params["p"][:, start + 4:start + 12]  # (d, d, 8)
  return {"q": attention[:, :, 0], "k": attention[:, :, 1], "v": attention[:, :, 2],
          "out": attention[:, :, 3], "fc1": mlp[:, :, :4].reshape(d, 4 * d),
          "fc2": mlp[:, :, 4:].reshape(d, 4 * d).T}


def fact_delta(params: dict, cores: dict, name: str, x, dropout, scale: float):
  """The update FacT adds to the output of matrix `name` of a block for its input `x`; `dropout`
  is the block's own (one per branch, a fresh mask per call)."""
  u, v = params["u"].astype(x.dtype), params["v"].astype(x.dtype)
  core = cores[name].astype(x.dtype)
  if name == "fc1":  # (..., width) -> (..., 4 width): four width-sized slices, slice-major.
    h = dropout(x @ u @ core)
    return (h.reshape(h.shape[:-1] + (4, -1)) @ v).reshape(x.shape[:-1] + (-1,)) * scale
  if name == "fc2":  # (..., 4 width) -> (..., width).
    h = (x.reshape(x.shape[:-1] + (4, -1)) @ u).reshape(x.shape[:-1] + (-1,))
    return dropout(h @ core) @ v * scale
  return dropout(x @ u @ core) @ v * scale


# ---------------------------------------------------------------------------------------------
# The VPT code's MLP head (KMnP/vpt src/models/mlp.py, MODEL.MLP_NUM hidden layers).

BATCH_NORM_EPSILON = 1e-5  # nn.BatchNorm1d's defaults.
BATCH_NORM_MOMENTUM = 0.1
# BatchNorm's running averages are parameters of this group, which no optimizer moves
# (optim._per_group) and no count of trained parameters includes (methods.count_trained): each
# train step overwrites them with the values the forward puts in the STATISTICS_UPDATES
# collection (steps.make_train_step). So they travel with a run's trainable state through packing,
# checkpoints and artifacts, as torch's buffers travel with its state_dict.
STATISTICS_GROUP = "batch_stats"
STATISTICS_UPDATES = "batch_stats_updates"
RUNNING_STATISTICS = ("running_mean", "running_var")


class MlpHeadLayer(nn.Module):
  """One hidden layer of mlp.py (L38-49): Linear(width, width) (kaiming_normal_ fan_out weight,
  PyTorch's default bias) -> ReLU -> BatchNorm1d -> Dropout(0.1).

  In training, BatchNorm normalises by the statistics of the batch's real examples (`mask`), with
  the biased variance, and, when STATISTICS_UPDATES is mutable, puts the running averages updated
  as BatchNorm1d updates them there: momentum 0.1, the unbiased variance of the real examples. In
  evaluation it normalises by the running averages (model.eval())."""
  width: int
  dtype: jnp.dtype | None = None
  dropout: float = DROPOUT

  @nn.compact
  def __call__(self, x, mask, train: bool):
    fan_in = x.shape[-1]
    x = nn.Dense(self.width, dtype=self.dtype, name="dense",
                 kernel_init=nn.initializers.normal(stddev=math.sqrt(2 / self.width)),
                 bias_init=_symmetric_uniform(1 / math.sqrt(fan_in)))(x)
    x = nn.relu(x).astype(jnp.float32)
    scale = self.param("bn_scale", nn.initializers.ones, (self.width,), jnp.float32)
    bias = self.param("bn_bias", nn.initializers.zeros, (self.width,), jnp.float32)
    running_mean = self.param("running_mean", nn.initializers.zeros, (self.width,), jnp.float32)
    running_var = self.param("running_var", nn.initializers.ones, (self.width,), jnp.float32)
    if train:
      weights = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
      count = jnp.maximum(jnp.sum(weights), 1.0)
      mean = jnp.einsum("n,nc->c", weights, x) / count
      var = jnp.einsum("n,nc->c", weights, jnp.square(x - mean)) / count
      if self.is_mutable_collection(STATISTICS_UPDATES):
        m = BATCH_NORM_MOMENTUM
        unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
        self.put_variable(STATISTICS_UPDATES, "running_mean", jax.lax.stop_gradient(
            (1 - m) * running_mean + m * mean))
        self.put_variable(STATISTICS_UPDATES, "running_var", jax.lax.stop_gradient(
            (1 - m) * running_var + m * unbiased))
    else:
      mean, var = running_mean, running_var
    x = (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPSILON) * scale + bias
    return nn.Dropout(self.dropout)(x, deterministic=not train)
