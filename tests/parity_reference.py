"""An independent ViT forward pass in NumPy float64, written from the architecture (Dosovitskiy et
al. 2021) and reading Google's two published checkpoint layouts itself, plus writers of random
checkpoints in those layouts. The parity tests compare vpt_jax's logits with these.

vision_transformer layout: `embedding`, `cls`, `Transformer/posembed_input/pos_embedding` (with
the class token's row), blocks `Transformer/encoderblock_<i>/{LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`, `Transformer/encoder_norm`, `head`.
big_vision layout: the same under `params/`, blocks named `LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0`, optionally stacked on a leading axis
under `Transformer/encoderblock/`, and `pos_embedding` at the top without a class-token row
(added before the class token is prepended).
"""

import math

import numpy as np

# name -> (width, depth, mlp, heads); only what the tests build.
SIZES = {"Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6)}
_EPS = 1e-6  # LayerNorm epsilon of Google's ViTs.


def _layer_norm(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + _EPS) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _blocks(weights: dict) -> list[dict]:
  """Per-layer {"ln1", "attn", "ln2", "mlp"} dicts from either layout."""
  if "Transformer/encoderblock/LayerNorm_0/scale" in weights:  # big_vision, scanned.
    prefix = "Transformer/encoderblock/"
    depth = weights[prefix + "LayerNorm_0/scale"].shape[0]
    layer = lambda i, key: weights[prefix + key][i]
    names = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
  else:
    depth = len({k.split("/")[1] for k in weights if k.startswith("Transformer/encoderblock_")})
    layer = lambda i, key: weights[f"Transformer/encoderblock_{i}/{key}"]
    old = "Transformer/encoderblock_0/LayerNorm_2/scale" in weights
    names = (("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3") if old
             else ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"))
  ln1, attn, ln2, mlp = names
  return [{key: layer(i, f"{module}/{leaf}") for key, module, leaf in (
      ("ln1_scale", ln1, "scale"), ("ln1_bias", ln1, "bias"),
      ("q_kernel", attn, "query/kernel"), ("q_bias", attn, "query/bias"),
      ("k_kernel", attn, "key/kernel"), ("k_bias", attn, "key/bias"),
      ("v_kernel", attn, "value/kernel"), ("v_bias", attn, "value/bias"),
      ("o_kernel", attn, "out/kernel"), ("o_bias", attn, "out/bias"),
      ("ln2_scale", ln2, "scale"), ("ln2_bias", ln2, "bias"),
      ("fc1_kernel", mlp, "Dense_0/kernel"), ("fc1_bias", mlp, "Dense_0/bias"),
      ("fc2_kernel", mlp, "Dense_1/kernel"), ("fc2_bias", mlp, "Dense_1/bias"))}
          for i in range(depth)]


def _attend(b, tokens, readers):
  """Attention output for `readers`, which read the keys and values of `tokens`."""
  y = _layer_norm(tokens, b["ln1_scale"], b["ln1_bias"])
  r = _layer_norm(readers, b["ln1_scale"], b["ln1_bias"])
  q = np.einsum("ntd,dhk->nthk", r, b["q_kernel"]) + b["q_bias"]
  k, v = (np.einsum("ntd,dhk->nthk", y, b[f"{name}_kernel"]) + b[f"{name}_bias"]
          for name in ("k", "v"))
  weights = _softmax(np.einsum("nqhk,nthk->nhqt", q, k) / math.sqrt(q.shape[-1]))
  heads = np.einsum("nhqt,nthk->nqhk", weights, v)
  return np.einsum("nqhk,hkd->nqd", heads, b["o_kernel"]) + b["o_bias"]


def _mlp(b, tokens, gelu):
  y = _layer_norm(tokens, b["ln2_scale"], b["ln2_bias"])
  return tokens + gelu(y @ b["fc1_kernel"] + b["fc1_bias"]) @ b["fc2_kernel"] + b["fc2_bias"]


def logits(checkpoint: dict, images: np.ndarray, pool: str, queries=None, head=None,
           gelu=_gelu_tanh) -> np.ndarray:
  """Logits (float64) of a Google checkpoint (either layout) for NHWC images; pool "tok" or "gap".

  With `queries` (layers, Q, D), VQT as andytu28/VQT computes it: layer i's queries read that
  layer's tokens (nothing reads them), and `head` {"kernel", "bias"} acts on [L2-normalised CLS
  output, L2-normalised flattened query outputs of each layer]."""
  w = {k.removeprefix("params/"): np.asarray(v, np.float64) for k, v in checkpoint.items()}
  x = np.asarray(images, np.float64)
  kernel = w["embedding/kernel"]  # (p, p, 3, D)
  p, width = kernel.shape[0], kernel.shape[-1]
  n, h, wd, c = x.shape
  patches = x.reshape(n, h // p, p, wd // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  tokens = patches.reshape(n, -1, p * p * c) @ kernel.reshape(-1, width) + w["embedding/bias"]
  if "pos_embedding" in w:  # big_vision: added to the patches, before the class token.
    tokens = tokens + w["pos_embedding"]
  if pool == "tok":
    tokens = np.concatenate([np.broadcast_to(w["cls"], (n, 1, width)), tokens], axis=1)
  if "Transformer/posembed_input/pos_embedding" in w:
    tokens = tokens + w["Transformer/posembed_input/pos_embedding"]
  query_outputs = []
  for i, b in enumerate(_blocks(w)):
    if queries is not None:
      q = np.broadcast_to(np.asarray(queries[i], np.float64), (n,) + queries[i].shape)
      query_outputs.append(_mlp(b, q + _attend(b, tokens, q), gelu))
    tokens = _mlp(b, tokens + _attend(b, tokens, tokens), gelu)
  tokens = _layer_norm(tokens, w["Transformer/encoder_norm/scale"],
                       w["Transformer/encoder_norm/bias"])
  pooled = tokens[:, 0] if pool == "tok" else tokens.mean(axis=1)
  if queries is not None:
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    pooled = np.concatenate([unit(pooled)] + [unit(q.reshape(n, -1)) for q in query_outputs], -1)
    return pooled @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
  if "pre_logits/kernel" in w:
    pooled = np.tanh(pooled @ w["pre_logits/kernel"] + w["pre_logits/bias"])
  return pooled @ w["head/kernel"] + w["head/bias"]


def random_checkpoint(layout: str, size: str = "Ti", patch: int = 16, image_size: int = 224,
                      depth: int = 2, num_classes: int = 10, pool: str = "tok", scan: bool = False,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """Random but non-trivial float32 weights in a published layout: "vit" (vision_transformer) or
  "bv" (big_vision); biases are non-zero and LayerNorm scales differ from 1, so every tensor's
  mapping shows in the logits."""
  width, _, mlp, heads = SIZES[size]
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=0.05: (scale * rng.standard_normal(shape)).astype(np.float32)
  patches = (image_size // patch) ** 2
  vit_layout = layout == "vit"
  names = (("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
           if vit_layout else
           ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"))
  ln1, attn, ln2, mlp_block = names
  out = {"embedding/kernel": normal(patch, patch, 3, width, scale=0.02),
         "embedding/bias": normal(width),
         "Transformer/encoder_norm/scale": 1 + normal(width), "Transformer/encoder_norm/bias":
         normal(width), "head/kernel": normal(width, num_classes, scale=0.2),
         "head/bias": normal(num_classes)}
  if pool == "tok":
    out["cls"] = normal(1, 1, width, scale=0.5)
  posemb_tokens = patches + (pool == "tok" and vit_layout)
  posemb = normal(1, posemb_tokens, width, scale=0.2)
  if vit_layout:
    out["Transformer/posembed_input/pos_embedding"] = posemb
  else:
    out["pos_embedding"] = posemb
  head_dim = width // heads
  blocks = []
  for _ in range(depth):
    block = {f"{ln1}/scale": 1 + normal(width, scale=0.1), f"{ln1}/bias": normal(width),
             f"{ln2}/scale": 1 + normal(width, scale=0.1), f"{ln2}/bias": normal(width),
             f"{mlp_block}/Dense_0/kernel": normal(width, mlp), f"{mlp_block}/Dense_0/bias":
             normal(mlp), f"{mlp_block}/Dense_1/kernel": normal(mlp, width),
             f"{mlp_block}/Dense_1/bias": normal(width),
             f"{attn}/out/kernel": normal(heads, head_dim, width), f"{attn}/out/bias": normal(width)}
    for name in ("query", "key", "value"):
      block[f"{attn}/{name}/kernel"] = normal(width, heads, head_dim, scale=0.08)
      block[f"{attn}/{name}/bias"] = normal(heads, head_dim)
    blocks.append(block)
  if scan:
    out.update({f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks])
                for k in blocks[0]})
  else:
    for i, block in enumerate(blocks):
      out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in block.items()})
  return {("" if vit_layout else "params/") + k: v for k, v in out.items()}
