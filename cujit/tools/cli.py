"""The command line of ``python -m cujit``: write .clangd, run the demo, precompile, manage the cache, benchmark."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from .._runtime import cache, config, driver, toolchain
from .._runtime.errors import CujitError
from .shipped import shipped_modules

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cujit",
        description="cujit: CUDA kernels compiled at run time with NVRTC. With no command, write ./.clangd so "
        "that clangd understands .cuh files.",
    )
    parser.add_argument("--arch", help="GPU arch for .clangd, e.g. sm_90 (default: this GPU's, else "
                        "CUJIT_DEFAULT_ARCH)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing .clangd")
    parser.add_argument("--output", default=".clangd", help="where to write the file (default: ./.clangd)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="compile add_constant, run it on torch and CuPy, time it",
                          description="Compile add_constant with NVRTC and, on a GPU, run it on a torch tensor and "
                          "a CuPy array, check both results and time it next to torch.add. Without a GPU it "
                          "only compiles.")
    demo.add_argument("--arch", dest="demo_arch", help="arch to compile for when there is no GPU")

    pre = sub.add_parser("precompile", help="fill the cache, or write a cache layer, for the shipped ops and "
                         "yours (no GPU needed)",
                         description="Compile every instantiation that the shipped ops (and those of --ops-from) "
                         "declare, for each --arch, into the disk cache (CUJIT_CACHE_DIR) or into a read-only "
                         "layer (--layer).")
    pre.add_argument("--arch", dest="archs", action="append",
                     help="e.g. sm_90; repeat for more (default: this GPU's arch, else CUJIT_DEFAULT_ARCH)")
    pre.add_argument("--op", dest="ops", action="append",
                     help="only this shipped op, e.g. rms_norm; repeat for more (default: every shipped op)")
    pre.add_argument("--jobs", "-j", type=int, default=None,
                     help="compile this many modules at once, in worker processes (default: the usable cores)")
    pre.add_argument("--ops-from", dest="ops_from", action="append", metavar="SPEC",
                     help="also your ops: an importable module or a .py file that declares cujit.op's, or "
                     "MODULE:NAME / FILE.py:NAME naming a registry (ops, JitModules, or a function returning them); "
                     "repeat for more")
    pre.add_argument("--no-shipped", dest="shipped", action="store_false",
                     help="leave out the shipped ops (precompile only those of --ops-from)")
    pre.add_argument("--layer", metavar="DIR",
                     help="write into DIR, a read-only cache layer to ship (an image, a wheel), instead of "
                     "CUJIT_CACHE_DIR; processes read it first when DIR is in CUJIT_CACHE_LAYERS")

    cache_cmd = sub.add_parser("cache", help="show or clear the on-disk cache",
                               description="Show (info) or delete (clear) the compiled kernels in CUJIT_CACHE_DIR.")
    cache_sub = cache_cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = cache_sub.add_parser("info", help="folder, entries, locks, temporary files and sizes",
                                description="Show the cache folder: its entries, lock files, temporary files, and "
                                "the folders of older cache schemas.")
    info.add_argument("--json", action="store_true", help="print JSON")
    cache_sub.add_parser("clear", help="delete every entry, lock and temporary file",
                         description="Delete every compiled kernel, lock file and temporary file, of every schema.")

    doctor = sub.add_parser("doctor", help="which NVRTC, CUDA headers, driver and GPU cujit uses here, and whether "
                            "they work together",
                            description="Show the CUDA stack cujit uses on this machine (NVRTC, its CUDA headers, "
                            "the driver, the GPUs, CuPy, torch, the cache folder), whether CuPy's own kernels "
                            "compile here, and a verdict naming each problem with its fix. Exit code 1 when "
                            "something is wrong.")
    doctor.add_argument("--json", action="store_true", help="print JSON")

    # Listed for the top-level help only: main() hands `bench ...` to the benchmark's own parser.
    sub.add_parser("bench", help="the benchmark table (GPU); see `python -m cujit bench --help`")
    return parser


def _write_clangd(args: argparse.Namespace) -> int:
    from .clangd import clangd_config

    arch = config.check_arch(args.arch, "--arch") if args.arch else driver.default_arch()
    target = Path(args.output)
    text = clangd_config(arch)
    try:
        # Exclusive creation, so that an existing file is never overwritten by accident, even in a race.
        with target.open("w" if args.force else "x") as out:
            out.write(text)
    except FileExistsError:
        print(f"error: {target} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    print(f"wrote {target} for {arch} (CUDA headers: {toolchain.cuda_include_dir()}); restart clangd to use it")
    return 0


def _precompile(archs: list[str] | None, ops: list[str] | None = None, jobs: int | None = None,
                ops_from: list[str] | None = None, shipped: bool = True, layer: str | None = None) -> int:
    from .._runtime.parallel import CompileResult, compile_pairs
    from .user_ops import user_modules

    archs = [config.check_arch(a, "--arch") for a in archs] if archs else [driver.default_arch()]
    if jobs is not None and jobs < 1:
        raise CujitError(f"--jobs: expected a positive number of processes, got {jobs}")
    if not shipped and not ops_from:
        raise CujitError("--no-shipped: expected --ops-from naming your ops, got nothing to precompile")
    if ops and not shipped:
        raise CujitError("--op picks shipped ops, but --no-shipped leaves them out")
    modules = shipped_modules(ops) if shipped else []
    if ops_from:
        known = {id(m) for m in modules}
        modules += [m for m in user_modules(ops_from) if id(m) not in known]
    pairs = [(module, arch) for arch in archs for module in modules]
    done = 0
    failed = 0

    def report(result: CompileResult) -> None:
        nonlocal done, failed
        done += 1
        if result.error is not None:
            failed += 1
            print(f"[{done}/{len(pairs)}] {result.module.name} for {result.arch}: FAILED\n{result.error}", flush=True)
            return
        how = "compiled" if result.compiled_now else "cached"
        print(f"[{done}/{len(pairs)}] {result.module.name} for {result.arch}: {how} in {result.seconds * 1e3:.0f} ms",
              flush=True)

    start = time.perf_counter()
    with _writing_layer(layer):
        compile_pairs(pairs, jobs, on_done=report)
        folder = cache.disk_dir()
        if layer is not None and folder is not None:
            _seal_layer(Path(layer))
    where = f"into {folder}" if folder else "in memory only (the disk cache is off or unusable)"
    count = f"{len(pairs) - failed} of {len(pairs)}" if failed else f"{len(pairs)}"
    print(f"precompiled {count} modules {where} in {time.perf_counter() - start:.1f} s")
    if layer is not None and folder is not None:
        print(f"layer {layer}: ship it and list it in CUJIT_CACHE_LAYERS (with CUJIT_OFFLINE=1, nothing compiles)")
    return 0 if folder and not failed else 1


@contextlib.contextmanager
def _writing_layer(layer: str | None) -> Iterator[None]:
    """Within: the disk cache is ``layer`` and no other layer is read, so the layer gets every module (workers too).

    The compile workers start inside and inherit the environment; the process's own values come back afterwards.
    """
    if layer is None:
        yield
        return
    with config.environment({"CUJIT_CACHE_DIR": str(Path(layer).resolve()), "CUJIT_CACHE_LAYERS": "",
                             "CUJIT_DISK_CACHE": "1"}):
        yield


def _seal_layer(root: Path) -> None:
    """Make a written layer shippable: no lock or temporary files; folders 0755 and entries 0644 (others read)."""
    folder = root / cache.SCHEMA
    for path in folder.iterdir():
        if not path.name.endswith(".cubin"):
            path.unlink(missing_ok=True)
        else:
            path.chmod(0o644)
    folder.chmod(0o755)
    root.chmod(0o755)


def _describe_counts(counts: cache.DiskCounts) -> str:
    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    return (f"{count(counts.entries, 'entry', 'entries')} ({counts.bytes / 1024:.1f} KiB), "
            f"{count(counts.locks, 'lock file', 'lock files')}, "
            f"{count(counts.temporaries, 'temporary file', 'temporary files')}")


def _cache(action: str, as_json: bool) -> int:
    root = config.cache_dir()
    if action == "clear":
        removed = cache.clear_disk(root)
        total = sum(c.files for c in removed.values())
        print(f"removed {total} files from {root}")
        for name, counts in removed.items():
            print(f"  {name}: {_describe_counts(counts)}")
        return 0
    folder = root / cache.SCHEMA
    entries = cache.describe_entries(folder) if folder.is_dir() else []
    usage = cache.disk_usage(root)
    current = usage.pop(cache.SCHEMA, cache.DiskCounts())
    total = sum(int(str(e["bytes"])) for e in entries)
    summary = {
        "folder": str(folder), "disk_cache": config.disk_cache_enabled(), "offline": config.offline(),
        "entries": len(entries), "bytes": total, "locks": current.locks, "temporaries": current.temporaries,
        "older_schemas": {name: asdict(counts) for name, counts in usage.items()}, "modules": entries,
    }
    if as_json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"cache folder: {folder}{'' if folder.is_dir() else ' (not created yet)'}")
    print(f"disk cache: {'on' if summary['disk_cache'] else 'off (CUJIT_DISK_CACHE=0)'}; "
          f"offline: {'yes' if summary['offline'] else 'no'}")
    print(_describe_counts(current))
    for e in sorted(entries, key=lambda e: (str(e["name"]), str(e["arch"]))):
        state = "" if e["valid"] else "  (unreadable: will be recompiled)"
        size = int(str(e["bytes"])) / 1024
        print(f"  {e['name']!s:<32} {e['arch']!s:<8} {size:7.1f} KiB  {Path(str(e['file'])).name}{state}")
    for name, counts in usage.items():
        print(f"older schema {root / name} (never read; `cache clear` removes it): {_describe_counts(counts)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # The benchmark parses its own arguments, --help included.
        from .bench import main as bench

        return bench(argv[1:])
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args)


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        config.validate()
        if args.command is None:
            return _write_clangd(args)
        if args.command == "demo":
            from .demo import demo

            return demo(args.demo_arch)
        if args.command == "precompile":
            return _precompile(args.archs, args.ops, args.jobs, args.ops_from, args.shipped, args.layer)
        if args.command == "doctor":
            from .doctor import doctor

            return doctor(args.json)
        if args.command == "cache":
            return _cache(args.action, getattr(args, "json", False))
    except CujitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2
