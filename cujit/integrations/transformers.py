"""``patch(model)``: cujit's ops in a Hugging Face transformers model, for inference.

For the Llama, Qwen2, Qwen3, Mistral, Gemma, Gemma 2 and Gemma 3 families (``model.config.model_type`` ``llama``,
``qwen2``, ``qwen3``, ``mistral``, ``gemma``, ``gemma2``, ``gemma3`` or ``gemma3_text``), one call replaces:

- every RMSNorm by :class:`CujitRMSNorm` (``cujit.rms_norm``; ``gemma=True``, the ``x * (1 + weight)`` form computed
  in fp32 and rounded once, for the Gemma families: the op has that form, so no ``1 + weight`` is precomputed);
- the per-head QK-norm of Qwen3 and Gemma 3 by :class:`CujitHeadRMSNorm` (``cujit.rms_norm`` over the heads viewed
  as rows; :func:`head_rms_norm` is the one place to change for a fused per-head op);
- every gated MLP by :class:`CujitGatedMLP`: one GEMM against the gate and up weights stacked ``[2 * intermediate,
  hidden]``, then ``cujit.silu_and_mul`` or ``cujit.gelu_and_mul`` (erf or tanh, as the model's activation), then
  the model's own ``down_proj``;
- the rotary embedding: the model's rotary module returns, once per forward, a table of the model's own cos and sin
  (computed in fp32 by the model's code, so every rope type and scaling is kept) in ``cujit.rotary_embedding``'s
  layout with the row of each token, and the attention modules rotate q and k in place with that op.

How each is patched: **a class swap per instance**. Each patched module keeps its identity, its parameters and
its ``state_dict``; only its ``__class__`` becomes a subclass of its own class made by cujit (``CujitRMSNorm``,
``CujitHeadRMSNorm``, ``CujitGatedMLP``, ``CujitRotaryTable`` or ``CujitAttention`` in front of the model's class,
so ``isinstance`` checks against the model's classes still hold), and what cujit's forward needs is kept in the
module's ``_cujit_*`` attributes. Unpatching puts the class back and deletes those attributes. In detail:

- The MLP's gate and up weights become two views of one stacked tensor (their ``Parameter`` objects keep their
  identity and values; loading a ``state_dict`` after patching still writes through to the stacked copy);
  unpatching gives each its own storage again. No weight is held twice.
- The attention modules run the class's very code (same bytecode and closure) against a copy of its modeling
  module's globals in which ``apply_rotary_pos_emb`` is cujit's. The modeling module itself is never edited, so
  other models of the same family in the process are unaffected. The cost: names that the modeling module rebinds
  after ``patch`` are not seen by the patched attention modules (a library that monkeypatches the module later, for
  instance).

Under ``torch.compile`` (``under_compile="model"``, the default), each patched part runs the model's own code
while Dynamo traces it, so the compiled model is the one ``torch.compile`` makes of the unpatched model: Inductor
fuses the norms, activations and rotary into its own kernels, launched from its generated code, where cujit's ops
would stay opaque ``torch.ops.cujit`` calls, each through the dispatcher into Python (at decode, host time is the
step: Llama ~1B on an H100, 16.85 ms a step with cujit's ops in the compiled graph against 10.40 ms for
``torch.compile`` alone). The patched classes reach the model's forward through globals of their own, not through
the instance, so the compiled call checks nearly the guards of the unpatched model's (a few more a layer, not a
copy of each module's). Eager calls, and CUDA graphs captured from them, use cujit's ops.
``under_compile="cujit"`` keeps cujit's ops in the compiled graph instead.

Inference only: a patched module called while autograd records (``torch.is_grad_enabled()`` and an input or a
weight that requires grad, as a model's parameters do by default) raises :class:`~cujit.CujitError` instead of
computing something without a gradient; run under ``torch.no_grad()`` or ``torch.inference_mode()`` (``generate``
does). The ops run on CUDA tensors of one float dtype: a patched module given CPU tensors, or a weight whose dtype
differs from its input's, raises too. Cast and move the model before or after patching (the MLP checks that its
stacked weight is still the one its ``Linear`` layers view, and asks for a new ``patch`` otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._runtime.errors import CujitError
from ..gelu_and_mul import gelu_and_mul
from ..rms_norm import rms_norm
from ..rotary_embedding import rotary_embedding
from ..silu_and_mul import silu_and_mul

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "UNDER_COMPILE",
    "CujitAttention",
    "CujitGatedMLP",
    "CujitHeadRMSNorm",
    "CujitRMSNorm",
    "CujitRotaryTable",
    "Patch",
    "head_rms_norm",
    "patch",
    "rotary_table",
]


@dataclasses.dataclass(frozen=True)
class _Family:
    package: str  #: transformers.models.<package>.modeling_<package>
    prefix: str  #: class names: <prefix>RMSNorm, <prefix>MLP, <prefix>Attention, <prefix>RotaryEmbedding
    gemma_norm: bool  #: the norm multiplies by (1 + weight)
    qk_norm: bool  #: the attention has per-head q_norm and k_norm


_FAMILIES = {
    "llama": _Family("llama", "Llama", False, False),
    "mistral": _Family("mistral", "Mistral", False, False),
    "qwen2": _Family("qwen2", "Qwen2", False, False),
    "qwen3": _Family("qwen3", "Qwen3", False, True),
    "gemma": _Family("gemma", "Gemma", True, False),
    "gemma2": _Family("gemma2", "Gemma2", True, False),
    "gemma3": _Family("gemma3", "Gemma3", True, True),
    "gemma3_text": _Family("gemma3", "Gemma3", True, True),
}
#: The ``config.model_type`` values that :func:`patch` accepts.
SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))

_PATCH_ATTR = "_cujit_patch"


# ------------------------------------------------------------------------------------------------ call-time checks
def _refuse_autograd(what: str, *tensors: torch.Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise CujitError(
            f"{what}: cujit's patched modules are for inference and compute no gradient, but autograd is recording "
            "(an input or weight requires grad): run the model under torch.no_grad() or torch.inference_mode(), or "
            "call .unpatch() on the handle that patch() returned before training")


def _require_cuda(what: str, x: torch.Tensor) -> None:
    if not x.is_cuda:
        raise CujitError(f"{what}: cujit's ops run on CUDA tensors, got an input on {x.device}: move the model "
                         "to a GPU, or unpatch it")


def _check_operands(what: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    _require_cuda(what, x)
    if weight.dtype != x.dtype:
        raise CujitError(f"{what}: expected the weight in the input's dtype {x.dtype}, got {weight.dtype}: cast the "
                         "whole model to one dtype (model.to(torch.bfloat16))")


def _compiling() -> bool:
    return bool(torch.compiler.is_compiling())


#: ``patch(under_compile=...)``: what a patched part runs while torch.compile traces it.
UNDER_COMPILE = ("model", "cujit")


# ------------------------------------------------------------------------------------------------ norms
def head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """RMSNorm of every head of ``x`` ([..., head_dim]) with one ``weight`` [head_dim]: the QK-norm.

    Today ``cujit.rms_norm`` over the heads viewed as rows; a fused per-head op (q and k in one launch) replaces
    this body alone.
    """
    return _rms_norm_rows(x, weight, eps, gemma)


def _rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """``cujit.rms_norm`` over the last dimension of ``x``, the result in ``x``'s shape (and layout, see below)."""
    hidden = x.shape[-1]
    if x.dim() == 4 and not x.is_contiguous() and x.transpose(1, 2).is_contiguous():
        # Gemma 3 normalises q and k after .transpose(1, 2): [batch, heads, seq, dim] over [batch, seq, heads, dim]
        # memory. Normalise that memory's rows and give back the same transposed layout as the model's own norm.
        rows = x.transpose(1, 2)
        return rms_norm(rows.view(-1, hidden), weight, eps, gemma=gemma).view(rows.shape).transpose(1, 2)
    flat = x.reshape(-1, hidden)  # a view where the layout allows it; the op takes rows at any row stride
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return rms_norm(flat, weight, eps, gemma=gemma).view(x.shape)


class CujitRMSNorm(nn.Module):
    """In front of a model's RMSNorm class: the norm on ``cujit.rms_norm``, with the module's own weight.

    Never built: :func:`patch` makes a patched module's class ``CujitRMSNorm`` + its own class and keeps the
    module's epsilon and form in ``_cujit_eps`` and ``_cujit_gemma``.
    """

    weight: nn.Parameter
    _cujit_eps: float
    _cujit_gemma: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of ``x`` over its last dimension."""
        _refuse_autograd("RMSNorm", x, self.weight)
        _check_operands("RMSNorm", x, self.weight)
        return _rms_norm_rows(x, self.weight, self._cujit_eps, self._cujit_gemma)

    def extra_repr(self) -> str:
        """The weight's shape, epsilon and form."""
        return f"{tuple(self.weight.shape)}, eps={self._cujit_eps}, gemma={self._cujit_gemma}, on cujit.rms_norm"


class CujitHeadRMSNorm(CujitRMSNorm):
    """In front of the per-head QK-norm of Qwen3 and Gemma 3: the norm on :func:`head_rms_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of every head of ``x`` ([..., head_dim])."""
        _refuse_autograd("QK-norm", x, self.weight)
        _check_operands("QK-norm", x, self.weight)
        return head_rms_norm(x, self.weight, self._cujit_eps, self._cujit_gemma)


# ------------------------------------------------------------------------------------------------ gated MLP
def _activation_of(act_fn: nn.Module) -> str | None:
    """"silu", "gelu" (erf) or "gelu_tanh" for the activations cujit has; None for any other."""
    from transformers import activations

    kind = type(act_fn)
    if kind in (activations.SiLUActivation, nn.SiLU):
        return "silu"
    if kind is activations.GELUActivation:
        return "gelu"
    if kind in (activations.GELUTanh, activations.NewGELUActivation):
        return "gelu_tanh"
    if kind is nn.GELU:
        return "gelu_tanh" if getattr(act_fn, "approximate", "none") == "tanh" else "gelu"
    return None


class CujitGatedMLP(nn.Module):
    """In front of a model's gated MLP class: one GEMM, one cujit gated activation and the model's ``down_proj``.

    That is ``down_proj(act(gate_proj(x)) * up_proj(x))``. Never built: :func:`patch` swaps it in, having made
    the ``gate_proj`` and ``up_proj`` weights (and biases) views of one stacked tensor (``_cujit_gate_up_weight``,
    ``_cujit_gate_up_bias``: plain attributes, not buffers, so that ``model.to()`` does not copy them beside the
    ``Linear`` weights; forward checks that they are still viewed).
    """

    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: Any
    _cujit_activation: str  # "silu", "gelu" (erf) or "gelu_tanh"
    _cujit_gate_up_weight: torch.Tensor
    _cujit_gate_up_bias: torch.Tensor | None
    _cujit_up_offset: int  # bytes from the stacked weight's start to up_proj's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP of ``x`` ([..., hidden])."""
        _refuse_autograd("gated MLP", x, self.gate_proj.weight, self.up_proj.weight,
                         getattr(self.down_proj, "weight", None))
        weight = self._cujit_gate_up_weight
        _check_operands("gated MLP", x, weight)
        base = weight.data_ptr()
        if not _compiling() and (self.gate_proj.weight.data_ptr() != base
                                 or self.up_proj.weight.data_ptr() != base + self._cujit_up_offset):
            raise CujitError("gated MLP: the gate_proj/up_proj weights no longer view the stacked weight that patch() "
                             "built (the model was moved or cast after patching): unpatch and patch again")
        gate_up = nn.functional.linear(x, weight, self._cujit_gate_up_bias)
        if self._cujit_activation == "silu":
            hidden = silu_and_mul(gate_up)
        else:
            hidden = gelu_and_mul(gate_up, "tanh" if self._cujit_activation == "gelu_tanh" else "none")
        return self.down_proj(hidden)

    def extra_repr(self) -> str:
        """The activation and the stacked weight's shape."""
        return (f"activation={self._cujit_activation}, gate_up={tuple(self._cujit_gate_up_weight.shape)}, "
                f"on cujit's gated activation")


def _stack(first: nn.Parameter, second: nn.Parameter) -> tuple[torch.Tensor, Callable[[], None]]:
    """Stack two parameters along dim 0 into one new tensor and make them views of it; and the undo."""
    stacked = torch.empty((first.shape[0] + second.shape[0], *first.shape[1:]), dtype=first.dtype,
                          device=first.device)
    with torch.no_grad():
        stacked[: first.shape[0]].copy_(first)
        stacked[first.shape[0]:].copy_(second)
    first.data = stacked[: first.shape[0]]
    second.data = stacked[first.shape[0]:]

    def undo() -> None:
        first.data = first.data.clone()
        second.data = second.data.clone()

    return stacked, undo


def _mlp_refusal(mlp: Any) -> str | None:
    """Why this MLP cannot be stacked; None when it can."""
    gate, up = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    if type(gate) is not nn.Linear or type(up) is not nn.Linear or not isinstance(mlp.down_proj, nn.Module):
        return "gate_proj/up_proj are not plain nn.Linear layers (a quantized or adapted model)"
    if gate.weight.shape[1:] != up.weight.shape[1:] or gate.weight.dtype != up.weight.dtype \
            or gate.weight.device != up.weight.device or (gate.bias is None) != (up.bias is None):
        return "gate_proj and up_proj differ in input size, dtype, device or bias"
    if gate.weight.is_meta:
        return "the weights are on the meta device"
    return None


# ------------------------------------------------------------------------------------------------ rotary
def rotary_table(cos: torch.Tensor, sin: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table, positions) for ``cujit.rotary_embedding`` from a model's ``cos`` and ``sin`` [batch or 1, seq, dim].

    The models here rotate halves (``rotate_half``), so each row of cos and sin holds its ``dim / 2`` angles twice;
    the table row of token ``t`` is ``cos[t, :dim/2] | sin[t, :dim/2]``, and the positions name, for each of the
    ``batch * seq`` tokens of q and k, its row (a cos of batch 1 is shared by every sequence).
    """
    rows, seq, dim = cos.shape
    if rows not in (1, batch) or sin.shape != cos.shape:
        raise CujitError(f"rotary embedding: expected cos and sin of shape [{batch} or 1, seq, dim], got "
                         f"{list(cos.shape)} and {list(sin.shape)}")
    half = dim // 2
    table = torch.cat((cos[..., :half], sin[..., :half]), dim=-1).reshape(rows * seq, dim)
    positions = torch.arange(batch * seq, device=cos.device)
    if rows != batch:
        positions = positions % seq
    return table, positions


def _is_table(cos: torch.Tensor, sin: torch.Tensor) -> bool:
    return cos.dim() == 2 and sin.dim() == 1 and not sin.is_floating_point()


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The models' ``apply_rotary_pos_emb`` on ``cujit.rotary_embedding``, for q and k [batch, heads, seq, dim].

    ``cos, sin`` are either the (table, positions) that a patched rotary module returns, or a model's own cos and
    sin (then the table is built here, once per call). q and k are rotated in place where their memory is
    [batch, seq, heads, dim] (as after the models' ``.view(...).transpose(1, 2)``), else in a copy; the rotated
    tensors are returned, in q's and k's shapes.
    """
    _refuse_autograd("rotary embedding", q, k)
    if unsqueeze_dim != 1:
        raise CujitError(f"rotary embedding: expected unsqueeze_dim=1 (q and k as [batch, heads, seq, dim]), got "
                         f"{unsqueeze_dim}")
    _require_cuda("rotary embedding", q)
    batch, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    table, positions = (cos, sin) if _is_table(cos, sin) else rotary_table(cos, sin, batch)
    if table.shape[-1] != dim:
        raise CujitError(f"rotary embedding: expected cos and sin of the head size {dim}, got {table.shape[-1]}")
    q_rows = q.transpose(1, 2).reshape(batch * seq, heads * dim)
    k_rows = k.transpose(1, 2).reshape(batch * seq, kv_heads * dim)
    rotary_embedding(positions, q_rows, k_rows, table, is_neox=True, head_size=dim)
    return (q_rows.view(batch, seq, heads, dim).transpose(1, 2),
            k_rows.view(batch, seq, kv_heads, dim).transpose(1, 2))


class CujitRotaryTable(nn.Module):
    """In front of a model's rotary module class: its own cos and sin, in fp32, as (table, positions).

    While torch.compile traces (``under_compile="model"``), the module's own (cos, sin).
    """

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """(table, positions) for the tokens of ``position_ids``; ``x`` is read for its dtype and device only."""
        # The models compute cos and sin in fp32 and round them to x's dtype last; a float32 probe of no elements
        # keeps them in fp32.
        probe = x.new_empty((0,), dtype=torch.float32)
        cos, sin = super().forward(probe, position_ids, *args, **kwargs)
        return rotary_table(cos, sin, x.shape[0])


class CujitAttention(nn.Module):
    """In front of a model's attention class: its forward with q and k rotated by ``cujit.rotary_embedding``.

    The class :func:`patch` swaps in holds ``_cujit_rotating``: the model class's forward (its decorators kept)
    rebuilt around a copy of the function that calls ``apply_rotary_pos_emb``, run against globals in which that
    name is cujit's. While torch.compile traces (``under_compile="model"``) the class's own forward runs, since
    Dynamo's guards name the modeling module's globals, not the copy's; the rotary module then returns the model's
    own cos and sin. Should it have run eagerly and passed a table, the rebuilt forward takes it.
    """

    _cujit_rotating: Callable[..., Any]
    #: Which calls run the model's own forward (see _deferring_forward): while torch.compile traces, unless the
    #: rotary module ran eagerly and passed a table.
    _cujit_defer_when = "_compiling() and not _carries_table(args, kwargs)"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The attention, its q and k rotated by cujit."""
        return self._cujit_rotating(*args, **kwargs)

    @classmethod
    def _cujit_class_state(cls, model_class: type) -> dict[str, Any]:
        modeling = importlib.import_module(model_class.__module__)
        forward: Any = model_class.forward  # type: ignore[attr-defined]
        caller = _rotary_caller(forward, modeling)
        if caller is None:  # patch() checked this before swapping
            raise CujitError(f"{model_class.__name__}.forward does not call apply_rotary_pos_emb")
        scope = dict(vars(modeling))
        scope["apply_rotary_pos_emb"] = apply_rotary_pos_emb
        return {"_cujit_rotating": _rewrap(forward, caller, _with_globals(caller, scope))}


def _rotary_caller(forward: Any, modeling: types.ModuleType) -> Any:
    """The function of ``forward``'s decorator chain that calls the modeling module's ``apply_rotary_pos_emb``.

    Attention forwards come bare or wrapped (``functools.wraps``) by transformers' keyword deprecation and by the
    ``kernels`` package's per-instance function routing. The function sought is the one compiled in the modeling
    module (its globals are the module's) that names ``apply_rotary_pos_emb``; None when there is none, or when a
    wrapper does not hold the next function in its closure (then it cannot be rebuilt around a patched copy).
    """
    function = forward
    for _ in range(8):  # a handful of decorators at most
        code = getattr(function, "__code__", None)
        if code is None:
            return None
        if function.__globals__ is vars(modeling) and "apply_rotary_pos_emb" in code.co_names:
            return function
        inner = getattr(function, "__wrapped__", None)
        if inner is None or not any(_cell(c) is inner for c in function.__closure__ or ()):
            return None
        function = inner
    return None


def _carries_table(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an attention call was given a rotary table (a rotary module that ran eagerly) for its cos and sin."""
    return any(isinstance(a, tuple) and len(a) == 2 and all(isinstance(t, torch.Tensor) for t in a)
               and _is_table(*a) for a in (*args, *kwargs.values()))


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _rewrap(function: Any, target: Any, replacement: Any) -> Any:
    """``function``'s decorator chain rebuilt with ``replacement`` in place of ``target`` (see _rotary_caller)."""
    if function is target:
        return replacement
    inner = function.__wrapped__
    new_inner = _rewrap(inner, target, replacement)
    cells = tuple(types.CellType(new_inner) if _cell(c) is inner else c for c in function.__closure__)
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              cells)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    copy.__dict__.update(function.__dict__)
    copy.__wrapped__ = new_inner  # type: ignore[attr-defined]
    return copy


def _with_globals(function: Callable[..., Any], scope: dict[str, Any]) -> Callable[..., Any]:
    """``function``'s code and closure run against the globals ``scope``."""
    code = function.__code__  # type: ignore[attr-defined]
    copy = types.FunctionType(code, scope, function.__name__, function.__defaults__,  # type: ignore[attr-defined]
                              function.__closure__)  # type: ignore[attr-defined]
    copy.__kwdefaults__ = function.__kwdefaults__  # type: ignore[attr-defined]
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    copy.__dict__.update(function.__dict__)
    return copy


# ------------------------------------------------------------------------------------------------ the handle
@dataclasses.dataclass
class Patch:
    """What :func:`patch` did to a model, and the way back: ``unpatch()``, or leaving a ``with`` block.

    ``replaced`` maps each kind (``"rms_norm"``, ``"qk_norm"``, ``"mlp"``, ``"rotary"``, ``"attention"``) to the
    qualified names of the modules patched; ``skipped`` names modules left as they were, and why.
    """

    model: nn.Module
    replaced: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    _undo: list[Callable[[], None]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        """Whether the model is still patched by this handle."""
        return getattr(self.model, _PATCH_ATTR, None) is self

    def unpatch(self) -> None:
        """Put back every module's own class and the MLP weights' own storage; a second call does nothing."""
        while self._undo:
            self._undo.pop()()
        if self.active:
            delattr(self.model, _PATCH_ATTR)

    def __enter__(self) -> Patch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()

    def _record(self, kind: str, name: str) -> None:
        self.replaced.setdefault(kind, []).append(name)


def _family_of(model: nn.Module) -> _Family:
    config = getattr(model, "config", None)
    types_seen = []
    while config is not None:
        model_type = getattr(config, "model_type", None)
        types_seen.append(model_type)
        if model_type in _FAMILIES:
            return _FAMILIES[model_type]
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
        config = text if text is not None and text is not config else None
    raise CujitError(f"patch: model type {types_seen[0] if types_seen else None!r} ({type(model).__name__}) is not "
                     f"supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


def _patched_class(part: type[nn.Module], model_class: type[nn.Module], defer: bool) -> type:
    """``part`` in front of ``model_class``: the class a patched module of ``model_class`` takes.

    With ``defer`` (``under_compile="model"``), the class's forward runs ``model_class.forward`` while torch.compile
    traces and ``part.forward`` otherwise (see :func:`_deferring_forward`).
    """
    state = part._cujit_class_state(model_class) if hasattr(part, "_cujit_class_state") else {}
    if defer:
        state["forward"] = _deferring_forward(part, model_class)
    return type(f"{part.__name__}[{model_class.__name__}]", (part, model_class), {"__module__": __name__, **state})


def _deferring_forward(part: type[nn.Module], model_class: type[nn.Module]) -> Callable[..., Any]:
    """A forward that runs ``model_class.forward`` while torch.compile traces, else ``part.forward``.

    A part may narrow "while torch.compile traces" with a condition of its own, ``_cujit_defer_when`` (an
    expression over ``args`` and ``kwargs``).

    Both are reached through this module's globals, not through ``super()`` or the instance: Dynamo guards what it
    reads on the way, and a path that starts at the instance is guarded once per module (six guards a module for
    ``super()``), where a global is guarded once for all of them. So the compiled patched model checks nearly the
    guards of the unpatched one. The globals are this module's own (the model's forward bound to a name made for
    it): Dynamo finds a function's globals again by its module's name.
    """
    model_forward = model_class.forward
    name = f"_cujit_model_forward_{id(model_forward):x}"
    globals().setdefault(name, model_forward)  # kept for the process: the id stays this function's
    text = (f"def forward(self, *args, **kwargs):\n"
            f"    if {getattr(part, '_cujit_defer_when', '_compiling()')}:\n"
            f"        return {name}(self, *args, **kwargs)\n"
            f"    return {part.__name__}.forward(self, *args, **kwargs)\n")
    made: dict[str, Any] = {}
    exec(compile(text, f"<cujit deferring forward of {model_class.__name__}>", "exec"), globals(), made)
    forward: Callable[..., Any] = made["forward"]
    forward.__doc__ = part.forward.__doc__
    forward.__qualname__ = f"{part.__name__}[{model_class.__name__}].forward"
    return forward


def _swap(module: nn.Module, cls: type, **state: Any) -> Callable[[], None]:
    """Give ``module`` the class ``cls`` (a subclass of its own) and the attributes ``state``; and the undo."""
    original = type(module)
    module.__class__ = cls
    for key, value in state.items():
        setattr(module, key, value)

    def undo() -> None:
        for key in state:
            vars(module).pop(key, None)
        module.__class__ = original

    return undo


def _modules_of(model: nn.Module, cls: type) -> Iterator[tuple[str, Any]]:
    return ((name, m) for name, m in model.named_modules() if type(m) is cls)


def patch(model: nn.Module, *, norms: bool = True, mlp: bool = True, rotary: bool = True,
          qk_norm: bool = True, under_compile: str = "model") -> Patch:
    """Put cujit's ops into ``model`` (a transformers model of a supported family); see the module's docstring.

    ``norms``, ``mlp``, ``rotary``, ``qk_norm``: which parts to patch. ``under_compile``: what the patched parts
    run while torch.compile traces the model, ``"model"`` (the model's own code, which Inductor fuses) or
    ``"cujit"`` (cujit's ops, as ``torch.ops.cujit`` nodes of the graph). Returns a :class:`Patch`; ``unpatch()``
    (or the end of ``with patch(model):``) restores the model exactly.

    Raises:
        CujitError: the model's type is not supported, the model is already patched, or ``under_compile`` is
            neither value.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: expected a torch.nn.Module, got {type(model).__name__}")
    if under_compile not in UNDER_COMPILE:
        raise CujitError(f"patch: under_compile must be one of {', '.join(map(repr, UNDER_COMPILE))}, got "
                         f"{under_compile!r}")
    defer = under_compile == "model"
    family = _family_of(model)
    if getattr(model, _PATCH_ATTR, None) is not None:
        raise CujitError("patch: the model is already patched: call .unpatch() on its handle first")
    try:
        modeling = importlib.import_module(f"transformers.models.{family.package}.modeling_{family.package}")
    except ImportError as e:
        raise CujitError(f"patch: transformers' {family.package} models cannot be imported ({e}): "
                         "pip install 'cujit[transformers]'") from e

    def cls(suffix: str) -> type:
        return getattr(modeling, f"{family.prefix}{suffix}")  # type: ignore[no-any-return]

    handle = Patch(model)
    try:
        _patch_norms(model, handle, cls("RMSNorm"), family, norms=norms, qk_norm=qk_norm, defer=defer)
        if mlp:
            _patch_mlps(model, handle, cls("MLP"), defer)
        if rotary:
            _patch_rotary(model, handle, modeling, cls("Attention"), cls("RotaryEmbedding"), defer)
    except BaseException:
        handle.unpatch()
        raise
    setattr(model, _PATCH_ATTR, handle)
    return handle


def _patch_norms(model: nn.Module, handle: Patch, norm_cls: type, family: _Family, *, norms: bool,
                 qk_norm: bool, defer: bool) -> None:
    classes = {part: _patched_class(part, norm_cls, defer) for part in (CujitRMSNorm, CujitHeadRMSNorm)}
    for name, module in list(_modules_of(model, norm_cls)):
        head = family.qk_norm and name.rpartition(".")[2] in ("q_norm", "k_norm")
        if not (qk_norm if head else norms):
            continue
        eps = getattr(module, "variance_epsilon", None)
        eps = float(eps if eps is not None else module.eps)
        handle._undo.append(_swap(module, classes[CujitHeadRMSNorm if head else CujitRMSNorm], _cujit_eps=eps,
                                  _cujit_gemma=family.gemma_norm))
        handle._record("qk_norm" if head else "rms_norm", name)


def _patch_mlps(model: nn.Module, handle: Patch, mlp_cls: type, defer: bool) -> None:
    cls = _patched_class(CujitGatedMLP, mlp_cls, defer)
    for name, module in list(_modules_of(model, mlp_cls)):
        activation = _activation_of(module.act_fn)
        reason = _mlp_refusal(module) if activation is not None else (
            f"activation {type(module.act_fn).__name__} has no cujit op")
        if reason is not None or activation is None:
            handle.skipped.append(f"{name}: {reason}")
            continue
        weight, undo_weight = _stack(module.gate_proj.weight, module.up_proj.weight)
        handle._undo.append(undo_weight)
        bias = None
        if module.gate_proj.bias is not None:
            bias, undo_bias = _stack(module.gate_proj.bias, module.up_proj.bias)
            handle._undo.append(undo_bias)
        up_offset = int(module.gate_proj.weight.shape[0]) * weight.stride(0) * weight.element_size()
        handle._undo.append(_swap(module, cls, _cujit_activation=activation, _cujit_gate_up_weight=weight,
                                  _cujit_gate_up_bias=bias, _cujit_up_offset=up_offset))
        handle._record("mlp", name)


def _patch_rotary(model: nn.Module, handle: Patch, modeling: types.ModuleType, attention_cls: type,
                  rotary_cls: type, defer: bool) -> None:
    rotaries = list(_modules_of(model, rotary_cls))
    attentions = list(_modules_of(model, attention_cls))
    # The rotary module's table reaches every attention module of the model, so all of them must be patched.
    reason = None
    if not rotaries or not attentions:
        reason = "no rotary module or no attention module of the family's classes"
    elif any(isinstance(m, attention_cls) and type(m) is not attention_cls for m in model.modules()):
        reason = f"a subclass of {attention_cls.__name__} (unknown forward)"
    elif any("forward" in vars(m) for _, m in rotaries + attentions):
        reason = "a rotary or attention module has a forward of its own (patched by something else)"
    elif _rotary_caller(attention_cls.forward, modeling) is None:  # type: ignore[attr-defined]
        reason = f"{attention_cls.__name__}.forward does not call the modeling module's apply_rotary_pos_emb"
    if reason is not None:
        handle.skipped.append(f"rotary embedding: {reason}")
        return
    table_cls = _patched_class(CujitRotaryTable, rotary_cls, defer)
    for name, module in rotaries:
        handle._undo.append(_swap(module, table_cls))
        handle._record("rotary", name)
    attention = _patched_class(CujitAttention, attention_cls, defer)
    for name, module in attentions:
        handle._undo.append(_swap(module, attention))
        handle._record("attention", name)
