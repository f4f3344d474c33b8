"""``python -m cujit doctor``: the CUDA stack cujit uses on this machine, and whether it works, on one screen.

Every line is read, never assumed: which libnvrtc is loaded and why, the CUDA headers of its release, the driver
and the GPU, CuPy's and torch's builds, the cache folder, and whether CuPy's own kernels compile beside them. The
verdict lists what is wrong, each with the command that fixes it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from .._runtime import config, driver, headers, release, toolchain
from .._runtime.errors import CujitError

__all__ = ["diagnose", "doctor"]


def _attempt(fn: Callable[[], Any], problems: list[str]) -> Any:
    try:
        return fn()
    except CujitError as exc:
        problems.append(str(exc))
        return None


def _cupy_flavour() -> str | None:
    """The CuPy distribution whose ``cupy`` module Python imports here (not merely one that is installed).

    Two CuPy wheels can be installed at once (each brings a ``cupy`` module, and the first on the path wins); the
    one named is the owner of the module found, with the others listed after it.
    """
    import importlib.util

    spec = importlib.util.find_spec("cupy")
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    owner, others = None, []
    for name in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found = f"{name} {dist.version}"
        located = Path(str(dist.locate_file("cupy/__init__.py"))).resolve()
        if owner is None and origin is not None and located == origin:
            owner = found
        else:
            others.append(found)
    if owner is None:
        return ", ".join(others) or None
    return owner + (f" (also installed, not imported: {', '.join(others)})" if others else "")


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"version": None, "cuda": None}
    return {"version": torch.__version__, "cuda": torch.version.cuda}


def _gpus() -> list[dict[str, Any]]:
    count = driver.device_count()
    if not count:
        return []
    from cupy.cuda import runtime

    out = []
    for index in range(count):
        name = runtime.getDeviceProperties(index)["name"]
        out.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                    "arch": driver.backend().arch_of(index)})
    return out


def _cupy_kernels(has_gpu: bool) -> dict[str, Any]:
    """Whether CuPy's own kernels compile and run here: really tried on a GPU, predicted from the headers without."""
    predicted = toolchain.cupy_headers_mismatch()
    if not has_gpu:
        return {"works": None if predicted is None else False, "tried": False, "problem": predicted}
    try:
        import cupy

        x = cupy.arange(1024, dtype=cupy.int32)
        total = int((x * 2 + 1).sum())  # an elementwise kernel and a reduction, both compiled by CuPy
    except Exception as exc:  # CuPy raises its own compile and driver errors; every one is the answer here
        return {"works": False, "tried": True, "problem": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    expected = 1024 * 1023 + 1024
    if total != expected:
        return {"works": False, "tried": True, "problem": f"CuPy computed {total}, expected {expected}"}
    return {"works": True, "tried": True, "problem": None}


def diagnose() -> dict[str, Any]:
    """Everything ``doctor`` shows, as plain data (the ``--json`` output)."""
    problems: list[str] = []
    installed = release.installed_nvrtc()
    driver_version = release.driver_version()
    nvrtc_version = _attempt(toolchain.nvrtc_version, problems)
    library = toolchain.nvrtc_library() if nvrtc_version else None
    how = None
    if nvrtc_version:
        origin = release.chosen().origin
        if origin == release.LOADED:
            how = f"{origin}: torch's CUDA builds load their own NVRTC, and CuPy takes a loaded one"
        elif origin == release.PINNED:
            how = "named by CUJIT_NVRTC"
        else:
            how = f"the newest release the driver can load, from {origin}"
    include = _attempt(toolchain.cuda_include_dir, problems) if nvrtc_version else None
    header_release = toolchain.header_version(include) if include else None
    crt = headers.find_crt_dir(include) if include else None
    if nvrtc_version:
        _attempt(lambda: release.check_driver(nvrtc_version, driver_version), problems)
    gpus = _gpus() if driver_version else []
    if _cupy_flavour() is None:
        cupy_kernels = {"works": None, "tried": False, "problem": None, "why": "CuPy is not installed"}
    elif not nvrtc_version:
        cupy_kernels = {"works": None, "tried": False, "problem": None, "why": "no usable NVRTC"}
    else:
        cupy_kernels = _cupy_kernels(bool(gpus))
    if cupy_kernels["works"] is False and cupy_kernels["problem"]:
        problems.append(f"CuPy's own kernels: {cupy_kernels['problem']}")
    return {
        "nvrtc": {
            "version": None if nvrtc_version is None else "{}.{}".format(*nvrtc_version),
            "library": None if library is None else str(library),
            "chosen_because": how,
            "installed": [{"path": str(lib.path), "version": None if lib.version is None else
                           "{}.{}".format(*lib.version), "origin": lib.origin} for lib in installed],
        },
        "headers": {
            "folder": None if include is None else str(include),
            "version": None if header_release is None else "{}.{}".format(*header_release),
            "crt": None if crt is None else str(crt),
        },
        "driver": {"cuda": None if driver_version is None else "{}.{}".format(*driver_version)},
        "gpus": gpus,
        "cupy": _cupy_flavour(),
        "torch": _torch(),
        "cache": {"folder": str(config.cache_dir()), "disk_cache": config.disk_cache_enabled(),
                  "offline": config.offline()},
        "cupy_kernels": cupy_kernels,
        "problems": problems,
        "verdict": "ok" if not problems else "problems",
    }


def _text(report: dict[str, Any]) -> str:
    nvrtc, head, drv = report["nvrtc"], report["headers"], report["driver"]
    lines = [
        f"NVRTC:        {nvrtc['version'] or 'none usable'}"
        + (f"  {nvrtc['library']}" if nvrtc["library"] else "")
        + (f"  ({nvrtc['chosen_because']})" if nvrtc["chosen_because"] else ""),
    ]
    others = [lib for lib in nvrtc["installed"] if lib["path"] != nvrtc["library"]]
    for lib in others:
        lines.append(f"  also found: NVRTC {lib['version'] or '?'}  {lib['path']}  ({lib['origin']})")
    lines += [
        f"CUDA headers: {head['version'] or '-'}  {head['folder'] or ''}".rstrip(),
        "crt/ headers: " + (head["crt"] or ("not installed (only <mma.h> and friends need them)" if head["folder"]
                                              else "-")),
        "driver:       " + (f"CUDA {drv['cuda']}" if drv["cuda"] else "none (compiling for an explicit arch works)"),
    ]
    lines += [f"GPU {g['index']}:        {g['name']} ({g['arch']})" for g in report["gpus"]] or ["GPU:          none"]
    torch = report["torch"]
    lines += [
        f"CuPy:         {report['cupy'] or 'not installed'}",
        f"torch:        {torch['version'] or 'not installed'}"
        + (f" (CUDA {torch['cuda']})" if torch["cuda"] else " (no CUDA build)" if torch["version"] else ""),
        f"cache:        {report['cache']['folder']}"
        + ("" if report["cache"]["disk_cache"] else " (disk cache off)")
        + (" (offline)" if report["cache"]["offline"] else ""),
    ]
    kernels = report["cupy_kernels"]
    if kernels["works"] is True:
        state = "yes (an elementwise kernel and a reduction ran)"
    elif kernels["works"] is False:
        state = "no" + (" (tried)" if kernels["tried"] else " (predicted from the headers CuPy takes)")
    else:
        state = f"not tried ({kernels['why']})" if kernels.get("why") else \
            "not tried (no GPU); the headers CuPy takes fit its NVRTC"
    lines.append(f"CuPy kernels: {state}")
    if report["problems"]:
        lines.append("verdict:      PROBLEMS")
        lines += [f"  - {problem}" for problem in report["problems"]]
    else:
        lines.append("verdict:      ok")
    return "\n".join(lines)


def doctor(as_json: bool = False) -> int:
    """Print the report; the exit code is 0 when nothing is wrong, 1 otherwise."""
    report = diagnose()
    print(json.dumps(report, indent=1) if as_json else _text(report), file=sys.stdout)
    return 0 if report["verdict"] == "ok" else 1
