"""The serving-op sweep: which op runs at which shapes and dtypes, and how many bytes each must move.

Pure Python (no torch), so that the sweep and the byte formulas are tested without a GPU. A byte count is the
fewest bytes an op must move through device memory: each input read once, each output written once, only the
parts the op touches. GB/s in the report is that count over the measured time (1 GB = 1e9 bytes), and the
``copy_`` baseline of a row copies a buffer of half that many bytes (read + write = the same total).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAMILIES",
    "GRAPH_MAX_TOKENS",
    "HEADLINE_TOKENS",
    "ITEMSIZE",
    "OPS",
    "Case",
    "fused_rotary_store_bytes",
    "gated_act_bytes",
    "group_quant_bytes",
    "fused_add_rms_norm_bytes",
    "per_tensor_quant_bytes",
    "per_token_quant_bytes",
    "rms_norm_bytes",
    "rotary_bytes",
    "select_ops",
    "store_kv_bytes",
    "sweep",
]

#: Bytes per element of the dtypes the sweep uses.
ITEMSIZE: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int64": 8,
                            "int32": 4}
SHORT: dict[str, str] = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8"}

#: Rows with at most this many tokens are timed as CUDA-graph replays (one call is too short to time alone).
GRAPH_MAX_TOKENS = 16
#: The shape the targets are stated at; torch.compile is always compiled for it alone (dynamic=False).
HEADLINE_TOKENS = 4097

TOKENS = (1, 2, 4, 8, 16, 128, 512, 4097, 16384)
QUICK_TOKENS = (1, 16, 4097)

#: op family -> the ops in it, in report order.
FAMILIES: dict[str, tuple[str, ...]] = {
    "norms": ("rms_norm", "fused_add_rms_norm"),
    "activations": ("silu_and_mul", "gelu_and_mul"),
    "rotary": ("rotary_embedding",),
    "kv_cache": ("store_kv_cache",),
    "quant": ("per_token_quant_fp8", "per_tensor_quant_fp8", "per_token_group_quant_fp8"),
    "fused": ("rotary_embedding_with_kv_cache",),
}
#: every op name the sweep knows, in report order.
OPS: tuple[str, ...] = tuple(op for ops in FAMILIES.values() for op in ops)
FAMILY_OF: dict[str, str] = {op: family for family, ops in FAMILIES.items() for op in ops}


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
    def family(self) -> str:
        """The op family (a table of the report)."""
        return FAMILY_OF[self.op]

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


# -- byte formulas (e: bytes per element of the activations; T tokens) -------------------------------------------


def rms_norm_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """rms_norm: read x [T, H] and weight [H], write out [T, H]: (2*T*H + H) * e."""
    return (2 * tokens * hidden + hidden) * itemsize


def fused_add_rms_norm_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """fused_add_rms_norm: read x, residual and weight, write residual and x in place: (4*T*H + H) * e."""
    return (4 * tokens * hidden + hidden) * itemsize


def gated_act_bytes(tokens: int, d: int, itemsize: int) -> int:
    """silu/gelu_and_mul: read x [T, 2d], write out [T, d]: 3*T*d * e."""
    return 3 * tokens * d * itemsize


def rotary_bytes(tokens: int, q_heads: int, kv_heads: int, rotary_dim: int, itemsize: int, cache_itemsize: int,
                 pos_itemsize: int) -> int:
    """rotary_embedding, in place: read + write the rotated part of q and k, read positions and T cache rows.

    2*T*(Hq + Hkv)*R*e + T*R*c + T*p (R rotary_dim, c bytes per cache element, p per position). The part of each
    head past rotary_dim is neither read nor written.
    """
    return 2 * tokens * (q_heads + kv_heads) * rotary_dim * itemsize + tokens * rotary_dim * cache_itemsize \
        + tokens * pos_itemsize


def store_kv_bytes(tokens: int, kv_heads: int, head_size: int, itemsize: int, cache_itemsize: int,
                   slot_itemsize: int = 8, scale_bytes: int = 0) -> int:
    """store_kv_cache: read k and v [T, Hkv, D] and slot_mapping, write T rows of each cache (and read scales).

    2*T*Hkv*D*(e + c) + T*s + scales (c bytes per cache element: 2 for bf16, 1 for fp8; s per slot).
    """
    return 2 * tokens * kv_heads * head_size * (itemsize + cache_itemsize) + tokens * slot_itemsize + scale_bytes


def per_token_quant_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """per_token_quant_fp8: read x, write q (1 byte each) and one fp32 scale per token: T*H*(e + 1) + 4*T."""
    return tokens * hidden * (itemsize + 1) + 4 * tokens


def per_tensor_quant_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """per_tensor_quant_fp8: read x once, write q, read (static) or write (dynamic) one fp32 scale.

    T*H*(e + 1) + 4. A dynamic scale needs the maximum of all of x before the first value is quantized, so a
    kernel reads x twice; the count is the once-read floor, reachable only while x stays in L2.
    """
    return tokens * hidden * (itemsize + 1) + 4


def group_quant_bytes(tokens: int, hidden: int, itemsize: int, group: int) -> int:
    """per_token_group_quant_fp8: read x, write q and one fp32 scale per group: T*H*(e + 1) + 4*T*H/g."""
    return tokens * hidden * (itemsize + 1) + 4 * tokens * (hidden // group)


def fused_rotary_store_bytes(tokens: int, q_heads: int, kv_heads: int, head_size: int, rotary_dim: int,
                             itemsize: int, cache_itemsize: int, cos_itemsize: int, pos_itemsize: int,
                             slot_itemsize: int = 8) -> int:
    """Rotary + KV store in one pass: what the pair must move at the least.

    Read + write the rotated part of q; read k and v once; write k (rotated) and v into the caches; read positions,
    slots and T cos/sin rows: 2*T*Hq*R*e + 2*T*Hkv*D*(e + c) + T*R*cs + T*(p + s). Writing the rotated k back to
    k is not needed (the cache holds it); the unfused sequence does, and is measured against the same count.
    """
    q = 2 * tokens * q_heads * rotary_dim * itemsize
    kv = 2 * tokens * kv_heads * head_size * (itemsize + cache_itemsize)
    return q + kv + tokens * rotary_dim * cos_itemsize + tokens * (pos_itemsize + slot_itemsize)


# -- the sweep ---------------------------------------------------------------------------------------------------


def _norm_cases(op: str, quick: bool) -> list[Case]:
    fn = rms_norm_bytes if op == "rms_norm" else fused_add_rms_norm_bytes
    formula = "(2*T*H + H)*e" if op == "rms_norm" else "(4*T*H + H)*e"
    tokens = QUICK_TOKENS if quick else TOKENS
    hiddens = (4096, 8192) if quick else (4096, 5120, 8192, 16384)
    shapes = [("bfloat16", t, h) for h in hiddens for t in tokens]
    for dtype in ("float16", "float32"):
        shapes += [(dtype, t, h) for h in ((4096,) if quick else (4096, 8192))
                   for t in ((HEADLINE_TOKENS,) if quick else (16, HEADLINE_TOKENS))]
    return [Case(op, dtype, t, {"hidden": h}, str(h), fn(t, h, ITEMSIZE[dtype]), formula) for dtype, t, h in shapes]


def _act_cases(op: str, quick: bool) -> list[Case]:
    tokens = QUICK_TOKENS if quick else TOKENS
    ds = (8192,) if quick else (4096, 8192, 14336)
    variants = ["none", "tanh"] if op == "gelu_and_mul" else [""]
    cases: list[Case] = []
    for variant in variants:
        # GELU's tanh form costs the same bytes: the full sweep runs it at the headline shape of each d only.
        if variant == "tanh":
            shapes = [("bfloat16", HEADLINE_TOKENS, d) for d in ds]
        else:
            shapes = [("bfloat16", t, d) for d in ds for t in tokens]
            if not (quick and variant == "none"):
                shapes += [(dtype, t, 8192) for dtype in ("float16", "float32")
                           for t in ((HEADLINE_TOKENS,) if quick else (16, HEADLINE_TOKENS))]
        cases += [Case(op, dtype, t, {"d": d}, str(d), gated_act_bytes(t, d, ITEMSIZE[dtype]), "3*T*d*e", variant)
                  for dtype, t, d in shapes]
    return cases


ROTARY_HEADS = ((64, 16, 128), (32, 8, 128), (40, 10, 128))


def _rotary_cases(quick: bool) -> list[Case]:
    tokens = QUICK_TOKENS if quick else TOKENS
    heads = ROTARY_HEADS[:1] if quick else ROTARY_HEADS
    cases: list[Case] = []
    for style in ("neox", "gptj"):
        # The GPT-J (interleaved) style moves the same bytes: measured at the headline shape only.
        for qh, kh, hs in heads:
            for t in tokens if style == "neox" else (HEADLINE_TOKENS,):
                e = ITEMSIZE["bfloat16"]
                nbytes = rotary_bytes(t, qh, kh, hs, e, e, ITEMSIZE["int64"])
                cases.append(Case("rotary_embedding", "bfloat16", t,
                                  {"q_heads": qh, "kv_heads": kh, "head_size": hs, "rotary_dim": hs},
                                  f"{qh}q{kh}kv{hs}", nbytes, "2*T*(Hq+Hkv)*R*e + T*R*c + 8*T", style))
    return cases


def _kv_cases(quick: bool) -> list[Case]:
    tokens = QUICK_TOKENS if quick else TOKENS
    kh, hs = 8, 128
    cases = []
    for cache in ("bfloat16", "float8_e4m3fn"):
        scales = 8 if cache == "float8_e4m3fn" else 0
        for t in tokens:
            nbytes = store_kv_bytes(t, kh, hs, ITEMSIZE["bfloat16"], ITEMSIZE[cache], 8, scales)
            cases.append(Case("store_kv_cache", "bfloat16", t, {"kv_heads": kh, "head_size": hs},
                              f"{kh}x{hs}", nbytes, "2*T*Hkv*D*(e + c) + 8*T" + (" + 8" if scales else ""),
                              f"{SHORT[cache]} cache", {"cache_dtype": cache}))
    return cases


def _quant_cases(op: str, quick: bool) -> list[Case]:
    tokens = QUICK_TOKENS if quick else TOKENS
    hiddens = (4096,) if quick else (4096, 7168)
    e = ITEMSIZE["bfloat16"]
    cases = []
    if op == "per_token_quant_fp8":
        cases = [Case(op, "bfloat16", t, {"hidden": h}, str(h), per_token_quant_bytes(t, h, e), "T*H*(e + 1) + 4*T")
                 for h in hiddens for t in tokens]
    elif op == "per_tensor_quant_fp8":
        cases = [Case(op, "bfloat16", t, {"hidden": h}, str(h), per_tensor_quant_bytes(t, h, e), "T*H*(e + 1) + 4",
                      variant) for variant in ("dynamic", "static") for h in hiddens for t in tokens]
    elif op == "per_token_group_quant_fp8":
        group = 128
        shapes = [(t, h) for h in hiddens for t in tokens]
        if quick:
            shapes.append((HEADLINE_TOKENS, 7168))
        cases = [Case(op, "bfloat16", t, {"hidden": h, "group_size": group}, str(h),
                      group_quant_bytes(t, h, e, group), "T*H*(e + 1) + 4*T*H/g") for t, h in shapes]
    return cases


def _fused_cases(quick: bool) -> list[Case]:
    tokens = QUICK_TOKENS if quick else TOKENS
    qh, kh, hs = 32, 8, 128
    e = ITEMSIZE["bfloat16"]
    return [Case("rotary_embedding_with_kv_cache", "bfloat16", t,
                 {"q_heads": qh, "kv_heads": kh, "head_size": hs, "rotary_dim": hs}, f"{qh}q{kh}kv{hs}",
                 fused_rotary_store_bytes(t, qh, kh, hs, hs, e, e, e, 8, 8),
                 "2*T*Hq*R*e + 2*T*Hkv*D*(e + c) + T*R*e + 16*T", "neox") for t in tokens]


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
    cases: list[Case] = []
    for op in ops:
        family = FAMILY_OF[op]
        if family == "norms":
            cases += _norm_cases(op, quick)
        elif family == "activations":
            cases += _act_cases(op, quick)
        elif family == "rotary":
            cases += _rotary_cases(quick)
        elif family == "kv_cache":
            cases += _kv_cases(quick)
        elif family == "quant":
            cases += _quant_cases(op, quick)
        else:
            cases += _fused_cases(quick)
    if tokens:
        cases = [c for c in cases if c.tokens in tokens]
    if sizes:
        cases = [c for c in cases if c.params.get("hidden", c.params.get("d", sizes[0])) in sizes]
    return cases
