"""MoE router: topk_softmax of gating logits [T, E] (the top-k of a softmax, renormalized).

Against torch eager, torch.compile and QuACK's top-k with a softmax (FlashInfer and Liger have no such op).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import quack
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    REL_TOL,
    Contender,
    Env,
    Family,
    Setup,
    adapter_or_reason,
    allocating,
    cujit_or_reason,
    map_outputs,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)

if TYPE_CHECKING:
    import torch

__all__ = ["FAMILY", "ROUTERS", "build_router", "topk_softmax", "topk_softmax_bytes"]

#: (experts, top-k) of the rows: Mixtral, Qwen3-MoE, DeepSeek-V3.
ROUTERS = ((8, 2), (128, 8), (256, 8))


def topk_softmax_bytes(tokens: int, experts: int, topk: int, itemsize: int) -> int:
    """topk_softmax: read the logits [T, E], write fp32 weights and int32 ids [T, k]: T*E*e + 8*T*k."""
    return tokens * experts * itemsize + 8 * tokens * topk


def router_cases(op: str, quick: bool) -> list[Case]:
    """bf16 logits of 256 experts, top 8, at every token count; 8 and 128 experts at the headline shape."""
    tokens = QUICK_TOKENS if quick else TOKENS
    shapes = [(t, 256, 8) for t in tokens]
    if not quick:
        shapes += [(HEADLINE_TOKENS, e, k) for e, k in ROUTERS if e != 256]
    e = ITEMSIZE["bfloat16"]
    return [Case(op, "bfloat16", t, {"experts": experts, "topk": k}, f"{experts}e k{k}",
                 topk_softmax_bytes(t, experts, k, e), "T*E*e + 8*T*k") for t, experts, k in shapes]


def topk_softmax(logits: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The router in torch: softmax in fp32, the top ``topk`` probabilities, renormalized; int32 ids."""
    import torch

    weights, ids = torch.softmax(logits.float(), -1).topk(topk, -1)
    return weights / weights.sum(-1, keepdim=True), ids.to(torch.int32)


def build_router(case: Case, env: Env) -> Setup:
    """topk_softmax(logits, k, renormalize=True) on random logits [T, E].

    Equal probabilities may rank in either order (torch.topk leaves it open, cujit ranks the lower expert first),
    so a contender's ids are checked through the reference's probabilities at those ids (they must be the top k,
    in descending order) and by being distinct within each row, not compared as integers.
    """
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, experts, k = case.tokens, case.params["experts"], case.params["topk"]
    logits = torch.randn(tokens, experts, dtype=dtype, device=device)
    probs = torch.softmax(upcast(logits), -1)
    top = probs.topk(k, -1).values
    expected = {"weights": top / top.sum(-1, keepdim=True), "picked": top,
                "distinct": torch.ones(tokens, dtype=torch.bool, device=device)}
    fp32 = REL_TOL["float32"]
    tolerance = {"weights": fp32, "picked": fp32, "distinct": 0.0}

    def checked(got: dict[str, Any]) -> dict[str, Any]:
        weights, ids = got["weights"], got["ids"].long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= experts):
            return {"weights": weights}  # "picked" missing: the check reports it
        distinct = ids.sort(-1).values.diff(dim=-1).ne(0).all(-1)
        return {"weights": weights, "picked": probs.gather(-1, ids), "distinct": distinct}

    contenders: list[Contender] = []
    op, reason = cujit_or_reason(case.op)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        weights = torch.empty(tokens, k, dtype=torch.float32, device=device)
        ids = torch.empty(tokens, k, dtype=torch.int32, device=device)

        def poison() -> None:
            weights.fill_(math.nan)
            ids.fill_(0)  # an unwritten row repeats expert 0

        contenders.append(map_outputs(Contender("cujit", lambda: op(logits, k, True, weights=weights, ids=ids),
                                                lambda: {"weights": weights, "ids": ids}, poison=poison), checked))
    contenders.append(map_outputs(allocating("eager", lambda: topk_softmax(logits, k), ["weights", "ids"]), checked))
    contenders.append(map_outputs(env.compiler.contender(case, "ref", lambda x: topk_softmax(x, k), (logits,),
                                                         names=["weights", "ids"]), checked))
    qk, why = adapter_or_reason(lambda: quack.topk_softmax(k))
    if qk is None:
        contenders.append(unavailable("quack", why))
    else:
        # QuACK's weights are in the logits' dtype: checked at that dtype's bound, their bytes counted as such.
        found = allocating("quack", lambda: qk(logits), ["weights", "ids"], tolerance={"weights": tol(dtype)},
                           nbytes=case.nbytes - tokens * k * (4 - logits.element_size()),
                           note=f"weights in {case.dtype}, not fp32")
        contenders.append(map_outputs(found, checked))
    return Setup(expected, tolerance, contenders)


FAMILY = Family("router", "MoE router: top-k of a softmax (renormalized)", ("topk_softmax",), router_cases,
                build_router, order=80)
