"""The serving-op sweep: which op runs at which shapes and dtypes, and how many bytes each must move.

The rows and byte formulas of each op live in its family's module (``ops/norms.py``, ...); this module collects
them. Pure Python (no torch), so that the sweep and the byte formulas are tested without a GPU. A byte count is
the fewest bytes an op must move through device memory: each input read once, each output written once, only the
parts the op touches. GB/s in the report is that count over the measured time (1 GB = 1e9 bytes), and the
``copy_`` baseline of a row copies a buffer of half that many bytes (read + write = the same total).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .ops.activations import gated_act_bytes
from .ops.case import GRAPH_MAX_TOKENS, HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, SHORT, TOKENS, Case
from .ops.fused import fused_rotary_store_bytes
from .ops.fused_quant import fused_add_rms_norm_quant_bytes, silu_and_mul_quant_bytes
from .ops.kv_cache import store_kv_bytes
from .ops.norms import fused_add_rms_norm_bytes, rms_norm_bytes
from .ops.qk_norm import qk_rms_norm_bytes
from .ops.qk_norm_rotary import qk_norm_rotary_bytes
from .ops.quant import group_quant_bytes, per_tensor_quant_bytes, per_token_quant_bytes
from .ops.registry import families
from .ops.rotary import rotary_bytes
from .ops.router import topk_softmax_bytes

__all__ = [
    "FAMILIES",
    "GRAPH_MAX_TOKENS",
    "HEADLINE_TOKENS",
    "ITEMSIZE",
    "OPS",
    "QUICK_TOKENS",
    "SHORT",
    "TOKENS",
    "Case",
    "fused_add_rms_norm_bytes",
    "fused_add_rms_norm_quant_bytes",
    "fused_rotary_store_bytes",
    "gated_act_bytes",
    "group_quant_bytes",
    "per_tensor_quant_bytes",
    "per_token_quant_bytes",
    "qk_norm_rotary_bytes",
    "qk_rms_norm_bytes",
    "rms_norm_bytes",
    "rotary_bytes",
    "select_ops",
    "silu_and_mul_quant_bytes",
    "store_kv_bytes",
    "sweep",
    "topk_softmax_bytes",
]

#: op family -> the ops in it, in report order.
FAMILIES: dict[str, tuple[str, ...]] = {family.name: family.ops for family in families()}
#: every op name the sweep knows, in report order.
OPS: tuple[str, ...] = tuple(op for ops in FAMILIES.values() for op in ops)
FAMILY_OF: dict[str, str] = {op: family for family, ops in FAMILIES.items() for op in ops}


def select_ops(names: Sequence[str]) -> list[str]:
    """Op names from a list of op and family names (empty: every op), in report order.

    Raises:
        ValueError: a name is neither an op nor a family.
    """
    if not names:
        return list(OPS)
    wanted: set[str] = set()
    for name in names:
        if name in FAMILIES:
            wanted.update(FAMILIES[name])
        elif name in FAMILY_OF:
            wanted.add(name)
        else:
            known = ", ".join([*FAMILIES, *OPS])
            raise ValueError(f"--ops: expected op or family names ({known}), got {name!r}")
    return [op for op in OPS if op in wanted]


def sweep(ops: Iterable[str], quick: bool = False, tokens: Sequence[int] | None = None,
          sizes: Sequence[int] | None = None) -> list[Case]:
    """The cases of ``ops``.

    ``tokens`` keeps only rows with those token counts; ``sizes`` only rows whose hidden size (norms, quantization)
    or d (activations) is one of them, and every row that has neither.
    """
    by_name = {family.name: family for family in families()}
    cases: list[Case] = []
    for op in ops:
        cases += by_name[FAMILY_OF[op]].cases(op, quick)
    if tokens:
        cases = [c for c in cases if c.tokens in tokens]
    if sizes:
        cases = [c for c in cases if c.params.get("hidden", c.params.get("d", sizes[0])) in sizes]
    return cases
