"""Module emitter: route a live ``nn.Module`` in place of its own classes.

Every instance keeps its parameters, buffers and ``state_dict()`` keys: only
its class is swapped for a subclass that differs in one method.

* the root's ``forward`` (same signature) first computes ``dtr_task`` from the
  timestep argument and passes it to the calls that reach units;
* functions between the root and the units accept ``dtr_task=None`` and pass it on;
* a block-mode unit runs ``y = unit(x * m_t, ...) + x * (1 - m_t)``;
* a branch-mode unit runs its forward with each residual branch's input masked;
* other modules called on a rewritten line accept and ignore ``dtr_task``.

Masks are non-persistent ``dtr_mask`` buffers ([N, C] bool), so checkpoints
load both ways with ``strict=True``.  Nothing is stored per forward.
"""

from __future__ import annotations

import copy
import inspect
import linecache
import sys
import types

import libcst as cst
from torch import nn

from dtrsurgeon.analysis.sources import absolute, check_current

from dtrsurgeon.emit.edits import (
    TASK,
    RouteFunctions,
    collect_edits,
    functions_by_qualname,
    parse_file,
    route_unseen_calls,
    unit_call_filter,
    unrouted_instances,
    unwrapped,
)
from dtrsurgeon.runtime import (
    dtr_bind_task,
    dtr_channel_mask,
    dtr_masked,
    dtr_merge,
    dtr_route,
    dtr_task_index,
)
from dtrsurgeon.errors import CheckpointError, EmitError
from dtrsurgeon.masks import mask_table_for
from dtrsurgeon.plan import Plan, RoutedUnit


def compile_routed_functions(model: nn.Module, plan: Plan) -> dict[tuple[str, str], object]:
    """Rewrite and compile every function the plan touches: (file, qualname) -> function.

    Module-level helpers on the path (``checkpoint(fn, *args)``) are compiled too and put in the
    routed module that the routed methods use as their globals, so the routed forward calls the
    rewritten helper while the user's module keeps the original."""
    functions = functions_by_qualname(model)
    is_unit_call = unit_call_filter(functions)
    rewritten = {}
    all_edits = collect_edits(plan)
    route_unseen_calls(model, plan, all_edits, functions)
    for file, edits in all_edits.items():
        file = absolute(file)
        wrapper = parse_file(file)
        routed = RouteFunctions(file, edits, lambda q, c, f=file: is_unit_call(f, q, c))
        wrapper.visit(routed)
        for qual, node in routed.done.items():
            original = functions.get((file, qual))
            if original is None:
                raise EmitError(f"{file}: function {qual} is neither a method of the model's classes nor a "
                                "module-level function of their files")
            check_current(original.__code__)
            rewritten[(file, qual)] = (node, original)
    compiled: dict[tuple[str, str], object] = {}
    for (file, qual), (node, original) in rewritten.items():
        node = node.visit(_RoutedSuper(original, rewritten))
        compiled[(file, qual)] = _compile(node, original, qual, compiled)
        if "." not in qual:  # a module-level helper: the routed methods find it by name
            _routed_module(original.__globals__).__dict__[qual] = compiled[(file, qual)]
    return compiled


_ROUTED = "__dtr_routed__"


class _RoutedSuper(cst.CSTTransformer):
    """``super().forward(x, dtr_task=dtr_task)`` -> ``__dtr_routed__[(file, "Base.forward")](self, x, ...)``
    where the method ``super()`` reaches is rewritten too: the routed class holds one ``forward``, so
    ``super()`` would reach the original one."""

    def __init__(self, original, rewritten):
        code = original.__code__
        cell = dict(zip(code.co_freevars, original.__closure__ or ())).get("__class__")
        self.cls = cell.cell_contents if cell is not None else None
        self.rewritten = rewritten

    def leave_Call(self, original, updated):
        func = updated.func
        if (self.cls is None or not isinstance(func, cst.Attribute) or not isinstance(func.value, cst.Call)
                or not isinstance(func.value.func, cst.Name) or func.value.func.value != "super" or func.value.args):
            return updated
        name = func.attr.value
        target = next((unwrapped(vars(c)[name]) for c in self.cls.__mro__[1:] if name in vars(c)), None)
        code = getattr(target, "__code__", None)
        key = (absolute(code.co_filename), target.__qualname__) if code is not None else None
        if key not in self.rewritten:
            return updated
        first = self.rewritten[key][0].params.params[0].name.value if self.rewritten[key][0].params.params else "self"
        call = cst.parse_expression(f"{_ROUTED}[{key!r}]({first})")
        return updated.with_changes(func=call.func, args=[*call.args[:1], *updated.args]) if updated.args else \
            updated.with_changes(func=call.func, args=call.args)


_FACTORY = "__dtr_factory__"


def _compile(node, original, qual: str, routed: dict):
    """Compile the rewritten ``node`` with ``original``'s globals (plus the routing helpers) and
    closure: inside a factory whose parameters are the original's free variables, so zero-argument
    ``super()`` finds its class cell (``__class__``) and nested classes their enclosing names
    (``routed``: the rewritten functions, for calls of a rewritten ``super()`` method)::

        def __dtr_factory__(__class__):
            def forward(self, x, t):
                return super().forward(x, t, dtr_task=dtr_task)
            return forward
    """
    freevars = (*original.__code__.co_freevars, _ROUTED)
    cells = [*(c.cell_contents for c in original.__closure__ or ()), routed]
    factory = cst.FunctionDef(
        name=cst.Name(_FACTORY), params=cst.Parameters(params=[cst.Param(cst.Name(v)) for v in freevars]),
        body=cst.IndentedBlock(body=[node.with_changes(leading_lines=[]),
                                     cst.parse_statement(f"return {node.name.value}\n")]))
    code = cst.Module(body=[factory]).code
    filename = f"<dtrsurgeon routed {qual}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace = _routed_module(original.__globals__).__dict__
    exec(compile(code, filename, "exec"), namespace)
    func = namespace.pop(_FACTORY)(*cells)
    func.__qualname__ = original.__qualname__
    return func


def _routed_module(globals_: dict) -> types.ModuleType:
    """A module beside the user's one, holding its globals plus the routing helpers.

    Routed functions run with it as their globals: the user's module is not
    modified, and torch.compile finds every global through ``sys.modules``.
    """
    name = f"{globals_['__name__']}__dtr_routed_{id(globals_):x}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__dict__.update({k: v for k, v in globals_.items() if k not in ("__name__", "__spec__", "__loader__")})
        module.__dict__.update(dtr_task_index=dtr_task_index, dtr_channel_mask=dtr_channel_mask, dtr_masked=dtr_masked,
                               dtr_route=dtr_route, dtr_merge=dtr_merge, dtr_bind_task=dtr_bind_task)
        sys.modules[name] = module
    return module


# -- routed classes -------------------------------------------------------------

def _block_forward(self, *args, dtr_task=None, **kwargs):
    """y = unit(x * m, ...) + x * (1 - m) on the unit's stream x (see dtrsurgeon.runtime); called
    without dtr_task (a path the analysis did not see), it runs unrouted with a warning."""
    name, index = type(self)._dtr_stream
    x = kwargs[name] if name in kwargs else args[index]
    keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, self._dtr_axis)
    routed, skip = dtr_route(x, keep)
    if name in kwargs:
        kwargs[name] = routed
    else:
        args = args[:index] + (routed,) + args[index + 1:]
    inner = type(self)._dtr_inner
    out = inner(self, *args, dtr_task=dtr_task, **kwargs) if type(self)._dtr_inner_takes_task else inner(self, *args, **kwargs)
    return dtr_merge(out, skip, keep)


def _pass_through_forward(self, *args, dtr_task=None, **kwargs):
    """Accept and ignore dtr_task: a module called on a line that also calls units."""
    return type(self)._dtr_inner(self, *args, **kwargs)


_CLASS_CACHE: dict[tuple, type] = {}


def _routed_class(cls: type, methods: dict[str, object], role: str, stream: tuple[str, int] | None) -> type:
    key = (cls, tuple(sorted((k, id(v)) for k, v in methods.items())), role, stream)
    if key in _CLASS_CACHE:
        return _CLASS_CACHE[key]
    namespace = dict(methods)
    namespace.update(__module__=cls.__module__, __qualname__=cls.__qualname__, __doc__=cls.__doc__,
                     _dtr_role=role, _dtr_base=cls)
    if role in ("block", "pass"):
        inner = methods.get("forward", cls.forward)
        namespace.update(_dtr_inner=inner, _dtr_stream=stream,
                         _dtr_inner_takes_task=TASK in inspect.signature(inner).parameters,
                         forward=_block_forward if role == "block" else _pass_through_forward)
    routed = type(cls.__name__, (cls,), namespace)
    _CLASS_CACHE[key] = routed
    return routed


def _stream_position(unit: RoutedUnit, cls: type) -> tuple[str, int]:
    params = [n for n in inspect.signature(cls.forward).parameters if n != "self"]
    return unit.stream_arg, params.index(unit.stream_arg) if unit.stream_arg in params else 0


def refuse_routed(model: nn.Module) -> None:
    for path, module in model.named_modules():
        if getattr(type(module), "_dtr_role", None):
            raise EmitError(f"module {path or '<root>'!r} is already routed; transform the original model")


def apply_plan(model: nn.Module, plan: Plan, spec=None, inplace: bool = False) -> nn.Module:
    """Route ``model`` as ``plan`` says; a deep copy unless ``inplace``."""
    refuse_routed(model)
    compiled = compile_routed_functions(model, plan)
    target = model if inplace else copy.deepcopy(model)
    named = dict(target.named_modules())
    units = {u.path: u for u in plan.units}
    # modules called with dtr_task that route nothing: passed on a unit's call line, or left out by the
    # targets while sharing a threaded call line (their class's forward is not rewritten)
    passthrough = {p for p, _, _ in plan.passthrough} | {p for p, _ in plan.threads}
    unrouted = unrouted_instances(model, plan)
    # a class some of whose units start their stream inside forward (U-ViT's out-blocks, after the
    # long-skip merge) has that forward rewritten to route every instance there; its other units
    # must not be wrapped as well, or they would be routed twice
    routed_inside = {u.cls for u in plan.units if u.mode == "block" and u.stream_line is not None}

    for path, module in named.items():
        cls = type(module)
        methods = {}
        for base in cls.__mro__:
            for name, value in vars(base).items():
                func = unwrapped(value)
                code = getattr(func, "__code__", None)
                key = (absolute(code.co_filename), func.__qualname__) if code else None
                if key in compiled and name not in methods:
                    methods[name] = compiled[key]
        if path in units:
            unit = units[path]
            role = "block" if unit.mode == "block" and unit.stream_line is None and unit.cls not in routed_inside else "edited"
            stream = _stream_position(unit, cls) if role == "block" else None
            module.__class__ = _routed_class(cls, methods, role, stream)
            module.register_buffer("dtr_mask", mask_table_for(unit.mask, unit.channels), persistent=False)
            module._dtr_axis = unit.channel_axis
        elif methods:
            module.__class__ = _routed_class(cls, methods, "thread", None)
            if path in unrouted:  # no unit, yet it runs its class's rewritten forward: no table, nothing masked
                module.register_buffer("dtr_mask", None, persistent=False)
        elif path in passthrough:
            module.__class__ = _routed_class(cls, {}, "pass", None)
    target.dtr_plan = plan
    target.dtr_spec = spec
    _register_foreign_mask_hook(target, plan)
    return target


# -- checkpoints of the authors' DTR code ----------------------------------------

FOREIGN_MASK_SUFFIX = "routing._unit_mapping"


def _register_foreign_mask_hook(model: nn.Module, plan: Plan) -> None:
    """Accept checkpoints written by the authors' DTR code: their persistent
    ``<unit>.routing._unit_mapping`` tables are checked against ours and dropped."""
    units = {u.path: u for u in plan.units}

    def hook(module, state_dict, prefix, *args):
        for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("." + FOREIGN_MASK_SUFFIX)]:
            path = key[len(prefix): -len(FOREIGN_MASK_SUFFIX) - 1]
            theirs = state_dict.pop(key)
            if path not in units:
                raise CheckpointError(f"checkpoint key {key!r}: {path!r} is not a routed unit of this model "
                                      f"(routed: {', '.join(list(units)[:4])}, ...)")
            ours = model.get_submodule(path).dtr_mask
            theirs = theirs.detach().to("cpu") != 0
            if theirs.shape != ours.shape:
                raise CheckpointError(f"checkpoint key {key!r}: mask table of shape {tuple(theirs.shape)}, "
                                      f"this spec builds {tuple(ours.shape)} for {path!r}")
            bad = (theirs != ours.cpu()).any(dim=1).nonzero()
            if len(bad):
                raise CheckpointError(f"checkpoint key {key!r}: mask table differs from this spec's for {path!r} "
                                      f"at {len(bad)} task(s), first task {int(bad[0])}; check channel_ratio, "
                                      "task_weights and num_tasks")

    register = getattr(model, "register_load_state_dict_pre_hook", None)
    if register is not None:
        register(hook)
    else:
        model._register_load_state_dict_pre_hook(hook, with_module=True)
