"""The per-host compile server: one long-lived process that compiles for every cujit process of a user.

NVRTC spends most of a heavy module's compile parsing its headers (libcu++, CUB: 0.6-0.8 s of a 0.8 s compile on a
2-core host), and its precompiled headers (PCH) only work inside the process that made them. The server keeps
them: it compiles a module's shared header prefix (see ``SourceSet.shared_prefix``) into a PCH once, and every
later module, from any process, that starts with the same headers is compiled on top of it, 3-4x faster.

What a client sends is exactly what an in-process compile would run (source, options, name expressions); the server
only adds ``--use-pch``, which does not change NVRTC's output. Each PCH file is named after a digest of everything
it was made from (options, the prefix, and the contents of the files the prefix could reach outside the
toolchain's folders, which the server's identity covers), because NVRTC does not notice a header that changed.

One server per cache folder and toolchain identity: its unix socket lives in ``<cache>/server/``. A process that
finds no server starts one in the background and compiles in-process meanwhile; any failure to reach or talk to a
server means an in-process compile (never an error), and a server that has been idle for ``IDLE_S`` exits.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config, headers, toolchain
from .version import __version__

__all__ = ["Request", "Result", "compile_remote", "run_nvrtc", "serve", "socket_path"]

#: What the servers of this process did (tests read it): requests answered, and those compiled on a PCH.
STATS = {"requests": 0, "pch_used": 0}
#: Seconds a server waits for its next request before it exits.
IDLE_S = 600.0
#: Seconds a client waits for a server's answer; past it, the client compiles in-process.
_REPLY_TIMEOUT_S = 120.0
_CONNECT_TIMEOUT_S = 0.5
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
_PROTOCOL = 1
# 629/630/20282: a PCH that does not fit the options, the prefix or this heap (NVRTC then compiles without it).
# The PCH is only used where these flags are the same as when it was made, so both sides pass them.
_PCH_FLAGS = ("--pch-messages=false", "-diag-suppress=629,630,20282")
#: Precompiled header prefixes a server keeps (each file is 100-200 MB).
MAX_PCH = 6


@dataclass(frozen=True)
class Request:
    """One compile, as an in-process compile would run it."""

    source: str
    filename: str
    options: tuple[str, ...]
    names: tuple[str, ...]
    #: The shared prefix's ``#include`` names (empty: no PCH) and the digest of what they can reach.
    prefix: tuple[str, ...] = ()
    prefix_digest: str = ""


@dataclass(frozen=True)
class Result:
    """NVRTC's answer: success, its status text, the log, the cubin and each name expression's lowered name."""

    ok: bool
    status: str
    log: str
    cubin: bytes
    lowered: dict[str, str]


def run_nvrtc(request: Request, pch: Sequence[str] = ()) -> Result:
    """Compile ``request`` with NVRTC in this process; ``pch`` are PCH options put before the others."""
    nvrtc = toolchain.compiling_nvrtc()
    program = nvrtc.createProgram(request.source, request.filename, [], [])
    try:
        for expr in request.names:
            nvrtc.addNameExpression(program, expr)
        try:
            nvrtc.compileProgram(program, [*pch, *request.options])
        except nvrtc.NVRTCError as exc:
            return Result(False, str(exc), _program_log(nvrtc, program), b"", {})
        cubin = bytes(nvrtc.getCUBIN(program))
        lowered = {expr: str(nvrtc.getLoweredName(program, expr)) for expr in request.names}
        return Result(True, "", _program_log(nvrtc, program), cubin, lowered)
    finally:
        nvrtc.destroyProgram(program)


def _program_log(nvrtc: object, program: object) -> str:
    try:
        return str(nvrtc.getProgramLog(program)).strip()  # type: ignore[attr-defined]
    except Exception:  # the log is a courtesy; never hide the real error behind it
        return ""


# ---------------------------------------------------------------------------------------------------- identity
def _identity() -> str:
    """Everything that makes two processes' compiles differ besides the request: the toolchain and cujit."""
    parts = [
        f"protocol={_PROTOCOL}", f"cujit={__version__}", f"python={sys.executable}",
        "nvrtc={}.{}".format(*toolchain.nvrtc_version()), toolchain.cuda_headers_identity(),
        toolchain.cccl_identity(), headers.identity(), _stand_ins_digest(),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _stand_ins_digest() -> str:
    """The contents of the stand-in headers (a prefix reaches them), by name; a checkout may edit them."""
    h = hashlib.sha256()
    root = headers.stand_in_dir()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def socket_path() -> Path | None:
    """Where this toolchain's server listens, or None where no socket can be made there (path too long)."""
    path = config.cache_dir() / "server" / f"{_identity()}.sock"
    return path if len(os.fsencode(path)) <= _MAX_SOCKET_PATH else None


# ---------------------------------------------------------------------------------------------------- wire
def _send(sock: socket.socket, payload: dict[str, object]) -> None:
    data = json.dumps(payload).encode()
    sock.sendall(struct.pack("!Q", len(data)) + data)


def _recv(sock: socket.socket) -> dict[str, object]:
    size = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    return json.loads(_recv_exact(sock, size))  # type: ignore[no-any-return]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------------- client
def compile_remote(request: Request) -> Result | None:
    """``request`` compiled by the host's server, or None (no server yet, or any failure): compile in-process.

    Where no server answers, one is started in the background for the next compiles.
    """
    if not config.compile_server():
        return None
    try:
        path = socket_path()
    except Exception:  # the server is an optimisation: whatever keeps it from working, compile in-process
        return None
    if path is None:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_CONNECT_TIMEOUT_S)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            _start_server(path)
            return None
        try:
            sock.settimeout(_REPLY_TIMEOUT_S)
            _send(sock, {
                "protocol": _PROTOCOL, "source": request.source, "filename": request.filename,
                "options": list(request.options), "names": list(request.names), "prefix": list(request.prefix),
                "prefix_digest": request.prefix_digest,
            })
            reply = _recv(sock)
            return Result(
                ok=bool(reply["ok"]), status=str(reply["status"]), log=str(reply["log"]),
                cubin=base64.b64decode(str(reply["cubin"])),
                lowered={str(k): str(v) for k, v in dict(reply["lowered"]).items()},  # type: ignore[call-overload]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _start_server(path: Path) -> None:
    """Start a server for ``path`` in the background, detached from this process; failures are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        package_root = Path(__file__).resolve().parent.parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]),
               **toolchain.nvrtc_environment()}  # the server compiles with this process's NVRTC
        subprocess.Popen(
            [sys.executable, "-m", "cujit._runtime.compile_server", os.fspath(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, env=env, cwd=path.parent,
        )
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------- server
class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, pch_dir: Path) -> None:
        super().__init__(os.fspath(path), _Handler)
        self.pch_dir = pch_dir
        self.last_request = time.monotonic()
        self.busy = 0
        self.lock = threading.Lock()
        self.pch_locks: dict[str, threading.Lock] = {}
        self.pch_used: dict[Path, float] = {}

    def pch_for(self, request: Request) -> tuple[str, ...] | None:
        """The PCH options for ``request``; None where its prefix has no PCH yet (see :meth:`make_pch`)."""
        if not request.prefix:
            return ()
        file = self._pch_file(request)
        if not file.exists():
            return None
        with self.lock:
            self.pch_used[file] = time.monotonic()
        return (f"--use-pch={file}", *_PCH_FLAGS)

    def make_pch(self, request: Request) -> None:
        """Make the PCH of ``request``'s prefix (after answering it), keeping the ``MAX_PCH`` latest used."""
        file = self._pch_file(request)
        with self.lock:
            lock = self.pch_locks.setdefault(file.name, threading.Lock())
        with lock:
            if file.exists():
                return
            seed = "".join(f"#include <{name}>\n" for name in request.prefix) + "namespace cujit_pch_seed {}\n"
            part = file.with_suffix(".part")  # a compile must never see a PCH that is still being written
            made = run_nvrtc(Request(seed, "cujit_pch_seed.cu", request.options, ()),
                             (f"--create-pch={part}", *_PCH_FLAGS))
            if not made.ok or not part.exists():
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                return
            part.replace(file)
            with self.lock:
                self.pch_used[file] = time.monotonic()
                stale = sorted(self.pch_used, key=self.pch_used.__getitem__)[:-MAX_PCH]
                for old in stale:
                    del self.pch_used[old]
        for old in stale:  # a compile still using one keeps its open file
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def _pch_file(self, request: Request) -> Path:
        digest = hashlib.sha256(
            "\0".join([request.prefix_digest, *request.options, "\1", *request.prefix]).encode()
        ).hexdigest()[:32]
        return self.pch_dir / f"{digest}.pch"


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        server = self.server
        with server.lock:
            server.busy += 1
        try:
            message = _recv(self.request)
            if message.get("protocol") != _PROTOCOL:
                return
            request = Request(
                source=str(message["source"]), filename=str(message["filename"]),
                options=tuple(map(str, message["options"])), names=tuple(map(str, message["names"])),  # type: ignore[call-overload]
                prefix=tuple(map(str, message["prefix"])), prefix_digest=str(message["prefix_digest"]),  # type: ignore[call-overload]
            )
            pch = server.pch_for(request)
            with server.lock:
                STATS["requests"] += 1
                STATS["pch_used"] += bool(pch)
            result = run_nvrtc(request, pch or ())
            _send(self.request, {
                "ok": result.ok, "status": result.status, "log": result.log,
                "cubin": base64.b64encode(result.cubin).decode(), "lowered": result.lowered,
            })
            if pch is None and result.ok:
                self.request.close()
                server.make_pch(request)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the client compiles in-process
        finally:
            with server.lock:
                server.busy -= 1
                server.last_request = time.monotonic()


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    """Listen on ``path`` until idle for ``idle_s`` seconds; return at once where another server holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another server of this identity is running or starting
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a server that died: the lock says none runs
        toolchain.load_nvrtc()  # before accepting
        with tempfile.TemporaryDirectory(prefix="cujit-server-pch-") as pch_dir:
            old_umask = os.umask(0o077)
            try:
                server = _Server(path, Path(pch_dir))
            finally:
                os.umask(old_umask)
            watcher = threading.Thread(target=_exit_when_idle, args=(server, idle_s), daemon=True)
            watcher.start()
            try:
                server.serve_forever(poll_interval=0.5)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                server.server_close()
    finally:
        os.close(lock_fd)


def _exit_when_idle(server: _Server, idle_s: float) -> None:
    while True:
        time.sleep(min(idle_s, 5.0))
        with server.lock:
            idle = server.busy == 0 and time.monotonic() - server.last_request > idle_s
        if idle:
            server.shutdown()
            return


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else IDLE_S)
