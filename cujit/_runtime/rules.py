"""The rule language of op declarations: values, checks and launch sizes as Python expressions, callables or calls.

A rule is an int, a name, an expression over the op's names (with the helpers of :data:`HELPERS`), a callable that
gets its parameters by name, or a call ``(function, *arguments)`` whose arguments are names, expressions or
constants passed in order. The generic path evaluates a rule; the generated path inlines its text (``cdiv`` and
``aligned`` written out). Template fields (``{dtype}``, ``{plan.vec}``) are read here too.
"""

from __future__ import annotations

import ast
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import codegen, frameworks
from .errors import CujitError
from .matcher import info_of

__all__ = ["HELPERS", "RULE_ERRORS", "Rule", "aligned", "cdiv", "field_value", "render", "rules_of",
           "template_fields"]


def cdiv(a: int, b: int) -> int:
    """Round-up division: how many blocks of ``b`` cover ``a`` items."""
    return -(-a // b)


def aligned(tensor: Any, nbytes: int) -> bool:
    """Whether ``tensor``'s first element is at a multiple of ``nbytes``.

    True for None (an absent optional tensor) and for tensors without storage (the fake tensors of tracing, whose
    layout picks nothing). The generated code inlines it for torch tensors and CuPy arrays.
    """
    if tensor is None:
        return True
    torch = frameworks.torch()
    if torch is not None and isinstance(tensor, torch.Tensor):
        if type(tensor) is not torch.Tensor and type(tensor) is not torch.nn.Parameter:
            from torch._subclasses.fake_tensor import is_fake

            if is_fake(tensor):
                return True
        return bool(tensor.data_ptr() % nbytes == 0)
    return bool(info_of(tensor, "aligned()").ptr % nbytes == 0)


#: What value, check and launch expressions may call besides the op's own names.
HELPERS: dict[str, Any] = {
    "cdiv": cdiv, "prod": math.prod, "min": min, "max": max, "len": len, "abs": abs, "int": int, "bool": bool,
    "float": float, "aligned": aligned,
}


class Rule:
    """One user-supplied rule (a value, a check, a grid size).

    An int, a name, an expression, a callable that gets its parameters by name, or a call ``(callable, *arguments)``
    whose arguments (names, expressions, or constants) are passed in order.
    """

    def __init__(self, rule: Any, where: str) -> None:
        self.where = where
        self.const: Any = None
        self.func: Callable[..., Any] | None = None
        self.code: Any = None
        self.names: tuple[str, ...]
        # A call's callable, under the name _CALL in the expression that calls it.
        self.called: Callable[..., Any] | None = None
        self.tree: ast.Expression | None = None
        if isinstance(rule, tuple) and rule and callable(rule[0]):
            self.called = rule[0]
            arguments = [_argument_text(a, where, i) for i, a in enumerate(rule[1:])]
            rule = f"{_CALL}({', '.join(f'({a})' for a in arguments)})"
            name = getattr(self.called, "__qualname__", repr(self.called))
            self.shown = f"{name}({', '.join(arguments)})"
        if self.called is not None:
            tree = ast.parse(rule, mode="eval")
            self.names = tuple(n for n in _free_names(tree) if n != _CALL)
            self.code = compile(tree, f"<cujit {where}>", "eval")
            self.tree = tree
            self.text = f"({rule})"
        elif isinstance(rule, bool) or (isinstance(rule, (int, float)) and not isinstance(rule, bool)):
            self.const, self.names, self.text = rule, (), repr(rule)
            self.shown = self.text
        elif isinstance(rule, str):
            try:
                tree = ast.parse(rule.strip(), mode="eval")
            except SyntaxError as exc:
                raise CujitError(f"{where}: {rule!r} is not a Python expression ({exc.msg})") from None
            self.names = _free_names(tree)
            self.code = compile(tree, f"<cujit {where}>", "eval")
            self.tree = tree
            self.text = f"({rule.strip()})"
            self.shown = rule.strip()
        elif callable(rule):
            self.func = rule
            try:
                parameters = inspect.signature(rule).parameters.values()
            except (TypeError, ValueError):
                raise CujitError(f"{where}: cannot read the parameters of {rule!r}") from None
            if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
                raise CujitError(f"{where}: {rule!r} must name its parameters (no *args / **kwargs): each is "
                                 "looked up by name")
            self.names = tuple(p.name for p in parameters)
            self.text = ""  # set by emit, which knows the global that holds the callable
            self.shown = f"{getattr(rule, '__qualname__', repr(rule))}({', '.join(self.names)})"
        else:
            raise TypeError(f"{where}: expected an int, a name, an expression string, a callable or a call "
                            f"(callable, *arguments), got {type(rule).__name__}")

    def check_names(self, known: Iterable[str]) -> None:
        available = set(known) | set(HELPERS)
        for name in self.names:
            if name not in available:
                choices = ", ".join(sorted(set(known))) or "none"
                raise CujitError(f"{self.where}: unknown name {name!r} (names available here: {choices})")

    def emit(self, env: dict[str, Any], slot: str, pointer: str | None = None,
             tensors: Mapping[str, bool] | None = None) -> str:
        """The Python expression of this rule in generated code (a callable is stored in ``env[slot]``).

        ``cdiv`` calls become arithmetic; with ``pointer`` (``"data_ptr()"`` or ``"data.ptr"``), ``aligned(t, n)``
        of a tensor parameter (``tensors`` maps each to whether it is optional) becomes an inline test.
        """
        if self.func is not None:
            env[slot] = self.func
            return f"{slot}({', '.join(self.names)})"
        if self.tree is None:
            return self.text
        if self.called is not None:
            env[slot] = self.called
        # The text depends on the expression and on how it is inlined, not on the op: ops that share rules (the gated
        # activations, an op declared again) reuse it instead of rewriting the tree again.
        key = (self.text, slot if self.called is not None else None, pointer, tuple(sorted((tensors or {}).items())))
        emitted = _EMITTED.get(key)
        if emitted is None:
            rewritten = ast.parse(self.text, mode="eval")  # a fresh tree to rewrite (faster than a deep copy)
            if self.called is not None:
                for node in ast.walk(rewritten):
                    if isinstance(node, ast.Name) and node.id == _CALL:
                        node.id = slot
            rewritten = _Inline(pointer, tensors or {}).visit(rewritten)
            emitted = _EMITTED[key] = f"({ast.unparse(rewritten)})"
        return emitted

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        """The rule's value for ``names``; an exception it raises (other than a CujitError) is worded."""
        try:
            if self.func is not None:
                return self.func(*(names[n] for n in self.names))
            if self.code is not None:
                # One namespace: comprehensions see the names as they see globals.
                namespace = {**HELPERS, **names}
                if self.called is not None:
                    namespace[_CALL] = self.called
                return eval(self.code, namespace)
        except CujitError:
            raise
        except RULE_ERRORS as exc:
            raise self.worded(exc) from exc
        return self.const

    def worded(self, exc: BaseException) -> BaseException:
        """The error for an exception raised by this rule: a CujitError as it is, anything else with the rule named."""
        if isinstance(exc, CujitError):
            return exc
        return CujitError(f"{self.where}: {self.shown} raised {type(exc).__name__}: {exc}")

    def emit_guarded(self, src: codegen.Source, env: dict[str, Any], target: str, slot: str, pointer: str | None,
                     tensors: Mapping[str, bool]) -> None:
        """Generated lines that assign this rule's value to ``target``, an exception worded as :meth:`evaluate` does.

        A ``try`` costs nothing while nothing is raised.
        """
        expression = self.emit(env, slot, pointer, tensors)
        if self.const is not None:
            src(f"{target} = {expression}")
            return
        env[f"_worded{slot}"] = self.worded
        with src.block("try"):
            src(f"{target} = {expression}")
        src(f"except _RULE_ERRORS as _exc: raise _worded{slot}(_exc) from None")

    def integer(self, names: Mapping[str, Any]) -> int:
        """The rule's value, which must be an int (a grid, block, shared memory or buffer size)."""
        return self.as_int(self.evaluate(names))

    def as_int(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CujitError(f"{self.where}: {self.shown} must be an int, got {value!r} of type "
                             f"{type(value).__name__}")
        return int(value)


#: The name a call rule's callable has in the expression that calls it (op names cannot start with _).
_CALL = "_call"

#: Rule.emit's results: (expression text, slot of a call's callable, pointer form, tensors) -> generated text.
_EMITTED: dict[tuple[Any, ...], str] = {}


def _argument_text(argument: Any, where: str, index: int) -> str:
    """One argument of a call rule as expression text: a name or expression as it is, a constant as its repr."""
    if isinstance(argument, str):
        try:
            ast.parse(argument.strip(), mode="eval")
        except SyntaxError as exc:
            raise CujitError(f"{where}: argument {index + 1}, {argument!r}, is not a Python expression "
                             f"({exc.msg})") from None
        return argument.strip()
    if argument is None or isinstance(argument, (bool, int, float)):
        return repr(argument)
    raise TypeError(f"{where}: argument {index + 1} of a call: expected a name, an expression string or a constant "
                    f"(None, bool, int, float), got {type(argument).__name__}")


#: What a rule may raise that cujit words with the rule's place and text (a CujitError passes unchanged).
RULE_ERRORS = (ArithmeticError, AttributeError, LookupError, NameError, TypeError, ValueError)


def _free_names(tree: ast.AST) -> tuple[str, ...]:
    """The names an expression reads from outside: not those bound by its comprehensions and lambdas."""
    found: dict[str, None] = {}

    def visit(node: ast.AST, bound: frozenset[str]) -> None:
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = set(bound)
            for generator in node.generators:
                visit(generator.iter, frozenset(inner))  # the iterable is read before the target is bound
                inner.update(n.id for n in ast.walk(generator.target) if isinstance(n, ast.Name))
                for condition in generator.ifs:
                    visit(condition, frozenset(inner))
            elements = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for element in elements:
                visit(element, frozenset(inner))
            return
        if isinstance(node, ast.Lambda):
            arguments = node.args
            params = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            params += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            for default in (*arguments.defaults, *(d for d in arguments.kw_defaults if d is not None)):
                visit(default, bound)
            visit(node.body, bound | {a.arg for a in params})
            return
        if isinstance(node, ast.Name) and node.id not in bound:
            found.setdefault(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child, bound)

    visit(tree, frozenset())
    return tuple(found)


class _Inline(ast.NodeTransformer):
    """Helper calls written out in generated code: the same values without a function call.

    ``cdiv(a, b)`` -> ``-(-a // b)``; ``aligned(t, n)`` of a tensor parameter -> ``t.<pointer> % n == 0`` (with
    ``t is None or`` for an optional one), where ``pointer`` reads the library's data pointer.
    """

    def __init__(self, pointer: str | None, tensors: Mapping[str, bool]) -> None:
        self.pointer = pointer
        self.tensors = tensors

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.func, ast.Name) or len(node.args) != 2 or node.keywords:
            return node
        a, b = node.args
        if node.func.id == "cdiv":
            floor = ast.BinOp(ast.UnaryOp(ast.USub(), a), ast.FloorDiv(), b)
            return ast.copy_location(ast.UnaryOp(ast.USub(), floor), node)
        if node.func.id == "aligned" and self.pointer and isinstance(a, ast.Name) and a.id in self.tensors:
            test = ast.parse(f"{a.id}.{self.pointer} % ({ast.unparse(b)}) == 0", mode="eval").body
            if self.tensors[a.id]:
                test = ast.parse(f"{a.id} is None or {ast.unparse(test)}", mode="eval").body
            return ast.copy_location(test, node)
        return node


def rules_of(value: Any, where: str) -> tuple[Rule, ...]:
    """A grid or block: one rule, or a tuple of up to three."""
    if isinstance(value, tuple) and not (value and callable(value[0])):
        if not 1 <= len(value) <= 3:
            raise CujitError(f"{where}: expected 1 to 3 dimensions, got {len(value)}")
        return tuple(Rule(v, f"{where}[{i}]") for i, v in enumerate(value))
    return (Rule(value, where),)


def template_fields(kernel: str, where: str) -> tuple[str, ...]:
    import string

    if not isinstance(kernel, str) or not kernel.strip():
        raise TypeError(f"{where} kernel: expected a C++ name expression such as 'my_kernel<{{dtype}}>', got "
                        f"{kernel!r}")
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(kernel):
        if field is None:
            continue
        if spec or conversion or not all(codegen.is_identifier(part) for part in field.split(".")):
            raise CujitError(f"{where} kernel: {{{field}}} must be a name, or a name's attribute ({{plan.vec}})")
        fields.append(field)
    return tuple(dict.fromkeys(fields))


def render(kernel: str, rendered: Mapping[str, str]) -> str:
    """The name expression with each ``{field}`` replaced by its rendered value (dotted fields included)."""
    import string

    parts = []
    for literal, field, _, _ in string.Formatter().parse(kernel):
        parts.append(literal)
        if field is not None:
            parts.append(rendered[field])
    return "".join(parts)


def field_value(names: Mapping[str, Any], field: str) -> Any:
    """A template field's value among ``names``: the name's value, or its attribute for ``plan.vec``."""
    root, _, attributes = field.partition(".")
    value = names[root]
    for attribute in attributes.split(".") if attributes else ():
        value = getattr(value, attribute)
    return value
