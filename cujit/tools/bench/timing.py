"""Timing helpers shared by the benchmarks: host time per call, and device time of kernels side by side.

Host time (``per_call_us``, ``interleaved``) is what a Python caller pays per call, measured with
``time.perf_counter_ns`` over thousands of calls. Device time (``time_flushed``, ``time_graphs``) is what the GPU
spends, measured with CUDA events:

- ``time_flushed``: one event pair around each call, a write of a buffer several times the size of L2 before
  each pair (outside the timed region, so every call reads its inputs from device memory), and a short spin
  kernel after it, so that the GPU has work queued while the host enqueues the timed call: the events measure
  the kernels, not the Python that launches them.
- ``time_graphs``: for calls too short to time one by one, ``calls`` calls of a function captured in one CUDA
  graph, the graph replayed between one event pair, the time divided by ``calls``.

Both interleave the functions they compare (every round times each once, in a rotated order), so that clock and
temperature drift weigh on all of them alike, and return the median with the 20th and 80th percentiles.
torch is imported only by the functions that use the GPU.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "L2Flush",
    "Spin",
    "Timing",
    "capture_graph",
    "copy_us",
    "device_us",
    "interleaved",
    "median_seconds",
    "per_call_us",
    "percentile",
    "summarize",
    "time_flushed",
    "time_graphs",
]

#: The smallest buffer written between timed calls to push the inputs out of L2 (H100: 50 MB, H200: 60 MB).
FLUSH_BYTES = 256 * 1024 * 1024


def per_call_us(fn: Callable[[], Any], sync: Callable[[], None], calls: int = 2000, rounds: int = 9) -> float:
    """Median over ``rounds`` of the host time per call of ``fn``, in microseconds."""
    return interleaved({"fn": fn}, sync, calls, rounds)["fn"]


def interleaved(fns: dict[str, Callable[[], Any]], sync: Callable[[], None], calls: int = 2000,
                rounds: int = 15) -> dict[str, float]:
    """Host time per call of each function, in microseconds.

    The median over ``rounds`` rounds, each round timing every function once, so that the drift of a noisy host
    weighs on all of them alike.
    """
    for fn in fns.values():
        for _ in range(200):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter_ns() - start) / calls / 1e3)
    sync()
    return {name: statistics.median(values) for name, values in samples.items()}


def median_seconds(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20) -> float:
    """Median device time of ``fn`` in seconds, timed with CUDA events on the current stream."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


@dataclass(frozen=True)
class Timing:
    """Device time per call of one function: the median and the 20th/80th percentiles, in microseconds."""

    median_us: float
    low_us: float
    high_us: float
    samples: int

    @property
    def spread(self) -> float:
        """(80th - 20th percentile) / median: how much the samples of this run scatter."""
        return (self.high_us - self.low_us) / self.median_us if self.median_us > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly between the closest ranks."""
    if not values:
        raise ValueError("percentile: expected at least one value, got none")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: expected q in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def summarize(samples_us: Sequence[float]) -> Timing:
    """The ``Timing`` of a list of per-call samples in microseconds."""
    return Timing(statistics.median(samples_us), percentile(samples_us, 20), percentile(samples_us, 80),
                  len(samples_us))


class Spin:
    """Queues a kernel that spins for about ``us`` microseconds (``torch.cuda._sleep``, calibrated once).

    Queued before a timed region, it keeps the GPU busy while the host records the start event and enqueues the
    timed work, so that the events measure the kernels, not the Python that launches them.
    """

    _cycles_per_us: float | None = None

    def __init__(self, us: float) -> None:
        self.cycles = int(us * self._calibrate()) if us > 0 else 0

    @classmethod
    def _calibrate(cls) -> float:
        if cls._cycles_per_us is None:
            import torch

            probe = 1_000_000
            torch.cuda._sleep(probe)  # the first launch loads the kernel
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(probe)
            end.record()
            end.synchronize()
            cls._cycles_per_us = probe / max(start.elapsed_time(end) * 1e3, 1e-3)
        return cls._cycles_per_us

    def __call__(self) -> None:
        """Queue the spin on the current stream."""
        if self.cycles:
            import torch

            torch.cuda._sleep(self.cycles)


class L2Flush:
    """Writes a buffer of at least 256 MiB and 4x the device's L2, so that the next kernel finds nothing in L2.

    Then queues a ``Spin`` of ``pad_us`` microseconds (see there).
    """

    def __init__(self, device: int | None = None, pad_us: float = 100.0) -> None:
        import torch

        index = torch.cuda.current_device() if device is None else device
        l2 = int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0) or 0)
        self.nbytes = max(FLUSH_BYTES, 4 * l2)
        self.l2_bytes = l2
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=f"cuda:{index}")
        self._value = 0
        self._spin = Spin(pad_us)

    def __call__(self) -> None:
        """Queue the write and the spin on the current stream."""
        self._value = (self._value + 1) & 0x7F
        self.buffer.fill_(self._value)
        self._spin()


def _rotated(names: Sequence[str], shift: int) -> list[str]:
    shift %= max(len(names), 1)
    return list(names[shift:]) + list(names[:shift])


def time_flushed(fns: Mapping[str, Callable[[], Any]], flush: L2Flush, *, rounds: int = 10, iters: int = 10,
                 warmup: int = 3, resets: Mapping[str, Callable[[], None]] | None = None) -> dict[str, Timing]:
    """Device time per call of each function, each call timed alone after an L2 flush.

    ``resets[name]``, where given, runs once before each round of ``name``, outside the timed region and before
    the flush (for functions that change their own inputs).
    """
    import torch

    resets = resets or {}
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        pending: list[tuple[str, Any, Any]] = []
        for name in _rotated(names, round_index):
            fn = fns[name]
            reset = resets.get(name)
            if reset is not None:
                reset()
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                flush()
                start.record()
                fn()
                end.record()
                pending.append((name, start, end))
        torch.cuda.synchronize()
        for name, start, end in pending:
            samples[name].append(start.elapsed_time(end) * 1e3)
    return {name: summarize(values) for name, values in samples.items()}


def capture_graph(fn: Callable[[], Any], calls: int, warmup: int = 2) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``calls`` calls of ``fn``, after ``warmup`` calls on a side stream (as torch requires)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return graph


def time_graphs(graphs: Mapping[str, Any], calls: int, *, rounds: int = 10, iters: int = 5, warmup: int = 2,
                resets: Mapping[str, Callable[[], None]] | None = None, pad_us: float = 100.0) -> dict[str, Timing]:
    """Device time per call of each captured graph of ``calls`` calls: replay time / ``calls``, interleaved.

    Before each function's replays of a round, a ``Spin`` of ``pad_us`` keeps the first replay from waiting for
    the host. ``resets[name]`` runs before each round of ``name``, outside the timed region.
    """
    import torch

    resets = resets or {}
    spin = Spin(pad_us)
    names = list(graphs)
    for name in names:
        for _ in range(warmup):
            graphs[name].replay()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        pending: list[tuple[str, Any, Any]] = []
        for name in _rotated(names, round_index):
            reset = resets.get(name)
            if reset is not None:
                reset()
            spin()
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graphs[name].replay()
                end.record()
                pending.append((name, start, end))
        torch.cuda.synchronize()
        for name, start, end in pending:
            samples[name].append(start.elapsed_time(end) * 1e3 / calls)
    return {name: summarize(values) for name, values in samples.items()}


_FLUSHES: dict[int, L2Flush] = {}


def device_us(fn: Callable[[], Any], *, graph_calls: int = 0, repeats: int = 15) -> float:
    """The median device time of one call of ``fn`` in microseconds, for the tuning scripts.

    With ``graph_calls``, that many calls captured in one CUDA graph and timed by ``time_graphs`` (for calls too
    short to time alone, with their inputs warm in L2 as in decoding); without, each call timed alone after an L2
    flush by ``time_flushed``. ``repeats`` samples either way.
    """
    if graph_calls:
        graph = capture_graph(fn, graph_calls, warmup=1)
        return time_graphs({"fn": graph}, graph_calls, rounds=repeats, iters=1, warmup=1)["fn"].median_us
    import torch

    device = torch.cuda.current_device()
    flush = _FLUSHES.get(device)
    if flush is None:
        flush = _FLUSHES[device] = L2Flush(device)
    return time_flushed({"fn": fn}, flush, rounds=repeats, iters=1, warmup=1)["fn"].median_us


def copy_us(moved_bytes: int, *, graph_calls: int = 0, repeats: int = 15) -> float:
    """:func:`device_us` of ``copy_`` moving ``moved_bytes`` (half read, half written): the bandwidth ceiling."""
    import torch

    half = max(moved_bytes // 2, 1)
    src = torch.empty(half, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return device_us(lambda: dst.copy_(src), graph_calls=graph_calls, repeats=repeats)
