"""Which NVRTC compiles: the rule of ``cujit._runtime.release``, the driver check, crt/ of the same release, doctor.

The rule's pieces are tested on layouts built in tmp_path (NVIDIA's CUDA 12 and CUDA 13 wheel layouts, a toolkit
under CUDA_PATH); the end-to-end tests run child processes against the NVRTC libraries really installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cujit
from cujit._runtime import headers, release, toolchain
from cujit._runtime.release import NvrtcLibrary, check_driver, choose_nvrtc, installed_nvrtc, library_version

REPO = Path(__file__).resolve().parents[1]


def nvrtc_files(lib: Path, soname: str, builtins: str | None, real: str | None = None) -> Path:
    """A fake libnvrtc (and its builtins library) in ``lib``; ``real``: the versioned file the soname links to."""
    lib.mkdir(parents=True, exist_ok=True)
    if real is not None:
        (lib / real).write_bytes(b"\x7fELF")
        (lib / soname).symlink_to(real)
    else:
        (lib / soname).write_bytes(b"\x7fELF")
    if builtins is not None:
        (lib / builtins).write_bytes(b"\x7fELF")
    return lib / soname


@pytest.fixture
def no_toolkits(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUDA_PATH", "CUDA_HOME", "CONDA_PREFIX"):
        monkeypatch.delenv(var, raising=False)


def lib(version: tuple[int, int] | None, name: str = "") -> NvrtcLibrary:
    return NvrtcLibrary(Path(f"/l/{name or version}"), version, "test")


# ---------------------------------------------------------------------------------------------------- discovery
def test_versions_come_from_the_builtins_library_or_the_versioned_name(tmp_path: Path) -> None:
    cu13 = nvrtc_files(tmp_path / "a", "libnvrtc.so.13", "libnvrtc-builtins.so.13.0")
    cu12 = nvrtc_files(tmp_path / "b", "libnvrtc.so.12", "libnvrtc-builtins.so.12.9")
    toolkit = nvrtc_files(tmp_path / "c", "libnvrtc.so.12", None, real="libnvrtc.so.12.4.127")
    bare = nvrtc_files(tmp_path / "d", "libnvrtc.so.12", None)
    assert [library_version(p) for p in (cu13, cu12, toolkit, bare)] == [(13, 0), (12, 9), (12, 4), None]


def test_wheels_then_toolkits_each_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_toolkits: None) -> None:
    site = tmp_path / "site"
    cu13 = nvrtc_files(site / "nvidia" / "cu13" / "lib", "libnvrtc.so.13", "libnvrtc-builtins.so.13.0")
    cu12 = nvrtc_files(site / "nvidia" / "cuda_nvrtc" / "lib", "libnvrtc.so.12", "libnvrtc-builtins.so.12.9")
    toolkit = nvrtc_files(tmp_path / "cuda" / "lib64", "libnvrtc.so.12", None, real="libnvrtc.so.12.4.127")
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "cuda"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))  # the same toolkit twice: listed once
    found = [(f.path, f.version, f.origin) for f in installed_nvrtc([str(site), str(site)])]
    assert found[:3] == [(cu13, (13, 0), "an NVIDIA wheel"), (cu12, (12, 9), "an NVIDIA wheel"),
                         (toolkit, (12, 4), "CUDA_PATH")]
    assert all(path != toolkit for path, _, origin in found[3:])


# ---------------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(("driver", "chosen"), [(None, (13, 0)), ((13, 0), (13, 0)), ((13, 2), (13, 0)),
                                                ((12, 8), (12, 9)), ((12, 2), (12, 9))])
def test_the_newest_release_the_driver_can_load(driver: tuple[int, int] | None, chosen: tuple[int, int]) -> None:
    installed = [lib((12, 4)), lib((13, 0)), lib((12, 9))]
    assert choose_nvrtc(installed, [], driver).version == chosen


def test_a_library_already_in_the_process_wins() -> None:
    # torch's CUDA builds link their NVRTC: CuPy's binding takes the loaded one, so cujit must too.
    loaded = [lib((13, 0), "torch")]
    assert choose_nvrtc([lib((12, 9)), lib((13, 0))], loaded, (13, 0)) is loaded[0]
    # torch beside the -cu12 wheels loads both; CuPy's binding asks for libnvrtc.so.13 first.
    both = [lib((13, 0), "torch"), lib((12, 9), "torch's preload")]
    assert choose_nvrtc([lib((12, 9)), lib((13, 0))], both, (13, 0)) is both[0]
    # A newer major loaded than the driver takes is still what the binding would use: the driver check names it.
    assert choose_nvrtc([lib((12, 9)), lib((13, 0))], loaded, (12, 8)) is loaded[0]


def test_an_older_library_in_the_process_does_not_win() -> None:
    # Only NVRTC 12 loaded (by another library): cujit loads the newest usable, which the binding asks for first,
    # so a fresh process and this one pick the same.
    installed = [lib((12, 9)), lib((13, 0), "cu13")]
    assert choose_nvrtc(installed, [lib((12, 9), "loaded")], (13, 0)) is installed[1]
    assert choose_nvrtc(installed, [lib((12, 9), "loaded")], (12, 8)).version == (12, 9)


def test_nothing_the_driver_can_load_is_one_error_naming_what_was_found() -> None:
    with pytest.raises(cujit.CujitError) as info:
        choose_nvrtc([lib((13, 0), "cu13")], [], (12, 4))
    message = str(info.value)
    assert "CUDA 12.4" in message and "NVRTC 13.0 in /l/cu13" in message
    assert "pip install 'nvidia-cuda-nvrtc-cu12' 'nvidia-cuda-runtime-cu12'" in message


def test_no_nvrtc_at_all() -> None:
    with pytest.raises(cujit.CujitError, match=r"found no libnvrtc \(looked at the NVIDIA wheels"):
        choose_nvrtc([], [], None)


def test_unreadable_versions_keep_the_search_order() -> None:
    first, second = lib(None, "a"), lib(None, "b")
    assert choose_nvrtc([first, second], [], (13, 0)) is first


@pytest.mark.parametrize(("nvrtc", "driver", "fails"), [((13, 0), (12, 9), True), ((12, 9), (12, 2), False),
                                                        ((13, 0), (13, 0), False), ((12, 9), (13, 1), False),
                                                        ((13, 0), None, False)])
def test_the_driver_must_load_nvrtcs_major_version(
    nvrtc: tuple[int, int], driver: tuple[int, int] | None, fails: bool
) -> None:
    if not fails:
        check_driver(nvrtc, driver)
        return
    with pytest.raises(cujit.CujitError) as info:
        check_driver(nvrtc, driver)
    message = str(info.value)
    assert "cannot load" in message and "580" in message and "nvidia-cuda-nvrtc-cu12" in message


# ---------------------------------------------------------------------------------------------------- this machine
def test_the_library_in_use_is_the_chosen_one() -> None:
    toolchain.nvrtc_version()
    used = toolchain.nvrtc_library()
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc/self/maps on this platform")
    assert used is not None
    assert release.library_version(used) in (None, toolchain.nvrtc_version())
    assert toolchain.header_version(toolchain.cuda_include_dir())[0] == toolchain.nvrtc_version()[0]


CHILD = textwrap.dedent("""\
    import json, sys
    from cujit._runtime import release, toolchain
    if sys.argv[1] != "none":
        major, minor = map(int, sys.argv[1].split("."))
        release.driver_version = lambda: (major, minor)
    chosen = release.chosen()
    version = toolchain.nvrtc_version()
    print(json.dumps({"chosen": str(chosen.path), "chosen_version": list(chosen.version or ()),
                      "version": list(version), "library": str(toolchain.nvrtc_library()),
                      "headers": list(toolchain.header_version(toolchain.cuda_include_dir()))}))
    """)


def _child(driver: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUJIT_NVRTC", None)  # the rule, not the test process's choice
    out = subprocess.run([sys.executable, "-c", CHILD, driver], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("driver", ["none", "12.8", "13.0"])
def test_cupys_binding_takes_the_library_the_rule_chose(driver: str) -> None:
    # In a new process nothing is loaded yet: the rule decides, whatever order cuda.pathfinder would search in.
    installed = [lib for lib in installed_nvrtc() if lib.version is not None]
    majors = {lib.version[0] for lib in installed if lib.version is not None}
    if driver != "none" and int(driver.split(".")[0]) not in majors:
        pytest.skip(f"no NVRTC of CUDA {driver.split('.')[0]} is installed here")
    result = _child(driver)
    assert result["version"] == result["chosen_version"]
    assert Path(str(result["library"])).resolve() == Path(str(result["chosen"])).resolve()
    assert result["headers"][0] == result["version"][0]  # type: ignore[index]
    if driver != "none":
        assert result["version"][0] == int(driver.split(".")[0])  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------- CUJIT_NVRTC
def test_cujit_nvrtc_names_the_library_and_nothing_else_is_considered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = nvrtc_files(tmp_path / "cuda_nvrtc" / "lib", "libnvrtc.so.12", "libnvrtc-builtins.so.12.9")
    monkeypatch.setenv("CUJIT_NVRTC", str(named))
    monkeypatch.setattr(release, "loaded_nvrtc", lambda: [])
    monkeypatch.setattr(release, "installed_nvrtc", lambda: [lib((13, 0))])  # newer, and ignored
    release.chosen.cache_clear()
    try:
        picked = release.chosen()
        assert (picked.path, picked.version, picked.origin) == (named, (12, 9), release.PINNED)
        # Another major version already in the process would be what CuPy's binding takes: refused, both named.
        monkeypatch.setattr(release, "loaded_nvrtc",
                            lambda: [NvrtcLibrary(Path("/t/libnvrtc.so.13"), (13, 0), release.LOADED)])
        release.chosen.cache_clear()
        with pytest.raises(cujit.CujitError, match=r"CUJIT_NVRTC names NVRTC 12\.9 .* has loaded NVRTC 13\.0"):
            release.chosen()
        monkeypatch.setenv("CUJIT_NVRTC", str(tmp_path / "missing.so"))
        release.chosen.cache_clear()
        with pytest.raises(cujit.CujitError, match=r"CUJIT_NVRTC: .*missing\.so' is not a file"):
            release.chosen()
    finally:
        release.chosen.cache_clear()


class _Binding:
    """A stand-in for CuPy's NVRTC binding, bound to one release."""

    def __init__(self, version: tuple[int, int]) -> None:
        self.version = version

    def getVersion(self) -> tuple[int, int]:  # CuPy's name
        return self.version


def test_a_binding_bound_to_another_release_than_the_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolchain, "nvrtc", lambda: _Binding((12, 9)))
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (13, 0))
    toolchain.compiling_nvrtc.cache_clear()
    try:
        with pytest.raises(cujit.CujitError, match=r"uses NVRTC 12\.9, but cujit chose NVRTC 13\.0 .*CUJIT_NVRTC"):
            toolchain.compiling_nvrtc()
    finally:
        toolchain.compiling_nvrtc.cache_clear()


def test_a_pin_that_cupys_binding_did_not_take_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = NvrtcLibrary(Path("/p/libnvrtc.so.12"), (12, 9), release.PINNED)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.nvrtc", object())  # the binding is in use
    monkeypatch.setattr(toolchain, "nvrtc", lambda: _Binding((13, 0)))
    monkeypatch.setattr(release, "chosen", lambda: pinned)
    toolchain.nvrtc_version.cache_clear()
    try:
        with pytest.raises(cujit.CujitError, match=r"CUJIT_NVRTC names NVRTC 12\.9 .* had loaded NVRTC 13\.0"):
            toolchain.nvrtc_version()
    finally:
        toolchain.nvrtc_version.cache_clear()


def test_a_child_given_nvrtc_environment_compiles_with_this_process_nvrtc() -> None:
    pin = toolchain.nvrtc_environment()
    if not pin:
        pytest.skip("no libnvrtc this process can name (no /proc/self/maps)")
    assert Path(pin["CUJIT_NVRTC"]).resolve() == Path(str(toolchain.nvrtc_library())).resolve()
    env = {**os.environ, **pin, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, "none"], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert Path(result["library"]).resolve() == Path(pin["CUJIT_NVRTC"]).resolve()
    assert tuple(result["version"]) == toolchain.nvrtc_version()


# ---------------------------------------------------------------------------------------------------- crt/
def _crt(folder: Path) -> Path:
    (folder / "crt").mkdir(parents=True, exist_ok=True)
    (folder / "crt" / "host_defines.h").write_text("")
    return folder


def test_crt_of_another_major_version_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    include = site / "nvidia" / "cu13" / "include"
    include.mkdir(parents=True)
    (include / "cuda.h").write_text("#define CUDA_VERSION 13000\n")
    _crt(site / "nvidia" / "cuda_nvcc" / "include")
    (site / "nvidia_cuda_nvcc_cu12-12.9.86.dist-info").mkdir()
    for var in ("CUDA_PATH", "CUDA_HOME"):
        monkeypatch.delenv(var, raising=False)
    from cuda import pathfinder

    monkeypatch.setattr(pathfinder, "locate_nvidia_header_directory", lambda name: None)
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (13, 0))
    assert headers.find_crt_dir(include) is None
    _crt(include)  # nvidia-cuda-crt puts them beside the CUDA 13 headers
    (site / "nvidia_cuda_crt-13.0.88.dist-info").mkdir()
    assert headers.find_crt_dir(include) == include
    assert headers.crt_release(include) == (13, 0)


def test_crt_newer_than_nvrtc_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    include = site / "nvidia" / "cuda_runtime" / "include"
    include.mkdir(parents=True)
    (include / "cuda.h").write_text("#define CUDA_VERSION 12040\n")
    nvcc = _crt(site / "nvidia" / "cuda_nvcc" / "include")
    (site / "nvidia_cuda_nvcc_cu12-12.9.86.dist-info").mkdir()
    for var in ("CUDA_PATH", "CUDA_HOME"):
        monkeypatch.delenv(var, raising=False)
    from cuda import pathfinder

    monkeypatch.setattr(pathfinder, "locate_nvidia_header_directory", lambda name: None)
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (12, 4))
    assert headers.find_crt_dir(include) is None
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (12, 9))
    assert headers.find_crt_dir(include) == nvcc


# ---------------------------------------------------------------------------------------------------- doctor
def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cujit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, check=False)


def test_doctor_reports_the_stack_as_json() -> None:
    out = _cli("doctor", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == (0 if report["verdict"] == "ok" else 1), out.stderr
    major, minor = toolchain.nvrtc_version()
    assert report["nvrtc"]["version"] == f"{major}.{minor}"
    assert report["headers"]["version"].split(".")[0] == str(major)
    assert report["nvrtc"]["library"] and report["nvrtc"]["installed"]
    assert report["cache"]["folder"]
    assert set(report) >= {"driver", "gpus", "cupy", "torch", "cupy_kernels", "problems", "verdict"}


def test_doctor_on_one_screen() -> None:
    out = _cli("doctor")
    lines = out.stdout.splitlines()
    assert lines[0].startswith("NVRTC:") and any(line.startswith("verdict:") for line in lines), out.stdout
    assert len(lines) <= 24


def test_doctor_names_an_unusable_stack_and_its_fix(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from cujit.tools import doctor

    def no_nvrtc() -> tuple[int, int]:
        raise cujit.CujitError(release._nothing_usable([], None))

    monkeypatch.setattr(toolchain, "nvrtc_version", no_nvrtc)
    monkeypatch.setattr(release, "installed_nvrtc", lambda: [])
    monkeypatch.setattr(release, "driver_version", lambda: None)
    monkeypatch.setattr(doctor, "_cupy_flavour", lambda: None)
    assert doctor.doctor() == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["NVRTC:        none usable", "CUDA headers: -", "crt/ headers: -"]
    assert "CuPy kernels: not tried (CuPy is not installed)" in lines
    assert lines[-2] == "verdict:      PROBLEMS"
    assert lines[-1].startswith("  - no NVRTC that this machine can use (no driver: compile-only): found no libnvrtc")
    assert lines[-1].endswith("Fix: pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12")


def test_the_command_line_works_from_the_folder_above_a_clone(tmp_path: Path) -> None:
    # A folder named cujit with no __init__.py (a clone's root) first on sys.path shadows the package; with an
    # editable install, `python -m cujit` then ran this package's __main__ beside a namespace package `cujit`.
    clone = tmp_path / "cujit"
    clone.mkdir()
    (clone / "README.md").write_text("a clone's root\n")
    child = textwrap.dedent(f"""\
        import runpy, sys, types
        shadow = types.ModuleType("cujit")
        shadow.__path__ = [{str(clone)!r}]
        sys.modules["cujit"] = shadow
        sys.argv = ["cujit", "cache", "info", "--json"]
        runpy.run_path({str(REPO / "cujit" / "__main__.py")!r}, run_name="__main__")
        """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "folder" in json.loads(out.stdout)


def test_the_process_map_names_each_nvrtc_once_with_spaces_kept() -> None:
    maps = "\n".join([
        "7f0000000000-7f0000001000 r--p 00000000 08:01 12 /opt/my libs/nvidia/cu13/lib/libnvrtc.so.13",
        "7f0000001000-7f0000002000 r-xp 00001000 08:01 12 /opt/my libs/nvidia/cu13/lib/libnvrtc.so.13",
        "7f0000002000-7f0000003000 r--p 00000000 08:01 13 /opt/my libs/nvidia/cu13/lib/libnvrtc-builtins.so.13.0",
        "7f0000003000-7f0000004000 r--p 00000000 08:01 14 /usr/lib/libnvrtc.so.12.9.86 (deleted)",
        "7f0000004000-7f0000005000 r--p 00000000 08:01 15 /home/libnvrtc.so.dir/libcudart.so.12",
        "7f0000005000-7f0000006000 rw-p 00000000 00:00 0 ",
        "7f0000006000-7f0000007000 r--p 00000000 08:01 16 /usr/lib/libnvrtc.so.12.9.86 (deleted)",
    ])
    assert release.nvrtc_paths_in_maps(maps) == ["/opt/my libs/nvidia/cu13/lib/libnvrtc.so.13",
                                                 "/usr/lib/libnvrtc.so.12.9.86 (deleted)"]
    assert release.nvrtc_paths_in_maps("") == []
    assert release.nvrtc_paths_in_maps("7f00-7f01 r--p 0 08:01 1 /lib/libnvrtc.so.13") == ["/lib/libnvrtc.so.13"]


KEY_CHILD = textwrap.dedent("""\
    import json, sys
    from pathlib import Path
    from cujit._runtime import cache, release, toolchain
    from cujit.add_constant import add_constant
    sources = add_constant.op.module(constant=3).sources
    known = release.chosen().version is not None
    key = cache.cache_key(sources, "sm_90")
    mapped = "libnvrtc" in Path("/proc/self/maps").read_text()
    loaded = toolchain.load_nvrtc()
    toolchain.nvrtc_version.cache_clear()
    print(json.dumps({"known": known, "mapped": mapped, "same": key == cache.cache_key(sources, "sm_90"),
                      "torch": "torch" in sys.modules, "loaded": list(loaded)}))
""")


def test_a_cache_key_does_not_load_nvrtc() -> None:
    """A warm start is all cache hits: its keys name NVRTC's release from the chosen library's files, and the
    library (about 100 MB) is not mapped until a compile needs it. The key is the same once it is loaded."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc/self/maps on this platform")
    out = subprocess.run([sys.executable, "-c", KEY_CHILD], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["torch"], "the child must not import torch (its CUDA build loads NVRTC at import)"
    if not result["known"]:
        pytest.skip("the chosen libnvrtc's files do not name its release: the key loads it to ask")
    assert not result["mapped"], "computing a cache key loaded libnvrtc"
    assert result["same"], "the key changed once NVRTC was loaded"
