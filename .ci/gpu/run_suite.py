"""Run the whole test suite on a GPU machine in parallel shards, one pytest process per shard, and sum the counts.

Usage: python3 .ci/gpu/run_suite.py [--shards N] [--by-file] [--logs DIR] [FILE ...] [-- PYTEST_ARGS ...]

The GPU tests spend most of their time compiling with NVRTC on the CPU, so N processes on a machine of many cores
finish the suite in a fraction of one process's time. The tests are collected once and dealt to the shards one by
one, in turn, so that the many cases of one large file spread over every shard (the processes share cujit's cache
folder, so a kernel two shards need is compiled once). With --by-file, whole files are dealt instead, largest
first (by size, a stand-in for their run time): the suite then takes as long as its slowest file.

Each shard's log goes to DIR (default: $OUT or ./out); the last lines printed are every shard's pytest summary and
the totals, and the exit code is non-zero if any shard failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _shards(files: list[Path], n: int) -> list[list[Path]]:
    loads = [0] * n
    shards: list[list[Path]] = [[] for _ in range(n)]
    for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        i = loads.index(min(loads))
        shards[i].append(path)
        loads[i] += path.stat().st_size
    return [s for s in shards if s]


def _without_quiet(args: list[str]) -> list[str]:
    """``args`` less -q, -qq, ... and --quiet, since this script passes one -q itself.

    A second would make pytest list counts per file instead of node ids when collecting, and print no summary line
    when running.
    """
    return [a for a in args if a != "--quiet" and not (a.startswith("-q") and set(a[1:]) == {"q"})]


def _collected(files: list[Path], extra: list[str]) -> list[str]:
    """The node ids of the tests in ``files`` (pytest --collect-only), in collection order."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *extra, *map(str, files)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    ids = [line for line in out.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if not ids:
        raise SystemExit(f"no tests collected:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


def main() -> int:
    """Run the shards; the exit code is the worst shard's."""
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra = _without_quiet(argv[argv.index("--") + 1:])
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--by-file", action="store_true", help="deal whole files to the shards")
    parser.add_argument("--logs", default=os.environ.get("OUT", "out"))
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    files = [Path(f) for f in args.files] or sorted((ROOT / "tests").glob("**/test_*.py"))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    procs = []
    if args.by_file:
        shards = [[str(f) for f in shard] for shard in _shards(files, args.shards)]
    else:
        ids = _collected(files, extra)
        shards = [ids[i::args.shards] for i in range(min(args.shards, len(ids)))]
        print(f"{len(ids)} tests collected in {time.perf_counter() - start:.0f} s", flush=True)
    for i, shard in enumerate(shards):
        log = (logs / f"shard{i:02d}.log").open("w")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *shard]
        procs.append((i, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    totals: dict[str, int] = {}
    worst = 0
    for i, proc, log in procs:
        code = proc.wait()
        log.close()
        text = (logs / f"shard{i:02d}.log").read_text(errors="replace").strip().splitlines()
        summary = text[-1] if text else "(no output)"
        for number, word in _COUNT.findall(summary):
            key = "errors" if word.startswith("error") else word
            totals[key] = totals.get(key, 0) + int(number)
        failures = [line for line in text if line.startswith(("FAILED", "ERROR"))]
        print(f"shard {i}: exit {code}: {summary}")
        for line in failures[:20]:
            print(f"  {line[:300]}")
        worst = max(worst, code)
    elapsed = time.perf_counter() - start
    print(f"total in {elapsed:.0f} s: " + ", ".join(f"{v} {k}" for k, v in sorted(totals.items())))
    return worst


if __name__ == "__main__":
    sys.exit(main())
