"""Files: atomic writes (a crash or a full disk never leaves half a file behind), reads that name
the damaged file, setting files aside, checksums, OS locks, and where the caches live.

The cache root is $VPT_JAX_CACHE, else ~/.cache/vpt_jax; pre-trained checkpoints go to
<root>/checkpoints, decoded training arrays to <root>/arrays.
"""

import contextlib
import fcntl
import hashlib
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
def atomic_open(path: str, mode: str = "w", durable: bool = True):
  """A file object whose contents replace `path` only when the block finishes without error;
  `durable` also waits for the disk (fsync), which a record rewritten every epoch can skip."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      if durable:
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, value, durable: bool = True) -> None:
  with atomic_open(path, durable=durable) as f:
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


def set_aside(path: str, why: str) -> str:
  """Renames a damaged or outdated file (or directory) to <path>.<why>[.n]; never deletes it.
  Returns the new name."""
  base = f"{path}.{why}"
  target, n = base, 1
  while os.path.exists(target):
    n += 1
    target = f"{base}.{n}"
  os.replace(path, target)
  return target


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()


class BusyError(RuntimeError):
  """Another process owns this run directory."""


class RunLock:
  """One owner per run directory: an exclusive OS lock on <workdir>/.lock, held while the run
  trains and released by the OS when the process ends, however it ends (a SIGKILL too)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._fd = None

  def acquire(self) -> "RunLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
      os.close(fd)
      raise BusyError(f"{os.path.dirname(self.path)} is being trained by another process (pid "
                      f"{owner}); wait for it, or use another workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the descriptor drops the lock.
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def is_locked(workdir: str) -> bool:
  """Whether another process holds `workdir`'s RunLock right now."""
  path = os.path.join(workdir, ".lock")
  if not os.path.exists(path):
    return False
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)


@contextlib.contextmanager
def exclusive(lock_path: str):
  """Blocks until this process holds the OS lock `lock_path` (e.g. while preparing a dataset
  that several processes need)."""
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)
