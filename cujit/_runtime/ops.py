"""Ops: one declaration gives a checked launch function and a ``torch.ops`` op.

``cujit.op(schema, source=..., kernel=..., tensors=..., ...)`` reads the declaration once and generates the op's
function (``codegen``): for torch tensors and CuPy arrays a straight-line fast path (scalar type fences, the
tensor checks of ``matcher.CheckEmitter``, the ``values`` and ``checks`` inlined, outputs allocated or checked,
one dict lookup for the loaded kernel, packing, ``cuLaunchKernel`` on the current stream); anything unexpected
(another DLPack producer, a wrong input, a kernel not loaded yet) goes to :meth:`Op.call_slow`, which
interprets the same declaration with the reference verifier, words every error, compiles and loads, then
launches. The torch.library registration (functional and ``.out`` forms, a fake implementation derived from the
declaration, mutated arguments declared) and the ``torch.compile`` substitution live in ``torch_ops.py``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import numbers
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import codegen, driver, frameworks, launch
from .cpp_args import make_cpp_args
from .dtypes import DType, as_dtype
from .errors import CheckError, CujitError
from .matcher import (
    CheckEmitter,
    MatchSpec,
    SymbolicDevice,
    SymbolicDType,
    SymbolicShape,
    SymbolicSize,
    TensorMatcher,
    _Symbol,
    check_env,
    info_of,
    refresh,
    verify_info,
)
from .module import JitModule, Kernel, load_jit
from .op_args import Passed, check_kernel_args
from .schema import NO_DEFAULT, Param, Schema, parse_schema
from .tensors import Device

__all__ = ["REGISTRY", "Launch", "Op", "cdiv", "declared_ops", "op", "shipped_module_names"]


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

#: Every op declared in this process, by qualified name (``cujit::add_constant``).
REGISTRY: dict[str, Op] = {}
_REGISTRY_LOCK = threading.Lock()


class OpFunction(Protocol):
    """What :func:`op` returns: the op's generated function, with its declaration as ``.op``."""

    op: Op

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class Launch:
    """One kernel launch of an op that runs several (``launches=[Launch(...), ...]``), in order, on one stream."""

    def __init__(self, *, kernel: str, grid: Any, block: Any, args: Sequence[str], shared_mem: Any = 0) -> None:
        self.kernel = kernel
        self.grid = grid
        self.block = block
        self.args = tuple(args)
        self.shared_mem = shared_mem

    def __repr__(self) -> str:
        return f"Launch({self.kernel!r})"


# ------------------------------------------------------------------------------------------------ rules
class _Rule:
    """One user-supplied rule (a value, a check, a grid size): an int, a name, an expression or a callable."""

    def __init__(self, rule: Any, where: str) -> None:
        self.where = where
        self.const: Any = None
        self.func: Callable[..., Any] | None = None
        self.code: Any = None
        self.names: tuple[str, ...]
        if isinstance(rule, bool) or (isinstance(rule, (int, float)) and not isinstance(rule, bool)):
            self.const, self.names, self.text = rule, (), repr(rule)
            self.shown = self.text
        elif isinstance(rule, str):
            try:
                tree = ast.parse(rule.strip(), mode="eval")
            except SyntaxError as exc:
                raise CujitError(f"{where}: {rule!r} is not a Python expression ({exc.msg})") from None
            self.names = _free_names(tree)
            self.code = compile(tree, f"<cujit {where}>", "eval")
            self.tree: ast.Expression | None = tree
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
            raise TypeError(f"{where}: expected an int, a name, an expression string or a callable, got "
                            f"{type(rule).__name__}")

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
        tree = getattr(self, "tree", None)
        if tree is None:
            return self.text
        import copy

        rewritten = _Inline(pointer, tensors or {}).visit(copy.deepcopy(tree))
        return f"({ast.unparse(rewritten)})"

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        """The rule's value for ``names``; an exception it raises (other than a CujitError) is worded."""
        try:
            if self.func is not None:
                return self.func(*(names[n] for n in self.names))
            if self.code is not None:
                # One namespace: comprehensions see the names as they see globals.
                return eval(self.code, {**HELPERS, **names})
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


def _rules(value: Any, where: str) -> tuple[_Rule, ...]:
    """A grid or block: one rule, or a tuple of up to three."""
    if isinstance(value, tuple):
        if not 1 <= len(value) <= 3:
            raise CujitError(f"{where}: expected 1 to 3 dimensions, got {len(value)}")
        return tuple(_Rule(v, f"{where}[{i}]") for i, v in enumerate(value))
    return (_Rule(value, where),)


class _LaunchPlan:
    """A :class:`Launch` with its rules read."""

    def __init__(self, index: int, spec: Launch, where: str) -> None:
        self.index = index
        self.kernel = spec.kernel
        self.fields = _fields(spec.kernel, where)
        self.grid = _rules(spec.grid, f"{where} grid")
        self.block = _rules(spec.block, f"{where} block")
        self.smem = _Rule(spec.shared_mem, f"{where} shared_mem")
        for rule in (*self.grid, *self.block, self.smem):
            if rule.const is not None:
                rule.as_int(rule.const)
        self.args = spec.args
        for name in self.args:
            if not isinstance(name, str):
                raise TypeError(f"{where} args: expected names (str), got {name!r}")


def _fields(kernel: str, where: str) -> tuple[str, ...]:
    import string

    if not isinstance(kernel, str) or not kernel.strip():
        raise TypeError(f"{where} kernel: expected a C++ name expression such as 'my_kernel<{{dtype}}>', got "
                        f"{kernel!r}")
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(kernel):
        if field is None:
            continue
        if spec or conversion or not codegen.is_identifier(field):
            raise CujitError(f"{where} kernel: {{{field}}} must be a plain name")
        fields.append(field)
    return tuple(dict.fromkeys(fields))


# ------------------------------------------------------------------------------------------------ the op
class Op:
    """A declared op: its schema, checks, rules and kernels; see :func:`op`."""

    def __init__(
        self,
        schema: str,
        *,
        source: str | Path | Sequence[str | Path],
        tensors: Mapping[str, TensorMatcher],
        kernel: str | None = None,
        grid: Any = None,
        block: Any = None,
        shared_mem: Any = 0,
        args: Sequence[str] | None = None,
        launches: Sequence[Launch] | None = None,
        values: Mapping[str, Any] | None = None,
        checks: Sequence[tuple[Any, str]] = (),
        scratch: Mapping[str, tuple[Any, Sequence[Any]]] | None = None,
        precompile: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]] = (),
        pdl: bool = False,
        extra_cuda_cflags: Sequence[str] = (),
        extra_include_paths: Sequence[str | Path] = (),
        base_dir: Path | None = None,
        module: str = "__main__",
    ) -> None:
        self.schema: Schema = parse_schema(schema)
        self.name = self.schema.qualified
        where = self.name
        self.module_name = module
        # What was declared, for variant().
        self._declaration: dict[str, Any] = {
            "source": source, "tensors": tensors, "kernel": kernel, "grid": grid, "block": block,
            "shared_mem": shared_mem, "args": args, "launches": launches, "values": values, "checks": checks,
            "scratch": scratch, "precompile": precompile, "pdl": pdl, "extra_cuda_cflags": extra_cuda_cflags,
            "extra_include_paths": extra_include_paths, "base_dir": base_dir, "module": module,
        }
        self._schema_text = schema
        self.pdl = bool(pdl)
        base = base_dir if base_dir is not None else Path.cwd()
        sources = [source] if isinstance(source, (str, Path)) else list(source)
        if not sources:
            raise CujitError(f"{where}: source: expected at least one .cuh file")
        self.sources = tuple((Path(s) if Path(s).is_absolute() else base / s).resolve() for s in sources)
        for path in self.sources:
            if not path.is_file():
                raise CujitError(f"{where}: source {path} not found (relative paths are relative to {base})")
        self.extra_cuda_cflags = tuple(str(f) for f in extra_cuda_cflags)
        self.extra_include_paths = tuple(extra_include_paths)

        # Launches.
        if launches is not None:
            if any(x is not None for x in (kernel, grid, block, args)):
                raise CujitError(f"{where}: give either launches=[...] or kernel/grid/block/args, not both")
            if not launches:
                raise CujitError(f"{where}: launches is empty")
            self.launches = tuple(_LaunchPlan(i, spec, f"{where} launches[{i}]") for i, spec in enumerate(launches))
        else:
            missing = [n for n, v in (("kernel", kernel), ("grid", grid), ("block", block), ("args", args))
                       if v is None]
            if missing:
                raise CujitError(f"{where}: missing {', '.join(missing)} (or give launches=[...])")
            single = Launch(kernel=kernel, grid=grid, block=block, args=args or (), shared_mem=shared_mem)  # type: ignore[arg-type]
            self.launches = (_LaunchPlan(0, single, where),)
        self.fields = tuple(dict.fromkeys(f for plan in self.launches for f in plan.fields))

        # Tensors: every Tensor parameter has a matcher; all of them live on one CUDA device.
        tensor_params = {p.name: p for p in self.schema.tensors}
        unknown = sorted(set(tensors) - set(tensor_params))
        missing = sorted(set(tensor_params) - set(tensors))
        if unknown:
            raise CujitError(f"{where}: tensors: {', '.join(unknown)} is not a Tensor parameter of the schema")
        if missing:
            raise CujitError(f"{where}: tensors: no TensorMatcher for {', '.join(missing)}")
        device_symbols = {m.spec().device_symbol for m in tensors.values()} - {None}
        if len(device_symbols) > 1:
            raise CujitError(f"{where}: tensors: every tensor of an op is on one device; use one SymbolicDevice")
        # The op's device: the user's SymbolicDevice (then its name can be used), else one of cujit's own.
        user_device = bool(device_symbols)
        self.device_symbol: SymbolicDevice = device_symbols.pop() if device_symbols else SymbolicDevice("device")  # type: ignore[assignment]
        self.specs: dict[str, MatchSpec] = {}
        for name, matcher in tensors.items():
            if not isinstance(matcher, TensorMatcher):
                raise TypeError(f"{where}: tensors[{name!r}]: expected a TensorMatcher, got {type(matcher).__name__}")
            spec = matcher.spec()
            if spec.device_kinds not in (None, ("cuda",)):
                raise CujitError(f"{where}: tensors[{name!r}]: op tensors are CUDA tensors; drop with_device(...)")
            self.specs[name] = spec.on_device(("cuda",), self.device_symbol)
        ordered = [p for p in self.schema.params if p.type == "Tensor"]
        self.required = tuple(p.name for p in ordered if p.role in ("input", "inout") and not p.optional)
        self.optional = tuple(p.name for p in ordered if p.role == "input" and p.optional)
        self.outputs = tuple(p.name for p in ordered if p.role == "output")
        if not self.required:
            raise CujitError(f"{where}: an op needs a tensor that is neither optional nor an output: its kind "
                             "(torch or CuPy) and device decide those of the outputs")

        # Names.
        self.params = {p.name: p for p in self.schema.params}
        input_symbols: dict[str, _Symbol] = {}
        for name in self.required:
            for sym in self.specs[name].symbols():
                if sym is not self.device_symbol or user_device:
                    input_symbols.setdefault(sym.name, sym)
        for name in self.optional:
            for sym in self.specs[name].symbols():
                if sym is not self.device_symbol and sym.name not in input_symbols:
                    raise CujitError(f"{where}: tensors[{name!r}]: symbol {sym.name!r} of an optional tensor must "
                                     "also appear in a required input (an absent tensor binds nothing)")
        output_symbols: dict[str, _Symbol] = {}
        for name in self.outputs:
            for sym in self.specs[name].symbols():
                if sym.name not in input_symbols and sym is not self.device_symbol:
                    output_symbols.setdefault(sym.name, sym)
        symbols = {**input_symbols, **output_symbols}
        for sym_name, sym in symbols.items():
            others = [s for s in symbols.values() if s.name == sym_name and s is not sym]
            if others:
                raise CujitError(f"{where}: two different symbols are named {sym_name!r}")
        self.symbols = symbols
        self.input_symbols = input_symbols
        self.values = {k: _Rule(v, f"{where} values[{k!r}]") for k, v in (values or {}).items()}
        self.scratch: dict[str, tuple[DType, tuple[_Rule, ...]]] = {}
        for sname, (dtype, shape) in (scratch or {}).items():
            self.scratch[sname] = (as_dtype(dtype), tuple(_Rule(s, f"{where} scratch[{sname!r}][{i}]")
                                                         for i, s in enumerate(shape)))
        taken: dict[str, str] = {}
        for kind, names in (("parameter", self.params), ("symbol", input_symbols), ("value", self.values),
                            ("scratch buffer", self.scratch)):
            for name in names:
                if not codegen.is_identifier(name) or name.startswith("_") or name in HELPERS:
                    raise CujitError(f"{where}: {kind} name {name!r} cannot be used (an identifier not starting "
                                     f"with _ and not one of {', '.join(sorted(HELPERS))})")
                if name in taken:
                    raise CujitError(f"{where}: {name!r} is both a {taken[name]} and a {kind}")
                taken[name] = kind
        for name in output_symbols:
            if name in taken and taken[name] != "value":
                raise CujitError(f"{where}: {name!r} is both a {taken[name]} and a symbol")
        self.defined_outputs = {n for n in output_symbols if n in self.values}

        # Which names each rule may read. Values and checks that read an output (the output itself, or a stride
        # that only an output binds) are late: evaluated once the outputs are allocated or checked.
        late_sources = set(self.outputs) | {n for n in output_symbols if n not in self.values}
        self.late_values: set[str] = set()
        known = [*self.params, *input_symbols]
        for vname, rule in self.values.items():
            rule.check_names([*known, *late_sources])
            if set(rule.names) & (late_sources | self.late_values):
                if vname in self.defined_outputs:
                    raise CujitError(f"{where} values[{vname!r}]: it defines a dimension of an output, so it cannot "
                                     "read an output")
                self.late_values.add(vname)
            known.append(vname)
        self.checks: list[tuple[_Rule, str]] = []
        self.late_checks: set[int] = set()
        for i, item in enumerate(checks):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)):
                raise TypeError(f"{where} checks[{i}]: expected (expression or callable, message), got {item!r}")
            rule = _Rule(item[0], f"{where} checks[{i}]")
            rule.check_names([*known, *late_sources])
            if set(rule.names) & (late_sources | self.late_values):
                self.late_checks.add(i)
            self.checks.append((rule, item[1]))
        # How aligned(t, n) is inlined: each tensor parameter, and whether it may be None when a rule reads it.
        self.tensor_optional = {p.name: p.name in self.optional for p in self.schema.tensors}
        for _, shape in self.scratch.values():
            for rule in shape:
                rule.check_names([*known, *late_sources])
        everything = [*known, *output_symbols, *self.scratch]
        for plan in self.launches:
            for rule in (*plan.grid, *plan.block, plan.smem):
                rule.check_names(everything)
            for name in plan.args:
                if name not in everything:
                    raise CujitError(f"{plan.grid[0].where.rsplit(' ', 1)[0]} args: unknown name {name!r}")
        for field in self.fields:
            if field not in known:
                raise CujitError(f"{where} kernel: {{{field}}} must be a scalar parameter, an input symbol or a value")
            if field in tensor_params:
                raise CujitError(f"{where} kernel: {{{field}}} is a tensor; template arguments are values")
        self._check_outputs()

        self._precompile = precompile
        self._modules: dict[tuple[Any, ...], JitModule] = {}
        self._modules_lock = threading.Lock()
        self.table: dict[tuple[Any, ...], Any] = {}
        self.env: dict[str, Any] = {}
        self._driver_bound = False
        self.function = self._generate()
        with _REGISTRY_LOCK:
            REGISTRY[self.name] = self
        from . import torch_ops

        torch_ops.declared(self)

    def __repr__(self) -> str:
        return f"<cujit op {self.name}>"

    # -------------------------------------------------------------------------------------------- checks
    def _check_outputs(self) -> None:
        available = set(self.input_symbols) | set(self.values)
        for name in self.outputs:
            spec = self.specs[name]
            for entry in spec.shape:
                if isinstance(entry, _Symbol) and entry.name not in available:
                    raise CujitError(f"{self.name}: output {name!r}: dimension symbol {entry.name!r} is bound by no "
                                     "input and defined by no value, so the output cannot be allocated")
                if isinstance(entry, int) and entry == -1:
                    raise CujitError(f"{self.name}: output {name!r}: a -1 dimension cannot be allocated")
            if spec.dtype_symbol is None and (spec.dtypes is None or len(spec.dtypes) != 1):
                raise CujitError(f"{self.name}: output {name!r}: give its dtype, as a symbol bound by an input or "
                                 "as exactly one dtype in with_dtype(...)")
            if spec.dtype_symbol is not None and spec.dtype_symbol.name not in self.input_symbols:
                raise CujitError(f"{self.name}: output {name!r}: dtype symbol {spec.dtype_symbol.name!r} is bound "
                                 "by no input")

    # -------------------------------------------------------------------------------------------- modules
    def module(self, **fields: Any) -> JitModule:
        """The ``JitModule`` of one instantiation: one value per template field (dtypes by name or object)."""
        missing = sorted(set(self.fields) - set(fields))
        extra = sorted(set(fields) - set(self.fields))
        if missing or extra:
            raise CujitError(f"{self.name}: module(): expected the template fields {', '.join(self.fields)}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(extra)}" if extra else ""))
        key = tuple(_normalise(fields[f]) for f in self.fields)
        found = self._modules.get(key)
        if found is None:
            with self._modules_lock:
                found = self._modules.get(key)
                if found is None:
                    found = self._modules[key] = self._declare_module(dict(zip(self.fields, key, strict=True)))
        return found

    def _declare_module(self, fields: dict[str, Any]) -> JitModule:
        rendered = {f: str(make_cpp_args(v)) for f, v in fields.items()}
        wrappers = [(self._kernel_name(plan), plan.kernel.format(**rendered)) for plan in self.launches]
        return load_jit(
            self.schema.name, *(rendered[f] for f in self.fields),
            cuda_files=list(self.sources), cuda_wrappers=wrappers, extra_cuda_cflags=self.extra_cuda_cflags,
            extra_include_paths=self.extra_include_paths,
        )

    def variant(self, namespace: str, **changes: Any) -> OpFunction:
        """The same op declared again under ``namespace`` with some parts changed (``pdl=False``, say).

        For comparing two forms of one op side by side; the variant is a separate torch op
        (``torch.ops.<namespace>.<name>``).
        """
        if not codegen.is_identifier(namespace):
            raise CujitError(f"{self.name}: variant(): namespace {namespace!r} is not an identifier")
        unknown = sorted(set(changes) - set(self._declaration))
        if unknown:
            raise CujitError(f"{self.name}: variant(): no part named {', '.join(unknown)}")
        schema = f"{namespace}::{self._schema_text.split('::', 1)[1]}"
        return Op(schema, **{**self._declaration, **changes}).function

    def instances(self) -> list[dict[str, Any]]:
        """The template field values that ``python -m cujit precompile`` builds, as declared."""
        found = self._precompile() if callable(self._precompile) else self._precompile
        out = []
        for fields in found:
            self.module(**fields)  # validates the field names
            out.append(dict(fields))
        return out

    def precompile_modules(self) -> list[JitModule]:
        return [self.module(**fields) for fields in self.instances()]

    def kernels(self, key: tuple[Any, ...]) -> list[Kernel]:
        module = self.module(**dict(zip(self.fields, key, strict=True)))
        return [getattr(module, self._kernel_name(plan)) for plan in self.launches]

    def _kernel_name(self, plan: _LaunchPlan) -> str:
        """The kernel's name in its module: the op's name, numbered when the op has several launches."""
        return self.schema.name if len(self.launches) == 1 else f"{self.schema.name}_{plan.index}"

    def _loaded(self, key: tuple[Any, ...], device: int) -> Any:
        """The loaded kernel(s) of one instantiation on ``device``, entered in the table the fast path reads."""
        slot = (*key, device)
        found = self.table.get(slot)
        if found is not None:
            return found
        self._bind_driver()
        loaded = []
        passed = self._passed(dict(zip(self.fields, key, strict=True)))
        for plan, kernel in zip(self.launches, self.kernels(key), strict=True):
            item = kernel.on(device)
            check_kernel_args(self.name, item.expression, item.params, plan.args, passed)
            loaded.append(item)
        found = loaded[0] if len(loaded) == 1 else tuple(loaded)
        self.table[slot] = found
        return found

    def _bind_driver(self) -> None:
        """Bind the generated code to the driver in use, before it can find a loaded kernel in the table.

        Done on each kernel's first load, never at declaration: declaring (importing) an op touches no driver.
        """
        self.env.update(launch.launch_env())
        self._driver_bound = True

    def _passed(self, fields: Mapping[str, Any]) -> dict[str, Passed]:
        """What each ``args`` name passes in the instantiation of ``fields``: tensors with their dtypes, scalars."""
        passed: dict[str, Passed] = {}
        for name in dict.fromkeys(a for plan in self.launches for a in plan.args):
            if name in self.specs:
                passed[name] = Passed(True, self._tensor_dtypes(name, fields))
            elif name in self.scratch:
                passed[name] = Passed(True, (self.scratch[name][0],))
            elif name in self.params:
                param = self.params[name]
                passed[name] = Passed(False, what=f"parameter {name} of type {param.type}"
                                                  + (" or None" if param.optional else ""))
            elif name in self.symbols:
                sym = self.symbols[name]
                kind = {SymbolicSize: "an int", SymbolicShape: "a tuple of ints", SymbolicDType: "a dtype",
                        SymbolicDevice: "a device"}.get(type(sym), "a symbol")
                passed[name] = Passed(False, what=f"symbol {name}, {kind}")
            else:
                passed[name] = Passed(False, what=f"value {name}")
        return passed

    def _tensor_dtypes(self, name: str, fields: Mapping[str, Any]) -> tuple[DType, ...] | None:
        """The dtypes tensor ``name`` can have in the instantiation of ``fields`` (None: any)."""
        spec = self.specs[name]
        symbol = spec.dtype_symbol
        if symbol is None:
            return spec.dtypes
        if symbol.name in fields:
            return (as_dtype(fields[symbol.name]),)
        allowed: tuple[DType, ...] | None = None
        for other in self.specs.values():
            if other.dtype_symbol is symbol and other.dtypes is not None:
                allowed = other.dtypes if allowed is None else tuple(d for d in allowed if d in other.dtypes)
        return allowed

    # -------------------------------------------------------------------------------------------- generated
    def _generate(self) -> OpFunction:
        env = check_env()  # the driver's calls come with the first loaded kernel (_bind_driver)
        env.update(HELPERS)
        env["_RULE_ERRORS"] = RULE_ERRORS
        env.update({
            "_slow": self.call_slow, "_table": self.table, "_torch_empty": None, "_torch_empty_like": None,
            "_torch_empty_strided": None, "_cupy_alloc": frameworks.cupy_empty,
        })
        defaults = {}
        for p in self.schema.params:
            if p.default is not NO_DEFAULT:
                env[f"_default_{p.name}"] = p.default
                defaults[p.name] = f"_default_{p.name}"
        self.env = env
        src = codegen.Source()
        signature = self.schema.python_signature(defaults)
        call = self.schema.call_arguments()
        lead = self.required[0]
        with src.block(f"def {self.schema.name}({signature})"):
            for flavour in ("torch", "cupy"):
                with src.block(f"if {lead}.__class__ is {'_Tensor' if flavour == 'torch' else '_ndarray'}"):
                    self._emit_body(src, env, flavour, f"return _slow({call})")
            src(f"return _slow({call})")
        codegen.build(src, env, kind="op", name=self.name)
        self._refresh()
        function = env[self.schema.name]
        function.__module__ = self.module_name
        function.__qualname__ = self.schema.name
        function.__doc__ = f"{self.name}: see the declaration in {self.module_name}."
        function.op = self
        return function  # type: ignore[no-any-return]

    def _emit_body(self, src: codegen.Source, env: dict[str, Any], flavour: str, miss: str) -> None:
        torch = flavour == "torch"
        used = self._used_names()

        def var_of(sym: _Symbol) -> str:
            if sym is self.device_symbol:
                return "_dev"
            if isinstance(sym, SymbolicDType):
                return f"_n_{sym.name}"
            return sym.name

        emit = CheckEmitter(src, env, flavour, miss, var_of)
        emit.declare_cuda_only(self.device_symbol)
        # Scalars that pick the instantiation must have exactly the type the cached instantiation was made for
        # (True == 1 and 3.0 == 3 would find the int's kernel).
        for field in self.fields:
            param = self.params.get(field)
            if param is not None:
                kind = {"int": "int", "float": "float", "bool": "bool", "str": "str"}[param.type]
                test = f"{field}.__class__ is not {kind}"
                if param.optional:
                    test = f"{field} is not None and {test}"
                src(f"if {test}: {miss}")
        for position, name in enumerate(self.required):
            emit.tensor(name, self.specs[name], known_type=position == 0)
        for name in self.optional:
            with src.block(f"if {name} is not None"):
                emit.tensor(name, self.specs[name])
        for sym in self.input_symbols.values():
            if isinstance(sym, SymbolicDType) and sym.name in used:
                src(f"{sym.name} = _DT[_n_{sym.name}]")
            elif isinstance(sym, SymbolicDevice) and sym is self.device_symbol and sym.name in used and \
                    sym.name in self.input_symbols:
                src(f"{sym.name} = _DEV[('cuda', _dev)]")
        pointer = "data_ptr()" if torch else "data.ptr"

        def emit_values(late: bool) -> None:
            for vname, rule in self.values.items():
                if (vname in self.late_values) == late:
                    rule.emit_guarded(src, env, vname, f"_value_{vname}", pointer, self.tensor_optional)
                    if vname in self.defined_outputs:
                        emit.bound.add(self.symbols[vname])
            for i, (rule, _) in enumerate(self.checks):
                # A check of template arguments alone ran when the instantiation was made.
                if (i in self.late_checks) == late and not set(rule.names) <= set(self.fields):
                    rule.emit_guarded(src, env, "_ok", f"_check{i}", pointer, self.tensor_optional)
                    src(f"if not _ok: {miss}")

        emit_values(late=False)
        for name in self.outputs:
            self._emit_output(src, env, emit, name, flavour)
        emit_values(late=True)
        for sname, (dtype, shape) in self.scratch.items():
            extent = ", ".join(rule.emit(env, f"_scratch_{sname}_{i}", pointer, self.tensor_optional)
                               for i, rule in enumerate(shape))
            env[f"_sdt_{sname}"] = dtype
            if torch:
                src(f"{sname} = _torch_empty(({extent},), dtype=_sdt_{sname}_t, device=_dev)")
            else:
                src(f"{sname} = _cupy_alloc(({extent},), _sdt_{sname}_n, _dev)")
        key = ", ".join([*self.fields, "_dev"])
        src(f"_k = _table.get(({key},))")  # a tuple also when the kernel has no template fields
        src(f"if _k is None: {miss}")
        src(f"_s = {'_torch_stream' if torch else '_cupy_stream'}(_dev)")
        # Constant sizes go into the launch as literals; computed ones are computed once, into locals, for every
        # launch before the first one.
        many = len(self.launches) > 1
        sizes: list[tuple[list[str], str]] = []
        for plan in self.launches:
            dims: list[str] = []
            for kind, rules in (("_g", plan.grid), ("_b", plan.block)):
                padded: list[_Rule | None] = [*rules, None, None][:3]
                for axis, dim in zip("xyz", padded, strict=True):
                    if dim is None or dim.const is not None:
                        dims.append("1" if dim is None else str(int(dim.const)))
                    else:
                        local = f"{kind}{axis}{plan.index if many else ''}"
                        dim.emit_guarded(src, env, local, f"{kind}{axis}{plan.index}", pointer, self.tensor_optional)
                        dims.append(local)
            sizes.append((dims, plan.smem.emit(env, f"_smem{plan.index}", pointer, self.tensor_optional)))
            env[f"_failed{plan.index}"] = functools.partial(self._launch_failure, plan)
        for plan, (dims, smem) in zip(self.launches, sizes, strict=True):
            loaded = f"_k[{plan.index}]" if many else "_k"
            described = f"{loaded}, ({', '.join(dims[:3])}), ({', '.join(dims[3:])}), {smem}"
            computed = [d for d in (*dims, smem) if not d.isdigit()]
            not_ints = " or ".join(f"{d}.__class__ is not int" for d in computed)
            if plan.index > 0 and computed:  # refused before the first launch runs (the first one refuses its own)
                with src.block(f"if {not_ints}"):
                    src(f"_exc = _failed{plan.index}(None, {described})")
                    src("if _exc is not None: raise _exc")
        for plan, (dims, smem) in zip(self.launches, sizes, strict=True):
            loaded = f"_k[{plan.index}]" if many else "_k"
            described = f"{loaded}, ({', '.join(dims[:3])}), ({', '.join(dims[3:])}), {smem}"
            nonzero = " and ".join(d for d in dims[:3] if not d.isdigit()) or ("True" if "0" not in dims[:3]
                                                                                  else "False")
            with src.block(f"if {nonzero}"):
                values = [self._arg(name, torch) for name in plan.args]
                smem_may_exceed = not (plan.smem.const is not None and int(plan.smem.const) <= 48 * 1024)
                launch.emit_launch(src, loaded, ", ".join(dims[:3]), ", ".join(dims[3:]), smem, "_s", values,
                                   pdl=self.pdl, smem_may_exceed=smem_may_exceed, on_pack_error=miss,
                                   on_launch_error=f"_failed{plan.index}(_exc, {described})")
            computed = [d for d in (*dims, smem) if not d.isdigit()]
            if computed and plan.index == 0:  # an empty grid launches nothing, but a size that is no int is refused
                with src.block(f"elif {' or '.join(f'{d}.__class__ is not int' for d in computed)}"):
                    src(f"_exc = _failed{plan.index}(None, {described})")
                    src("if _exc is not None: raise _exc")
        src(self._return())

    def _launch_failure(self, plan: _LaunchPlan, exc: BaseException | None, loaded: Any, grid: tuple[Any, ...],
                        block: tuple[Any, ...], smem: Any) -> BaseException | None:
        """Why a generated launch failed (``exc``) or should not happen (``exc`` None, an empty grid).

        A size that is not an int gets the generic path's error, naming the field and its expression; otherwise
        the launch's own error.
        """
        rules: list[_Rule | None] = [*plan.grid, *[None] * (3 - len(plan.grid)), *plan.block,
                                     *[None] * (3 - len(plan.block)), plan.smem]
        for rule, value in zip(rules, (*grid, *block, smem), strict=True):
            if rule is not None:
                try:
                    rule.as_int(value)
                except CujitError as error:
                    return error
        if exc is None or isinstance(exc, CujitError):
            return exc
        return loaded.launch_error(exc, grid, block, smem)  # type: ignore[no-any-return]

    def _arg(self, name: str, torch: bool) -> str:
        pointer = "data_ptr()" if torch else "data.ptr"
        if name in self.optional:
            return f"({name}.{pointer} if {name} is not None else 0)"
        if name in self.specs or name in self.scratch:
            return f"{name}.{pointer}"
        return name

    def _return(self) -> str:
        if not self.outputs:
            return "return None"
        if len(self.outputs) == 1:
            return f"return {self.outputs[0]}"
        return f"return ({', '.join(self.outputs)})"

    def _used_names(self) -> set[str]:
        used: set[str] = set(self.fields)
        for rule in self.values.values():
            used.update(rule.names)
        for rule, _ in self.checks:
            used.update(rule.names)
        for plan in self.launches:
            used.update(plan.args)
            for rule in (*plan.grid, *plan.block, plan.smem):
                used.update(rule.names)
        for _, shape in self.scratch.values():
            for rule in shape:
                used.update(rule.names)
        return used

    def _emit_output(self, src: codegen.Source, env: dict[str, Any], emit: CheckEmitter, name: str,
                     flavour: str) -> None:
        spec = self.specs[name]
        torch = flavour == "torch"
        before = set(emit.bound)
        shape = _shape_expr(spec)
        native = self._native_dtype(env, name, spec, flavour)
        no_cupy_dtype = not torch and spec.dtype_symbol is None and spec.dtypes is not None and \
            spec.dtypes[0].numpy_name is None
        with src.block(f"if {name} is None"):
            if no_cupy_dtype:  # CuPy has no such dtype: the generic path says so
                src(emit.miss)
            else:
                like = self._like(name, spec)
                strides = spec.strides
                resolvable = strides is not None and all(
                    (isinstance(s, int) and s != -1) or (isinstance(s, _Symbol) and s in before) for s in strides)
                if torch and like is not None:
                    src(f"{name} = _torch_empty_like({like})")
                elif resolvable:
                    stride_text = ", ".join(s.name if isinstance(s, _Symbol) else str(s) for s in strides)  # type: ignore[union-attr]
                    if torch:
                        src(f"{name} = _torch_empty_strided({shape}, ({stride_text},), dtype={native}, device=_dev)")
                    else:
                        src(f"{name} = _cupy_alloc({shape}, {native}, _dev, ({stride_text},))")
                elif torch:
                    src(f"{name} = _torch_empty({shape}, dtype={native}, device=_dev)")
                else:
                    src(f"{name} = _cupy_alloc({shape}, {native}, _dev)")
                if strides is not None and not resolvable:
                    contiguous = _contiguous_exprs(spec)
                    for entry, expr in zip(strides, contiguous, strict=True):
                        if isinstance(entry, _Symbol) and entry not in before:
                            src(f"{entry.name} = {expr}")
        with src.block("else"):
            emit.tensor(name, spec)
        # Both branches bind the same symbols: the output's stride symbols, one way or the other.
        for sym in spec.symbols():
            emit.bound.add(sym)

    def _like(self, name: str, spec: MatchSpec) -> str | None:
        """A required input whose shape, dtype and layout an output repeats (``empty_like`` is the cheapest)."""
        if spec.strides is not None:
            return None
        for other in self.required:
            o = self.specs[other]
            same_dtype = (spec.dtype_symbol is not None and spec.dtype_symbol is o.dtype_symbol) or (
                spec.dtype_symbol is None and o.dtypes is not None and len(o.dtypes) == 1 and spec.dtypes == o.dtypes)
            if o.strides is None and same_dtype and len(o.shape) == len(spec.shape) and all(
                    a is b if isinstance(a, _Symbol) else (a == b and a != -1) for a, b in zip(o.shape, spec.shape,
                                                                                        strict=True)):
                return other
        return None

    def _native_dtype(self, env: dict[str, Any], name: str, spec: MatchSpec, flavour: str) -> str:
        """The generated expression of an output's dtype as the library names it."""
        if spec.dtype_symbol is not None:
            return f"_n_{spec.dtype_symbol.name}"
        assert spec.dtypes is not None  # checked at declaration
        slot = f"_odt_{name}_{flavour}"
        env.setdefault("_output_dtypes", []).append((slot, spec.dtypes[0], flavour))
        return slot

    def _refresh(self) -> None:
        """Bind the generated code to torch / CuPy as far as they are imported (see ``frameworks``)."""
        env = self.env
        refresh(env)
        torch = frameworks.torch()
        if torch is not None and env["_torch_empty"] is None:
            env["_torch_empty"] = torch.empty
            env["_torch_empty_like"] = torch.empty_like
            env["_torch_empty_strided"] = torch.empty_strided
            if self._driver_bound:
                env["_torch_stream"] = driver.backend().torch_stream_getter()
            env["_Parameter"] = torch.nn.Parameter
        for slot, dtype, flavour in env.get("_output_dtypes", ()):
            if env.get(slot) is None:
                env[slot] = _native(dtype, flavour)
        for sname, (dtype, _) in self.scratch.items():
            env[f"_sdt_{sname}_t"] = _native(dtype, "torch")
            env[f"_sdt_{sname}_n"] = _native(dtype, "cupy")

    # -------------------------------------------------------------------------------------------- slow path
    def call_slow(self, *args: Any, **kwargs: Any) -> Any:
        """The generic path: any DLPack producer, every error worded, first calls (compile and load)."""
        self._refresh()
        from . import torch_ops

        if torch_ops.tracing(args, kwargs):
            return torch_ops.call_traced(self, args, kwargs)
        torch_ops.ensure_registered(self)
        names = self._bind(args, kwargs)
        bindings: dict[_Symbol, tuple[Any, str]] = {}
        infos = {}
        for tname in (*self.required, *(n for n in self.optional if names[n] is not None)):
            infos[tname] = info = info_of(names[tname], repr(tname))
            verify_info(self.specs[tname], info, repr(tname), bindings)
        device_value: Device = bindings[self.device_symbol][0]
        dev = device_value.index
        for sym in self.input_symbols.values():
            names[sym.name] = bindings[sym][0]
        self._evaluate(names, bindings, late=False)
        library = _library_of(names[self.required[0]])
        for oname in self.outputs:
            if names[oname] is None:
                names[oname] = self._allocate(oname, names, bindings, library, dev)
                infos[oname] = info_of(names[oname], repr(oname))
            else:
                infos[oname] = info_of(names[oname], repr(oname))
                verify_info(self.specs[oname], infos[oname], repr(oname), bindings)
            for sym in self.specs[oname].symbols():
                if sym is not self.device_symbol:
                    names[sym.name] = bindings[sym][0]
        self._evaluate(names, bindings, late=True)
        for sname, (dtype, shape) in self.scratch.items():
            dims = tuple(rule.integer(names) for rule in shape)
            names[sname] = _allocate(library, dims, None, dtype, dev)
            infos[sname] = info_of(names[sname], repr(sname))
        grids = []
        for plan in self.launches:
            grid = tuple(r.integer(names) for r in plan.grid) + (1,) * (3 - len(plan.grid))
            grids.append(grid)
        if all(0 in grid for grid in grids):  # nothing to do (empty inputs): no compile either
            return self._outputs(names)
        # Every launch's sizes are read before the first launch: a wrong one launches nothing.
        blocks = [tuple(r.integer(names) for r in plan.block) + (1,) * (3 - len(plan.block)) for plan in self.launches]
        smems = [plan.smem.integer(names) for plan in self.launches]
        driver.require_gpu()
        key = tuple(_normalise(names[f]) for f in self.fields)
        loaded = self._loaded(key, dev)
        items = (loaded,) if len(self.launches) == 1 else loaded
        stream = launch.choose_stream(dev, None, library == "torch", library == "cupy")
        for plan, item, grid, block, smem in zip(self.launches, items, grids, blocks, smems, strict=True):
            if 0 in grid:  # this launch has nothing to do; the others run
                continue
            values = []
            for arg, param in zip(plan.args, item.params, strict=True):
                if arg in infos:
                    values.append(infos[arg].ptr)
                elif arg in self.optional:
                    values.append(0)
                else:
                    values.append(launch.convert(param, names[arg]))
            buf, addr = item.buffer()
            try:
                item.pack_into(buf, 0, *values)
            except launch._PACK_ERRORS:
                raise item.pack_error(values) from None
            if smem > item.smem_ok:
                item.allow_smem(smem)
            item.launch_packed(grid, block, smem, stream, addr, self.pdl)
        return self._outputs(names)

    def _evaluate(self, names: dict[str, Any], bindings: dict[_Symbol, tuple[Any, str]], *, late: bool) -> None:
        """Compute the early (or late) values into ``names`` and run the early (or late) checks."""
        for vname, rule in self.values.items():
            if (vname in self.late_values) == late:
                names[vname] = rule.evaluate(names)
                if vname in self.defined_outputs:
                    bindings[self.symbols[vname]] = (names[vname], f"values[{vname!r}]")
        for i, (rule, message) in enumerate(self.checks):
            if (i in self.late_checks) == late and not rule.evaluate(names):
                involved = ", ".join(f"{n} = {names[n]!r}" for n in rule.names if n in names and n not in self.specs)
                raise CheckError(f"{self.name}: {message}" + (f" ({involved})" if involved else ""))

    def _outputs(self, names: Mapping[str, Any]) -> Any:
        if not self.outputs:
            return None
        if len(self.outputs) == 1:
            return names[self.outputs[0]]
        return tuple(names[o] for o in self.outputs)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, defaults filled in, scalars checked and normalised."""
        params = self.schema.params
        names: dict[str, Any] = {}
        positional = [p for p in params if not p.kw_only]
        if len(args) > len(positional):
            raise TypeError(f"{self.name}: takes {len(positional)} positional arguments, got {len(args)}")
        for p, value in zip(positional, args, strict=False):
            names[p.name] = value
        for key, value in kwargs.items():
            if key not in self.params:
                raise TypeError(f"{self.name}: no parameter named {key!r} (parameters: {', '.join(self.params)})")
            if key in names:
                raise TypeError(f"{self.name}: {key} given twice")
            names[key] = value
        for p in params:
            if p.name not in names:
                if p.default is NO_DEFAULT:
                    raise TypeError(f"{self.name}: missing argument {p.name!r}")
                names[p.name] = p.default
            if p.type != "Tensor":
                names[p.name] = _scalar(self.name, p, names[p.name])
        return names

    def _allocate(self, name: str, names: dict[str, Any], bindings: dict[_Symbol, tuple[Any, str]], library: str,
                  dev: int) -> Any:
        spec = self.specs[name]
        shape: list[int] = []
        for entry in spec.shape:
            if isinstance(entry, SymbolicShape):
                shape.extend(names[entry.name])
            elif isinstance(entry, SymbolicSize):
                rule = self.values.get(entry.name)
                shape.append(rule.as_int(names[entry.name]) if rule is not None else int(names[entry.name]))
            else:
                shape.append(int(entry))
        dtype = bindings[spec.dtype_symbol][0] if spec.dtype_symbol is not None else spec.dtypes[0]  # type: ignore[index]
        strides = None
        if spec.strides is not None and all(
                (isinstance(s, int) and s != -1) or (isinstance(s, _Symbol) and s.name in names) for s in spec.strides):
            strides = tuple(int(names[s.name]) if isinstance(s, _Symbol) else int(s) for s in spec.strides)
        if library == "torch" or (library == "other" and frameworks.torch() is not None):
            like = self._like(name, spec)
            if library == "torch" and like is not None:
                return frameworks.torch().empty_like(names[like])  # type: ignore[union-attr]
        return _allocate(library, tuple(shape), strides, dtype, dev)

    # -------------------------------------------------------------------------------------------- torch
    @property
    def torch_op(self) -> Any:
        """``torch.ops.<namespace>.<name>`` (registers it first if needed; imports torch)."""
        from . import torch_ops

        return torch_ops.torch_op(self)


def _shape_expr(spec: MatchSpec) -> str:
    parts = []
    for entry in spec.shape:
        if isinstance(entry, SymbolicShape):
            parts.append(f"*{entry.name}")
        elif isinstance(entry, _Symbol):
            parts.append(entry.name)
        else:
            parts.append(str(entry))
    if len(parts) == 1 and parts[0].startswith("*"):
        return parts[0][1:]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _contiguous_exprs(spec: MatchSpec) -> list[str]:
    """Row-major strides of an output's shape, as generated expressions."""
    dims = [e.name if isinstance(e, _Symbol) else str(e) for e in spec.shape]
    return ["*".join(dims[i + 1:]) or "1" for i in range(len(dims))]


def _native(dtype: DType, flavour: str) -> Any:
    if flavour == "torch":
        torch = frameworks.torch()
        return None if torch is None else getattr(torch, dtype.name)
    import numpy

    return numpy.dtype(dtype.numpy_name) if dtype.numpy_name is not None else None


def _library_of(tensor: Any) -> str:
    torch_type, cupy_type = frameworks.torch_tensor_type(), frameworks.cupy_array_type()
    if torch_type is not None and isinstance(tensor, torch_type):
        return "torch"
    if cupy_type is not None and isinstance(tensor, cupy_type):
        return "cupy"
    return "other"


def _allocate(library: str, shape: tuple[int, ...], strides: tuple[int, ...] | None, dtype: DType, dev: int) -> Any:
    """A new uninitialised tensor of ``library`` (torch for other producers where torch is imported, else CuPy)."""
    torch = frameworks.torch()
    if library == "torch" or (library == "other" and torch is not None):
        assert torch is not None
        native = getattr(torch, dtype.name)
        if strides is not None:
            return torch.empty_strided(shape, strides, dtype=native, device=dev)
        return torch.empty(shape, dtype=native, device=dev)
    if dtype.numpy_name is None:
        raise CujitError(f"an output of dtype {dtype.name} cannot be a CuPy array (CuPy has no such dtype); call "
                         "the op with torch tensors")
    return frameworks.cupy_empty(shape, _native(dtype, "cupy"), dev, strides)


def _normalise(value: Any) -> Any:
    """A template field value as the table keys hold it.

    Dtypes, given by name or as torch / NumPy objects, become :class:`DType` (what the fast path computes); other
    values stay as they are.
    """
    if isinstance(value, str) or type(value).__module__ in ("torch", "numpy"):
        try:
            return as_dtype(value)
        except TypeError:
            if isinstance(value, str):
                raise CujitError(f"template field: {value!r} is not a dtype; template arguments are dtypes, ints, "
                                 "bools or floats") from None
    return value


def _scalar(op_name: str, param: Param, value: Any) -> Any:
    if value is None and param.optional:
        return None
    import numbers

    kind = param.type
    if kind == "bool":
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
    elif kind == "int":
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return int(value)
    elif kind == "float":
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    raise TypeError(f"{op_name}: argument {param.name}: expected {kind}{' or None' if param.optional else ''}, got "
                    f"{value!r} of type {type(value).__name__}")


def op(schema: str, **declaration: Any) -> OpFunction:
    """Declare an op; returns its generated function (``fn.op`` is the :class:`Op`).

    See docs/guide.md for the declaration's parts. Relative ``source`` paths are relative to the folder of the
    file that calls ``op``.
    """
    frame = sys._getframe(1)
    caller = frame.f_globals.get("__file__")
    module = frame.f_globals.get("__name__", "__main__")
    base = Path(caller).resolve().parent if caller else Path.cwd()
    declaration.setdefault("base_dir", base)
    declaration.setdefault("module", module)
    return Op(schema, **declaration).function


def shipped_module_names() -> list[str]:
    """The public modules of the ``cujit`` package (each ``cujit/<name>.py`` declares a shipped op)."""
    package = Path(__file__).resolve().parent.parent
    return sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))


def declared_ops() -> list[Op]:
    """Every op declared in this process so far."""
    with _REGISTRY_LOCK:
        return list(REGISTRY.values())


