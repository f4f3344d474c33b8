"""The compile server: the shared include prefix, identical results through the server, and the fallbacks."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import cujit
from cujit._runtime import compile as compiling
from cujit._runtime import compile_server, headers

HEAVY = """// a comment first
#pragma once
#include <cmath>
#include <type_traits>
#include <cub/block/block_reduce.cuh>
#include "local.cuh"
template <int kBlock>
__global__ void k(float* p) {
  using R = cub::BlockReduce<float, kBlock>;
  __shared__ typename R::TempStorage t;
  float v = R(t).Sum(p[threadIdx.x]);
  if (threadIdx.x == 0) p[0] = std::sqrt(v) + kOffset;
}
"""


# NVRTC names internal-linkage symbols (libcu++'s customization point objects, anonymous namespaces) after the
# translation unit, the process and the time of the compile, so two compiles of one source differ in those bytes,
# in-process as well; nothing else differs.
_INTERNAL = re.compile(rb"_cu_[0-9a-f]{8}_\d+")


def _normalised(cubin: bytes) -> bytes:
    return _INTERNAL.sub(lambda m: b"_cu_" + b"0" * (len(m.group(0)) - 4), cubin)


def _module(tmp_path: Path, name: str = "heavy", block: int = 128) -> cujit.JitModule:
    (tmp_path / "local.cuh").write_text("#pragma once\nconstexpr float kOffset = 1.0f;\n")
    (tmp_path / "heavy.cuh").write_text(HEAVY)
    return cujit.load_jit(name, cuda_files=[tmp_path / "heavy.cuh"], cuda_wrappers=[("k", f"k<{block}>")])


def test_shared_prefix_takes_leading_system_includes(tmp_path: Path) -> None:
    module = _module(tmp_path)
    assert module.sources.shared_prefix() == ("cmath", "type_traits", "cub/block/block_reduce.cuh")
    source = module.sources.main_source()
    assert source.index("#include <cub/block/block_reduce.cuh>") < source.index('heavy.cuh"')


@pytest.mark.parametrize(("text", "expected"), [
    ("#ifndef G\n#define G\n#include <cstdint>\n#include <cmath>\nint x;\n#include <utility>\n", ("cstdint", "cmath")),
    ("#define X 1\n#include <cmath>\n", ()),  # a macro before the includes could change them
    ("#ifndef G\n#include <cmath>\n", ()),  # not an include guard
    ('#include "local.cuh"\n#include <cmath>\n', ()),
    ("#include <no/such/header.h>\n#include <cmath>\n", ()),
    ("/* a\n block */\n#include <cub/block/block_reduce.cuh>\n", ("cub/block/block_reduce.cuh",)),
])
def test_shared_prefix_rules(tmp_path: Path, text: str, expected: tuple[str, ...]) -> None:
    (tmp_path / "k.cuh").write_text(text)
    assert headers.shared_prefix(tmp_path / "k.cuh", ()) == expected


def test_shared_prefix_skips_headers_of_user_folders(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "cmath").write_text("#pragma once\n")
    (tmp_path / "k.cuh").write_text("#include <cstdint>\n#include <cmath>\n")
    assert headers.shared_prefix(tmp_path / "k.cuh", (tmp_path / "mine",)) == ("cstdint",)


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A compile server running in a thread of this process, for the test's cache folder."""
    monkeypatch.setenv("CUJIT_COMPILE_SERVER", "1")
    monkeypatch.setattr(compile_server, "_start_server", lambda path: None)
    path = compile_server.socket_path()
    assert path is not None
    thread = threading.Thread(target=compile_server.serve, args=(path, 1.0), daemon=True)
    thread.start()
    for _ in range(200):
        if path.exists():
            break
        time.sleep(0.05)
    yield path
    thread.join(timeout=30)
    assert not path.exists()  # gone once idle


def test_server_result_is_the_in_process_result(tmp_path: Path, server: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from cujit._runtime import cache

    before = dict(compile_server.STATS)
    results = []
    for block in (128, 256, 128):
        sources = _module(tmp_path, f"heavy{block}", block).sources
        results.append(compiling.compile_nvrtc(sources, "sm_80", cache.header_files(sources)))
        if len(results) == 1:
            for _ in range(600):  # the server makes the prefix's PCH after answering
                if list(Path(server.parent).glob("*.sock")) and compile_server.STATS["requests"] > before["requests"]:
                    break
                time.sleep(0.05)
    assert compile_server.STATS["requests"] - before["requests"] == 3
    # The PCH is made after the first answer; by the third at the latest it is used.
    assert compile_server.STATS["pch_used"] - before["pch_used"] >= 1
    monkeypatch.setenv("CUJIT_COMPILE_SERVER", "0")
    for block, remote in zip((128, 256, 128), results, strict=True):
        sources = _module(tmp_path, f"heavy{block}", block).sources
        local = compiling.compile_nvrtc(sources, "sm_80", None)
        assert (_normalised(remote.cubin), remote.lowered, remote.params, remote.log) == (
            _normalised(local.cubin), local.lowered, local.params, local.log)


def test_no_server_means_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_COMPILE_SERVER", "1")
    started: list[Path] = []
    monkeypatch.setattr(compile_server, "_start_server", started.append)
    path = compile_server.socket_path()
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text("")  # a socket file that nobody listens on
    module = _module(tmp_path)
    module.compile("sm_80")
    assert started == [path]


def test_server_off_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Path] = []
    monkeypatch.setattr(compile_server, "_start_server", started.append)
    request = compile_server.Request("__global__ void k() {}\n", "k.cu", ("-arch=sm_80",), ("k",), ("cmath",), "")
    assert compile_server.compile_remote(request) is None
    assert started == []


def test_prefix_digest_follows_user_headers(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "mine.cuh").write_text("#pragma once\n")
    (tmp_path / "k.cuh").write_text("#include <cmath>\n#include <mine.cuh>\n__global__ void k() {}\n")
    module = cujit.load_jit("digest", cuda_files=[tmp_path / "k.cuh"], cuda_wrappers=[("k", "k")],
                            extra_include_paths=[tmp_path / "inc"])
    from cujit._runtime import cache

    first = compiling._prefix_digest(module.sources, cache.header_files(module.sources) or [])
    (tmp_path / "inc" / "mine.cuh").write_text("#pragma once\n// edited\n")
    assert compiling._prefix_digest(module.sources, cache.header_files(module.sources) or []) != first
