"""The command line, run as a user runs it: `python -m cujit ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import gpu_count


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cujit", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=300, check=False)


@pytest.mark.skipif(gpu_count() > 0, reason="this checks the demo's no-GPU path; the GPU path is tested on GPUs")
def test_demo_without_gpu_compiles_and_says_nothing_was_launched() -> None:
    out = _run("demo")
    assert out.returncode == 0, out.stderr
    assert "add_constant_kernel<3> compiled with NVRTC for sm_90" in out.stdout
    assert "nothing was launched" in out.stdout
    again = _run("demo")
    assert "loaded from the cache" in again.stdout


@pytest.mark.gpu
def test_demo_on_gpu_checks_both_results() -> None:
    out = _run("demo")
    assert out.returncode == 0, out.stderr + out.stdout
    assert "torch tensor result matches x + 3: True" in out.stdout
    assert "CuPy array result matches x + 3: True" in out.stdout
    assert "per call, 4096 int32" in out.stdout


def test_precompile_then_offline_load_compiles_nothing(tmp_path: Path) -> None:
    out = _run("precompile", "--arch", "sm_80", "--arch", "sm_90")
    assert out.returncode == 0, out.stderr
    assert "[1/8]" in out.stdout and "[8/8]" in out.stdout and "precompiled 8 modules" in out.stdout
    code = (
        "import cujit; from cujit.add_constant import add_constant\n"
        "for m in add_constant.op.precompile_modules():\n    m.compile('sm_90'); m.compile('sm_80')\n"
        "print(cujit.cache_stats()['compiles'], cujit.cache_stats()['disk_hits'])\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "CUJIT_OFFLINE": "1"}, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["0", "8"]
    again = _run("precompile", "--arch", "sm_90")
    assert again.stdout.count(": cached in") == 4


def test_cache_info_and_clear() -> None:
    assert _run("precompile", "--arch", "sm_90").returncode == 0
    info = _run("cache", "info", "--json")
    data = json.loads(info.stdout)
    assert data["entries"] == 4 and data["disk_cache"] is True
    assert {m["name"] for m in data["modules"]} == {"add_constant_-1", "add_constant_1", "add_constant_2",
                                                    "add_constant_3"}
    assert all(m["valid"] and m["arch"] == "sm_90" for m in data["modules"])
    text = _run("cache", "info").stdout
    assert "4 entries" in text and "add_constant_3" in text
    cleared = _run("cache", "clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert json.loads(_run("cache", "info", "--json").stdout)["entries"] == 0


@pytest.mark.parametrize("verb", [[], ["demo"], ["precompile"], ["cache"], ["cache", "info"], ["cache", "clear"]])
def test_every_verb_has_help(verb: list[str]) -> None:
    out = _run(*verb, "--help")
    assert out.returncode == 0 and "usage: python -m cujit" in out.stdout


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    bad = _run("precompile", "--arch", "90")
    assert bad.returncode == 1 and "expected an arch such as sm_80 or sm_90a, got '90'" in bad.stderr
    missing = _run("precompile")
    assert missing.returncode == 2 and "--arch" in missing.stderr
    wrong = _run("cache", "info", env={"CUJIT_DISK_CACHE": "maybe"})
    assert wrong.returncode == 1 and "CUJIT_DISK_CACHE: expected one of 0, 1" in wrong.stderr


def test_writes_clangd_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = _run("--arch", "sm_90", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / ".clangd").read_text()
    assert "-xcuda" in text and "--cuda-gpu-arch=sm_90" in text and "cujit/include" in text
    again = _run("--arch", "sm_80", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = _run("--arch", "sm_80", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "--cuda-gpu-arch=sm_80" in (tmp_path / ".clangd").read_text()
