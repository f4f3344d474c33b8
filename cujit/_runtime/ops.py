"""Ops: one declaration gives a checked launch function and a ``torch.ops`` op.

``cujit.op(schema, source=..., kernel=..., tensors=..., ...)`` reads the declaration once (:class:`Op`: its schema,
matchers, rules and kernels, every part checked here) and generates the op's function. The parts live apart:

- ``rules.py``: the rule language (expressions, callables, calls, template fields);
- ``op_generated.py``: the generated fast path for torch tensors and CuPy arrays;
- ``op_generic.py``: the generic path (any DLPack producer, every error worded, compile and load), where the
  generated path sends anything unexpected;
- ``torch_ops.py``: the torch.library registration (functional and ``.out`` forms, a fake implementation derived
  from the declaration, mutated arguments declared) and the ``torch.compile`` substitution;
- ``registry.py``: the ops declared in this process.

This module holds the declaration and its instantiations (one ``JitModule`` per tuple of template field values,
loaded per device, its kernel arguments checked once against the kernel's parameter types).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import codegen, launch, torch_ops
from .cpp_args import make_cpp_args
from .dtypes import DType, as_dtype
from .errors import CujitError
from .matcher import (
    MatchSpec,
    SymbolicDevice,
    SymbolicDType,
    SymbolicShape,
    SymbolicSize,
    TensorMatcher,
    _Symbol,
)
from .module import JitModule, Kernel, load_jit
from .op_args import Passed, check_kernel_args
from .op_generated import GeneratedPath
from .op_generic import GenericPath, normalise
from .registry import LOCK, REGISTRY, shipped_module_names
from .rules import HELPERS, RULE_ERRORS, Rule, aligned, cdiv, field_value, render, rules_of, template_fields
from .schema import Schema, parse_schema

__all__ = ["HELPERS", "REGISTRY", "RULE_ERRORS", "Launch", "Op", "aligned", "cdiv", "declared_ops", "normalise",
           "op", "shipped_module_names"]

#: The name the tests and tools used for :func:`op_generic.normalise`.
_normalise = normalise


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


class LaunchPlan:
    """A :class:`Launch` with its rules read."""

    def __init__(self, index: int, spec: Launch, where: str) -> None:
        self.index = index
        self.kernel = spec.kernel
        self.fields = template_fields(spec.kernel, where)
        self.grid = rules_of(spec.grid, f"{where} grid")
        self.block = rules_of(spec.block, f"{where} block")
        self.smem = Rule(spec.shared_mem, f"{where} shared_mem")
        for rule in (*self.grid, *self.block, self.smem):
            if rule.const is not None:
                rule.as_int(rule.const)
        self.args = spec.args
        for name in self.args:
            if not isinstance(name, str):
                raise TypeError(f"{where} args: expected names (str), got {name!r}")


# ------------------------------------------------------------------------------------------------ the op
class Op(GeneratedPath, GenericPath):
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
            self.launches = tuple(LaunchPlan(i, spec, f"{where} launches[{i}]") for i, spec in enumerate(launches))
        else:
            missing = [n for n, v in (("kernel", kernel), ("grid", grid), ("block", block), ("args", args))
                       if v is None]
            if missing:
                raise CujitError(f"{where}: missing {', '.join(missing)} (or give launches=[...])")
            single = Launch(kernel=kernel, grid=grid, block=block, args=args or (), shared_mem=shared_mem)  # type: ignore[arg-type]
            self.launches = (LaunchPlan(0, single, where),)
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
        self.values = {k: Rule(v, f"{where} values[{k!r}]") for k, v in (values or {}).items()}
        self.scratch: dict[str, tuple[DType, tuple[Rule, ...]]] = {}
        for sname, (dtype, shape) in (scratch or {}).items():
            self.scratch[sname] = (as_dtype(dtype), tuple(Rule(s, f"{where} scratch[{sname!r}][{i}]")
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
        self.checks: list[tuple[Rule, str]] = []
        self.late_checks: set[int] = set()
        for i, item in enumerate(checks):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)):
                raise TypeError(f"{where} checks[{i}]: expected (expression or callable, message), got {item!r}")
            rule = Rule(item[0], f"{where} checks[{i}]")
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
            root = field.partition(".")[0]
            if root not in known:
                raise CujitError(f"{where} kernel: {{{field}}} must be a scalar parameter, an input symbol or a value"
                                 " (or an attribute of one)")
            if root in tensor_params:
                raise CujitError(f"{where} kernel: {{{field}}} is a tensor; template arguments are values")
        self._check_outputs()
        self.shape_values = self._shape_values()

        self._precompile = precompile
        self._modules: dict[tuple[Any, ...], JitModule] = {}
        self._modules_lock = threading.Lock()
        self.table: dict[tuple[Any, ...], Any] = {}
        self.env: dict[str, Any] = {}
        self._driver_bound = False
        self.function = self._generate()
        with LOCK:
            REGISTRY[self.name] = self
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

    def _shape_values(self) -> tuple[str, ...]:
        """The values that outputs' shapes and strides read, with those they read in turn, in declaration order.

        The fake implementation (``torch.compile``'s fake tensors, whose sizes may be symbolic) computes these and
        no other: a launch plan, an alignment test or a kernel choice is never asked of a traced call.
        """
        needed: set[str] = set()
        pending = [e.name for o in self.outputs for e in (*self.specs[o].shape, *(self.specs[o].strides or ()))
                   if isinstance(e, _Symbol) and e.name in self.values]
        while pending:
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend(n for n in self.values[name].names if n in self.values)
        return tuple(v for v in self.values if v in needed and v not in self.late_values)

    # -------------------------------------------------------------------------------------------- modules
    def module(self, **fields: Any) -> JitModule:
        """The ``JitModule`` of one instantiation: one value per template field (dtypes by name or object).

        A field ``{plan.vec}`` is given as ``plan=`` (an object with that attribute) or by its whole name.
        """
        roots = {f.partition(".")[0] for f in self.fields}
        missing = sorted(f for f in self.fields if f not in fields and f.partition(".")[0] not in fields)
        extra = sorted(set(fields) - set(self.fields) - roots)
        if missing or extra:
            raise CujitError(f"{self.name}: module(): expected the template fields {', '.join(self.fields)}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(extra)}" if extra else ""))
        try:
            key = tuple(normalise(fields[f] if f in fields else field_value(fields, f)) for f in self.fields)
        except AttributeError as exc:
            raise CujitError(f"{self.name}: module(): {exc}") from None
        found = self._modules.get(key)
        if found is None:
            with self._modules_lock:
                found = self._modules.get(key)
                if found is None:
                    found = self._modules[key] = self._declare_module(dict(zip(self.fields, key, strict=True)))
        return found

    def _declare_module(self, fields: dict[str, Any]) -> JitModule:
        rendered = {f: str(make_cpp_args(v)) for f, v in fields.items()}
        wrappers = [(self._kernel_name(plan), render(plan.kernel, rendered)) for plan in self.launches]
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

    def _kernel_name(self, plan: LaunchPlan) -> str:
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

    # -------------------------------------------------------------------------------------------- calls
    def call_slow(self, *args: Any, **kwargs: Any) -> Any:
        """The generic path: any DLPack producer, every error worded, first calls (compile and load).

        A call traced with fake tensors (``torch.export``, ``make_fx``) becomes a call of the registered op.
        """
        self._refresh()
        if torch_ops.tracing(args, kwargs):
            return torch_ops.call_traced(self, args, kwargs)
        torch_ops.ensure_registered(self)
        return self.call_generic(args, kwargs)

    # -------------------------------------------------------------------------------------------- torch
    @property
    def torch_op(self) -> Any:
        """``torch.ops.<namespace>.<name>`` (registers it first if needed; imports torch)."""
        return torch_ops.torch_op(self)


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


def declared_ops() -> list[Op]:
    """Every op declared in this process so far."""
    with LOCK:
        return list(REGISTRY.values())
