"""The generated path of an op: one straight-line function per declaration, for torch tensors and CuPy arrays.

Scalar type fences, the tensor checks of ``matcher.CheckEmitter``, the ``values`` and ``checks`` inlined, outputs
allocated or checked, one dict lookup for the loaded kernel, packing and ``cuLaunchKernel`` on the current stream.
Anything unexpected (another DLPack producer, a wrong input, a kernel not loaded yet) calls the generic path
(``op_generic``), which words the error or loads the kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import codegen, driver, frameworks, launch
from .errors import CujitError
from .matcher import (
    CheckEmitter,
    MatchSpec,
    SymbolicDevice,
    SymbolicDType,
    SymbolicShape,
    _Symbol,
    check_env,
    refresh,
)
from .op_generic import Declared, native_dtype
from .rules import HELPERS, RULE_ERRORS, Rule
from .schema import NO_DEFAULT

__all__ = ["GeneratedPath"]


class GeneratedPath(Declared):
    """The generated path of :class:`~cujit._runtime.ops.Op` (a base class of it)."""

    call_slow: Callable[..., Any]
    _like: Callable[[str, MatchSpec], str | None]

    def _generate(self) -> Any:
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
        if any("." in f for f in self.fields):  # a missing attribute is worded by the generic path
            with src.block("try"):
                src(f"_key = ({key},)")
            src(f"except AttributeError: {miss}")
            src("_k = _table.get(_key)")
        else:
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
                padded: list[Rule | None] = [*rules, None, None][:3]
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

    def _launch_failure(self, plan: Any, exc: BaseException | None, loaded: Any, grid: tuple[Any, ...],
                        block: tuple[Any, ...], smem: Any) -> BaseException | None:
        """Why a generated launch failed (``exc``) or should not happen (``exc`` None, an empty grid).

        A size that is not an int gets the generic path's error, naming the field and its expression; otherwise
        the launch's own error.
        """
        rules: list[Rule | None] = [*plan.grid, *[None] * (3 - len(plan.grid)), *plan.block,
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
        used: set[str] = {f.partition(".")[0] for f in self.fields}
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
                env[slot] = native_dtype(dtype, flavour)
        for sname, (dtype, _) in self.scratch.items():
            env[f"_sdt_{sname}_t"] = native_dtype(dtype, "torch")
            env[f"_sdt_{sname}_n"] = native_dtype(dtype, "cupy")


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
