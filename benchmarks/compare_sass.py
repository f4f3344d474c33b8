"""Compare the SASS of every precompiled instantiation of some ops between two versions of cujit. Needs no GPU.

    python benchmarks/compare_sass.py [--base REV] [--head REV | --head-tree PATH] [--ops NAME ...]
                                      [--arch sm_90] [--jobs N] [--cache DIR] [--show N]

Each side is a git revision (exported with `git archive` to a temporary folder) or a folder holding a cujit tree
(by default the tree this script is in). For each side, a child process imports that side's cujit, compiles every
instantiation that the named ops declare for `precompile` (the set tests/test_compile_all.py compiles) and writes
the cubins; each kernel's SASS is then disassembled with cuobjdump and normalised: instruction addresses and
encodings dropped, branch labels renumbered in order of appearance. Kernels are matched by their name expression
(e.g. `rms_norm_kernel<bf16_t, false, 0, 128, 16, 1, 1>`). A change to a kernel's source that the compiler sees
through gives identical SASS; the report lists the kernels that differ with their instruction counts, and the exit
status is 1 when any differs or is missing on one side.

cuobjdump is looked up on PATH, then next to Triton's bundled ptxas (`--cuobjdump` overrides). `--cache DIR`
keeps each side's compiled modules in DIR (a cujit disk cache, keyed by every header) so that a rerun against the
same base compiles only what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
DEFAULT_OPS = ("rms_norm", "fused_add_rms_norm", "qk_rms_norm")

# Run with the side's tree first on sys.path: imports that side's cujit, compiles, writes cubins and an index.
CHILD = """
import json, sys
from pathlib import Path
import cujit
from cujit.tools.shipped import shipped_modules
out, arch, jobs, names = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
modules = shipped_modules(names)
compiled = cujit.compile_modules(modules, arch=arch, jobs=jobs)
index = []
for n, (module, found) in enumerate(zip(modules, compiled)):
    path = out / f"{n}.cubin"
    path.write_bytes(found.cubin)
    index.append({"cubin": path.name, "lowered": found.lowered})
(out / "index.json").write_text(json.dumps(index))
"""

_ADDRESS = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s*")
_ENCODING = re.compile(r"\s*/\*\s*0x[0-9a-f]+\s*\*/\s*$")
_LABEL = re.compile(r"\.L_x_\d+")


def cuobjdump_path(given: str | None) -> str:
    """The cuobjdump to run: ``given``, else one on PATH, else the one Triton bundles."""
    if given:
        return given
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError as e:
        raise SystemExit("cuobjdump: not on PATH and Triton is not installed; pass --cuobjdump") from e
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not bundled.exists():
        raise SystemExit(f"cuobjdump: not on PATH nor at {bundled}; pass --cuobjdump")
    return str(bundled)


def normalise(lines: list[str]) -> list[str]:
    """SASS instructions without addresses and encodings, labels renumbered in order of first appearance."""
    labels: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return labels.setdefault(match.group(0), f".L{len(labels)}")

    out = []
    for line in lines:
        text = _ENCODING.sub("", line).rstrip()
        if not _ADDRESS.match(text) and not text.lstrip().startswith(".L_x_"):
            continue  # headers, blank lines and encoding-only continuation lines
        out.append(_LABEL.sub(rename, _ADDRESS.sub("", text)).strip())
    return out


def functions(sass: str) -> dict[str, list[str]]:
    """The normalised SASS of each function of one cuobjdump listing, by mangled name."""
    found: dict[str, list[str]] = {}
    name = None
    for line in sass.splitlines():
        if line.lstrip().startswith("Function :"):
            name = line.split(":", 1)[1].strip()
            found[name] = []
        elif name is not None:
            found[name].append(line)
    return {k: normalise(v) for k, v in found.items()}


def opcode_counts(sass: list[str]) -> Counter[str]:
    """How many instructions of each opcode (predicates and modifiers dropped), labels not counted."""
    counts: Counter[str] = Counter()
    for line in sass:
        if line.startswith(".L"):
            continue
        words = line.split()
        op = words[1] if words[0].startswith("@") else words[0]
        counts[op.split(".")[0].rstrip(";")] += 1
    return counts


def whole_elf(cubin: bytes) -> bytes:
    """``cubin`` padded with zeros to the size its ELF header gives.

    The cubin that CuPy's NVRTC binding returns can lack the last byte (a zero, the top byte of the last program
    header); the driver loads it as it is, but cuobjdump refuses a file that ends before its program headers.
    """
    ph_offset, sh_offset = struct.unpack_from("<QQ", cubin, 32)
    ph_size, ph_count, sh_size, sh_count = struct.unpack_from("<HHHH", cubin, 54)
    end = max(ph_offset + ph_size * ph_count, sh_offset + sh_size * sh_count)
    return cubin + bytes(max(0, end - len(cubin)))


def export(rev: str, into: Path) -> Path:
    """The tree of git revision ``rev`` of this repository, written below ``into``."""
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(HERE), "archive", rev], stdout=f, check=True)
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def compile_side(tree: Path, out: Path, ops: list[str], arch: str, jobs: int, cache: Path | None,
                 cuobjdump: str) -> dict[str, list[str]]:
    """The normalised SASS of every instantiation of ``ops`` in ``tree``, by name expression."""
    out.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(tree))
    if cache is not None:
        env["CUJIT_CACHE_DIR"] = str(cache)
    else:
        env["CUJIT_DISK_CACHE"] = "0"
    subprocess.run([sys.executable, "-c", CHILD, str(out), arch, str(jobs), *ops], cwd=tree, env=env, check=True)
    def disassemble(entry: dict[str, Any]) -> dict[str, list[str]]:
        path = out / entry["cubin"]
        path.write_bytes(whole_elf(path.read_bytes()))
        listing = subprocess.run([cuobjdump, "-sass", str(path)], capture_output=True, text=True,
                                 check=True).stdout
        sass = functions(listing)
        return {expression: sass[mangled] for expression, mangled in entry["lowered"].items()}

    by_expression: dict[str, list[str]] = {}
    with ThreadPoolExecutor(jobs) as pool:  # each cuobjdump is a process of its own
        for found in pool.map(disassemble, json.loads((out / "index.json").read_text())):
            by_expression.update(found)
    return by_expression


def compare(base: dict[str, list[str]], head: dict[str, list[str]], show: int) -> int:
    """Print the comparison; the number of kernels that differ or are on one side only."""
    same = [e for e in base if e in head and base[e] == head[e]]
    differ = [e for e in base if e in head and base[e] != head[e]]
    only = sorted(set(base) ^ set(head))
    print(f"{len(same)} of {len(set(base) | set(head))} kernels have identical SASS")
    for expression in differ:
        a, b = opcode_counts(base[expression]), opcode_counts(head[expression])
        print(f"DIFFERS {expression}: {sum(a.values())} -> {sum(b.values())} instructions")
        delta = {op: b[op] - a[op] for op in sorted(set(a) | set(b)) if a[op] != b[op]}
        print("    opcodes changed:", ", ".join(f"{op} {n:+d}" for op, n in delta.items()) or "none (order only)")
        if show:
            import difflib

            for line in list(difflib.unified_diff(base[expression], head[expression], lineterm="", n=1))[:show]:
                print("    " + line)
    for expression in only:
        print(f"ONLY IN {'BASE' if expression in base else 'HEAD'} {expression}")
    return len(differ) + len(only)


def main() -> int:
    """Parse the command line, compile both sides, compare."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision of the base (default: main)")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--head", help="git revision of the head (default: the tree this script is in)")
    side.add_argument("--head-tree", type=Path, help="folder of the head's tree")
    parser.add_argument("--base-tree", type=Path, help="folder of the base's tree (instead of --base)")
    parser.add_argument("--ops", nargs="+", default=list(DEFAULT_OPS), help="ops whose instantiations to compare")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, help="cujit cache folder for both sides (default: no disk cache)")
    parser.add_argument("--cuobjdump", help="path of cuobjdump")
    parser.add_argument("--show", type=int, default=0, help="lines of diff to print per differing kernel")
    args = parser.parse_args()
    cuobjdump = cuobjdump_path(args.cuobjdump)
    with tempfile.TemporaryDirectory(prefix="compare_sass.") as scratch:
        work = Path(scratch)
        sides = {}
        for label, rev, tree in (("base", args.base, args.base_tree), ("head", args.head, args.head_tree)):
            if tree is not None:
                named = str(tree)
            elif rev is not None:
                (work / label).mkdir()
                tree, named = export(rev, work / label), f"revision {rev}"
            else:
                tree, named = HERE, f"{HERE} (working tree)"
            print(f"{label}: {named}", flush=True)
            sides[label] = compile_side(tree.resolve(), work / f"{label}.out", args.ops, args.arch, args.jobs,
                                        args.cache, cuobjdump)
        return 1 if compare(sides["base"], sides["head"], args.show) else 0


if __name__ == "__main__":
    sys.exit(main())
