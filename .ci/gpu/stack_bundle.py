"""Carry a set of wheels to a GPU machine that takes under 64 MB per call: pack them small, unpack them there.

    python3 .ci/gpu/stack_bundle.py pack OUT_DIR WHEEL ...    # here: OUT_DIR/stack.tzst.NN + manifest.txt
    python3 .ci/gpu/stack_bundle.py unpack PARTS_DIR WHEEL_DIR  # there: the wheels again, checked

Wheels are zip files, each compressed on its own, and the CUDA wheels repeat much of each other's contents (CuPy's
and NVRTC's libraries, two sets of headers), so the files inside them, packed together in one tar with zstd's long
window, take about 55% of the wheels' bytes: cujit's default CUDA 12 stack goes in three parts instead of five.

``pack`` unzips each wheel into a folder named after it, tars the folders, compresses with the ``zstd`` command
(level 19, 1 GiB window), cuts the result into parts of --part-mb MB and writes manifest.txt (the archive's size
and sha256, then one line per wheel). ``unpack`` joins the parts, checks size and sha256, decompresses (with the
``zstd`` command, else the ``zstandard`` module, installed from a ``zstandard-*.whl`` in PARTS_DIR when needed),
checks every file of every wheel against the sha256 its RECORD lists, and zips each folder back into its wheel.
The rebuilt wheel holds the same files as the original, so pip installs the same thing; only the zip container
differs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = "stack.tzst."
MANIFEST = "manifest.txt"
WINDOW_LOG = 30  # zstd --long=30: matches up to 1 GiB apart, across wheels


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(out: Path, wheels: list[Path], part_mb: int) -> None:
    """Write out/stack.tzst.NN and out/manifest.txt for ``wheels``."""
    if shutil.which("zstd") is None:
        raise SystemExit("pack needs the zstd command (apt install zstd)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(PARTS + "*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp, "tree")
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tree / wheel.name)
        archive = Path(tmp, "stack.tar.zst")
        tar = subprocess.Popen(["tar", "cf", "-", "-C", str(tree), *sorted(w.name for w in wheels)],
                               stdout=subprocess.PIPE)
        subprocess.run(["zstd", "-q", "-19", f"--long={WINDOW_LOG}", "-T0", "-o", str(archive)], stdin=tar.stdout,
                       check=True)
        if tar.wait() != 0:
            raise SystemExit("tar failed")
        size = archive.stat().st_size
        part = part_mb * 1000 * 1000
        with archive.open("rb") as f:
            for i in range(-(-size // part)):
                (out / f"{PARTS}{i:02d}").write_bytes(f.read(part))
        lines = [f"archive {size} {_sha256(archive)}"]
        lines += [f"wheel {w.name} {w.stat().st_size} {_sha256(w)}" for w in wheels]
    (out / MANIFEST).write_text("\n".join(lines) + "\n")
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 1e6:.0f} MB -> {size / 1e6:.0f} MB in "
          f"{len(list(out.glob(PARTS + '*')))} parts of at most {part_mb} MB in {out}")


def _decompressor(parts: Path) -> list[str] | None:
    """The zstd command line, or None to use the zstandard module (installed from PARTS_DIR if needed)."""
    if shutil.which("zstd") is not None:
        return ["zstd", "-q", "-d", f"--long={WINDOW_LOG}", "-c"]
    try:
        import zstandard  # noqa: F401
    except ImportError:
        wheels = sorted(parts.glob("zstandard-*.whl"))
        if not wheels:
            raise SystemExit("unpack needs the zstd command or the zstandard module (a zstandard-*.whl in "
                             f"{parts} will do)") from None
        target = Path(tempfile.mkdtemp(prefix="zstandard-"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(target), str(wheels[-1])], check=True)
        sys.path.insert(0, str(target))
    return None


def _check_record(folder: Path) -> int:
    """Check every file of an unpacked wheel against its RECORD; returns the number of files checked."""
    records = list(folder.glob("*.dist-info/RECORD"))
    if len(records) != 1:
        raise SystemExit(f"{folder.name}: expected one .dist-info/RECORD, found {len(records)}")
    checked = 0
    for line in records[0].read_text().splitlines():
        name, _, rest = line.partition(",")
        digest = rest.partition(",")[0]
        if not digest:
            continue  # RECORD itself, and signature files
        algorithm, _, want = digest.partition("=")
        data = (folder / name).read_bytes()
        got = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=").decode()
        if got != want:
            raise SystemExit(f"{folder.name}: {name} does not match its RECORD")
        checked += 1
    return checked


def unpack(parts: Path, dest: Path) -> None:
    """Rebuild the wheels listed in parts/manifest.txt into ``dest``."""
    lines = [line.split() for line in (parts / MANIFEST).read_text().splitlines() if line.strip()]
    _, size, sha = next(line for line in lines if line[0] == "archive")
    wheels = [line[1] for line in lines if line[0] == "wheel"]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp, "stack.tar.zst")
        with archive.open("wb") as f:
            for part in sorted(parts.glob(PARTS + "*")):
                f.write(part.read_bytes())
        if archive.stat().st_size != int(size):
            raise SystemExit(f"the parts hold {archive.stat().st_size} bytes, the manifest lists {size}: a part is "
                             "missing")
        if _sha256(archive) != sha:
            raise SystemExit("the joined parts do not match the manifest's sha256")
        tree = Path(tmp, "tree")
        tree.mkdir()
        command = _decompressor(parts)
        tar = subprocess.Popen(["tar", "xf", "-", "-C", str(tree)], stdin=subprocess.PIPE)
        assert tar.stdin is not None
        with archive.open("rb") as f:
            if command is not None:
                subprocess.run(command, stdin=f, stdout=tar.stdin, check=True)
            else:
                import zstandard
                reader = zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG).stream_reader(f)
                shutil.copyfileobj(reader, tar.stdin)
        tar.stdin.close()
        if tar.wait() != 0:
            raise SystemExit("tar failed")
        for name in wheels:
            folder = tree / name
            checked = _check_record(folder)
            with zipfile.ZipFile(dest / name, "w", zipfile.ZIP_STORED) as z:
                for root, _, files in os.walk(folder):
                    for file in sorted(files):
                        path = Path(root, file)
                        z.write(path, path.relative_to(folder).as_posix())
            print(f"{name}: {checked} files match RECORD")


def main() -> None:
    """Command line: pack or unpack."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("wheels", type=Path, nargs="+")
    p.add_argument("--part-mb", type=int, default=55)
    u = sub.add_parser("unpack")
    u.add_argument("parts", type=Path)
    u.add_argument("dest", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.out, args.wheels, args.part_mb)
    else:
        unpack(args.parts, args.dest)


if __name__ == "__main__":
    main()
