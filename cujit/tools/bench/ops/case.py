"""One row of the serving-op sweep (``Case``), and the token counts and dtype sizes every family's rows use.

Pure Python (no torch): the sweep and the byte formulas are tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GRAPH_MAX_TOKENS", "HEADLINE_TOKENS", "ITEMSIZE", "QUICK_TOKENS", "SHORT", "TOKENS", "Case"]

#: Bytes per element of the dtypes the sweep uses.
ITEMSIZE: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int64": 8,
                            "int32": 4}
SHORT: dict[str, str] = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8"}

#: Rows with at most this many tokens are timed as CUDA-graph replays (one call is too short to time alone).
GRAPH_MAX_TOKENS = 16
#: The shape the targets are stated at; torch.compile is always compiled for it alone (dynamic=False).
HEADLINE_TOKENS = 4097

#: Token counts of the full sweep and of ``--quick``.
TOKENS = (1, 2, 4, 8, 16, 128, 512, 4097, 16384)
QUICK_TOKENS = (1, 16, 4097)


@dataclass
class Case:
    """One row of the sweep: an op at one shape and dtype, and the bytes it must move."""

    op: str
    dtype: str
    tokens: int
    params: dict[str, Any]
    group: str  # the plot series: rows of one op, variant, dtype and group differ only in tokens
    nbytes: int
    formula: str
    variant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> bool:
        """Whether the row is timed as CUDA-graph replays."""
        return self.tokens <= GRAPH_MAX_TOKENS

    @property
    def label(self) -> str:
        """``op`` or ``op[variant]``."""
        return f"{self.op}[{self.variant}]" if self.variant else self.op

    @property
    def series(self) -> tuple[str, str, str, str]:
        """(op, variant, dtype, group): the rows of one plot."""
        return (self.op, self.variant, self.dtype, self.group)

    def shape_text(self) -> str:
        """The shape parameters as ``name=value`` pairs."""
        return " ".join(f"{k}={v}" for k, v in self.params.items())
