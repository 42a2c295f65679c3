"""Shared test setup: float32-exact matmuls, the oracle files, and a guard against network access."""

import functools
import os
import pathlib
import socket

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

ORACLE_DIR = pathlib.Path(os.environ.get(
    "VPT_JAX_ORACLE_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "oracle"))


@pytest.fixture
def oracle_dir():
  if not (ORACLE_DIR / "cases.json").exists():
    pytest.fail(f"Oracle files not found in {ORACLE_DIR}: check out shared/ beside the repo or set "
                "VPT_JAX_ORACLE_DIR.")
  return ORACLE_DIR


_real_connect = socket.socket.connect


def _loopback_only_connect(sock, address):
  host = address[0] if isinstance(address, tuple) else address
  if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
    raise OSError(f"Tests may not touch the network (tried to connect to {address}).")
  return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)


@functools.cache
def jitted_apply(model):
  """One compiled forward pass per model configuration, shared by all tests of a worker."""
  return jax.jit(lambda params, images: model.apply({"params": params}, images))


@pytest.fixture
def forward():
  return jitted_apply
