"""The compile cache on the CPU: keys, invalidation, the memory and disk layers, corruption, permissions,
offline mode, concurrency (threads and processes), CompileError and logging; keys that survive moving the
package, the headers and the project; processes killed while compiling or publishing; a full disk; the diagnosis
of wrong cuda_wrappers expressions and NVRTC's warnings.

Everything compiles with an explicit arch (``compile(arch="sm_90")``), which needs NVRTC but no GPU. The autouse
fixture of conftest.py gives each test its own ``CUJIT_CACHE_DIR`` and an empty memory cache;
``cache.clear_memory()`` simulates the memory of a new process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import cujit
from cujit import CompileError
from cujit._runtime import cache, toolchain

REPO = Path(__file__).resolve().parents[1]
ARCH = "sm_90"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

KERNEL = """\
#include <cujit/base.cuh>
template <int N>
__global__ void small_kernel(int* out) { out[threadIdx.x] = N; }
"""


# ---------------------------------------------------------------------------------------------------- helpers
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def module(
    path: Path,
    expr: str = "small_kernel<3>",
    name: str = "cache_test",
    **kwargs: object,
) -> cujit.JitModule:
    return cujit.load_jit(name, cuda_files=[path], cuda_wrappers=[("k", expr)], **kwargs)  # type: ignore[arg-type]


def small(tmp_path: Path, name: str = "small.cuh") -> Path:
    return write(tmp_path / name, KERNEL)


def cache_root() -> Path:
    return Path(os.environ["CUJIT_CACHE_DIR"])


def cache_folder() -> Path:
    return cache_root() / cache.SCHEMA


def entry(key: str) -> Path:
    return cache_folder() / (key + ".cubin")


def cubins() -> list[Path]:
    folder = cache_folder()
    return sorted(folder.glob("*.cubin")) if folder.is_dir() else []


class Counter:
    """The change of ``cujit.cache_stats()`` since it was made."""

    def __init__(self) -> None:
        self.start = cujit.cache_stats()

    def __getitem__(self, name: str) -> int:
        return cujit.cache_stats()[name] - self.start[name]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------- stats, logging
def test_cache_stats_has_the_documented_counters() -> None:
    stats = cujit.cache_stats()
    assert {"compiles", "disk_hits", "memory_hits"} <= set(stats)
    assert all(isinstance(v, int) for v in stats.values())
    stats["compiles"] = -1  # a snapshot: changing it changes nothing
    assert cujit.cache_stats()["compiles"] >= 0


def test_each_compile_is_logged_with_key_prefix_and_milliseconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cujit")
    m = module(small(tmp_path), name="logged")
    m.compile(arch=ARCH)
    key = m.cache_key(ARCH)
    records = [r for r in caplog.records if r.name == "cujit" and key[:16] in r.getMessage()]
    assert len(records) == 1, caplog.text
    message = records[0].getMessage()
    assert records[0].levelno == logging.INFO
    assert re.search(r"\b\d+(\.\d+)? ms\b", message), message
    assert "logged" in message and ARCH in message

    caplog.clear()
    cache.clear_memory()
    module(small(tmp_path), name="logged").compile(arch=ARCH)  # a disk hit compiles nothing: no compile record
    assert not [r for r in caplog.records if r.name == "cujit" and "compiled" in r.getMessage()]


# ---------------------------------------------------------------------------------------------------- invalidation
def test_header_edit_next_to_the_kernel_invalidates(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper.cuh", "constexpr int kValue = 1;\n")
    kernel = write(
        tmp_path / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        #include "helper.cuh"
        __global__ void quoted(int* out) { out[threadIdx.x] = kValue; }
        """,
    )
    count = Counter()
    first = module(kernel, "quoted").compile(arch=ARCH)
    assert count["compiles"] == 1

    helper.write_text("constexpr int kValue = 2;\n")
    second = module(kernel, "quoted").compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin

    # Back to the first contents: the key is content-based, so the first result comes back without compiling.
    helper.write_text("constexpr int kValue = 1;\n")
    cache.clear_memory()
    third = module(kernel, "quoted").compile(arch=ARCH)
    assert count["compiles"] == 2
    assert count["disk_hits"] == 1
    assert third.cubin == first.cubin


def test_header_through_extra_include_paths_with_angle_brackets_invalidates(tmp_path: Path) -> None:
    include = tmp_path / "include"
    header = write(include / "proj" / "values.cuh", "#define PROJ_VALUE 10\n")
    kernel = write(
        tmp_path / "src" / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        #include <proj/values.cuh>
        __global__ void angle(int* out) { out[threadIdx.x] = PROJ_VALUE; }
        """,
    )
    count = Counter()
    first = module(kernel, "angle", extra_include_paths=[include]).compile(arch=ARCH)
    header.write_text("#define PROJ_VALUE 11\n")
    second = module(kernel, "angle", extra_include_paths=[include]).compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin


def test_transitively_included_header_invalidates(tmp_path: Path) -> None:
    write(tmp_path / "a.cuh", '#include "b.cuh"\n')
    write(tmp_path / "deeper" / "b.cuh", "")  # a decoy: b.cuh is found next to a.cuh first
    write(tmp_path / "b.cuh", '#include "deeper/c.cuh"\n')
    c = write(tmp_path / "deeper" / "c.cuh", "constexpr int kDeep = 5;\n")
    kernel = write(
        tmp_path / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        #include "a.cuh"
        __global__ void deep(int* out) { out[threadIdx.x] = kDeep; }
        """,
    )
    count = Counter()
    first = module(kernel, "deep").compile(arch=ARCH)
    c.write_text("constexpr int kDeep = 6;\n")
    second = module(kernel, "deep").compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin


def test_untouched_source_is_a_disk_hit_in_a_new_process(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper.cuh", "constexpr int kValue = 1;\n")
    kernel = write(
        tmp_path / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        #include "helper.cuh"
        __global__ void same(int* out) { out[threadIdx.x] = kValue; }
        """,
    )
    count = Counter()
    first = module(kernel, "same").compile(arch=ARCH)
    assert (count["compiles"], count["disk_hits"]) == (1, 0)

    cache.clear_memory()
    second = module(kernel, "same").compile(arch=ARCH)
    assert (count["compiles"], count["disk_hits"]) == (1, 1)
    assert second.cubin == first.cubin
    assert second.lowered == first.lowered and second.params == first.params

    # A touched (but unchanged) header is not an edit: the key is over contents, not times.
    later = time.time() + 100
    os.utime(helper, (later, later))
    os.utime(kernel, (later, later))
    cache.clear_memory()
    module(kernel, "same").compile(arch=ARCH)
    assert (count["compiles"], count["disk_hits"]) == (1, 2)

    # Same process, new JitModule, memory not cleared: a memory hit.
    module(kernel, "same").compile(arch=ARCH)
    assert (count["compiles"], count["disk_hits"], count["memory_hits"]) == (1, 2, 1)


def test_repeated_compile_on_one_module_is_a_dict_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = module(small(tmp_path))
    first = m.compile(arch=ARCH)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a repeated compile must not hash sources or touch the cache")

    monkeypatch.setattr(cache, "cache_key", forbidden)
    monkeypatch.setattr(cache, "get_or_compile", forbidden)
    monkeypatch.setattr(cache, "disk_dir", forbidden)
    monkeypatch.setattr(Path, "read_bytes", forbidden)
    monkeypatch.setattr(Path, "stat", forbidden)
    count = Counter()
    for _ in range(3):
        assert m.compile(arch=ARCH) is first
    assert (count["compiles"], count["disk_hits"], count["memory_hits"]) == (0, 0, 0)


def test_key_is_stable_for_equal_inputs(tmp_path: Path) -> None:
    path = small(tmp_path)
    assert module(path).cache_key(ARCH) == module(path).cache_key(ARCH)
    assert re.fullmatch(r"[0-9a-f]{64}", module(path).cache_key(ARCH))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param({"arch": "sm_80"}, {"arch": "sm_90"}, id="arch"),
        pytest.param({"expr": "small_kernel<1>"}, {"expr": "small_kernel<2>"}, id="name-expression"),
        pytest.param({"flags": ["-DX=1"]}, {"flags": ["-DX=2"]}, id="define"),
        pytest.param({"flags": []}, {"flags": ["--fmad=false"]}, id="option"),
    ],
)
def test_key_covers_every_input(tmp_path: Path, one: dict[str, object], other: dict[str, object]) -> None:
    path = write(
        tmp_path / "keyed.cuh",
        """\
        #include <cujit/base.cuh>
        #ifndef X
        #define X 0
        #endif
        template <int N>
        __global__ void small_kernel(float* out) { out[threadIdx.x] = out[threadIdx.x] * 1.5f + (N + X); }
        """,
    )

    def build(spec: dict[str, object]) -> tuple[str, cache.Compiled]:
        m = module(path, str(spec.get("expr", "small_kernel<1>")), extra_cuda_cflags=spec.get("flags", []))  # type: ignore[arg-type]
        arch = str(spec.get("arch", ARCH))
        return m.cache_key(arch), m.compile(arch=arch)

    count = Counter()
    key_one, compiled_one = build(one)
    key_other, compiled_other = build(other)
    assert key_one != key_other
    assert count["compiles"] == 2
    assert len(cubins()) == 2
    assert compiled_one.cubin != compiled_other.cubin


# ---------------------------------------------------------------------------------------------------- disk format
def _truncate(blob: bytes, _: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _flip_middle(blob: bytes, _: bytes) -> bytes:
    i = len(blob) // 2
    return blob[:i] + bytes([blob[i] ^ 0x40]) + blob[i + 1 :]


def _garbage(blob: bytes, _: bytes) -> bytes:
    return os.urandom(len(blob))


def _empty(blob: bytes, _: bytes) -> bytes:
    return b""


def _foreign(blob: bytes, foreign: bytes) -> bytes:
    return foreign


@pytest.mark.parametrize(
    "damage",
    [_truncate, _flip_middle, _garbage, _empty, _foreign],
    ids=["truncated", "flipped-byte", "garbage", "empty", "foreign-entry"],
)
def test_corrupt_entry_is_a_miss_that_recompiles_and_replaces_it(tmp_path: Path, damage: object) -> None:
    path = small(tmp_path)
    good = module(path).compile(arch=ARCH)
    key = module(path).cache_key(ARCH)
    other = module(path, "small_kernel<4>")
    other.compile(arch=ARCH)
    other_blob = entry(other.cache_key(ARCH)).read_bytes()
    assert cache._decode(other_blob, other.cache_key(ARCH)) is not None

    blob = entry(key).read_bytes()
    assert cache._decode(blob, key) is not None
    entry(key).write_bytes(damage(blob, other_blob))  # type: ignore[operator]
    assert cache._decode(entry(key).read_bytes(), key) is None

    cache.clear_memory()
    count = Counter()
    again = module(path).compile(arch=ARCH)
    assert count["compiles"] == 1
    assert count["disk_hits"] == 0
    assert again.cubin == good.cubin
    restored = cache._decode(entry(key).read_bytes(), key)
    assert restored is not None and restored.cubin == good.cubin
    assert not [p for p in cache_folder().iterdir() if ".tmp." in p.name]

    cache.clear_memory()
    module(path).compile(arch=ARCH)
    assert (count["compiles"], count["disk_hits"]) == (1, 1)


def _seal(header: bytes, code: bytes) -> bytes:
    """An entry in the documented layout ``MAGIC | sha256(payload) | payload``, payload = len | JSON | code."""
    payload = len(header).to_bytes(4, "little") + header + code
    return cache._MAGIC + hashlib.sha256(payload).digest() + payload


def _forge(key: str, meta: object) -> bytes:
    """An entry whose checksum is right but whose metadata is malformed."""
    return _seal(json.dumps(meta).encode(), b"\x7fELF-not-really")


def _with_code(blob: bytes, code: bytes) -> bytes:
    """A valid entry ``blob`` with its machine code replaced (and its checksum made right again)."""
    head = len(cache._MAGIC) + 32
    size = int.from_bytes(blob[head : head + 4], "little")
    return _seal(blob[head + 4 : head + 4 + size], code)


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param(["not", "a", "dict"], id="meta-is-a-list"),
        pytest.param({"key": "{key}"}, id="fields-missing"),
        pytest.param({"key": "{key}", "arch": ARCH, "lowered": 5, "params": {}, "log": ""}, id="lowered-not-a-dict"),
        pytest.param(
            {"key": "{key}", "arch": ARCH, "lowered": {}, "params": {"k": [1]}, "log": ""}, id="param-not-a-dict"
        ),
        pytest.param(
            {"key": "{key}", "arch": ARCH, "lowered": {}, "params": [], "log": ""},
            id="params-not-a-dict"
        ),
    ],
)
def test_checksummed_entry_with_malformed_metadata_is_a_miss(tmp_path: Path, meta: object) -> None:
    path = small(tmp_path)
    good = module(path).compile(arch=ARCH)
    key = module(path).cache_key(ARCH)
    meta = json.loads(json.dumps(meta).replace("{key}", key))
    entry(key).write_bytes(_forge(key, meta))
    cache.clear_memory()
    count = Counter()
    assert module(path).compile(arch=ARCH).cubin == good.cubin
    assert count["compiles"] == 1
    assert cache._decode(entry(key).read_bytes(), key) is not None


def test_entry_that_cannot_be_replaced_leaves_the_result_in_memory(tmp_path: Path) -> None:
    path = small(tmp_path)
    key = module(path).cache_key(ARCH)
    folder = cache.disk_dir()
    assert folder is not None
    (folder / (key + ".cubin")).mkdir()  # os.replace onto a folder fails, whoever runs the test
    (folder / (key + ".cubin") / "keep").touch()
    count = Counter()
    with pytest.warns(RuntimeWarning, match="cannot write"):
        first = module(path).compile(arch=ARCH)
    assert count["compiles"] == 1 and count["disk_errors"] == 1
    assert module(path).compile(arch=ARCH) is first  # memory hit
    assert count["compiles"] == 1


def test_failed_publish_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = small(tmp_path)
    key = module(path).cache_key(ARCH)
    folder = cache.disk_dir()
    assert folder is not None
    (folder / (key + ".cubin")).mkdir()
    with pytest.warns(RuntimeWarning):
        module(path).compile(arch=ARCH)
    assert [p.name for p in folder.iterdir() if ".tmp." in p.name] == []


# ---------------------------------------------------------------------------------------------------- permissions
def test_cache_folder_is_private_and_entries_are_owner_only(tmp_path: Path) -> None:
    m = module(small(tmp_path))
    m.compile(arch=ARCH)
    assert stat.S_IMODE(cache_root().stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_folder().stat().st_mode) == 0o700
    files = list(cache_folder().iterdir())
    assert entry(m.cache_key(ARCH)) in files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_unusable_cache_folder_works_from_memory_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permission bits, so make the path unusable in a way that binds root too: below a regular file.
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CUJIT_CACHE_DIR", str(blocker / "cache"))
    path = small(tmp_path)
    count = Counter()
    with pytest.warns(RuntimeWarning, match=r"not usable.*memory only") as record:
        first = module(path).compile(arch=ARCH)
    assert str(blocker / "cache") in str(record[0].message)
    assert count["compiles"] == 1 and count["disk_hits"] == 0
    assert first.cubin

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per folder, not on every compile
        assert module(path).compile(arch=ARCH) is first
        module(path, "small_kernel<5>").compile(arch=ARCH)
    assert count["compiles"] == 2 and count["memory_hits"] == 1
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(
    IS_ROOT or not hasattr(os, "geteuid"),
    reason="root ignores permission bits (see the test above for a variant that binds root)",
)
def test_read_only_cache_folder_works_from_memory_with_a_warning(tmp_path: Path) -> None:
    folder = cache.disk_dir()
    assert folder is not None
    folder.chmod(0o500)
    try:
        count = Counter()
        with pytest.warns(RuntimeWarning):
            first = module(small(tmp_path)).compile(arch=ARCH)
        assert count["compiles"] == 1
        assert module(small(tmp_path)).compile(arch=ARCH) is first
        assert count["compiles"] == 1
        assert cubins() == []
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
@pytest.mark.parametrize("which", ["schema-folder", "cache-dir"])
def test_folder_writable_by_others_is_refused(tmp_path: Path, mode: int, which: str) -> None:
    path = small(tmp_path)
    good = module(path).compile(arch=ARCH)
    key = module(path).cache_key(ARCH)
    # Plant a well-formed entry with the right key whose code is not what this source compiles to.
    planted = _with_code(entry(key).read_bytes(), b"PLANTED-CODE")
    planted_decoded = cache._decode(planted, key)
    assert planted_decoded is not None and planted_decoded.cubin == b"PLANTED-CODE"
    entry(key).write_bytes(planted)
    target = cache_folder() if which == "schema-folder" else cache_root()
    target.chmod(mode)
    try:
        cache.clear_memory()
        count = Counter()
        with pytest.warns(RuntimeWarning) as record:
            again = module(path).compile(arch=ARCH)
        messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
        assert any(str(target) in m and f"chmod 700 {target}" in m and "CUJIT_CACHE_DIR" in m for m in messages), (
            messages
        )
        assert again.cubin == good.cubin != b"PLANTED-CODE"
        assert count["compiles"] == 1 and count["disk_hits"] == 0 and count["disk_writes"] == 0
        assert entry(key).read_bytes() == planted  # nothing written either
    finally:
        target.chmod(0o700)


def test_disk_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_DISK_CACHE", "0")
    path = small(tmp_path)
    count = Counter()
    first = module(path).compile(arch=ARCH)
    assert first.cubin
    assert not cache_root().exists()
    assert count["disk_writes"] == 0

    cache.clear_memory()
    module(path).compile(arch=ARCH)
    assert count["compiles"] == 2 and count["disk_hits"] == 0
    assert not cache_root().exists()


# ---------------------------------------------------------------------------------------------------- offline
def test_offline_miss_raises_and_a_filled_cache_serves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small(tmp_path)
    monkeypatch.setenv("CUJIT_OFFLINE", "1")
    count = Counter()
    with pytest.raises(CompileError) as info:
        module(path).compile(arch=ARCH)
    message = str(info.value)
    assert "offline" in message.lower()
    assert "python -m cujit precompile" in message
    assert count["compiles"] == 0
    assert cubins() == []

    monkeypatch.delenv("CUJIT_OFFLINE")
    filled = module(path).compile(arch=ARCH)
    cache.clear_memory()
    monkeypatch.setenv("CUJIT_OFFLINE", "1")
    count = Counter()
    served = module(path).compile(arch=ARCH)
    assert served.cubin == filled.cubin
    assert count["compiles"] == 0 and count["disk_hits"] == 1


# ---------------------------------------------------------------------------------------------------- concurrency
def _first_compiles_at_once(targets: list[cujit.JitModule]) -> list[object]:
    barrier = threading.Barrier(len(targets))
    results: list[object] = [None] * len(targets)

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = targets[i].compile(arch=ARCH)
        except BaseException as exc:  # reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.parametrize("shared", [True, False], ids=["one-module", "16-equal-modules"])
def test_threads_making_the_first_compile_compile_once(tmp_path: Path, shared: bool) -> None:
    path = small(tmp_path)
    targets = [module(path)] * 16 if shared else [module(path) for _ in range(16)]
    count = Counter()
    results = _first_compiles_at_once(targets)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert count["compiles"] == 1
    assert all(r is results[0] for r in results)
    if not shared:
        assert count["memory_hits"] == 15


CHILD = r"""
import contextlib, hashlib, json, os, sys, time
mode, kernel, ready, go = sys.argv[1:5]
import cujit
from cujit._runtime import cache
if mode == "nolock":
    @contextlib.contextmanager
    def _no_lock(folder, key):
        yield
    cache._file_lock = _no_lock
m = cujit.load_jit("race", cuda_files=[kernel], cuda_wrappers=[("k", "race_kernel<7>")])
key = m.cache_key("sm_90")
open(os.path.join(ready, str(os.getpid())), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.0005)
compiled = m.compile(arch="sm_90")
print(json.dumps({"stats": dict(cujit.cache_stats()), "sha": hashlib.sha256(compiled.cubin).hexdigest(),
                  "key": key}))
"""


def _race(tmp_path: Path, mode: str, n: int = 8) -> tuple[list[dict[str, object]], Path, str]:
    kernel = write(
        tmp_path / "race.cuh",
        """\
        #include <cujit/base.cuh>
        template <int N>
        __global__ void race_kernel(int* out, int n) {
          for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = N * i;
        }
        """,
    )
    ready, go = tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, str(kernel), str(ready), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(ready.iterdir())) < n and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.005)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return results, kernel, str(results[0]["key"])


def test_processes_cold_starting_at_once_compile_once(tmp_path: Path) -> None:
    results, kernel, key = _race(tmp_path, "lock")
    here = cujit.load_jit("race", cuda_files=[kernel], cuda_wrappers=[("k", "race_kernel<7>")])
    assert {r["key"] for r in results} == {here.cache_key(ARCH)}
    assert len({r["sha"] for r in results}) == 1
    assert sum(r["stats"]["compiles"] for r in results) == 1  # type: ignore[index]
    assert sum(r["stats"]["disk_hits"] for r in results) == 7  # type: ignore[index]
    decoded = cache._decode(entry(key).read_bytes(), key)
    assert decoded is not None and sha(decoded.cubin) == results[0]["sha"]
    assert not [p for p in cache_folder().iterdir() if ".tmp." in p.name]


def test_processes_without_the_lock_still_publish_identical_valid_entries(tmp_path: Path) -> None:
    results, _, key = _race(tmp_path, "nolock")
    assert len({r["key"] for r in results}) == 1
    assert len({r["sha"] for r in results}) == 1
    compiles = sum(r["stats"]["compiles"] for r in results)  # type: ignore[index]
    assert 1 <= compiles <= 8
    assert compiles + sum(r["stats"]["disk_hits"] for r in results) == 8  # type: ignore[index]
    decoded = cache._decode(entry(key).read_bytes(), key)
    assert decoded is not None and sha(decoded.cubin) == results[0]["sha"]
    assert [p.name for p in cache_folder().iterdir() if p.suffix == ".cubin"] == [key + ".cubin"]
    assert not [p for p in cache_folder().iterdir() if ".tmp." in p.name]


# ---------------------------------------------------------------------------------------------------- CompileError
BROKEN = """\
// line 1
#include <cujit/base.cuh>
template <int N>
__global__ void broken_kernel(int* out) {
  out[0] = N +;
}
"""
BROKEN_LINE = 5


def _broken(tmp_path: Path) -> tuple[Path, cujit.JitModule]:
    path = write(tmp_path / "broken.cuh", BROKEN).resolve()
    return path, cujit.load_jit(
        "broken", cuda_files=[path], cuda_wrappers=[("k", "broken_kernel<3>")], extra_cuda_cflags=["-DBROKEN_FLAG=1"]
    )


def test_compile_error_points_at_the_real_file_and_line(tmp_path: Path) -> None:
    path, m = _broken(tmp_path)
    count = Counter()
    with pytest.raises(CompileError) as info:
        m.compile(arch=ARCH)
    err = info.value
    where = f"{path.as_posix()}({BROKEN_LINE}): error"
    assert where in err.log
    assert where in str(err)
    assert "broken_kernel<3>" in str(err) and err.name_expressions == ("broken_kernel<3>",)
    assert "-DBROKEN_FLAG=1" in str(err) and f"-arch={ARCH}" in str(err)
    assert "-DBROKEN_FLAG=1" in err.options and f"-arch={ARCH}" in err.options
    assert "generated source" not in str(err)
    assert count["compiles"] == 0
    assert cubins() == []
    leftovers = [p.name for p in cache_folder().glob("*") if ".tmp." in p.name or p.suffix == ".cubin"]
    assert leftovers == []

    # The failure is not remembered: once the file is fixed, the same module compiles.
    path.write_text(BROKEN.replace("N +;", "N + 1;"))
    assert m.compile(arch=ARCH).cubin
    assert count["compiles"] == 1


def test_compile_error_with_dump_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_DUMP_SOURCE", "1")
    path, m = _broken(tmp_path)
    with pytest.raises(CompileError) as info:
        m.compile(arch=ARCH)
    message = str(info.value)
    assert "generated source" in message
    assert re.search(r"^\s+1  // cujit module broken", message, re.MULTILINE), message
    assert re.search(rf'^\s+\d+  #include "{re.escape(path.as_posix())}"$', message, re.MULTILINE), message
    assert info.value.numbered_source() in message


def test_compile_error_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_DUMP_SOURCE", "1")
    _, m = _broken(tmp_path)
    with pytest.raises(CompileError) as info:
        m.compile(arch=ARCH)
    err = info.value
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CompileError and isinstance(back, cujit.CujitError)
    assert str(back) == str(err)
    assert back.log == err.log and back.log
    assert back.options == err.options and back.options
    assert back.name_expressions == err.name_expressions == ("broken_kernel<3>",)
    assert back.source == err.source and back.source


# ---------------------------------------------------------------------------------------------------- key gaps
@pytest.mark.parametrize("form", ["-I{}", "--include-path={}", "-I {}"])
def test_header_through_an_include_flag_in_extra_cflags_invalidates(tmp_path: Path, form: str) -> None:
    include = tmp_path / "flag-include"
    header = write(include / "flagged.cuh", "#define FLAGGED 1\n")
    kernel = write(
        tmp_path / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        #include <flagged.cuh>
        __global__ void flagged(int* out) { out[threadIdx.x] = FLAGGED; }
        """,
    )
    flags = form.format(include).split(" ")
    count = Counter()
    first = module(kernel, "flagged", extra_cuda_cflags=flags).compile(arch=ARCH)
    header.write_text("#define FLAGGED 2\n")
    cache.clear_memory()
    second = module(kernel, "flagged", extra_cuda_cflags=flags).compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin


@pytest.mark.parametrize("form", ["--pre-include={}", "-include={}"])
def test_pre_included_header_invalidates(tmp_path: Path, form: str) -> None:
    header = write(tmp_path / "pre.cuh", "#define PRE_VALUE 1\n")
    kernel = write(
        tmp_path / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        __global__ void pre(int* out) { out[threadIdx.x] = PRE_VALUE; }
        """,
    )
    flags = [form.format(header)]
    count = Counter()
    first = module(kernel, "pre", extra_cuda_cflags=flags).compile(arch=ARCH)
    header.write_text("#define PRE_VALUE 2\n")
    cache.clear_memory()
    second = module(kernel, "pre", extra_cuda_cflags=flags).compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_header_next_to_a_symlinked_header_invalidates(tmp_path: Path) -> None:
    real, work = tmp_path / "real", tmp_path / "work"
    write(real / "a.cuh", '#include "b.cuh"\n')
    write(real / "b.cuh", '#error "the preprocessor reads b.cuh next to the link, not next to its target"\n')
    used = write(work / "b.cuh", "#define B_VALUE 1\n")
    (work / "a.cuh").symlink_to(real / "a.cuh")
    kernel = write(
        work / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        #include "a.cuh"
        __global__ void linked(int* out) { out[threadIdx.x] = B_VALUE; }
        """,
    )
    count = Counter()
    first = module(kernel, "linked").compile(arch=ARCH)  # compiles: NVRTC read work/b.cuh
    used.write_text("#define B_VALUE 2\n")
    cache.clear_memory()
    second = module(kernel, "linked").compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin


def test_cujit_header_shadowed_in_an_extra_include_path_invalidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "own-include"
    shutil.copytree(toolchain.cujit_include_dir(), own)
    monkeypatch.setattr(toolchain, "cujit_include_dir", lambda: own)  # stands for editing cujit/include itself
    vendored = tmp_path / "vendored"
    shutil.copytree(own, vendored)  # e.g. a project folder with its own copy of cujit's headers
    base = own / "cujit" / "base.cuh"
    original = base.read_text()
    base.write_text(original + "\n#define CUJIT_PROBE_VALUE 1\n")
    kernel = write(
        tmp_path / "kernel.cuh",
        """\
        #include <cujit/base.cuh>
        __global__ void shadow(int* out) { out[threadIdx.x] = CUJIT_PROBE_VALUE; }
        """,
    )
    count = Counter()
    # Compiles, so NVRTC read own/cujit/base.cuh (the vendored copy does not define CUJIT_PROBE_VALUE).
    first = module(kernel, "shadow", extra_include_paths=[vendored]).compile(arch=ARCH)
    base.write_text(original + "\n#define CUJIT_PROBE_VALUE 2\n")
    cache.clear_memory()
    second = module(kernel, "shadow", extra_include_paths=[vendored]).compile(arch=ARCH)
    assert count["compiles"] == 2
    assert second.cubin != first.cubin


# ---------------------------------------------------------------------------------------------------- relocation
def _project(root: Path) -> dict[str, object]:
    """A kernel folder reaching headers in every way: next to it, below it, through include paths and -I flags."""
    write(root / "kernels" / "reloc.cuh", """\
        #include <cujit/base.cuh>
        #include "local.cuh"
        #include <proj/values.cuh>
        #include <flagged.cuh>
        template <int N>
        __global__ void reloc(int* out) { out[threadIdx.x] = N + kLocal + PROJ_VALUE + FLAGGED + PRE_VALUE; }
        """)
    write(root / "kernels" / "local.cuh", '#include "sub/deeper.cuh"\nconstexpr int kLocal = kDeeper;\n')
    write(root / "kernels" / "sub" / "deeper.cuh", "constexpr int kDeeper = 1;\n")
    write(root / "include" / "proj" / "values.cuh", "#define PROJ_VALUE 10\n")
    write(root / "flag-include" / "flagged.cuh", "#define FLAGGED 100\n")
    write(root / "pre.cuh", "#define PRE_VALUE 1000\n")
    return {
        "cuda_files": [root / "kernels" / "reloc.cuh"],
        "extra_include_paths": [root / "include"],
        "extra_cuda_cflags": [f"-I{root / 'flag-include'}", f"--pre-include={root / 'pre.cuh'}"],
    }


def test_moved_project_folders_keep_their_key(tmp_path: Path) -> None:
    one = _project(tmp_path / "one")
    other = _project(tmp_path / "somewhere" / "else")

    def key(spec: dict[str, object]) -> str:
        return cujit.load_jit("reloc", cuda_wrappers=[("k", "reloc<3>")], **spec).cache_key(ARCH)  # type: ignore[arg-type]

    assert key(one) == key(other)
    # The same layout with other contents anywhere is another key.
    write(tmp_path / "somewhere" / "else" / "kernels" / "sub" / "deeper.cuh", "constexpr int kDeeper = 2;\n")
    assert key(one) != key(other)


def test_moved_cujit_include_folder_keeps_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small(tmp_path)
    before = module(path).cache_key(ARCH)
    moved = tmp_path / "moved" / "include"
    shutil.copytree(toolchain.cujit_include_dir(), moved)
    monkeypatch.setattr(toolchain, "cujit_include_dir", lambda: moved)
    assert module(path).cache_key(ARCH) == before
    (moved / "cujit" / "base.cuh").write_text((moved / "cujit" / "base.cuh").read_text() + "\n// edited\n")
    assert module(path).cache_key(ARCH) != before


def test_the_same_name_in_another_root_is_another_key(tmp_path: Path) -> None:
    # values.cuh found through the include path, or next to the kernel: same bytes, different search roots.
    write(tmp_path / "a" / "kernel.cuh", '#include <cujit/base.cuh>\n#include "values.cuh"\n' + KERNEL)
    write(tmp_path / "a" / "values.cuh", "#define V 1\n")
    write(tmp_path / "b" / "kernel.cuh", '#include <cujit/base.cuh>\n#include "values.cuh"\n' + KERNEL)
    write(tmp_path / "b" / "inc" / "values.cuh", "#define V 1\n")
    here = module(tmp_path / "a" / "kernel.cuh").cache_key(ARCH)
    there = module(tmp_path / "b" / "kernel.cuh", extra_include_paths=[tmp_path / "b" / "inc"]).cache_key(ARCH)
    assert here != there


RELOCATED = r"""
import json, sys
import cujit
from cujit._runtime import toolchain
from cujit.add_constant import add_constant
prefix, arch = sys.argv[1], sys.argv[2]
assert cujit.__file__.startswith(prefix), cujit.__file__
assert str(toolchain.cuda_include_dir()).startswith(prefix), toolchain.cuda_include_dir()
modules = [*add_constant.op.precompile_modules(), cujit.load_jit(
    "reloc", cuda_wrappers=[("k", "reloc<3>")], cuda_files=[prefix + "/proj/kernels/reloc.cuh"],
    extra_include_paths=[prefix + "/proj/include"],
    extra_cuda_cflags=["-I" + prefix + "/proj/flag-include", "--pre-include=" + prefix + "/proj/pre.cuh"])]
keys = [m.cache_key(arch) for m in modules]
for m in modules:
    m.compile(arch)
print(json.dumps({"keys": keys, "stats": dict(cujit.cache_stats())}))
"""


def test_moved_package_headers_and_project_load_offline_with_no_compile(tmp_path: Path) -> None:
    """Fill the cache from one prefix, move everything to another, load there with CUJIT_OFFLINE=1."""
    first = tmp_path / "first"
    shutil.copytree(REPO / "cujit", first / "pkg" / "cujit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(toolchain.cuda_include_dir(), first / "site" / "nvidia" / "cuda_runtime" / "include")
    _project(first / "proj")

    def run(prefix: Path, **env: str) -> dict[str, object]:
        full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(prefix / "pkg"), str(prefix / "site")])}
        # Run from the prefix: `python -c` puts the working folder first on sys.path, and the checkout's cujit
        # must not be the one imported.
        out = subprocess.run([sys.executable, "-c", RELOCATED, str(prefix), ARCH], capture_output=True, text=True,
                             env=full, cwd=prefix, timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    filled = run(first)
    assert filled["stats"]["compiles"] == 5  # type: ignore[index]
    second = tmp_path / "second" / "deeper"
    shutil.copytree(first, second)
    shutil.rmtree(first)  # nothing may still point there
    loaded = run(second, CUJIT_OFFLINE="1")
    assert loaded["keys"] == filled["keys"]
    assert (loaded["stats"]["compiles"], loaded["stats"]["disk_hits"]) == (0, 5)  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------- killed, full
KILLED = r"""
import os, signal, sys
import cujit
from cujit._runtime import cache
where = sys.argv[2]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "compiling":
    cache.compile_nvrtc = die          # killed inside NVRTC's compile, holding the lock
else:
    os.fsync = die                     # killed after writing the temporary file, before publishing it
cujit.load_jit("killed", cuda_files=[sys.argv[1]], cuda_wrappers=[("k", "small_kernel<3>")]).compile(arch="sm_90")
"""


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs POSIX signals and flock")
@pytest.mark.parametrize("where", ["compiling", "publishing"])
def test_a_process_killed_mid_compile_leaves_nothing_that_breaks_later_runs(tmp_path: Path, where: str) -> None:
    import fcntl
    import signal

    path = small(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", KILLED, str(path), where], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == -signal.SIGKILL, out.stderr
    m = cujit.load_jit("killed", cuda_files=[path], cuda_wrappers=[("k", "small_kernel<3>")])
    key = m.cache_key(ARCH)
    lock = cache_folder() / (key + ".lock")
    assert lock.exists() and not entry(key).exists()
    orphans = [p for p in cache_folder().iterdir() if ".tmp." in p.name]
    assert len(orphans) == (1 if where == "publishing" else 0)

    # The lock died with its holder: it is free at once.
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

    # An orphan younger than a minute may belong to a writer still at work; an older one is removed on publish.
    for orphan in orphans:
        old = time.time() - 120
        os.utime(orphan, (old, old))
    count = Counter()
    compiled = m.compile(arch=ARCH)
    assert count["compiles"] == 1 and count["disk_writes"] == 1
    assert cache._decode(entry(key).read_bytes(), key) is not None and compiled.cubin
    assert [p for p in cache_folder().iterdir() if ".tmp." in p.name] == []


def test_temporary_files_are_removed_only_when_orphaned(tmp_path: Path) -> None:
    folder = cache.disk_dir()
    assert folder is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()

    def plant(name: str, age: float) -> Path:
        path = folder / name
        path.write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
        return path

    key = "f" * 64
    young_dead = plant(f"{key}.tmp.{dead.pid}.00000001", 5)
    old_dead = plant(f"{key}.tmp.{dead.pid}.00000002", 120)
    old_alive = plant(f"{key}.tmp.{os.getpid()}.00000003", 120)
    ancient_alive = plant(f"{key}.tmp.{os.getpid()}.00000004", 2 * 3600)
    unrelated = plant("notes.txt", 2 * 3600)
    assert cache._sweep_temporaries(folder) == 2
    assert young_dead.exists() and old_alive.exists() and unrelated.exists()
    assert not old_dead.exists() and not ancient_alive.exists()


@pytest.mark.parametrize("failing", ["write", "fsync", "open"])
def test_a_full_disk_keeps_working_from_memory_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    import errno

    real = getattr(os, failing)

    def full(*args: object, **kwargs: object) -> object:
        if failing == "open" and ".tmp." not in str(args[0]):
            return real(*args, **kwargs)  # the lock file opens; the entry cannot be written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    folder = cache.disk_dir()
    assert folder is not None
    monkeypatch.setattr(cache, "_WARNED", set())
    count = Counter()
    with monkeypatch.context() as patch:
        patch.setattr(os, failing, full)
        with pytest.warns(RuntimeWarning) as record:
            first = module(small(tmp_path)).compile(arch=ARCH)
            module(small(tmp_path), "small_kernel<4>").compile(arch=ARCH)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert f"cannot save compiled kernels in {folder}: no space left on its disk" in messages[0]
    assert "memory only" in messages[0] and "cache clear" in messages[0]
    assert record[0].filename == __file__, record[0].filename
    assert count["compiles"] == 2 and count["disk_errors"] == 2 and count["disk_writes"] == 0
    assert cubins() == [] and [p for p in folder.iterdir() if ".tmp." in p.name] == []
    assert module(small(tmp_path)).compile(arch=ARCH) is first  # from memory
    assert count["compiles"] == 2


def test_cache_warnings_point_at_the_callers_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("")
    monkeypatch.setenv("CUJIT_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="not usable") as record:
        module(small(tmp_path)).compile(arch=ARCH)
    assert record[0].filename == __file__


# ---------------------------------------------------------------------------------------------------- diagnostics
DIAG = """\
#include <cujit/base.cuh>
template <int N>
__global__ void templated(int* out) { out[threadIdx.x] = N; }
__global__ void plain(int* out) { out[0] = 1; }
__device__ void device_only(int* out) { out[0] = 2; }
"""


ARITY = ("whose template arguments do not fit function template 'templated' (wrong number or kind of template "
         "arguments, or none given)")


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        pytest.param("no_such_kernel<3>", "which names nothing declared there ('no_such_kernel' is undefined)",
                     id="unknown-name"),
        pytest.param("templated<1, 2>", ARITY, id="too-many-arguments"),
        pytest.param("templated", ARITY, id="no-arguments"),
        pytest.param("templated<float>", ARITY, id="type-for-a-value"),
        pytest.param("plain<3>", "which gives template arguments to 'plain', a function that is not a template",
                     id="not-a-template"),
        pytest.param("device_only", "which does not name a __global__ function", id="device-function"),
    ],
)
def test_a_wrong_wrapper_expression_is_named_in_the_first_line(tmp_path: Path, expr: str, why: str) -> None:
    path = write(tmp_path / "diag.cuh", DIAG).resolve()
    m = cujit.load_jit("diag", cuda_files=[path], cuda_wrappers=[("good", "plain"), ("bad", expr)])
    with pytest.raises(CompileError) as info:
        m.compile(arch=ARCH)
    first, *rest = str(info.value).splitlines()
    # Only the bad expression is named; the good one ("plain") is not blamed.
    assert first == (f"cuda_wrappers of module 'diag': expected each expression to name a __global__ function (with "
                     f"its template arguments) declared in {path.as_posix()}, got {expr!r}, {why}")
    assert "NVRTC could not compile module 'diag'" in "\n".join(rest)
    assert "__nv_name_map" in info.value.log  # NVRTC's own log follows, unchanged
    assert info.value.log in str(info.value)


def test_every_wrong_expression_is_named_in_declaration_order(tmp_path: Path) -> None:
    path = write(tmp_path / "diag.cuh", DIAG).resolve()
    m = cujit.load_jit("diag", cuda_files=[path],
                       cuda_wrappers=[("a", "missing_a"), ("good", "templated<2>"), ("b", "device_only")])
    with pytest.raises(CompileError) as info:
        m.compile(arch=ARCH)
    first = str(info.value).splitlines()[0]
    assert first.endswith("got 'missing_a', which names nothing declared there ('missing_a' is undefined); "
                          "'device_only', which does not name a __global__ function"), first


def test_errors_in_the_kernel_file_come_first(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.cuh", "__global__ void broken(int* out) { out[0] = ; }\n").resolve()
    m = cujit.load_jit("diag", cuda_files=[path], cuda_wrappers=[("k", "broken"), ("missing", "not_there")])
    with pytest.raises(CompileError) as info:
        m.compile(arch=ARCH)
    message = str(info.value)
    assert message.startswith("NVRTC could not compile module 'diag'")
    assert f"{path.as_posix()}(1): error" in message


UNUSED = """\
#include <cujit/base.cuh>
__global__ void unused_variable(int* out) { int never_read = 3; out[0] = 1; }
"""


def test_nvrtc_warnings_reach_the_caller_once_per_compile(tmp_path: Path) -> None:
    path = write(tmp_path / "unused.cuh", UNUSED).resolve()

    def fresh() -> cujit.JitModule:
        return cujit.load_jit("warned", cuda_files=[path], cuda_wrappers=[("k", "unused_variable")])

    with pytest.warns(cujit.CompileWarning) as record:
        compiled = fresh().compile(arch=ARCH)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"NVRTC warnings for module 'warned' ({ARCH}):")
    assert f"{path.as_posix()}(2): warning" in message and "never_read" in message
    assert record[0].filename == __file__
    assert "never_read" in compiled.log

    # A cached module does not warn again: from memory, nor from disk in a new process; its log is kept.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh().compile(arch=ARCH)
        cache.clear_memory()
        again = fresh().compile(arch=ARCH)
    assert "never_read" in again.log


def test_a_clean_compile_does_not_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module(small(tmp_path)).compile(arch=ARCH).cubin


WARM_LOOKUP = textwrap.dedent("""\
    import json, sys
    from cujit.add_constant import add_constant
    import cujit
    add_constant.op.module(constant=3).compile("sm_90")
    print(json.dumps({"cupy": "cupy" in sys.modules, "stats": dict(cujit.cache_stats())}))
    """)


def test_a_new_process_imports_no_cupy_to_compile_or_to_hit_the_cache(tmp_path: Path) -> None:
    """A hit's key needs NVRTC's version, which the library gives through ctypes; a compile goes through CuPy's NVRTC
    binding, whose first call would import all of CuPy (0.1-0.5 s) but for frameworks.cupy_left_unimported."""
    env = {**os.environ, "CUJIT_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", WARM_LOOKUP], capture_output=True, text=True, env=env,
                             timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["stats"]["compiles"] == 1 and not cold["cupy"]
    assert warm["stats"]["compiles"] == 0 and warm["stats"]["disk_hits"] == 1
    assert not warm["cupy"]
