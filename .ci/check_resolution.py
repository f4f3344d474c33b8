"""Resolve `pip install ".[test]" torch` against the real package index, as a user meets it, installing nothing.

Usage: python .ci/check_resolution.py [TORCH_SPEC ...]     (default: torch, torch==2.10.0, torch==2.4.1)

In a fresh virtual environment (with the newest pip), for each torch requirement, runs in the repository root:

    pip install --dry-run --report R --only-binary :all: ".[test]" TORCH_SPEC

with the machine's pip configuration and local wheel folders switched off (PIP_CONFIG_FILE=/dev/null, no
PIP_FIND_LINKS / index / constraint variables), so that the answer is the package index's. Fails when pip reports
a conflict, or when it looked at more than one torch release: that is backtracking, which on a real install
downloads a multi-GB torch wheel per step and ends on an older torch than the user asked for.

The index here serves no separate wheel metadata (PEP 658), so pip would download every wheel it considers in
full (3 GB for one torch with its CUDA wheels); `--use-feature=fast-deps` makes it read the metadata out of the
wheels with HTTP range requests instead (a few MB, about 30 s). Where that pip option is gone, the check runs
without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ("torch", "torch==2.10.0", "torch==2.4.1")
SHOWN = ("torch", "cupy-cuda12x", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12", "cuda-toolkit",
         "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "cuda-pathfinder", "numpy")
_TORCH_SEEN = re.compile(
    r"(?:Obtaining dependency information from torch (?P<a>\S+)"
    r"|(?:Downloading|Using cached) torch-(?P<b>[^-\s]+)-)"
)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_NO_INPUT"] = "1"
    return env


def _fresh_python(folder: Path) -> Path:
    """A new virtual environment with the newest pip: nothing installed that could satisfy a requirement."""
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
    python = folder / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], env=_environment(), check=True,
                   timeout=600)
    return python


def _resolve(python: Path, spec: str, report: Path, fast_deps: bool) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "pip", "install", "--dry-run", "--report", str(report), "--only-binary", ":all:",
           ".[test]", spec]
    if fast_deps:
        cmd.insert(4, "--use-feature=fast-deps")
    return subprocess.run(cmd, cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=1800,
                          check=False)


def check(python: Path, spec: str, folder: Path) -> list[str]:
    """Resolve once with ``python``'s pip; return the problems found (none: the resolution is clean)."""
    report = folder / (re.sub(r"[^A-Za-z0-9.]+", "_", spec) + ".json")
    start = time.monotonic()
    out = _resolve(python, spec, report, fast_deps=True)
    if out.returncode != 0 and "fast-deps" in out.stderr and "invalid choice" in out.stderr:
        out = _resolve(python, spec, report, fast_deps=False)
    seconds = time.monotonic() - start
    log = out.stdout + out.stderr
    if out.returncode != 0:
        return [f"{spec}: pip failed (exit {out.returncode}) after {seconds:.0f} s:\n{log[-6000:]}"]
    seen = sorted({m["a"] or m["b"] for m in _TORCH_SEEN.finditer(log)},
                  key=lambda v: tuple(int(n) for n in re.findall(r"\d+", v)))
    problems = []
    if len(seen) > 1 or "looking at multiple versions of torch" in log:
        problems.append(f"{spec}: pip backtracked over torch releases {', '.join(seen)}:\n{log[-6000:]}")
    installed = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                 for item in json.loads(report.read_text())["install"]}
    if "torch" not in installed:
        problems.append(f"{spec}: the report installs no torch")
    shown = ", ".join(f"{name} {installed[name]}" for name in SHOWN if name in installed)
    print(f"{spec}: resolved in {seconds:.0f} s, torch releases looked at: {', '.join(seen)}; would install {shown}",
          flush=True)
    return problems


def main(argv: list[str]) -> int:
    """Check every spec given (the defaults without arguments); exit 1 on any problem."""
    specs = argv or list(DEFAULT_SPECS)
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        python = _fresh_python(Path(tmp))
        version = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True)
        print(f"resolving against the package index with {version.stdout.split(' from ')[0]}, Python "
              f"{sys.version.split()[0]}", flush=True)
        for spec in specs:
            problems += check(python, spec, Path(tmp))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
