"""The matcher on JAX arrays, through the generic DLPack path (runs where JAX is installed)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # keep JAX off the GPU that other tests use
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import cujit  # noqa: E402


def test_jax_arrays_bind_symbols() -> None:
    n, d = cujit.SymbolicSize("N"), cujit.SymbolicSize("D")
    dtype, device = cujit.SymbolicDType(), cujit.SymbolicDevice()
    a = jnp.zeros((5, 7), dtype=jnp.float32)
    b = jnp.ones((3, 7), dtype=jnp.float32)
    (cujit.TensorMatcher([-1, d]).with_dtype("float32", symbol=dtype).with_device("cpu", symbol=device)
     .verify(a, "a").verify(b, "b"))
    assert d.unwrap() == 7 and dtype.unwrap() == "float32" and device.unwrap().type == "cpu"
    check = cujit.TensorCheck(a=cujit.TensorMatcher([n, d]), b=cujit.TensorMatcher([-1, d]))
    assert check(a, b) == (5, 7)


def test_jax_mismatch_message() -> None:
    a = jnp.zeros((5, 7), dtype=jnp.int32)
    with pytest.raises(cujit.TensorMatchError, match=r"'a': dtype: expected float32, got int32; Tensor<5, 7>"):
        cujit.TensorMatcher([-1, -1]).with_dtype("float32").verify(a, "a")
