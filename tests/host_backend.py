"""A stand-in driver whose launches run the kernels on the host: tests/emulated/cuda_host.h under g++.

``HostBackend`` is tests/stub_cuda.py's ``StubBackend`` (same devices, records, fake tensors) with two changes: a
loaded module is also built for the host, one shared library with an entry per kernel, and a launch calls that
entry with the launch's own grid, block and parameter array. Tensors are ``FakeCudaTensor``s over CPU memory, so
the kernels read and write them in place and an op runs end to end through its real Python path (checks, plan,
allocation, packing) on a machine without a GPU.

The kernels' name expressions come from their lowered names (``c++filt``); the sources to include are given to
the backend (``HostBackend(sources=[...])``, files of cujit/kernels/). Libraries are built once per set of kernels
in ``build_dir``.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cujit._runtime import tensors, toolchain
from tests.stub_cuda import FakeCudaTensor, StubBackend, bind_fakes

EMULATED = Path(__file__).resolve().parent / "emulated"


def available() -> str | None:
    """Why the host backend cannot run here, or None."""
    for tool in ("g++", "c++filt"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if toolchain.cccl_include_dir() is None:
        return "no libcu++ headers (CuPy's copy) for <nv/target>"
    return None


def expression_of(lowered: str) -> str:
    """The name expression of a kernel from its lowered (mangled) name: ``f<int, 3>`` of ``void f<int, 3>(int*)``."""
    text = subprocess.run(["c++filt", lowered], capture_output=True, text=True, check=True).stdout.strip()
    text = text.removeprefix("void ")
    depth = 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return text[:i]
    raise ValueError(f"not a function: {text!r}")


class LoadingTable(dict):  # type: ignore[type-arg]
    """An op's table of loaded kernels for its fast path that loads a missing instantiation instead of missing.

    The first call of an instantiation then takes the fast path too: the generic path reads tensors through DLPack
    or ``__cuda_array_interface__``, which fake CUDA tensors over CPU memory do not offer for every dtype.
    """

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.op = op

    def get(self, key: Any, default: Any = None) -> Any:
        found = self.op.table.get(key)
        return found if found is not None else self.op._loaded(key[:-1], key[-1])


def bind_host(fn: Any, backend: StubBackend) -> None:
    """Let op function ``fn`` run on fake CUDA tensors under ``backend``: fake allocations, loading table, and
    the metadata of a fake tensor read from the CPU tensor it wraps (plans that ask ``aligned()`` of a tensor)."""
    bind_fakes(fn.op.env, backend)
    fn.op.env["_table"] = LoadingTable(fn.op)
    original = tensors.tensor_info
    if not getattr(original, "reads_fakes", False):
        patched = _with_fakes(original)
        for name, module in list(sys.modules.items()):  # every cujit module that imported it by name
            if name.split(".")[0] == "cujit" and getattr(module, "tensor_info", None) is original:
                module.tensor_info = patched  # type: ignore[attr-defined]


def _with_fakes(tensor_info: Any) -> Any:
    def info(obj: Any) -> tensors.TensorInfo:
        if isinstance(obj, FakeCudaTensor):
            t = obj.t
            return tensors.TensorInfo(tuple(t.shape), tuple(t.stride()), tensors._dtype(t.dtype),
                                      tensors.device("cuda", obj.device_index), t.data_ptr(), "torch")
        return tensor_info(obj)

    info.reads_fakes = True  # type: ignore[attr-defined]
    return info


@dataclass
class HostBackend(StubBackend):
    sources: list[str] = field(default_factory=list)  #: files of cujit/kernels/ the kernels come from
    build_dir: Path = field(default_factory=lambda: Path())
    entries: dict[int, ctypes._CFuncPtr] = field(default_factory=dict)  # type: ignore[name-defined]
    libraries: list[ctypes.CDLL] = field(default_factory=list)

    def load_module(self, device: int, cubin: bytes, names: list[str]) -> tuple[int, int, list[int]]:
        ctx, module, handles = super().load_module(device, cubin, names)
        lib = self._library([expression_of(n) for n in names])
        for i, handle in enumerate(handles):
            entry = getattr(lib, f"cujit_host_{i}")
            entry.restype = None
            entry.argtypes = [ctypes.c_uint] * 7 + [ctypes.c_void_p]
            self.entries[handle] = entry
        return ctx, module, handles

    def _library(self, expressions: list[str]) -> ctypes.CDLL:
        lines = ['#include "cuda_host.h"', *(f'#include "{s}"' for s in self.sources)]
        for i, expr in enumerate(expressions):
            lines.append(f'extern "C" void cujit_host_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                         f"unsigned by, unsigned bz, unsigned smem, void** params) {{\n"
                         f"  (void)smem;\n"
                         f"  emu_launch(dim3(gx, gy, gz), dim3(bx, by, bz), [&] {{ emu_call(&{expr}, params); }});\n"
                         f"}}")
        text = "\n".join(lines) + "\n"
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        library = self.build_dir / f"host_{digest}.so"
        if not library.exists():
            source = self.build_dir / f"host_{digest}.cpp"
            source.write_text(text)
            includes = [EMULATED, toolchain.cuda_include_dir(), toolchain.cccl_include_dir(),
                        toolchain.cujit_include_dir(), toolchain.kernels_dir()]
            build = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC",
                                    *(f"-I{d}" for d in includes), str(source), "-o", str(library)],
                                   capture_output=True, text=True, check=False)
            if build.returncode:
                raise RuntimeError(f"host build failed:\n{build.stderr[-4000:]}")
        lib = ctypes.CDLL(str(library))
        self.libraries.append(lib)
        return lib

    def _run(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
             params: int) -> None:
        self.entries[function](*grid, *block, smem, params)

    def launch_kernel(self, function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, smem: int,
                      stream: int, params: int, extra: int) -> None:
        super().launch_kernel(function, gx, gy, gz, bx, by, bz, smem, stream, params, extra)
        self._run(function, (gx, gy, gz), (bx, by, bz), smem, params)

    def launch_kernel_pdl(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                          stream: int, params: int) -> None:
        super().launch_kernel_pdl(function, grid, block, smem, stream, params)
        self._run(function, grid, block, smem, params)
