"""docs/guide.md runs: every fenced block is executed, written, or compared with the file it shows.

A block's info string says what to do with it:

``cuda file=NAME`` / ``python file=NAME``
    written to NAME in the guide's working folder (a fresh temporary folder), in order.
``python``
    executed, in order, in one namespace shared by all blocks, with that folder as the working directory and on
    ``sys.path`` (so ``import scale`` finds the ``scale.py`` block). CPU-only: these may compile
    (``.compile(arch="sm_90")``) but never launch.
``python gpu``
    executed in the same sequence, only by the GPU test (``pytest.mark.gpu``: skipped with a reason without one).
``bash``
    every line must be ``python -m cujit ...`` (optionally after ``VAR=value`` assignments); each runs as a
    subprocess in the working folder and must exit 0.
``bash norun``
    not run, because the commands change the environment (``pip install``) or are a manual check that this file
    performs itself (``clangd --check``: see ``_clangd_check``). Only those commands may appear in such blocks.
``cuda ref=PATH`` / ``python ref=PATH``
    a shipped file shown in the guide: the block must equal the file. With ``excerpt``, the block must be a run
    of whole lines of the file. Either way, the guide cannot drift from the code.
``text paths``
    a listing of repository paths, one per line, each followed by a description: every path must exist.

Python blocks are compiled with the guide's own file name and line numbers, so a failure's traceback points at the
line of docs/guide.md that failed.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import cujit

REPO = Path(cujit.__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "guide.md"
_FENCE = re.compile(r"^```(.*)$")
# Commands that a `bash norun` block may hold, and why they are not run here.
_NORUN_PREFIXES = {
    "pip install ": "changes the environment; the test environment already has these packages",
    "clangd --check=": "performed by _clangd_check below, on every `cuda file=` block, with the guide's .clangd",
}


@dataclass
class Block:
    """One fenced block of the guide."""

    lang: str
    flags: set[str]
    attrs: dict[str, str]
    text: str
    line: int  # the guide's line number of the block's first line of content
    info: str = field(default="")

    def __str__(self) -> str:
        return f"docs/guide.md:{self.line} ```{self.info}"


def parse(text: str) -> list[Block]:
    """The fenced blocks of ``text``, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        info = opening.group(1).strip()
        start = i + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"docs/guide.md:{i + 1}: the block ```{info} is never closed")
        tokens = info.split()
        lang = tokens[0] if tokens else ""
        attrs = dict(t.split("=", 1) for t in tokens[1:] if "=" in t)
        flags = {t for t in tokens[1:] if "=" not in t}
        body = "\n".join(lines[start:end]) + "\n"
        blocks.append(Block(lang, flags, attrs, body, start + 1, info))
        i = end + 1
    return blocks


BLOCKS = parse(GUIDE.read_text())


def _kind(block: Block) -> str:
    """What the test does with ``block``; raises for an info string it does not understand."""
    lang, flags, attrs = block.lang, block.flags, block.attrs
    if lang in ("cuda", "python") and set(attrs) == {"file"} and not flags:
        return "file"
    if lang in ("cuda", "python") and set(attrs) == {"ref"} and flags <= {"excerpt"}:
        return "ref"
    if lang == "python" and not attrs and flags <= {"gpu"}:
        return "python-gpu" if flags else "python"
    if lang == "bash" and not attrs and flags <= {"norun"}:
        return "bash-norun" if flags else "bash"
    if lang == "text" and not attrs and flags == {"paths"}:
        return "paths"
    raise AssertionError(f"{block}: unknown info string; see the docstring of tests/test_guide.py for the kinds")


# ------------------------------------------------------------------------------------------- static checks
def test_every_block_has_a_known_kind() -> None:
    kinds = [_kind(b) for b in BLOCKS]
    for wanted in ("file", "ref", "python", "python-gpu", "bash", "paths"):
        assert wanted in kinds, f"the guide has no block of kind {wanted}"


def test_reference_blocks_match_the_repository() -> None:
    refs = [b for b in BLOCKS if _kind(b) == "ref"]
    assert refs
    for block in refs:
        path = REPO / block.attrs["ref"]
        assert path.is_file(), f"{block}: {path} does not exist"
        actual = path.read_text()
        if "excerpt" in block.flags:
            assert block.text.count("\n") >= 3, f"{block}: an excerpt of fewer than 3 lines proves little"
            assert ("\n" + block.text) in ("\n" + actual), (
                f"{block}: this excerpt is no longer in {block.attrs['ref']}; copy the current lines into the guide"
            )
        else:
            assert block.text == actual, (
                f"{block}: differs from {block.attrs['ref']}; copy the current file into the guide"
            )


def test_listed_paths_exist() -> None:
    for block in (b for b in BLOCKS if _kind(b) == "paths"):
        for offset, line in enumerate(block.text.splitlines()):
            if line.strip():
                path = line.split()[0]
                assert (REPO / path).exists(), f"docs/guide.md:{block.line + offset}: {path} does not exist"


def test_norun_blocks_hold_only_known_commands() -> None:
    for block in (b for b in BLOCKS if _kind(b) == "bash-norun"):
        for offset, line in enumerate(block.text.splitlines()):
            if line.strip() and not line.lstrip().startswith("#"):
                assert line.startswith(tuple(_NORUN_PREFIXES)), (
                    f"docs/guide.md:{block.line + offset}: `{line}` is not run by the test; run it (a `bash` "
                    f"block) or add its prefix and the reason to _NORUN_PREFIXES"
                )


# ------------------------------------------------------------------------------------------- running
def _run_bash(block: Block, folder: Path) -> None:
    for offset, line in enumerate(block.text.splitlines()):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        env = dict(os.environ)  # carries this test's CUJIT_CACHE_DIR
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        where = f"docs/guide.md:{block.line + offset}"
        assert words[:3] == ["python", "-m", "cujit"], f"{where}: only `python -m cujit ...` commands are run"
        done = subprocess.run([sys.executable, *words[1:]], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{where}: `{line}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        print(f"$ {line}\n{done.stdout}{done.stderr}")


def _run_python(block: Block, namespace: dict[str, Any]) -> None:
    # Blank lines in front keep the guide's line numbers in tracebacks (and in runtime_check's messages).
    code = compile("\n" * (block.line - 1) + block.text, str(GUIDE), "exec")
    importlib.invalidate_caches()  # file blocks written a moment ago must be importable
    exec(code, namespace)


def _clangd_check(folder: Path) -> None:
    """clangd parses every `cuda file=` block without an error, with the .clangd the guide had written."""
    clangd = shutil.which("clangd")
    if clangd is None:
        print("clangd is not on PATH: the guide's .cuh files were not checked with clangd")
        return
    assert (folder / ".clangd").is_file(), "the guide's `python -m cujit` did not write .clangd"
    env = dict(os.environ, XDG_CONFIG_HOME=str(folder / ".xdg"))
    for block in BLOCKS:
        if _kind(block) == "file" and block.lang == "cuda":
            done = subprocess.run([clangd, f"--check={folder / block.attrs['file']}", "--check-locations=false"],
                                  cwd=folder, env=env, capture_output=True, text=True, timeout=120)
            log = done.stdout + done.stderr
            errors = [line for line in log.splitlines() if line.startswith("E[")]
            assert not errors and done.returncode == 0, f"{block}: clangd reports\n" + "\n".join(errors or [log])


def run_guide(folder: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool) -> int:
    """Run the guide in ``folder``; return the number of GPU blocks skipped."""
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    environ = dict(os.environ)
    modules = set(sys.modules)
    namespace: dict[str, Any] = {"__name__": "__guide__"}
    skipped = 0
    try:
        for block in BLOCKS:
            kind = _kind(block)
            if kind == "file":
                (folder / block.attrs["file"]).write_text(block.text)
            elif kind == "python" or (kind == "python-gpu" and gpu):
                _run_python(block, namespace)
            elif kind == "python-gpu":
                skipped += 1
            elif kind == "bash":
                _run_bash(block, folder)
    finally:
        # The guide's own modules (scale.py) must not leak into other tests, nor its environment changes.
        for name in set(sys.modules) - modules:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(folder)):
                del sys.modules[name]
        os.environ.clear()
        os.environ.update(environ)
    return skipped


def test_guide_runs_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skipped = run_guide(tmp_path, monkeypatch, gpu=False)
    assert skipped == sum(_kind(b) == "python-gpu" for b in BLOCKS)
    _clangd_check(tmp_path)


@pytest.mark.gpu
def test_guide_runs_on_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_guide(tmp_path, monkeypatch, gpu=True) == 0
    cujit.device_check()
