"""Kernel parameter types, read from NVRTC's lowered names.

For every kernel cujit also asks NVRTC for ``cujit_detail::signature_probe<decltype(EXPR)>``, an empty
``__global__`` template whose lowered (Itanium-mangled) name spells the kernel's concrete function type, template
parameters already substituted. This module reads the parameter list out of that name, so that launches can pack
Python values by the parameter types the kernel really declares.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PROBE_DECLARATION", "Param", "parse_probe", "probe_expression"]

PROBE_DECLARATION = """
namespace cujit_detail {
template <typename F> __global__ void signature_probe() {}
}  // namespace cujit_detail
"""

_PROBE_PREFIX = "_ZN12cujit_detail15signature_probeI"


def probe_expression(expression: str) -> str:
    """The name expression whose lowered name encodes the type of the kernel ``expression``."""
    return f"cujit_detail::signature_probe<decltype({expression})>"


class Param(NamedTuple):
    """One kernel parameter.

    Attributes:
        kind: ``"pointer"``, ``"int"``, ``"uint"``, ``"float"``, ``"bool"``, ``"bf16"`` or ``"record"`` (a class
            type passed by value; it is given as bytes).
        size: its size in bytes, or 0 for a record whose size the name does not tell.
        cpp: a readable C++ spelling, for messages.
        code: its ``struct`` format character (``""`` for records).
    """

    kind: str
    size: int
    cpp: str
    code: str


_BUILTINS: dict[str, Param] = {
    "b": Param("bool", 1, "bool", "?"),
    "c": Param("int", 1, "char", "b"),
    "a": Param("int", 1, "signed char", "b"),
    "h": Param("uint", 1, "unsigned char", "B"),
    "s": Param("int", 2, "short", "h"),
    "t": Param("uint", 2, "unsigned short", "H"),
    "i": Param("int", 4, "int", "i"),
    "j": Param("uint", 4, "unsigned int", "I"),
    "l": Param("int", 8, "long", "q"),
    "m": Param("uint", 8, "unsigned long", "Q"),
    "x": Param("int", 8, "long long", "q"),
    "y": Param("uint", 8, "unsigned long long", "Q"),
    "w": Param("int", 4, "wchar_t", "i"),
    "f": Param("float", 4, "float", "f"),
    "d": Param("float", 8, "double", "d"),
}
_D_BUILTINS: dict[str, Param] = {
    "Dh": Param("float", 2, "_Float16", "e"),
    "Di": Param("uint", 4, "char32_t", "I"),
    "Ds": Param("uint", 2, "char16_t", "H"),
    "Du": Param("uint", 1, "char8_t", "B"),
    "Dn": Param("pointer", 8, "std::nullptr_t", "Q"),
}
# Class types that behave as scalars: Python floats are converted for them.
_SCALAR_RECORDS: dict[str, Param] = {
    "__half": Param("float", 2, "__half", "e"),
    "__nv_bfloat16": Param("bf16", 2, "__nv_bfloat16", "H"),
}


class _Unsupported(ValueError):
    pass


class _Reader:
    """A recursive-descent reader for the subset of the Itanium C++ ABI that kernel signatures use."""

    def __init__(self, text: str, pos: int, subs: list[Param | str]) -> None:
        self.s = text
        self.i = pos
        self.subs = subs

    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def take(self, n: int = 1) -> str:
        out = self.s[self.i : self.i + n]
        if len(out) != n:
            raise _Unsupported("unexpected end of name")
        self.i += n
        return out

    def number(self) -> int:
        start = self.i
        while self.peek().isdigit():
            self.i += 1
        if start == self.i:
            raise _Unsupported(f"expected a number at {self.i}")
        return int(self.s[start : self.i])

    def source_name(self) -> str:
        n = self.number()
        return self.take(n)

    def seq_id(self) -> int:
        """After ``S``: ``_`` is 0, ``<base 36>_`` is that plus one."""
        if self.peek() == "_":
            self.i += 1
            return 0
        start = self.i
        while self.peek() and self.peek() != "_":
            self.i += 1
        value = int(self.s[start : self.i], 36) + 1
        self.take()
        return value

    def record(self, name: str) -> Param:
        return _SCALAR_RECORDS.get(name) or Param("record", 0, name, "")

    def template_args(self) -> str:
        self.take()  # I
        parts = []
        while self.peek() != "E":
            parts.append(self.template_arg())
        self.take()
        return "<" + ", ".join(parts) + ">"

    def template_arg(self) -> str:
        c = self.peek()
        if c == "L":
            self.take()
            if self.peek(2) == "_Z":
                raise _Unsupported("a symbol as template argument")
            ty = self.type()
            start = self.i
            while self.peek() != "E":
                self.take()
            value = self.s[start : self.i].replace("n", "-", 1)
            self.take()
            return value if ty.kind != "bool" else ("true" if value == "1" else "false")
        if c == "J":
            self.take()
            parts = []
            while self.peek() != "E":
                parts.append(self.template_arg())
            self.take()
            return ", ".join(parts)
        if c == "X":
            raise _Unsupported("an expression as template argument")
        return self.type().cpp

    def name_after_prefix(self, prefix: str) -> Param:
        """An unqualified name, maybe with template arguments, inside ``N ... E`` or after ``St``."""
        name = prefix + self.source_name()
        if self.peek() == "I":
            self.subs.append(name)
            name += self.template_args()
        param = self.record(name)
        self.subs.append(param)
        return param

    def nested(self) -> Param:
        self.take()  # N
        while self.peek() in ("r", "V", "K"):
            self.take()
        qual = ""
        current: Param | None = None
        while self.peek() != "E":
            c = self.peek()
            if c == "S":
                self.take()
                if self.peek() == "t":
                    self.take()
                    qual = "std::"
                    continue
                entry = self.subs[self.seq_id()]
                qual = (entry if isinstance(entry, str) else entry.cpp) + "::"
                continue
            if c == "I":
                if current is None:
                    raise _Unsupported("template arguments without a name")
                base = current.cpp
                current = self.record(base + self.template_args())
                self.subs.append(current)
                qual = current.cpp + "::"
                continue
            if not c.isdigit():
                raise _Unsupported(f"unexpected {c!r} in a nested name")
            name = qual + self.source_name()
            current = self.record(name)
            if self.peek() != "E":
                self.subs.append(name)
            else:
                self.subs.append(current)
            qual = name + "::"
        self.take()
        if current is None:
            raise _Unsupported("empty nested name")
        return current

    def type(self) -> Param:
        c = self.peek()
        if c in _BUILTINS:
            self.take()
            return _BUILTINS[c]
        if c == "v":
            self.take()
            return Param("void", 0, "void", "")
        if c == "D":
            two = self.peek(2)
            if two in _D_BUILTINS:
                self.take(2)
                return _D_BUILTINS[two]
            if two == "DF":  # _FloatN: DF16_, DF32_, ...
                self.take(2)
                bits = self.number()
                self.take()
                return Param("float", bits // 8, f"_Float{bits}", {16: "e", 32: "f", 64: "d"}.get(bits, ""))
            raise _Unsupported(f"builtin type {two!r}")
        if c in ("P", "R", "O"):
            self.take()
            inner = self.type()
            spelled = inner.cpp + ("*" if c == "P" else "&")
            param = Param("pointer", 8, spelled, "Q")
            self.subs.append(param)
            return param
        if c in ("r", "V", "K"):
            quals = []
            while self.peek() in ("r", "V", "K"):
                quals.append({"r": "__restrict__", "V": "volatile", "K": "const"}[self.take()])
            inner = self.type()
            param = Param(inner.kind, inner.size, " ".join([*reversed(quals), inner.cpp]), inner.code)
            self.subs.append(param)
            return param
        if c.isdigit():
            return self.name_after_prefix("")
        if c == "N":
            return self.nested()
        if c == "S":
            self.take()
            if self.peek() == "t":
                self.take()
                return self.name_after_prefix("std::")
            entry = self.subs[self.seq_id()]
            param = entry if isinstance(entry, Param) else self.record(entry)
            if self.peek() == "I":
                param = self.record(param.cpp + self.template_args())
                self.subs.append(param)
            return param
        if c == "U":  # vendor qualifier, such as an address space
            self.take()
            self.source_name()
            return self.type()
        raise _Unsupported(f"type code {c!r}")


def parse_probe(lowered: str) -> tuple[Param, ...] | None:
    """The parameters of the kernel whose probe has the lowered name ``lowered``.

    Returns ``None`` where the name uses a construct this reader does not know; the launcher then packs
    without type information (and says so in its errors).
    """
    if not lowered.startswith(_PROBE_PREFIX):
        return None
    # The prefix itself registered two substitutions: the namespace and the template name.
    reader = _Reader(lowered, len(_PROBE_PREFIX), ["cujit_detail", "cujit_detail::signature_probe"])
    try:
        if reader.take() != "F":
            return None
        if reader.peek() == "Y":
            reader.take()
        reader.type()  # return type, void for a kernel
        params: list[Param] = []
        while reader.peek() != "E":
            param = reader.type()
            if param.kind == "void":
                break
            params.append(param)
        return tuple(params)
    except (_Unsupported, IndexError, ValueError):
        return None
