"""Where NVRTC's CUDA headers come from: one CUDA release for NVRTC and headers, whatever else is installed.

The layouts are built in tmp_path: a CUDA 12 wheel (``nvidia/cuda_runtime/include``), a CUDA 13 wheel
(``nvidia/cu13/include``) and toolkits (``include/cuda.h`` under ``CUDA_PATH``). The end-to-end tests put a fake
CUDA 13 wheel first on the path, beside the real installed headers, and compile with the real NVRTC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cujit
from cujit._runtime import toolchain
from cujit._runtime.toolchain import HeaderDir, choose_cuda_headers, header_version

REPO = Path(__file__).resolve().parents[1]


def headers(folder: Path, version: int | None, define: str = "CUDA_VERSION", file: str = "cuda.h") -> Path:
    """A minimal header folder: cuda_runtime.h and a file that defines the version."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cuda_runtime.h").write_text("#pragma once\n")
    if version is not None:
        (folder / file).write_text(f"/* CUDA */\n#ifndef X\n#define {define} {version}\n#endif\n")
    return folder


@pytest.fixture
def clean_toolchain(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CUDA_PATH, CUDA_HOME or CONDA_PREFIX, and nothing memoised."""
    for var in ("CUDA_PATH", "CUDA_HOME", "CONDA_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    memoised = (toolchain.cuda_include_dir, toolchain.cuda_headers_identity, toolchain.cccl_identity)
    for fn in memoised:
        fn.cache_clear()
    yield
    for fn in memoised:
        fn.cache_clear()


# ---------------------------------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("value", "expected"), [(12090, (12, 9)), (12010, (12, 1)), (13000, (13, 0)), (13020, (13, 2)), (11080, (11, 8))]
)
def test_version_is_read_from_cuda_h(tmp_path: Path, value: int, expected: tuple[int, int]) -> None:
    assert header_version(headers(tmp_path, value)) == expected


def test_version_falls_back_to_cudart_version(tmp_path: Path) -> None:
    folder = headers(tmp_path, 12080, define="CUDART_VERSION", file="cuda_runtime_api.h")
    assert header_version(folder) == (12, 8)


def test_unknown_version(tmp_path: Path) -> None:
    assert header_version(headers(tmp_path, None)) is None


def test_the_installed_headers_have_a_version() -> None:
    major, minor = toolchain.nvrtc_version()
    found = header_version(toolchain.cuda_include_dir())
    assert found is not None
    assert found[0] == major and found <= (major, minor)


# ---------------------------------------------------------------------------------------------------- choice
def hd(version: tuple[int, int] | None, name: str = "") -> HeaderDir:
    return HeaderDir(Path(f"/h/{name or version}"), version, "test")


@pytest.mark.parametrize(
    ("nvrtc", "versions", "chosen"),
    [
        pytest.param((12, 9), [(13, 0), (12, 9)], (12, 9), id="torch-cu13-beside-cu12"),
        pytest.param((12, 9), [(13, 2), (12, 4), (12, 8)], (12, 8), id="newest-not-newer"),
        pytest.param((13, 0), [(12, 9), (13, 2), (13, 0)], (13, 0), id="cu13-nvrtc"),
        pytest.param((12, 1), [None, (12, 9), (12, 1)], (12, 1), id="torch-2.4"),
    ],
)
def test_the_newest_headers_of_nvrtcs_release_win(
    nvrtc: tuple[int, int], versions: list[tuple[int, int] | None], chosen: tuple[int, int]
) -> None:
    assert choose_cuda_headers([hd(v) for v in versions], nvrtc).version == chosen


def test_among_equal_versions_the_first_wins() -> None:
    first, second = hd((12, 9), "first"), hd((12, 9), "second")
    assert choose_cuda_headers([first, second], (12, 9)) is first


@pytest.mark.parametrize(
    ("nvrtc", "versions", "install"),
    [
        pytest.param((12, 9), [(13, 0)], "pip install 'nvidia-cuda-runtime-cu12==12.9.*'", id="only-cu13"),
        pytest.param((12, 4), [(12, 9)], "pip install 'nvidia-cuda-runtime-cu12==12.4.*'", id="headers-newer"),
        pytest.param((13, 0), [(12, 9), None], "pip install 'cuda-toolkit[cudart]==13.0.*'", id="only-cu12"),
    ],
)
def test_a_mismatch_is_one_error_naming_both_versions(
    nvrtc: tuple[int, int], versions: list[tuple[int, int] | None], install: str
) -> None:
    with pytest.raises(cujit.CujitError) as info:
        choose_cuda_headers([hd(v) for v in versions], nvrtc)
    message = str(info.value)
    assert message.startswith(f"CUDA headers for NVRTC {nvrtc[0]}.{nvrtc[1]} (the NVRTC that CuPy loads): "
                              f"expected CUDA {nvrtc[0]}.x headers not newer than {nvrtc[0]}.{nvrtc[1]}, got ")
    for v in versions:
        assert (f"CUDA {v[0]}.{v[1]} in /h/{v}" if v else "CUDA of unknown version in /h/None") in message
    assert install in message


def test_no_headers_at_all() -> None:
    with pytest.raises(cujit.CujitError, match=r"got no folder with cuda_runtime.h \(looked at the NVIDIA wheels"):
        choose_cuda_headers([], (12, 9))


# ---------------------------------------------------------------------------------------------------- discovery
def test_wheel_layouts_on_the_path_cu13_first(tmp_path: Path, clean_toolchain: None) -> None:
    site, target = tmp_path / "site", tmp_path / "target"
    cu13 = headers(site / "nvidia" / "cu13" / "include", 13000)
    cu12 = headers(site / "nvidia" / "cuda_runtime" / "include", 12090)
    extra = headers(target / "nvidia" / "cuda_runtime" / "include", 12080)  # pip install --target DIR
    (site / "nvidia" / "cuda_nvrtc" / "include").mkdir(parents=True)  # no cuda_runtime.h: not a candidate
    found = toolchain.cuda_header_candidates([str(target), str(tmp_path / "missing"), str(site)])
    assert [(c.path, c.version) for c in found[:3]] == [(extra, (12, 8)), (cu13, (13, 0)), (cu12, (12, 9))]
    assert all(c.origin == "an NVIDIA wheel" for c in found[:3])


def test_toolkits_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_toolchain: None) -> None:
    home = headers(tmp_path / "cuda-12.4" / "include", 12040).parent
    path = headers(tmp_path / "cuda-12.6" / "include", 12060).parent
    conda = tmp_path / "conda"
    headers(conda / "targets" / "x86_64-linux" / "include", 12050)
    monkeypatch.setenv("CUDA_HOME", str(home))
    monkeypatch.setenv("CUDA_PATH", str(path))
    monkeypatch.setenv("CONDA_PREFIX", str(conda))
    found = toolchain.cuda_header_candidates([])
    assert [(c.version, c.origin) for c in found[:3]] == [((12, 5), "CONDA_PREFIX"), ((12, 6), "CUDA_PATH"),
                                                          ((12, 4), "CUDA_HOME")]


def test_the_known_failure_picks_cuda_12_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_toolchain: None
) -> None:
    # torch 2.11+cu130 put CUDA 13 headers first; cupy-cuda12x loads NVRTC 12.9; the CUDA 12 wheel is there too.
    site = tmp_path / "site"
    headers(site / "nvidia" / "cu13" / "include", 13000)
    cu12 = headers(site / "nvidia" / "cuda_runtime" / "include", 12090)
    monkeypatch.setattr(sys, "path", [str(site)])
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (12, 9))
    assert toolchain.cuda_include_dir() == cu12


def test_without_an_exact_match_the_folder_beside_nvrtc_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_toolchain: None
) -> None:
    toolkit = tmp_path / "cuda-12.9"
    beside = headers(toolkit / "include", 12090)
    headers(tmp_path / "site" / "nvidia" / "cuda_runtime" / "include", 12040)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (12, 9))
    monkeypatch.setattr(toolchain, "_beside_loaded_nvrtc",
                        lambda: iter([(toolkit / "include", "beside the loaded libnvrtc.so.12")]))
    monkeypatch.setattr(toolchain, "_pathfinder_candidates", lambda known: [])
    assert toolchain.cuda_include_dir() == beside


def test_the_loaded_nvrtc_is_found_in_this_process() -> None:
    toolchain.load_nvrtc()
    folders = [folder for folder, _ in toolchain._beside_loaded_nvrtc()]
    if not Path("/proc/self/maps").exists():
        assert folders == []
        return
    assert any((folder / "cuda_runtime.h").is_file() for folder in folders), folders
    assert any(header_version(f) == toolchain.nvrtc_version() for f in folders if (f / "cuda_runtime.h").is_file())


def test_a_mismatch_that_cannot_be_avoided_fails_before_nvrtc_parses_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_toolchain: None
) -> None:
    # Headers of the next major release after NVRTC's: whatever NVRTC is installed, nothing fits it.
    major, minor = toolchain.nvrtc_version()
    newer = major + 1
    folder = headers(tmp_path / "site" / "nvidia" / f"cu{newer}" / "include", newer * 1000)
    monkeypatch.setattr(toolchain, "cuda_header_candidates",
                        lambda: [HeaderDir(folder, (newer, 0), "an NVIDIA wheel")])
    monkeypatch.setattr(toolchain, "_beside_loaded_nvrtc", lambda: iter([]))
    monkeypatch.setattr(toolchain, "_pathfinder_candidates", lambda known: [])
    kernel = tmp_path / "k.cuh"
    kernel.write_text("#include <cuda_fp8.h>\n__global__ void k(int* out) { out[0] = 1; }\n")
    m = cujit.load_jit("mismatch", cuda_files=[kernel], cuda_wrappers=[("k", "k")])
    with pytest.raises(cujit.CujitError) as info:
        m.compile(arch="sm_90")
    assert not isinstance(info.value, cujit.CompileError)
    message = str(info.value)
    assert f"NVRTC {major}.{minor}" in message and f"CUDA {newer}.0 in {folder}" in message
    assert "error:" not in message


# A CUDA 13 wheel that NVRTC 12 cannot parse, put first on the path, beside the real CUDA 12 headers: the same
# situation as torch 2.11+cu130 next to cujit's default install.
CHILD = r"""
import sys
import cujit
from cujit._runtime import toolchain
m = cujit.load_jit("fp8", cuda_files=[sys.argv[1]], cuda_wrappers=[("k", "uses_fp8")])
compiled = m.compile(arch="sm_90")
print(toolchain.cuda_include_dir())
print(len(compiled.cubin))
"""


def test_a_cuda_13_wheel_first_on_the_path_is_not_used_by_nvrtc_12(tmp_path: Path) -> None:
    major, _ = toolchain.nvrtc_version()
    if major != 12:
        pytest.skip(f"this test puts CUDA 13 headers beside NVRTC 12; NVRTC here is {major}")
    real = toolchain.cuda_include_dir()
    fake = tmp_path / "torch-site" / "nvidia" / "cu13" / "include"
    shutil.copytree(real, fake)
    cuda_h = (fake / "cuda.h").read_text()
    (fake / "cuda.h").write_text(cuda_h.replace(f"#define CUDA_VERSION {_define(real)}", "#define CUDA_VERSION 13000"))
    (fake / "cuda_fp8.h").write_text("this is not C++ that NVRTC 12 can parse\n")
    kernel = tmp_path / "fp8.cuh"
    kernel.write_text(textwrap.dedent("""\
        #include <cuda_fp8.h>
        __global__ void uses_fp8(float* out) { out[0] = float(__nv_fp8_e4m3(1.5f)); }
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "torch-site"), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(kernel)], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    used, size = out.stdout.split()
    assert Path(used) == real and int(size) > 0


@pytest.mark.parametrize(("pathfinder_version", "nvrtc", "mismatch"),
                         [(13000, (12, 9), True), (12090, (12, 9), False), (12040, (12, 9), False),
                          (12090, (13, 0), True), (None, (12, 9), False)])
def test_cupys_own_header_choice_is_checked_against_its_nvrtc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pathfinder_version: int | None, nvrtc: tuple[int, int],
    mismatch: bool,
) -> None:
    cupy = pytest.importorskip("cupy")
    pathfinder = pytest.importorskip("cuda.pathfinder")
    if int(cupy.__version__.split(".")[0]) < 14:
        pytest.skip(f"CuPy {cupy.__version__} does not take its headers from cuda.pathfinder")
    folder = headers(tmp_path / "nvidia" / "cu13" / "include", pathfinder_version)
    monkeypatch.setattr(pathfinder, "find_nvidia_header_directory", lambda name: str(folder))
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: nvrtc)
    problem = toolchain.cupy_headers_mismatch()
    if not mismatch:
        assert problem is None
        return
    assert problem is not None
    assert str(folder) in problem and "NVRTC {}.{}".format(*nvrtc) in problem
    assert "cujit's kernels are not affected" in problem
    if nvrtc[0] == 12:
        assert "cupy-cuda13x" in problem


def test_no_cuda_pathfinder_answer_is_no_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    pathfinder = pytest.importorskip("cuda.pathfinder")
    monkeypatch.setattr(pathfinder, "find_nvidia_header_directory", lambda name: None)
    assert toolchain.cupy_headers_mismatch() is None


def _define(folder: Path) -> int:
    for line in (folder / "cuda.h").read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["#define", "CUDA_VERSION"]:
            return int(parts[2])
    raise AssertionError("no CUDA_VERSION in cuda.h")


# ---------------------------------------------------------------------------------------------------- identities
def test_cuda_identity_is_content_based_and_relocatable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_toolchain: None
) -> None:
    real = toolchain.cuda_include_dir()
    one, two = tmp_path / "one" / "include", tmp_path / "elsewhere" / "deeper" / "include"
    shutil.copytree(real, one)
    shutil.copytree(real, two)

    def identity(folder: Path) -> str:
        toolchain.cuda_headers_identity.cache_clear()
        monkeypatch.setattr(toolchain, "cuda_include_dir", lambda: folder)
        return toolchain.cuda_headers_identity()

    base = identity(one)
    assert identity(two) == base
    assert str(tmp_path) not in base
    os.utime(two / "cuda_fp16.h", (1, 1))  # times do not count
    assert identity(two) == base
    with (two / "cuda_fp16.hpp").open("a") as f:
        f.write("\n// a patch release\n")
    assert identity(two) != base
    (two / "cuda_fp16.hpp").write_bytes((one / "cuda_fp16.hpp").read_bytes())
    assert identity(two) == base
    (two / "crt").mkdir(exist_ok=True)
    (two / "crt" / "new_in_this_release.h").write_text("")
    assert identity(two) != base


def test_libcudacxx_identity_is_content_based_and_relocatable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_toolchain: None
) -> None:
    def fake_cupy(prefix: Path, cccl: str, cupy: str) -> Path:
        root = prefix / "cupy" / "_core" / "include" / "cupy" / "_cccl" / "libcudacxx"
        (root / "cuda" / "std" / "__cccl").mkdir(parents=True)
        (root / "cuda" / "std" / "__cccl" / "version.h").write_text(f"#define CCCL_VERSION {cccl}\n")
        (prefix / "cupy" / "_version.py").write_text(f"__version__ = '{cupy}'\n")
        return root

    def identity(root: Path) -> str:
        toolchain.cccl_identity.cache_clear()
        monkeypatch.setattr(toolchain, "cccl_include_dir", lambda: root)
        return toolchain.cccl_identity()

    base = identity(fake_cupy(tmp_path / "a", "3001002", "14.2.0"))
    assert identity(fake_cupy(tmp_path / "b" / "c", "3001002", "14.2.0")) == base
    assert identity(fake_cupy(tmp_path / "d", "3001003", "14.2.0")) != base
    assert identity(fake_cupy(tmp_path / "e", "3001002", "14.3.0")) != base
    assert str(tmp_path) not in base
