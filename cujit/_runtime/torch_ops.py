"""The torch side of ops: ``torch.library`` registration derived from the declaration, and ``torch.compile``.

Every op becomes ``torch.ops.<namespace>.<name>`` (the functional form: outputs allocated and returned) and, when
it has outputs, ``torch.ops.<namespace>.<name>.out`` (outputs given, written, nothing returned). Arguments that
the op writes are declared mutated (``Tensor(a!)``). The fake implementation, which ``torch.compile`` runs on
fake tensors to learn output shapes, is the declaration itself: the same matchers, and the ``values`` that the
outputs' shapes and strides read (only those: a launch plan or a kernel choice is never computed on symbolic sizes),
evaluated on the fake tensors' metadata. Nobody writes a fake by hand.

The op's own Python function stays the fast way to call it: no dispatcher on the direct call. Under
``torch.compile``, Dynamo must not trace into that function (it reads data pointers and calls the driver), so
cujit substitutes a small function of the same signature that calls the registered op
(``torch.compiler.substitute_in_graph``). That needs ``torch._dynamo``, which takes seconds to import, so the
substitution is made when ``torch._dynamo`` is imported (an import hook), never earlier. Other tracers (fake
tensors, ``torch.export``) reach the op's generic path, which routes them to the registered op as well.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import codegen, frameworks
from .dtypes import as_dtype
from .errors import CujitError
from .matcher import _Symbol, verify_info
from .registry import REGISTRY
from .schema import NO_DEFAULT
from .tensors import TensorInfo, device

if TYPE_CHECKING:
    from .ops import Op

__all__ = ["call_traced", "declared", "ensure_registered", "register_fake", "torch_op", "tracing"]

_LOCK = threading.RLock()
_LIBRARIES: dict[str, Any] = {}
_REGISTERED: set[str] = set()
# The op functions Dynamo already sees as their registered op (a declaration made again is a new function).
_SUBSTITUTED: weakref.WeakSet[Any] = weakref.WeakSet()
_HOOK: list[Any] = []


def declared(op: Op) -> None:
    """An op was declared: register it with torch if torch is imported, and prepare ``torch.compile``."""
    if frameworks.torch() is not None:
        ensure_registered(op)
    if "torch._dynamo" in sys.modules:
        _substitute(op)
    else:
        _install_hook()


def torch_op(op: Op) -> Any:
    """``torch.ops.<namespace>.<name>``, registering it first (imports torch)."""
    import torch

    ensure_registered(op)
    return getattr(getattr(torch.ops, op.schema.namespace), op.schema.name)


def ensure_registered(op: Op) -> None:
    """Define the op's schemas, CUDA (and CPU, for the error messages) kernels and fake implementations."""
    if op.name in _REGISTERED:
        return
    torch = frameworks.torch()
    if torch is None:
        return
    with _LOCK:
        if op.name in _REGISTERED:
            return
        namespace, name = op.schema.namespace, op.schema.name
        library = _LIBRARIES.get(namespace)
        if library is None:
            library = _LIBRARIES[namespace] = torch.library.Library(namespace, "FRAGMENT")
        functional, out = op.schema.torch_schemas()
        qualified = op.name
        # The kernels look the op up by name on each call, so a declaration made again (a reloaded module)
        # replaces the implementation behind the same torch op.
        library.define(functional)
        for key in ("CUDA", "CPU"):
            library.impl(name, _functional_kernel(qualified), key)
        register_fake(f"{namespace}::{name}", _fake(qualified, functional=True), library)
        if out is not None:
            library.define(out)
            for key in ("CUDA", "CPU"):
                library.impl(f"{name}.out", _out_kernel(qualified), key)
            register_fake(f"{namespace}::{name}.out", _fake(qualified, functional=False), library)
        _REGISTERED.add(op.name)


def register_fake(qualname: str, fake: Any, library: Any) -> None:
    """Register ``fake`` as the fake implementation of ``qualname``, as ``torch.library.register_fake`` does.

    ``register_fake`` records its caller's file and line for its messages, through ``inspect``, which reads the
    calling file and scans every imported module (about 1 ms per registration once torch is imported; two per op).
    The same entry of torch's registry is written here with the declaring module as the source; where that
    registry is not as expected (another torch), the public function does it.
    """
    import torch

    try:
        entry = torch._library.simple_registry.singleton.find(qualname)
        handle = entry.fake_impl.register(fake, f"{__file__} ({qualname})", lib=library)
        library._registration_handles.append(handle)
    except (AttributeError, TypeError):
        torch.library.register_fake(qualname, fake, lib=library)


def _current(qualified: str) -> Op:
    return REGISTRY[qualified]  # type: ignore[no-any-return]


def _functional_kernel(qualified: str) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        return _current(qualified).function(*args, **kwargs)

    return kernel


def _out_kernel(qualified: str) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> None:
        _current(qualified).function(*args, **kwargs)

    return kernel


def _fake(qualified: str, *, functional: bool) -> Any:
    """The fake implementation: the declaration evaluated on the fake tensors' metadata."""

    def fake(*args: Any, **kwargs: Any) -> Any:
        op = _current(qualified)
        torch = frameworks.torch()
        assert torch is not None
        names = op._bind(args, kwargs)
        bindings: dict[_Symbol, tuple[Any, str]] = {}
        for tname in (*op.required, *(n for n in op.optional if names[n] is not None)):
            verify_info(op.specs[tname], _fake_info(names[tname]), repr(tname), bindings)
        lead = names[op.required[0]]
        for sym in op.input_symbols.values():
            names[sym.name] = bindings[sym][0]
        for vname in op.shape_values:  # what the outputs' shapes need, nothing else
            names[vname] = op.values[vname].evaluate(names)
        outputs = []
        for oname in op.outputs:
            spec = op.specs[oname]
            if not functional:
                verify_info(spec, _fake_info(names[oname]), repr(oname), bindings)
                continue
            shape: list[Any] = []
            for entry in spec.shape:
                value = names[entry.name] if isinstance(entry, _Symbol) else entry
                if isinstance(value, tuple):  # a SymbolicShape
                    shape.extend(value)
                else:
                    shape.append(value)
            dtype = bindings[spec.dtype_symbol][0] if spec.dtype_symbol is not None else spec.dtypes[0]  # type: ignore[index]
            native = getattr(torch, dtype.name)
            strides = spec.strides
            if strides is not None and all(
                    (isinstance(s, int) and s != -1) or (isinstance(s, _Symbol) and s.name in names) for s in strides):
                values = [names[s.name] if isinstance(s, _Symbol) else s for s in strides]
                outputs.append(torch.empty_strided(shape, values, dtype=native, device=lead.device))
            else:
                outputs.append(torch.empty(shape, dtype=native, device=lead.device))
        if not functional or not outputs:
            return None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return fake


def _fake_info(tensor: Any) -> TensorInfo:
    """What the reference verifier reads, from a (fake) torch tensor: no data pointer is asked for."""
    index = tensor.device.index if tensor.device.index is not None else 0
    return TensorInfo(tuple(tensor.shape), tuple(tensor.stride()), as_dtype(tensor.dtype),
                      device(tensor.device.type, index), 0, "fake")


# ------------------------------------------------------------------------------------------------ tracing
def tracing(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether this call is being traced with fake tensors (``torch.export``, ``make_fx``) rather than run.

    Real tensors always run, also while a compile is under way (the registered op's own kernels call the op's
    function with them); Dynamo never gets here, it calls the registered op through the substitution.
    """
    torch = frameworks.torch()
    if torch is None:
        return False
    plain = (torch.Tensor, torch.nn.Parameter)
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and type(value) not in plain:
            from torch._subclasses.fake_tensor import is_fake

            if is_fake(value):
                return True
    return False


def call_traced(op: Op, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Call the registered op with the same arguments (the functional form, or ``.out`` when outputs are given)."""
    handle = torch_op(op)
    names = dict(kwargs)
    positional = [p for p in op.schema.params if not p.kw_only]
    for param, value in zip(positional, args, strict=False):
        names[param.name] = value
    outputs = [names.get(o) for o in op.outputs]
    call_args = []
    call_kwargs = {}
    for p in op.schema.params:
        if p.role == "output" or p.name not in names:
            continue
        if p.kw_only:
            call_kwargs[p.name] = names[p.name]
        else:
            call_args.append(names[p.name])
    if all(o is None for o in outputs):
        return handle.default(*call_args, **call_kwargs)
    if any(o is None for o in outputs):
        raise CujitError(f"{op.name}: under tracing, give every output or none")
    handle.out(*call_args, **call_kwargs, **dict(zip(op.outputs, outputs, strict=True)))
    return op._outputs(names)


# ------------------------------------------------------------------------------------------------ Dynamo
def _substitute(op: Op) -> None:
    """Make Dynamo see a call of the registered op wherever user code calls ``op.function``."""
    if op.function in _SUBSTITUTED:
        return
    torch = frameworks.torch()
    if torch is None:
        return
    substitute = getattr(torch.compiler, "substitute_in_graph", None)
    if substitute is None:  # torch < 2.5: call torch.ops.<namespace>.<name> in compiled code instead
        return
    with _LOCK:
        if op.function in _SUBSTITUTED:
            return
        ensure_registered(op)
        handle = torch_op(op)
        env: dict[str, Any] = {"_functional": handle.default, "_out": getattr(handle, "out", None),
                               "_CujitError": CujitError}
        defaults = {}
        for p in op.schema.params:
            if p.default is not NO_DEFAULT:
                env[f"_default_{p.name}"] = p.default
                defaults[p.name] = f"_default_{p.name}"
        inputs = ", ".join(p.name if not p.kw_only else f"{p.name}={p.name}" for p in op.schema.params
                           if p.role != "output")
        src = codegen.Source()
        with src.block(f"def {op.schema.name}({op.schema.python_signature(defaults)})"):
            if op.outputs:
                none = " and ".join(f"{o} is None" for o in op.outputs)
                given = " and ".join(f"{o} is not None" for o in op.outputs)
                src(f"if {none}: return _functional({inputs})")
                with src.block(f"if not ({given})"):
                    src(f"raise _CujitError('{op.name}: under torch.compile, give every output or none')")
                outs = ", ".join(f"{o}={o}" for o in op.outputs)
                src(f"_out({inputs}, {outs})")
                src(f"return {op.outputs[0]}" if len(op.outputs) == 1 else f"return ({', '.join(op.outputs)})")
            else:
                src(f"_functional({inputs})")
        codegen.build(src, env, kind="traced op", name=op.name)
        substitute(op.function)(env[op.schema.name])
        _SUBSTITUTED.add(op.function)


def _on_dynamo() -> None:
    for op in list(REGISTRY.values()):
        _substitute(op)


class _DynamoHook(importlib.abc.MetaPathFinder):
    """Runs :func:`_on_dynamo` right after ``torch._dynamo`` has been imported, wherever that happens."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "torch._dynamo":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _on_dynamo()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _install_hook() -> None:
    with _LOCK:
        if not _HOOK:
            hook = _DynamoHook()
            _HOOK.append(hook)
            sys.meta_path.insert(0, hook)
