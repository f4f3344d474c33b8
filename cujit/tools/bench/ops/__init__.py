"""The serving-op sweep: inputs, contenders, checks and timing of each row.

For each case: build random inputs and every contender, check each contender's output against a reference once,
time them side by side in one process, and return the row.

Modules: one per op family (``norms``, ``activations``, ``rotary``, ``kv_cache``, ``quant``, ``fused``,
``qk_norm``, ``fused_quant``, ``router``), each holding its rows, byte formulas and input builder and declaring a
``FAMILY``, collected by ``registry``; ``case`` (a row, the token counts), ``contenders`` (what a builder builds
from: contenders, the op lookup, torch.compile of references, the output check) and ``runner`` (checking, timing,
the sweep). Adding an op to the benchmark is adding one family module.

Contenders of a row: ``cujit`` (the shipped op), ``torch eager`` and ``torch.compile`` of the plain reference (in
``references.py``, or in the family's module), the kernels of Liger-Kernel, QuACK and FlashInfer where each has
the op (``liger.py``, ``quack.py``, ``flashinfer.py``: a cell says n/a and why where a package is missing), and
``copy_`` of the row's bytes (twice: the two copies' difference is the row's noise). The fused rotary + KV-store
row also has ``cujit unfused`` (cujit's rotary op, then its store op).

Method, per row:

- Inputs are random (never zeros), made once per row; in-place contenders get their own copies, restored from
  the originals once per timing round, outside the timed region (so values stay bounded however many rounds run;
  they are checked to be finite after timing).
- Each contender runs once before timing and its outputs are compared with the reference run on inputs upcast to
  float32 (float64 for float32 rows) by ||out - ref|| / ||ref|| against a per-dtype bound (bit-exact for stores);
  output buffers are poisoned with NaN first, so an unwritten element fails. A wrong contender is reported, not
  timed. The first call of torch.compile includes its compile time, reported apart.
- Rows of at most 16 tokens: each contender's calls are captured in a CUDA graph (32 calls) and the replays are
  timed (``time_graphs``). Larger rows: each call is timed alone between CUDA events, after a 256 MiB write that
  flushes L2 (``time_flushed``). Contenders are interleaved round by round; the median is reported.
"""

from __future__ import annotations

from collections.abc import Callable

from .case import Case
from .contenders import _RESOLVED as _RESOLVED  # the op lookup's table: the tests replace entries of it
from .contenders import (
    EPS,
    MAX_POSITION,
    NUM_SLOTS,
    REL_TOL,
    Compiler,
    Contender,
    Env,
    Family,
    Setup,
    Unavailable,
    allocating,
    bind,
    compare,
    cujit_op,
    unavailable,
)
from .contenders import _resolve as _resolve
from .registry import WITHOUT_ROWS, families, family_of
from .runner import CALLS_PER_GRAPH, CONTENDERS, GpuTimer, run_case, run_sweep

__all__ = [
    "BUILDERS",
    "CALLS_PER_GRAPH",
    "CONTENDERS",
    "EPS",
    "MAX_POSITION",
    "NUM_SLOTS",
    "REL_TOL",
    "WITHOUT_ROWS",
    "Compiler",
    "Contender",
    "Env",
    "Family",
    "GpuTimer",
    "Setup",
    "Unavailable",
    "allocating",
    "bind",
    "compare",
    "cujit_op",
    "families",
    "family_of",
    "run_case",
    "run_sweep",
    "unavailable",
]

#: family name -> the builder of its rows' inputs and contenders.
BUILDERS: dict[str, Callable[[Case, Env], Setup]] = {family.name: family.build for family in families()}
