"""Op schemas: ``"ns::name(Tensor x, float eps=1e-6, *, Tensor(a!)? out=None) -> Tensor"``.

The same notation torch.library uses, read for what cujit needs: each parameter's name, type, default and
whether it is keyword-only, and the role of each tensor (read, written in place, or an output that is allocated
when the caller passes None and returned). From it come the Python signature of the op's function and the two
schemas registered with torch (the functional form, and the ``.out`` form that writes caller-given outputs).
"""

from __future__ import annotations

import ast
import re
from typing import Any, NamedTuple

from .errors import CujitError

__all__ = ["NO_DEFAULT", "Param", "Schema", "parse_schema"]

NO_DEFAULT: Any = object()

_HEAD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*->\s*(.+?)\s*$", re.DOTALL)
_PARAM = re.compile(
    r"^(?P<type>Tensor|int|float|bool|str)(?P<alias>\([a-z]!\))?(?P<optional>\?)?\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\s*=\s*(?P<default>.+))?$"
)
_SCALARS = ("int", "float", "bool", "str")


class Param(NamedTuple):
    """One parameter of an op.

    Attributes:
        name: the parameter's name.
        type: ``"Tensor"``, ``"int"``, ``"float"``, ``"bool"`` or ``"str"``.
        optional: the type ends in ``?`` (None is allowed).
        mutable: a ``Tensor(x!)``: the op writes it.
        default: the default value, or :data:`NO_DEFAULT`.
        kw_only: declared after ``*``.
        role: for tensors, ``"input"``, ``"inout"`` (written in place) or ``"output"`` (allocated when None and
            returned); ``"scalar"`` otherwise.
    """

    name: str
    type: str
    optional: bool
    mutable: bool
    default: Any
    kw_only: bool
    role: str

    def torch_type(self) -> str:
        """The type as torch's schema language writes it (without alias annotations)."""
        return self.type + ("?" if self.optional else "")


class Schema(NamedTuple):
    """A parsed op schema."""

    namespace: str
    name: str
    params: tuple[Param, ...]
    returns: int

    @property
    def qualified(self) -> str:
        return f"{self.namespace}::{self.name}"

    @property
    def tensors(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.type == "Tensor")

    @property
    def outputs(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.role == "output")

    def python_signature(self, defaults: dict[str, str]) -> str:
        """The parameter list of the generated function; ``defaults`` names the globals holding default values."""
        parts: list[str] = []
        star = False
        for p in self.params:
            if p.kw_only and not star:
                parts.append("*")
                star = True
            parts.append(p.name if p.default is NO_DEFAULT else f"{p.name}={defaults[p.name]}")
        return ", ".join(parts)

    def call_arguments(self) -> str:
        """How the generated function passes its own parameters on to another function of the same signature."""
        return ", ".join(p.name if not p.kw_only else f"{p.name}={p.name}" for p in self.params)

    def torch_schemas(self) -> tuple[str, str | None]:
        """The functional schema (outputs left out, returned) and the ``.out`` schema (outputs given, ``-> ()``)."""
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        inputs: list[str] = []
        star = False
        for p in self.params:
            if p.role == "output":
                continue
            if p.kw_only and not star:
                inputs.append("*")
                star = True
            alias = f"({next(letters)}!)" if p.mutable else ""
            text = f"{p.type}{alias}{'?' if p.optional else ''} {p.name}"
            if p.default is not NO_DEFAULT:
                text += "=" + _torch_literal(p.default)
            inputs.append(text)
        returns = ", ".join("Tensor" for _ in self.outputs)
        functional = f"{self.name}({', '.join(inputs)}) -> ({returns})" if len(self.outputs) != 1 else \
            f"{self.name}({', '.join(inputs)}) -> Tensor"
        if not self.outputs:
            return functional, None
        outs = [f"Tensor({next(letters)}!) {p.name}" for p in self.outputs]
        star_needed = [] if star else ["*"]
        out = f"{self.name}.out({', '.join([*inputs, *star_needed, *outs])}) -> ()"
        return functional, out


def _torch_literal(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return repr(value)
    return repr(value)


def _split(text: str) -> list[str]:
    """Split a parameter list at top-level commas (a default may be a string holding a comma)."""
    parts, depth, current, quote = [], 0, [], ""
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _default(text: str, type_: str, optional: bool, where: str) -> Any:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise CujitError(f"{where}: cannot read the default {text.strip()!r}; expected a literal") from None
    if value is None:
        if not optional:
            raise CujitError(f"{where}: default None needs an optional type ({type_}?)")
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "Tensor": False,
    }[type_]
    if not ok:
        raise CujitError(f"{where}: default {value!r} is not a {type_}")
    return float(value) if type_ == "float" else value


def parse_schema(text: str) -> Schema:
    """Parse ``text``; raise ``CujitError`` naming the part that cannot be read."""
    if not isinstance(text, str):
        raise TypeError(f"op schema: expected a str such as 'ns::name(Tensor x) -> Tensor', got {type(text).__name__}")
    head = _HEAD.match(text)
    if head is None:
        raise CujitError(f"op schema {text!r}: expected 'namespace::name(parameters) -> returns'")
    namespace, name, params_text, returns_text = head.groups()
    where = f"op schema {namespace}::{name}"
    params: list[Param] = []
    kw_only = False
    seen_default = False
    for part in _split(params_text):
        if part == "*":
            if kw_only:
                raise CujitError(f"{where}: '*' appears twice")
            kw_only = True
            continue
        m = _PARAM.match(part)
        if m is None:
            raise CujitError(f"{where}: cannot read parameter {part!r}; expected e.g. 'Tensor x', 'float eps=1e-6', "
                             "'Tensor(a!)? out=None'")
        type_, optional, mutable = m["type"], bool(m["optional"]), bool(m["alias"])
        if mutable and type_ != "Tensor":
            raise CujitError(f"{where}: parameter {m['name']}: only tensors can be written ({type_}{m['alias']})")
        default = NO_DEFAULT if m["default"] is None else _default(m["default"], type_, optional, f"{where}: "
                                                                                                  f"{m['name']}")
        if optional and default is NO_DEFAULT and type_ == "Tensor":
            default = None
        if default is NO_DEFAULT and seen_default and not kw_only:
            raise CujitError(f"{where}: parameter {m['name']} without a default follows one with a default")
        seen_default = seen_default or default is not NO_DEFAULT
        if type_ != "Tensor":
            role = "scalar"
        elif mutable and optional:
            role = "output"
        elif mutable:
            role = "inout"
        else:
            role = "input"
        if role == "output" and default is not None:
            raise CujitError(f"{where}: output {m['name']} must default to None (it is allocated when not given)")
        params.append(Param(m["name"], type_, optional, mutable, default, kw_only, role))
    names = [p.name for p in params]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CujitError(f"{where}: parameter {duplicates[0]} appears twice")
    returns_text = returns_text.strip()
    if returns_text.startswith("(") and returns_text.endswith(")"):
        returned = [r.strip() for r in _split(returns_text[1:-1])]
    else:
        returned = [returns_text]
    if any(r != "Tensor" for r in returned):
        raise CujitError(f"{where}: returns: expected Tensor, (Tensor, ...) or (), got {returns_text!r}")
    outputs = [p for p in params if p.role == "output"]
    if len(returned) != len(outputs):
        raise CujitError(
            f"{where}: returns {len(returned)} tensor(s) but declares {len(outputs)} output(s) "
            "(an output is a 'Tensor(a!)? name=None' parameter: allocated when None, returned)"
        )
    if not any(p.type == "Tensor" and p.role != "output" for p in params):
        raise CujitError(f"{where}: an op needs at least one tensor that is not an output")
    return Schema(namespace, name, tuple(params), len(returned))
