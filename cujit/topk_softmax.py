"""``topk_softmax(gating_output, topk, renormalize=False, *, weights=None, ids=None) -> (weights, ids)``.

The MoE router's top-k over a softmax, as vLLM's and SGLang's ``topk_softmax`` define it: for each row of
``gating_output`` [tokens, experts] (float32, float16 or bfloat16; rows at any stride; 1 to 512 experts), the
softmax in fp32, then the ``topk`` (1 to 8) largest probabilities by descending value, with their experts; equal
probabilities rank the lower expert first. ``weights`` [tokens, topk] float32 and ``ids`` [tokens, topk] int32,
contiguous. With ``renormalize`` the weights are divided by their sum (fp32). The torch form::

    p = torch.softmax(gating_output.float(), -1)
    weights, ids = p.topk(topk, -1)            # ties: lower expert first (torch.topk leaves them unspecified)
    if renormalize: weights = weights / weights.sum(-1, keepdim=True)

A row holding NaN gets NaN weights (NaN ranks above every number, as in torch.topk). The kernel is
``cujit/kernels/topk_softmax.cuh``: a row per 8, 16 or 32 lanes of a warp (:func:`topk_config`).
"""

from __future__ import annotations

from typing import NamedTuple

import cujit

__all__ = ["MAX_EXPERTS", "MAX_TOPK", "TopkConfig", "topk_config", "topk_softmax"]

#: The most experts a row may have (32 lanes of 16 values each).
MAX_EXPERTS = 512
#: The most experts a token may pick (kMaxTopk in the kernel).
MAX_TOPK = 8
_BLOCK = 128


class TopkConfig(NamedTuple):
    """The template parameters of one topk_softmax instantiation."""

    block: int  #: threads per block
    row_lanes: int  #: lanes of a warp per row (8, 16 or 32)
    per_lane: int  #: experts each lane holds (1, 2, 4, 8 or 16)

    @property
    def rows_per_block(self) -> int:
        """Rows that one block takes."""
        return self.block // self.row_lanes


def topk_config(experts: int) -> TopkConfig:
    """The configuration for rows of ``experts`` logits.

    The fewest lanes (at least 8: each of the k <= 8 results is written by its own lane) that hold the row at one
    expert a lane, up to a warp; beyond 32 experts a warp per row with 2 to 16 experts a lane. The row stays in
    registers from the load to the last round, and every reduction is a shuffle within the warp (no shared memory,
    no barrier). Blocks of 128 threads: 4 to 16 rows each.
    """
    lanes = 8
    while lanes < 32 and lanes < experts:
        lanes *= 2
    per_lane = 1
    while lanes * per_lane < experts:
        per_lane *= 2
    return TopkConfig(_BLOCK, lanes, per_lane)


def _precompile() -> list[dict[str, object]]:
    configs = sorted({topk_config(e) for e in (8, 16, 32, 64, 128, 256, 512)})
    return [{"dtype": d, **c._asdict()} for d in ("float32", "float16", "bfloat16") for c in configs]


def _config(E: int) -> TopkConfig:
    return topk_config(E if type(E) is int and 0 < E <= MAX_EXPERTS else 1)


_T, _E, _S, _K = (cujit.SymbolicSize(n) for n in ("T", "E", "S", "K"))
_DTYPE = cujit.SymbolicDType("dtype")

topk_softmax = cujit.op(
    "cujit::topk_softmax(Tensor gating_output, int topk, bool renormalize=False, *, Tensor(a!)? weights=None, "
    "Tensor(b!)? ids=None) -> (Tensor, Tensor)",
    source="kernels/topk_softmax.cuh",
    kernel="topk_softmax_kernel<{dtype}, {block}, {row_lanes}, {per_lane}>",
    tensors={
        "gating_output": cujit.TensorMatcher([_T, _E]).with_strides([_S, 1])
        .with_dtype("float32", "float16", "bfloat16", symbol=_DTYPE),
        "weights": cujit.TensorMatcher([_T, _K]).with_dtype("float32"),
        "ids": cujit.TensorMatcher([_T, _K]).with_dtype("int32"),
    },
    values={
        "K": "topk",
        "config": _config,
        "block": "config.block",
        "row_lanes": "config.row_lanes",
        "per_lane": "config.per_lane",
    },
    checks=[
        (f"1 <= E <= {MAX_EXPERTS}", f"gating_output: expected 1 to {MAX_EXPERTS} experts (columns)"),
        (f"1 <= topk <= min(E, {MAX_TOPK})", f"topk: expected 1 to min(experts, {MAX_TOPK})"),
        ("T < 2**31", "gating_output: expected fewer than 2**31 tokens"),
    ],
    grid="cdiv(T, config.rows_per_block)",
    block="block",
    args=("weights", "ids", "gating_output", "T", "E", "S", "topk", "renormalize"),
    precompile=_precompile(),
    pdl=True,
)
