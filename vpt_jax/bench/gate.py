"""The device check's correctness gate: what must hold before its speed figures mean anything.

  attention  the fused attention the speed rows use (cuDNN on a GPU, XLA's on a CPU) equals the
             explicit einsums, forward and gradients, in bfloat16, at 197, 247 and 397 tokens
             (B/16 at 224 px; with 50; with 200 prompts) and under vmap (the packed step)
  learn      the recipe's step lowers the loss of full fine-tuning and VPT-deep in bfloat16
  pack       K=2 runs packed into one step equal the same run alone (float32, exact matmuls)
  bf16       a bfloat16 run stays close to the same run in float32

Each check is one row {"check", "ok", "value", ...}; a check that raises is a failed row whose
error is named (oom, compile_error, ...), and the next check runs.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.bench import benchmark, rows as rows_lib

TOKENS = (197, 247, 397)
CLASSES = 10


def _relative(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))


def _explicit_attention(q, k, v):
  """As vit.Attention's explicit path: float32 softmax, (N, T, H, D) in and out."""
  logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.einsum("nhqk,nkhd->nqhd", weights.astype(v.dtype), v)


def _attention_loss(implementation, cotangent):
  def attend(q, k, v):
    if implementation is None:
      return _explicit_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  return lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * cotangent)


def attention_error(implementation: str, tokens: int, shape: tuple[int, int, int],
                    packed: int = 0) -> float:
  """Largest relative error of the fused output and its q, k, v gradients against the explicit
  path, bfloat16 inputs of (batch, tokens, heads, head_dim); with `packed`, under vmap over K."""
  batch, heads, head_dim = shape
  lead = (packed,) if packed else ()
  keys = jax.random.split(jax.random.PRNGKey(tokens), 4)
  q, k, v = (jax.random.normal(key, lead + (batch, tokens, heads, head_dim), jnp.bfloat16)
             for key in keys[:3])
  cotangent = jax.random.normal(keys[3], (batch, tokens, heads, head_dim), jnp.float32)

  def value_and_grads(impl):
    loss = _attention_loss(impl, cotangent)
    fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
    if packed:
      fn = jax.vmap(fn)
    return jax.jit(fn)(q, k, v)

  (fused_value, fused_grads), (value, grads) = value_and_grads(implementation), value_and_grads(None)
  return max([_relative(fused_value, value)] + [_relative(a, b) for a, b in zip(fused_grads, grads)])


def learnable_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Class c is a colour, with noise on top: learnable in a few steps from any initialisation."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n, dtype=np.int32) % CLASSES
  colours = rng.integers(40, 216, (CLASSES, 3))
  images = colours[labels][:, None, None, :] + rng.normal(0, 25, (n, size, size, 3))
  return np.clip(images, 0, 255).astype(np.uint8), labels


def train(setting: benchmark.Setting, steps: int, precision: str | None = None):
  """(losses, trainable state) of `steps` steps of the recipe's step on learnable data."""
  with jax.default_matmul_precision(precision or "default"):
    step_fn, args, _ = benchmark.build(setting, learnable_data(4 * setting.batch,
                                                               setting.image_size))
    trainable, opt_state, frozen, images, labels, rows, permutation, extent, _, rng, flip = args
    losses = []
    for step in range(steps):
      trainable, opt_state, out = step_fn(trainable, opt_state, frozen, images, labels,
                                          rows, permutation, extent, step, rng, flip)
      losses.append(out["loss"])
    return np.asarray(jax.device_get(jnp.stack(losses)), np.float64), jax.device_get(trainable)


def run(model: dict, batch: int, attention_shape: tuple[int, int, int], learn_steps: int,
        emit, pack_methods=("vpt_deep", "full"), learn_lrs=None) -> None:
  """All checks, each passed to `emit(row)` as soon as it is known. `model`: Setting fields
  (variant, depth, image_size, prompt_tokens, attention_impl); `pack_methods`: the methods whose
  packing and bfloat16 precision are checked; `learn_lrs`: base learning rate per method for the
  learn check (default: the recipe's; a short run on a small random model may need more)."""
  fused = "cudnn" if jax.default_backend() == "gpu" else "xla"

  def check(name, fn, **fields):
    started = time.perf_counter()
    try:
      row = {"check": name, **fields, **fn()}
    except Exception as e:  # Named and saved; the next check runs.
      row = rows_lib.error_row({"check": name, **fields, "ok": False}, e)
    row["seconds"] = time.perf_counter() - started
    emit(row)

  def attention(tokens, packed=0):
    error = attention_error(fused, tokens, attention_shape, packed)
    return {"ok": error < 2e-2, "value": error, "severe": not error < 0.1}

  for tokens in TOKENS:
    check(f"attention_{tokens}", lambda t=tokens: attention(t), implementation=fused)
  check("attention_vmap_247", lambda: attention(247, packed=2), implementation=fused)

  base = benchmark.Setting(method="full", batch=batch, dtype="bfloat16", num_classes=CLASSES,
                           **model)
  bf16_losses = {}

  def learn(method):
    losses, _ = train(dataclasses.replace(base, method=method,
                                          base_lr=(learn_lrs or {}).get(method)), learn_steps)
    bf16_losses[method] = losses
    first, last = losses[:3].mean(), losses[-3:].mean()
    return {"ok": bool(np.all(np.isfinite(losses)) and last < 0.7 * first),
            "value": float(last / first), "losses": losses.tolist()}

  for method in ("full", "vpt_deep"):
    check(f"learn_{method}", lambda m=method: learn(m), dtype="bfloat16")

  def packed_equals_alone(method):
    exact = dataclasses.replace(base, method=method, dtype="float32", attention_impl=None,
                                batch=max(2, batch // 2))
    _, packed = train(dataclasses.replace(exact, pack=2), 3, "highest")
    _, alone = train(exact, 3, "highest")
    error = max(_relative(np.asarray(p)[i], a) for p, a in zip(jax.tree.leaves(packed),
                                                               jax.tree.leaves(alone))
                for i in range(2))
    return {"ok": error < 1e-4, "value": error}

  for method in pack_methods:
    check(f"pack_{method}", lambda m=method: packed_equals_alone(m), dtype="float32")

  def close_to_float32(method):
    steps = min(10, learn_steps)
    if method not in bf16_losses:
      raise RuntimeError(f"learn_{method} failed, so there is no bfloat16 run to compare")
    reference, _ = train(dataclasses.replace(base, method=method, dtype="float32",
                                             attention_impl=None,
                                             base_lr=(learn_lrs or {}).get(method)),
                         steps, "highest")
    error = float(np.max(np.abs(bf16_losses[method][:steps] - reference)) / reference[0])
    return {"ok": error < 5e-2, "value": error}

  for method in pack_methods:
    check(f"bf16_vs_float32_{method}", lambda m=method: close_to_float32(m), dtype="bfloat16")
