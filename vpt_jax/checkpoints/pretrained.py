"""Google's pre-trained ViT checkpoints (.npz): load into `vit.Model`, download by name, export.

Two published layouts are understood (docs/checkpoints.md):
  * vision_transformer: pre-Linen block names (MultiHeadDotProductAttention_1, LayerNorm_2,
    MlpBlock_3), `Transformer/posembed_input/pos_embedding` with the class token's row,
    optional `pre_logits`. The VPT papers use imagenet21k/ViT-B_16.npz of this layout.
  * big_vision: `params/` prefix, Linen names, a top-level `pos_embedding` without a class-token row
    (added before the class token is prepended), blocks per layer or scanned (stacked on axis 0).

Both are converted to the model's tree (see `vpt_jax.models.vit`) and then compared against it
strictly: any key or shape that does not fit is reported, all of them in one error.
"""

import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from vpt_jax.checkpoints import description as description_lib
from vpt_jax.utils import files
from vpt_jax.models import backbones, vit

_OLD_BLOCK_NAMES = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
                    "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
_POSEMB = "Transformer/posembed_input/pos_embedding"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used as asked; the message says what to do."""


class MismatchError(CheckpointError):
  """A file whose keys or shapes do not fit the model (`fit`): `listing` names up to 8 of each
  kind, `summary` counts them and names the first two."""

  def __init__(self, path: str, listing: str, summary: str):
    super().__init__(f"Checkpoint {path} does not fit the model: {listing}. Check the variant, "
                     "pool_type and representation_size against the checkpoint.")
    self.path, self.listing, self.summary = path, listing, summary


def read(path: str) -> dict[str, np.ndarray]:
  """Every array of a checkpoint file; a missing or damaged file raises CheckpointError."""
  try:
    return files.read_npz(path)
  except FileNotFoundError:
    raise CheckpointError(f"Checkpoint file {path} does not exist.") from None
  except files.DamagedFileError as e:
    raise CheckpointError(f"Checkpoint file {e} Delete it and download it again.") from None


# ---------------------------------------------------------------------------------------------
# Published names and downloads.

def refuse_missing_file(name_or_path: str, published) -> None:
  """A path (a folder in it, or a checkpoint file's suffix) that does not exist, said first and
  in one short line, not as an unknown published name followed by every name."""
  looks_like_path = os.sep in name_or_path or re.search(r"\.(npz|pth|pth\.tar|pt|bin|safetensors)$",
                                                       name_or_path)
  if published is None and looks_like_path and not os.path.exists(name_or_path):
    raise CheckpointError(f"Checkpoint file {name_or_path} does not exist.")


def resolve(name_or_path: str, cache_dir: str | None = None, base_url: str | None = None,
            check=read) -> str:
  """Returns a local path: an existing file as is, a published name (vpt_jax/models/backbones.py)
  downloaded once into the cache, from its owners' host (or `base_url`). `check` reads a
  download before it is kept (the reader of the name's format).

  A download records its SHA-256 beside the file (<file>.sha256); every later use checks it, and
  a cached file that no longer matches is set aside and downloaded again.
  """
  if os.path.exists(name_or_path):
    return name_or_path
  published = backbones.find(name_or_path)
  refuse_missing_file(name_or_path, published)
  if published is None:
    raise CheckpointError(
        f"Checkpoint {name_or_path!r} is neither a file nor a published name; published names: "
        f"{', '.join(backbones.BACKBONES)}.")
  relative = published.file
  local = os.path.join(cache_dir or files.cache_dir("checkpoints"), relative)
  if os.path.exists(local) and os.path.exists(local + ".sha256"):
    with open(local + ".sha256") as f:
      recorded = f.read().strip()
    if files.sha256_file(local) != recorded:
      aside = files.set_aside(local, "damaged")
      logging.warning("%s no longer matches the SHA-256 recorded at its download; moved to %s, "
                      "downloading it again.", local, aside)
  if not os.path.exists(local):
    download((base_url or published.host) + relative, local, check=check)
    files.write_text(local + ".sha256", files.sha256_file(local) + "\n")
  return local


def download(url: str, dest: str, timeout_s: float = 30.0, check=read) -> None:
  """Streams `url` into `dest` atomically; a short or failed transfer, or one that `check` cannot
  read, leaves nothing at `dest`."""
  directory = os.path.dirname(os.path.abspath(dest))
  os.makedirs(directory, exist_ok=True)
  logging.info("Downloading %s to %s", url, dest)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".download")
  try:
    with os.fdopen(fd, "wb") as f:
      try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
          expected = response.headers.get("Content-Length")
          received = 0
          while chunk := response.read(1 << 20):
            f.write(chunk)
            received += len(chunk)
      except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise CheckpointError(
            f"Could not download {url} ({e}). Without network access, download it elsewhere and "
            f"place it at {dest}.") from None
    if expected is not None and received != int(expected):
      raise CheckpointError(
          f"Download of {url} stopped after {received} of {expected} bytes; nothing was saved. "
          f"Try again, or place the file at {dest} by hand.")
    check(tmp)  # A server error page is not a checkpoint.
    os.chmod(tmp, files.FILE_MODE)
    os.replace(tmp, dest)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


# ---------------------------------------------------------------------------------------------
# Layout conversion.

def _rename_blocks(flat: dict[str, np.ndarray], renames: dict[str, str]) -> dict[str, np.ndarray]:
  """Renames the modules directly inside each encoder block (the only place the layouts differ)."""
  def rename(key):
    match = re.fullmatch(r"(Transformer/encoderblock_\d+/)([^/]+)(/.*)", key)
    return match.group(1) + renames.get(match.group(2), match.group(2)) + match.group(3) if match else key
  return {rename(k): v for k, v in flat.items()}


def _unstack_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  prefix = "Transformer/encoderblock/"
  out = {}
  for key, value in flat.items():
    if key.startswith(prefix):
      for i, layer_value in enumerate(value):
        out[f"Transformer/encoderblock_{i}/{key[len(prefix):]}"] = layer_value
    else:
      out[key] = value
  return out


def to_model_layout(flat: dict[str, np.ndarray], has_class_token: bool) -> dict[str, np.ndarray]:
  """Maps either published layout onto the model's '/'-joined keys (no shape checks yet)."""
  if any(k.startswith("params/") for k in flat):
    flat = {k.removeprefix("params/"): v for k, v in flat.items()}
    flat = _unstack_scanned(flat)
    if "pos_embedding" in flat:
      posemb = flat.pop("pos_embedding")
      if "cls" in flat:
        # big_vision adds the embedding before prepending the class token: the same as a zero row.
        posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
      flat[_POSEMB] = posemb
  renamed = _rename_blocks(flat, _OLD_BLOCK_NAMES)
  if not has_class_token and "cls" in renamed:
    # A class-token checkpoint used with pool_type "gap": the token and its row go unused.
    logging.info("Dropping the checkpoint's class token: the model pools without one.")
    del renamed["cls"]
    if _POSEMB in renamed:
      renamed[_POSEMB] = renamed[_POSEMB][:, 1:]
  return renamed


def describe(flat: dict[str, np.ndarray]) -> dict:
  """The `vit.Model` arguments a checkpoint was written for, read off its shapes."""
  flat = to_model_layout(flat, has_class_token=True)
  try:
    patch, _, _, width = flat["embedding/kernel"].shape
    depth = len({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")})
    mlp_dim = flat["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1]
    num_heads = flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape[1]
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"Not a ViT checkpoint: no usable {e} entry.") from None
  size = next((name for name, arch in ((n, vit.decode_variant(f"{n}/{patch}")) for n in vit.SIZES)
               if (arch.width, arch.mlp_dim, arch.num_heads) == (width, mlp_dim, num_heads)), None)
  if size is None:
    raise CheckpointError(f"No named ViT variant has width {width}, MLP {mlp_dim} and {num_heads} "
                          "heads.")
  kwargs = dict(variant=f"{size}/{patch}", pool_type="tok" if "cls" in flat else "gap",
                num_classes=flat["head/kernel"].shape[1] if "head/kernel" in flat else 0,
                representation_size=(flat["pre_logits/kernel"].shape[1]
                                     if "pre_logits/kernel" in flat else None))
  if depth != vit.decode_variant(kwargs["variant"]).depth:
    kwargs["depth"] = depth
  return kwargs


def description(path: str, raw: dict[str, np.ndarray]) -> description_lib.Description:
  """What a Google-layout (or vpt_jax-exported) .npz file is. The heads are in the weights (a
  query kernel is (width, heads, head dim)); the GELU form and LayerNorm epsilon are not: the
  VPT code runs Google's weights with exact GELU, Google's code with tanh, so the recipe picks."""
  layout = "big_vision" if any(k.startswith("params/") for k in raw) else "vision_transformer"
  flat = to_model_layout(raw, has_class_token=True)
  block = "Transformer/encoderblock_0/"
  try:
    patch, _, _, width = flat["embedding/kernel"].shape
    mlp_dim = flat[block + "MlpBlock_0/Dense_0/kernel"].shape[1]
    heads = flat[block + "MultiHeadDotProductAttention_0/query/kernel"].shape[1]
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"Checkpoint {path} is not a ViT checkpoint: no usable {e} entry.") from None
  pooling = ("map" if any(k.startswith("MAPHead") for k in flat) else "cls" if "cls" in flat else "gap")
  return description_lib.Description(
      path=path, family="vit", layout=layout, width=width, patch=patch, heads=heads, mlp_dim=mlp_dim,
      depth=len({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")}),
      pooling=pooling, fc_norm="fc_norm/scale" in flat,
      layer_scale=any("/LayerScale_" in k for k in flat),
      registers=flat["registers"].shape[1] if "registers" in flat else 0,
      pre_norm="Transformer/pre_encoder_norm/scale" in flat,
      projection=flat["projection/kernel"].shape[1] if "projection/kernel" in flat else None,
      embedding_bias="embedding/bias" in flat)


def load_state(path: str, raw: dict[str, np.ndarray], model, image_size: int = 224,
               keep_head: bool = False) -> dict:
  """`model`'s parameters from the arrays `read` gave for `path` (checkpoints.load reads once)."""
  return fit(path, to_model_layout(raw, model.has_class_token), model, image_size, keep_head)


def resample_posemb(posemb: np.ndarray, num_tokens: int, has_class_token: bool) -> np.ndarray:
  """Bilinearly resamples the square grid to hold `num_tokens` rows; the class-token row is kept."""
  cls_row, grid = (posemb[:, :1], posemb[0, 1:]) if has_class_token else (posemb[:, :0], posemb[0])
  old_side = int(round(np.sqrt(len(grid))))
  new_side = int(round(np.sqrt(num_tokens - cls_row.shape[1])))
  if old_side ** 2 != len(grid) or new_side ** 2 + cls_row.shape[1] != num_tokens:
    raise CheckpointError(f"Cannot resample a position embedding of {posemb.shape[1]} tokens to "
                          f"{num_tokens}: only square patch grids are supported.")
  logging.info("Resampling the position embedding grid %dx%d -> %dx%d",
               old_side, old_side, new_side, new_side)
  grid = grid.reshape(old_side, old_side, -1)
  zoom = (new_side / old_side, new_side / old_side, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, new_side * new_side, -1)
  return np.concatenate([cls_row, grid.astype(posemb.dtype)], axis=1)


def mismatches(flat, expected) -> tuple[list[str], list[str], list[str]]:
  """The missing, unexpected and mis-shaped keys of `flat` against the model's `expected` shapes."""
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  mismatched = sorted(k for k in set(flat) & set(expected) if flat[k].shape != expected[k].shape)
  return missing, unexpected, mismatched


def _describe_mismatch(flat, expected) -> tuple[str, str]:
  """(listing, summary) of the keys of `flat` that do not fit `expected`; ("", "") if all do."""
  missing, unexpected, mismatched = mismatches(flat, expected)
  kinds = [("missing", missing, lambda k: tuple(expected[k].shape)),
           ("unexpected", unexpected, lambda k: tuple(flat[k].shape)),
           ("mismatched", mismatched, lambda k: f"{tuple(flat[k].shape)} vs model {tuple(expected[k].shape)}")]
  kinds = [(title, keys, shape_of) for title, keys, shape_of in kinds if keys]
  if not kinds:
    return "", ""

  def listing(title, keys, shape_of):
    shown = ", ".join(f"{k} {shape_of(k)}" for k in keys[:8])
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"{len(keys)} {title} ({shown}{more})"

  # The two shortest names: the embedding, the class token and the norms say most in least space.
  shortest = sorted(((k, shape_of) for _, keys, shape_of in kinds for k in keys), key=lambda e: len(e[0]))[:2]
  summary = (", ".join(f"{len(keys)} {title}" for title, keys, _ in kinds) + " keys, e.g. "
             + "; ".join(f"{k} {shape_of(k)}" for k, shape_of in shortest))
  return "; ".join(listing(*kind) for kind in kinds), summary


def model_param_shapes(model, image_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """'/'-joined parameter paths and shapes of `model` at `image_size`, without computing weights."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  return flax.traverse_util.flatten_dict(variables["params"], sep="/")


def load(name_or_path: str, model, image_size: int = 224, keep_head: bool = False,
         cache_dir: str | None = None, base_url: str | None = None) -> dict:
  """Returns `model`'s parameters (nested dict of float32 arrays) from a Google ViT checkpoint.

  Args:
    name_or_path: an .npz path or a published name (models/backbones.py; downloaded once).
    model: a `vit.Model`; its variant, pool_type and representation_size must fit the checkpoint.
    image_size: input resolution; the position embedding grid is resampled to fit it.
    keep_head: keep the checkpoint's head when its shape fits; otherwise the head is zeros.
  """
  path = resolve(name_or_path, cache_dir, base_url)
  return load_state(path, read(path), model, image_size, keep_head)


def fit(path: str, flat: dict[str, np.ndarray], model, image_size: int, keep_head: bool) -> dict:
  """`model`'s parameters from a checkpoint already in the model's '/'-joined keys (any reader's
  output): drops an unused pre_logits, resamples the position grid, keeps or zeroes the head, and
  refuses whatever else does not fit, every key in one error."""
  expected = model_param_shapes(model, image_size)
  if "pre_logits/kernel" not in expected:
    flat.pop("pre_logits/kernel", None)
    flat.pop("pre_logits/bias", None)
  if _POSEMB in flat and _POSEMB in expected:
    num_tokens = expected[_POSEMB].shape[1]
    if flat[_POSEMB].shape[1] != num_tokens and flat[_POSEMB].shape[2] == expected[_POSEMB].shape[2]:
      flat[_POSEMB] = resample_posemb(flat[_POSEMB], num_tokens, model.has_class_token)
  head = {k: v for k, v in expected.items() if k.startswith("head/")}
  head_fits = all(k in flat and flat[k].shape == v.shape for k, v in head.items())
  if head and not (keep_head and head_fits):
    if keep_head:
      logging.warning("The checkpoint's head does not fit %d classes: re-initialised to zeros.",
                      model.num_classes)
    for k, v in head.items():
      flat[k] = np.zeros(v.shape, np.float32)
  if not head:
    flat.pop("head/kernel", None)
    flat.pop("head/bias", None)

  listing, summary = _describe_mismatch(flat, expected)
  if listing:
    raise MismatchError(path, listing, summary)
  params = {k: jnp.asarray(v, dtype=expected[k].dtype) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(params, sep="/")


def export_npz(params, path: str) -> None:
  """Writes parameters in the vision_transformer layout (opens in timm and Google's code)."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
  flat = {k: np.asarray(v, dtype=np.float32) for k, v in flat.items()}
  files.write_npz(path, _rename_blocks(flat, {new: old for old, new in _OLD_BLOCK_NAMES.items()}))
