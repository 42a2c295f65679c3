"""Files: atomic writes (a crash or a full disk never leaves half a file behind), reads that name
the damaged file, and where the caches live.

The cache root is $VPT_JAX_CACHE, else ~/.cache/vpt_jax; pre-trained checkpoints go to
<root>/checkpoints, decoded training arrays to <root>/arrays.
"""

import contextlib
import json
import os
import tempfile
import zipfile

import numpy as np

# Every file the project writes gets this mode (mkstemp alone would make them 0600).
FILE_MODE = 0o644


class DamagedFileError(ValueError):
  """A file that exists but cannot be read back (truncated, overwritten, not what it claims)."""


def cache_dir(kind: str) -> str:
  """<cache root>/<kind>, e.g. cache_dir("checkpoints")."""
  root = os.environ.get("VPT_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "vpt_jax")
  return os.path.join(root, kind)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
  """A file object whose contents replace `path` only when the block finishes without error."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, value) -> None:
  with atomic_open(path) as f:
    json.dump(value, f, indent=2)


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  with atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def read_json(path: str):
  """The JSON value in `path`; a damaged file raises DamagedFileError naming it."""
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DamagedFileError(f"{path} is damaged (not valid JSON: {e}).") from None


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an .npz, read eagerly so that a truncated file fails here, naming itself."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist.")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: np.asarray(npz[key]) for key in npz.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
    raise DamagedFileError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); it is "
                           "probably truncated or corrupt.") from None
