"""The generic path of an op: any DLPack producer, every error worded, the first call of an instantiation.

:meth:`GenericPath.call_generic` interprets the declaration with the reference verifier, computes the values, allocates
or checks the outputs, compiles and loads the instantiation (which enters it in the table the generated path reads)
and launches. The generated path (``op_generated``) sends every call it does not handle here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import driver, frameworks, launch
from .dtypes import DType, as_dtype
from .errors import CheckError, CujitError
from .matcher import MatchSpec, SymbolicDevice, SymbolicShape, SymbolicSize, _Symbol, info_of, verify_info
from .rules import Rule, field_value
from .schema import NO_DEFAULT, Param, Schema
from .tensors import Device

__all__ = ["Declared", "GenericPath", "allocate", "native_dtype", "normalise"]


class Declared:
    """What a declaration (:class:`~cujit._runtime.ops.Op`) provides to both of its call paths."""

    name: str
    module_name: str
    schema: Schema
    params: dict[str, Param]
    specs: dict[str, MatchSpec]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    outputs: tuple[str, ...]
    symbols: dict[str, _Symbol]
    input_symbols: dict[str, _Symbol]
    device_symbol: SymbolicDevice
    values: dict[str, Rule]
    late_values: set[str]
    defined_outputs: set[str]
    checks: list[tuple[Rule, str]]
    late_checks: set[int]
    scratch: dict[str, tuple[DType, tuple[Rule, ...]]]
    tensor_optional: dict[str, bool]
    fields: tuple[str, ...]
    launches: tuple[Any, ...]
    pdl: bool
    table: dict[tuple[Any, ...], Any]
    env: dict[str, Any]
    _driver_bound: bool


class GenericPath(Declared):
    """The generic path of :class:`~cujit._runtime.ops.Op` (a base class of it)."""

    _refresh: Callable[[], None]
    _loaded: Callable[[tuple[Any, ...], int], Any]

    def call_generic(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The generic path of a call that is run, not traced (see ``Op.call_slow``)."""
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
            # An allocated output is verified too: that binds its own symbols (a row stride) from what was made.
            verify_info(self.specs[oname], infos[oname], repr(oname), bindings)
            for sym in self.specs[oname].symbols():
                if sym is not self.device_symbol:
                    names[sym.name] = bindings[sym][0]
        self._evaluate(names, bindings, late=True)
        for sname, (dtype, shape) in self.scratch.items():
            dims = tuple(rule.integer(names) for rule in shape)
            names[sname] = allocate(library, dims, None, dtype, dev)
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
        try:
            key = tuple(normalise(field_value(names, f)) for f in self.fields)
        except AttributeError as exc:
            raise CujitError(f"{self.name} kernel: a template field names a missing attribute: {exc}") from None
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
        return allocate(library, tuple(shape), strides, dtype, dev)

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


def native_dtype(dtype: DType, flavour: str) -> Any:
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


def allocate(library: str, shape: tuple[int, ...], strides: tuple[int, ...] | None, dtype: DType, dev: int) -> Any:
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
    return frameworks.cupy_empty(shape, native_dtype(dtype, "cupy"), dev, strides)


def normalise(value: Any) -> Any:
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
