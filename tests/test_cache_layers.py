"""Read-only cache layers and `precompile` of a user's ops: a fleet node starts with zero compiles, no GPU needed.

`precompile --ops-from FILE --layer DIR` on one machine; a copy of DIR elsewhere, listed in CUJIT_CACHE_LAYERS,
serves a fresh process with CUJIT_OFFLINE=1 and an empty CUJIT_CACHE_DIR; the layer is never written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cujit
from cujit._runtime import cache
from cujit.tools.user_ops import user_ops

ROOT = Path(__file__).resolve().parent.parent
KERNEL = """\
#include <cstdint>
template <int kScale>
__global__ void scale_kernel(int32_t* out, const int32_t* src, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = src[i] * kScale;
}
"""
OPS = """\
import cujit

shape = cujit.SymbolicShape("shape")
int32 = cujit.TensorMatcher([shape]).with_dtype("int32")

scale = cujit.op(
    "fleet_{tag}::scale(Tensor src, int factor, *, Tensor(a!)? out=None) -> Tensor",
    source="scale.cuh",
    kernel="scale_kernel<{{factor}}>",
    tensors={{"src": int32, "out": int32}},
    values={{"n": "prod(shape)"}},
    grid="cdiv(n, 256)",
    block=256,
    args=("out", "src", "n"),
    precompile=[{{"factor": f}} for f in (2, 3)],
)
OPS = [scale]
"""


def _write_ops(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.cuh").write_text(KERNEL)
    path = folder / f"fleet_ops_{tag}.py"
    path.write_text(OPS.format(tag=tag))
    return path


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, timeout=300,
                          check=False, cwd=ROOT)


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def test_precompiled_user_ops_in_a_copied_layer_load_with_zero_compiles(tmp_path: Path) -> None:
    ops_file = _write_ops(tmp_path / "project", "a")
    layer = tmp_path / "build" / "layer"
    out = _run("-m", "cujit", "precompile", "--arch", "sm_80", "--arch", "sm_90", "--no-shipped",
               "--ops-from", str(ops_file), "--layer", str(layer), env={})
    assert out.returncode == 0, out.stderr + out.stdout
    assert "precompiled 4 modules" in out.stdout and str(layer) in out.stdout
    entries = sorted(p.name for p in (layer / cache.SCHEMA).iterdir())
    assert len(entries) == 4 and all(e.endswith(".cubin") for e in entries)  # no lock or temporary file

    # Another machine: a copy of the layer and of the project, an empty cache of its own, offline.
    node = tmp_path / "node"
    shipped = node / "image" / "layer"
    shutil.copytree(layer, shipped)
    shutil.rmtree(tmp_path / "build")
    copied_ops = _write_ops(node / "app", "a")
    before = _snapshot(shipped)
    code = textwrap.dedent(f"""
        import cujit
        from cujit.tools.user_ops import user_modules
        for module in user_modules([{str(copied_ops)!r}]):
            for arch in ("sm_80", "sm_90"):
                assert module.compile(arch).cubin[:4] == b"\\x7fELF"
        stats = cujit.cache_stats()
        print(stats["compiles"], stats["layer_hits"], stats["disk_hits"])
    """)
    own = node / "home" / "cache"
    env = {"CUJIT_OFFLINE": "1", "CUJIT_CACHE_LAYERS": str(shipped), "CUJIT_CACHE_DIR": str(own)}
    loaded = _run("-c", code, env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["0", "4", "0"]
    assert _snapshot(shipped) == before  # never written, locked or swept
    assert not list(own.rglob("*.cubin"))  # nothing copied into the node's own cache either

    # Without the layer the same process must compile, which CUJIT_OFFLINE forbids: the layer is what served it.
    bare = _run("-c", code, env={**env, "CUJIT_CACHE_LAYERS": ""})
    assert bare.returncode != 0 and "CUJIT_OFFLINE=1 forbids compiling" in bare.stderr


def test_precompile_takes_a_module_name_and_a_registry(tmp_path: Path) -> None:
    _write_ops(tmp_path / "pkgroot", "b")
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'pkgroot'}"}
    by_module = _run("-m", "cujit", "precompile", "--arch", "sm_90", "--no-shipped", "--ops-from", "fleet_ops_b",
                     env=env)
    assert by_module.returncode == 0, by_module.stderr + by_module.stdout
    assert "precompiled 2 modules" in by_module.stdout
    by_registry = _run("-m", "cujit", "precompile", "--arch", "sm_90", "--no-shipped", "--ops-from",
                       "fleet_ops_b:OPS", env=env)
    assert by_registry.returncode == 0, by_registry.stderr
    assert by_registry.stdout.count(": cached in") == 2


def test_user_ops_errors_name_the_spec(tmp_path: Path) -> None:
    with pytest.raises(cujit.CujitError, match="no such file"):
        user_ops([str(tmp_path / "missing.py")])
    with pytest.raises(cujit.CujitError, match="no module named 'no_such_module_xyz'"):
        user_ops(["no_such_module_xyz"])
    empty = tmp_path / "empty_ops.py"
    empty.write_text("X = 1\n")
    with pytest.raises(cujit.CujitError, match="found none"):
        user_ops([str(empty)])
    with pytest.raises(cujit.CujitError, match=r"expected cujit ops .* got 1 of type int"):
        user_ops([f"{empty}:X"])
    with pytest.raises(cujit.CujitError, match="has no attribute 'Y'"):
        user_ops([f"{empty}:Y"])


def test_no_shipped_without_ops_from_is_refused() -> None:
    out = _run("-m", "cujit", "precompile", "--no-shipped", env={})
    assert out.returncode != 0 and "--no-shipped: expected --ops-from" in out.stderr


def _scale_module(folder: Path) -> cujit.JitModule:
    """A new module object each call, so that nothing compiled earlier is bound to it."""
    _write_ops(folder, "plain")
    return cujit.load_jit("scale", cuda_files=[folder / "scale.cuh"], cuda_wrappers=[("k", "scale_kernel<2>")])


def _precompile_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Compile the module into a folder that is then used as a layer; forget it in memory."""
    layer = tmp_path / "layer"
    monkeypatch.setenv("CUJIT_CACHE_DIR", str(layer))
    _scale_module(tmp_path / "src").compile("sm_90")
    monkeypatch.setenv("CUJIT_CACHE_DIR", str(tmp_path / "own"))
    cache.clear_memory()
    return layer


def test_layers_are_read_before_the_own_cache_and_a_miss_falls_through(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _precompile_in_process(tmp_path, monkeypatch)
    monkeypatch.setenv("CUJIT_CACHE_LAYERS", os.pathsep.join([str(tmp_path / "absent"), str(layer)]))
    start = cujit.cache_stats()
    with pytest.warns(RuntimeWarning, match="holds no cujit-cache"):
        _scale_module(tmp_path / "src").compile("sm_90")
    assert cujit.cache_stats()["layer_hits"] == start["layer_hits"] + 1
    assert cujit.cache_stats()["compiles"] == start["compiles"]
    # Not in the layer: compiled into the own cache, the layer untouched.
    _scale_module(tmp_path / "src").compile("sm_80")
    assert cujit.cache_stats()["compiles"] == start["compiles"] + 1
    assert len(list((tmp_path / "own").rglob("*.cubin"))) == 1
    assert len(list(layer.rglob("*.cubin"))) == 1


def test_a_layer_others_can_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _precompile_in_process(tmp_path, monkeypatch)
    (layer / cache.SCHEMA).chmod(0o777)
    monkeypatch.setenv("CUJIT_CACHE_LAYERS", str(layer))
    monkeypatch.setenv("CUJIT_OFFLINE", "1")
    with pytest.warns(RuntimeWarning, match="refusing to load kernels from cache layer"):
        with pytest.raises(cujit.CompileError, match="CUJIT_OFFLINE=1 forbids compiling"):
            _scale_module(tmp_path / "src").compile("sm_90")
