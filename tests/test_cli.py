"""The command line, run as a user runs it: `python -m cujit ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cujit._runtime import cache
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
    total = 8  # add_constant's four instances, for two archs (every shipped op's: see test_compile_all)
    out = _run("precompile", "--arch", "sm_80", "--arch", "sm_90", "--op", "add_constant")
    assert out.returncode == 0, out.stderr
    assert "[1/" in out.stdout and f"[{total}/{total}]" in out.stdout and f"precompiled {total} modules" in out.stdout
    code = (
        "import cujit; from cujit.add_constant import add_constant\n"
        "for m in add_constant.op.precompile_modules():\n    m.compile('sm_90'); m.compile('sm_80')\n"
        "print(cujit.cache_stats()['compiles'], cujit.cache_stats()['disk_hits'])\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "CUJIT_OFFLINE": "1"}, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["0", "8"]
    again = _run("precompile", "--arch", "sm_90", "--op", "cujit::add_constant")
    assert again.stdout.count(": cached in") == total // 2


def test_cache_info_and_clear() -> None:
    total = 4
    assert _run("precompile", "--arch", "sm_90", "--op", "add_constant").returncode == 0
    info = _run("cache", "info", "--json")
    data = json.loads(info.stdout)
    assert data["entries"] == total and data["disk_cache"] is True
    assert {m["name"] for m in data["modules"]} >= {"add_constant_-1", "add_constant_1", "add_constant_2",
                                                    "add_constant_3"}
    assert all(m["valid"] and m["arch"] == "sm_90" for m in data["modules"])
    text = _run("cache", "info").stdout
    assert f"{total} entries" in text and "add_constant_3" in text
    cleared = _run("cache", "clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert json.loads(_run("cache", "info", "--json").stdout)["entries"] == 0


def test_cache_info_and_clear_count_the_same_files() -> None:
    n = 4  # one entry and one lock per instance of add_constant
    assert _run("precompile", "--arch", "sm_90", "--op", "add_constant").returncode == 0
    root = Path(os.environ["CUJIT_CACHE_DIR"])
    folder = root / cache.SCHEMA
    (folder / f"{'0' * 64}.tmp.999999999.abcd1234").write_bytes(b"half")  # a killed writer's leftover
    old = root / "cujit-cache-1"  # an older schema: never read, but counted and cleared
    old.mkdir(mode=0o700)
    (old / f"{'1' * 64}.cubin").write_bytes(b"x" * 100)
    (old / f"{'1' * 64}.lock").touch()

    data = json.loads(_run("cache", "info", "--json").stdout)
    assert (data["entries"], data["locks"], data["temporaries"]) == (n, n, 1)
    assert data["older_schemas"] == {"cujit-cache-1": {"entries": 1, "bytes": 100, "locks": 1, "temporaries": 0,
                                                       "other": 0}}
    text = _run("cache", "info").stdout
    assert f"{n} entries" in text and f"{n} lock files, 1 temporary file" in text
    assert "cujit-cache-1" in text and "1 entry (0.1 KiB), 1 lock file, 0 temporary files" in text

    cleared = _run("cache", "clear").stdout
    assert f"removed {2 * n + 3} files from {root}" in cleared, cleared
    assert f"{cache.SCHEMA}: {n} entries" in cleared and f"{n} lock files, 1 temporary file" in cleared
    assert "cujit-cache-1: 1 entry" in cleared
    assert sorted(p.name for p in root.iterdir()) == [cache.SCHEMA]
    assert list(folder.iterdir()) == []
    after = json.loads(_run("cache", "info", "--json").stdout)
    assert (after["entries"], after["locks"], after["temporaries"], after["older_schemas"]) == (0, 0, 0, {})


@pytest.mark.parametrize("verb", [[], ["demo"], ["precompile"], ["cache"], ["cache", "info"], ["cache", "clear"]])
def test_every_verb_has_help(verb: list[str]) -> None:
    out = _run(*verb, "--help")
    assert out.returncode == 0 and "usage: python -m cujit" in out.stdout


def test_bench_help_is_the_benchmarks_own() -> None:
    out = _run("bench", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m cujit bench")
    assert "--only" in out.stdout


@pytest.mark.skipif(gpu_count() > 0, reason="without --arch, a GPU's own arch is used; this checks the no-GPU case")
def test_precompile_defaults_to_the_default_arch() -> None:
    n = 4
    out = _run("precompile", "--op", "add_constant", env={"CUJIT_DEFAULT_ARCH": "sm_80"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("for sm_80: compiled") == n and f"[{n}/{n}]" in out.stdout
    data = json.loads(_run("cache", "info", "--json").stdout)
    assert {m["arch"] for m in data["modules"]} == {"sm_80"}


def test_precompile_names_an_unknown_op() -> None:
    out = _run("precompile", "--arch", "sm_90", "--op", "rms_nrom")
    assert out.returncode == 1 and "--op: no shipped op named rms_nrom (the shipped ops: " in out.stderr


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    bad = _run("precompile", "--arch", "90")
    assert bad.returncode == 1 and "expected an arch such as sm_80 or sm_90a, got '90'" in bad.stderr
    wrong = _run("cache", "info", env={"CUJIT_DISK_CACHE": "maybe"})
    assert wrong.returncode == 1 and "CUJIT_DISK_CACHE: expected one of 0, 1" in wrong.stderr
    # Every command checks every variable, also one it does not use.
    offline = _run("cache", "info", env={"CUJIT_OFFLINE": "2"})
    assert offline.returncode == 1 and "CUJIT_OFFLINE: expected one of 0, 1, true" in offline.stderr
    arch = _run("precompile", env={"CUJIT_DEFAULT_ARCH": "hopper"})
    assert arch.returncode == 1 and "CUJIT_DEFAULT_ARCH: expected an arch such as sm_80" in arch.stderr


def test_misspelled_variable_gets_one_warning() -> None:
    out = _run("cache", "info", env={"CUJIT_CACHE_DIRR": "/tmp/elsewhere"})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "CUJIT_CACHE_DIRR" in line]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("warning: cujit: CUJIT_CACHE_DIRR is set but is not a cujit variable")
    assert "did you mean CUJIT_CACHE_DIR?" in lines[0]


def test_writes_clangd_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = _run("--arch", "sm_90", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / ".clangd").read_text()
    assert "-xcuda" in text and "--cuda-gpu-arch=sm_90" in text and "cujit/include" in text
    again = _run("--arch", "sm_80", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = _run("--arch", "sm_80", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "--cuda-gpu-arch=sm_80" in (tmp_path / ".clangd").read_text()
