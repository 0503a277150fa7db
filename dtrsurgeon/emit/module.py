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
import functools
import inspect
import keyword
import linecache
import sys
import types

import libcst as cst
import torch
from torch import nn

from dtrsurgeon.analysis.sources import absolute, check_current

from dtrsurgeon.emit.editplan import EditPlan, Form
from dtrsurgeon.emit.edits import TASK, unrouted_instances
from dtrsurgeon.emit.lower import edit_plan
from dtrsurgeon.emit.resolve import functions_by_qualname, parse_file, unwrapped
from dtrsurgeon.emit.transformers import apply_edits, function_nodes
from dtrsurgeon.runtime import (
    dtr_bind_children,
    dtr_bind_task,
    dtr_channel_mask,
    dtr_fold_task,
    dtr_masked,
    dtr_merge,
    dtr_merge_outputs,
    dtr_route,
    dtr_task_index,
)
from dtrsurgeon.errors import CheckpointError, EmitError
from dtrsurgeon.masks import mask_table_for
from dtrsurgeon.plan import Plan, RoutedUnit


def compile_routed_functions(model: nn.Module, edits: EditPlan) -> dict[tuple[str, str], object]:
    """Rewrite and compile every function the edit plan touches: (file, qualname) -> function.

    Module-level helpers on the path (``checkpoint(fn, *args)``) are compiled too and put in the
    routed module that the routed methods use as their globals, so the routed forward calls the
    rewritten helper while the user's module keeps the original."""
    functions = functions_by_qualname(model)
    rewritten = {}
    for file in edits.files():
        in_file = [f for f in edits.in_file(file) if f.line]  # line 0: not in the file's text
        nodes = function_nodes(apply_edits(file, parse_file(file), in_file))
        for qual in (f.qualname for f in in_file):
            node = nodes[qual]
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
                               dtr_route=dtr_route, dtr_merge=dtr_merge, dtr_bind_task=dtr_bind_task,
                               dtr_bind_children=dtr_bind_children, dtr_merge_outputs=dtr_merge_outputs,
                               dtr_fold_task=dtr_fold_task)
        sys.modules[name] = module
    return module


# -- routed classes -------------------------------------------------------------
#
# Routed classes are made per apply_plan call and referenced only by the model's instances, so
# they are freed with the model.  Pickling reduces them to data: a routed module is pickled as
# an instance of its original class without its routing state, and the root also carries its
# plan and spec, from which unpickling routes the rebuilt model again (see reroute_unpickled).

ROUTING_ATTRS = ("_dtr_axis", "_dtr_repr", "_dtr_fold", "_dtr_merge", "_dtr_routes", "dtr_plan", "dtr_spec")


def _block_forward(self, *args, dtr_task=None, **kwargs):
    """y = unit(x * m, ...) + x * (1 - m) on each routed stream x of the unit (see dtrsurgeon.runtime);
    a unit returning several streams (MMDiT) gets each merged at its place in the returned tuple.
    Called without dtr_task (a path the analysis did not see), it runs unrouted with a warning."""
    task, merges = dtr_task, []
    for name, index, buffer, axis, out_index in self._dtr_routes:
        x = kwargs[name] if name in kwargs else args[index]
        if self._dtr_fold is not None and not merges and dtr_task is not None:
            task = dtr_fold_task(dtr_task, x, self._dtr_fold)
        keep = dtr_channel_mask(getattr(self, buffer), task, x, axis)
        routed, skip = dtr_route(x, keep)
        if name in kwargs:
            kwargs[name] = routed
        else:
            args = args[:index] + (routed,) + args[index + 1:]
        merges.append((out_index, skip, keep))
    routed = None
    if type(self)._dtr_inner_takes_task:
        kwargs["dtr_task"] = dtr_task
    pending = list(args)
    del args
    call = _call_plain if torch.compiler.is_compiling() else _handing_over(len(pending), tuple(kwargs))
    out = call(type(self)._dtr_inner, self, pending, kwargs)
    if not self._dtr_merge:  # the caller adds the skip: attn(x * m) + x
        return out
    if merges[0][0] is None:
        if isinstance(out, (tuple, list)) and merges[0][2] is not None:
            _refuse_unseen_tuple(self, len(out))
        return dtr_merge(out, merges[0][1], merges[0][2])
    return dtr_merge_outputs(out, merges)


def _refuse_unseen_tuple(unit: nn.Module, items: int) -> None:
    """A unit the example inputs saw return its stream alone returned a tuple (``return x, self.hint(x)``
    on a branch they did not take): which item is the stream is unknown, and merging the tuple whole
    would fail deep in the runtime.  Named instead, with the two ways out."""
    raise EmitError(f"{type(unit)._dtr_base.__qualname__}: this routed block returned a tuple of {items} items, "
                    f"but the example inputs saw it return its stream alone, so which item to merge is unknown; "
                    f"plan with example inputs that take this return, or use routing.mode 'branch'")


@functools.lru_cache(maxsize=None)
def _handing_over(positional: int, keywords: tuple[str, ...]):
    """A caller ``(fn, self, args, kwargs) -> fn(self, *args, **kwargs)`` that pops each argument out
    of ``args`` (a list) and ``kwargs`` while the call's arguments are evaluated, so that the unit's own
    frame holds the only reference to its routed input.  Why: a unit's code usually rebinds its input
    (``x = x + attn(norm(x))``); in the generated source ``x * m`` is then freed at that line, but a
    wrapper holding ``args`` would keep it alive through the whole unit, one more stream-sized tensor
    at a no-grad forward's peak (+5 % on DiT-B/2 sampling).  A call written out with its arguments
    (CPython >= 3.11) hands them to the callee's frame; ``fn(*args)`` would keep the tuple alive::

        _handing_over(2, ("dtr_task",))  ->  lambda fn, self, a, k: fn(self, a.pop(0), a.pop(0), dtr_task=k.pop('dtr_task'))
    """
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in keywords):
        return _call_plain
    call = "".join([", a.pop(0)"] * positional) + "".join(f", {name}=k.pop({name!r})" for name in keywords)
    return eval(f"lambda fn, self, a, k: fn(self{call})")  # noqa: S307 - built from identifiers only


def _call_plain(fn, self, args, kwargs):
    """fn(self, *args, **kwargs): under torch.compile (one graph, no frames to free) and for keyword
    names a call cannot spell."""
    return fn(self, *args, **kwargs)


def _block_routes(unit: RoutedUnit, cls: type) -> tuple[tuple[str, int, str, int, int | None], ...]:
    """(parameter, position, mask buffer, channel axis, place in the returned tuple) of each stream
    ``unit`` routes, its main stream first."""
    main = _stream_position(unit, cls)
    routes = [(main[0], main[1], "dtr_mask", unit.channel_axis, unit.out_index)]
    routes += [(s.arg, _position(cls, s.arg), s.buffer, s.channel_axis, s.out_index) for s in unit.streams]
    return tuple(routes)


def _position(cls: type, arg: str, unknown: int | None = None) -> int:
    """Where ``arg`` comes among the positional arguments of ``cls.forward``: its parameter's place, or
    ``args[i]`` of a ``*args`` after the named ones; ``unknown`` (default: after them all) for others."""
    params = [p for p in inspect.signature(cls.forward).parameters.values() if p.name != "self"]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
    if arg in named:
        return named.index(arg)
    if rest is not None and arg.startswith(rest + "[") and arg.endswith("]") and arg[len(rest) + 1:-1].isdigit():
        return len(named) + int(arg[len(rest) + 1:-1])
    return len(params) if unknown is None else unknown


def _pass_through_forward(self, *args, dtr_task=None, **kwargs):
    """Accept and ignore dtr_task: a module called on a line that also calls units."""
    return type(self)._dtr_inner(self, *args, **kwargs)


def _routed_extra_repr(self) -> str:
    """The original extra_repr plus the unit's routing: ``..., dtr=block C=1152 K=921``."""
    own = type(self)._dtr_base.extra_repr(self)
    routing = self.__dict__.get("_dtr_repr", "")
    return ", ".join(s for s in (own, routing) if s)


def _deepcopy_routed(self, memo):
    """copy.deepcopy keeps the routed class (an EMA copy is routed like its model)."""
    new = type(self).__new__(type(self))
    memo[id(self)] = new
    new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
    return new


def _copy_routed(self):
    """copy.copy: a shallow copy of the same routed class (pickling's reduction would route it again)."""
    new = type(self).__new__(type(self))
    new.__setstate__(self.__getstate__())
    return new


def _is_mask_hook(hook) -> bool:
    return getattr(hook, "hook", hook) is _foreign_mask_hook


def mask_buffers(buffers: dict) -> list[str]:
    """The names of the routing's mask tables among a module's buffers."""
    return [name for name in buffers if name == "dtr_mask" or name.startswith("dtr_mask_")]


def strip_routing(state: dict) -> None:
    """Remove the routing from a module's ``__dict__`` (or a state copy whose containers are copies):
    the mask buffer, the routing attributes and the checkpoint hook."""
    for name in ROUTING_ATTRS:
        state.pop(name, None)
    for name in mask_buffers(state["_buffers"]):  # dtr_mask, and dtr_mask_<arg> of further streams
        state["_buffers"].pop(name)
        state["_non_persistent_buffers_set"].discard(name)
    hooks = state.get("_load_state_dict_pre_hooks", {})
    for key in [k for k, hook in hooks.items() if _is_mask_hook(hook)]:
        del hooks[key]


def unrouted_state(module: nn.Module) -> dict:
    """``module.__getstate__()`` without its routing; ``module`` itself is left as it is."""
    state = module.__getstate__()
    for name in ("_buffers", "_non_persistent_buffers_set", "_load_state_dict_pre_hooks"):
        if name in state:
            state[name] = copy.copy(state[name])
    strip_routing(state)
    return state


def _reduce_routed(self, protocol):
    """Pickle as the original class; the root adds (plan, spec), which route it again on loading::

        torch.save(routed, "m.pt"); torch.load("m.pt", weights_only=False)   # routed, in any process
    """
    base = type(self)._dtr_base
    state = unrouted_state(self)
    if "dtr_plan" not in self.__dict__:
        return new_instance, (base,), state
    spec = self.__dict__.get("dtr_spec")
    routing = (self.dtr_plan.to_dict(), spec.to_dict() if spec is not None else None)
    return new_instance, (base,), (state, routing), None, None, reroute_unpickled


def new_instance(cls: type) -> nn.Module:
    """Unpickling's first step: an empty instance of a module's original class."""
    return cls.__new__(cls)


def reroute_unpickled(model: nn.Module, state) -> None:
    """Unpickling's last step for a routed root: its unrouted state, then the routing from its plan."""
    from dtrsurgeon.spec import load_spec

    vanilla, (plan, spec) = state
    model.__setstate__(vanilla)
    apply_plan(model, Plan.from_dict(plan), load_spec(spec) if spec is not None else None, inplace=True)


def _save_pretrained(self, save_directory, *args, **kwargs):
    """The library's save_pretrained, then dtr_config.json beside it (dtrsurgeon.persist)."""
    from dtrsurgeon.persist import write_routing

    type(self)._dtr_base.save_pretrained(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        write_routing(self, save_directory)


def _from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
    """The library's from_pretrained, routed: by the directory's dtr_config.json, else as this
    class's model was (a vanilla checkpoint loaded into a routed architecture)."""
    from dtrsurgeon.persist import from_pretrained

    return from_pretrained(cls._dtr_base, pretrained_model_name_or_path, default=cls._dtr_made_for, **kwargs)


def _from_config(cls, *args, **kwargs):
    """The library's from_config (diffusers EMA models are built so), routed as this class's model was."""
    made = cls._dtr_base.from_config(*args, **kwargs)
    model = made[0] if isinstance(made, tuple) else made  # (model, unused kwargs) when asked for
    apply_plan(model, *cls._dtr_made_for, inplace=True)
    return made


def _root_methods(cls: type, plan: Plan, spec) -> dict[str, object]:
    """The root's routed class also saves and loads routed models through the library's own methods."""
    methods: dict[str, object] = {"_dtr_made_for": (plan, spec)}
    if callable(getattr(cls, "save_pretrained", None)):
        methods["save_pretrained"] = _save_pretrained
    if callable(getattr(cls, "from_pretrained", None)):
        methods["from_pretrained"] = classmethod(_from_pretrained)
    if callable(getattr(cls, "from_config", None)):
        methods["from_config"] = classmethod(_from_config)
    return methods


def _routed_class(cls: type, methods: dict[str, object], role: str, stream: tuple[str, int] | None,
                  classes: dict[tuple, type]) -> type:
    """The routed subclass of ``cls``, one per (methods, role, stream) within one apply_plan call."""
    key = (cls, tuple(sorted((k, id(v)) for k, v in methods.items())), role, stream)
    if key in classes:
        return classes[key]
    namespace = dict(methods)
    namespace.update(__module__=cls.__module__, __qualname__=cls.__qualname__, __doc__=cls.__doc__,
                     _dtr_role=role, _dtr_base=cls, extra_repr=_routed_extra_repr,
                     __reduce_ex__=_reduce_routed, __deepcopy__=_deepcopy_routed, __copy__=_copy_routed)
    if role in ("block", "pass"):
        inner = methods.get("forward", cls.forward)
        namespace.update(_dtr_inner=inner, _dtr_stream=stream,
                         _dtr_inner_takes_task=TASK in inspect.signature(inner).parameters,
                         forward=_block_forward if role == "block" else _pass_through_forward)
    routed = type(cls.__name__, (cls,), namespace)
    classes[key] = routed
    return routed


def _stream_position(unit: RoutedUnit, cls: type) -> tuple[str, int]:
    return unit.stream_arg, _position(cls, unit.stream_arg, unknown=0)


def refuse_routed(model: nn.Module) -> None:
    for path, module in model.named_modules():
        if getattr(type(module), "_dtr_role", None):
            raise EmitError(f"module {path or '<root>'!r} is already routed; transform the original model")


def apply_plan(model: nn.Module, plan: Plan, spec=None, inplace: bool = False) -> nn.Module:
    """Route ``model`` as ``plan`` says; a deep copy unless ``inplace``."""
    refuse_routed(model)
    edits = edit_plan(model, plan, Form.MODULE)
    compiled = compile_routed_functions(model, edits)
    target = model if inplace else copy.deepcopy(model)
    named = dict(target.named_modules())
    units = {u.path: u for u in plan.units}
    # modules called with dtr_task that route nothing: passed on a unit's call line, or left out by the
    # targets while sharing a threaded call line (their class's forward is not rewritten)
    passthrough = {p for p, _, _ in plan.passthrough} | {p for p, _ in plan.threads}
    unrouted = unrouted_instances(model, plan)
    wrapped = set(edits.wrapped)  # block-mode units routed by _block_forward around their class's own
    classes: dict[tuple, type] = {}

    for path, module in named.items():
        cls = type(module)
        methods = _routed_methods(cls, compiled)
        if path == "":
            methods.update(_root_methods(cls, plan, spec))
        if path in units:
            unit = units[path]
            role = "block" if path in wrapped else "edited"
            stream = _stream_position(unit, cls) if role == "block" else None
            module.__class__ = _routed_class(cls, methods, role, stream, classes)
            module.register_buffer("dtr_mask", mask_table_for(unit.mask, unit.channels), persistent=False)
            for extra in unit.streams:
                module.register_buffer(extra.buffer, mask_table_for(unit.mask, extra.channels), persistent=False)
            module._dtr_axis = unit.channel_axis
            module._dtr_repr = unit_repr(unit)
            module._dtr_fold = None if unit.fold is None else str(unit.fold)
            module._dtr_merge = unit.merge
            if role == "block":
                module._dtr_routes = _block_routes(unit, cls)
        elif methods:
            module.__class__ = _routed_class(cls, methods, "thread", None, classes)
            if path in unrouted:  # no unit, yet it runs its class's rewritten forward: no table, nothing masked
                module.register_buffer("dtr_mask", None, persistent=False)
        elif path in passthrough:
            module.__class__ = _routed_class(cls, {}, "pass", None, classes)
        if path in unrouted and "_dtr_base" in vars(type(module)):
            module._dtr_repr = "dtr=off"  # an instance of a unit class that the plan leaves unrouted
    target.dtr_plan = plan
    target.dtr_spec = spec
    _register_foreign_mask_hook(target)
    return target


def unit_repr(unit: RoutedUnit) -> str:
    """A unit's routing as its extra_repr shows it: ``dtr=block C=1152 K=921``."""
    return f"dtr={unit.mode} C={unit.channels} K={unit.active}"


def _routed_methods(cls: type, compiled: dict[tuple[str, str], object]) -> dict[str, object]:
    """name -> rewritten function, for the methods of ``cls`` (and its bases) that the plan edits."""
    methods: dict[str, object] = {}
    for base in cls.__mro__:
        for name, value in vars(base).items():
            func = unwrapped(value)
            code = getattr(func, "__code__", None)
            key = (absolute(code.co_filename), func.__qualname__) if code else None
            if key in compiled and name not in methods:
                methods[name] = compiled[key]
    return methods


# -- checkpoints of the authors' DTR code ----------------------------------------

FOREIGN_MASK_SUFFIX = "routing._unit_mapping"


def _foreign_mask_hook(module, state_dict, prefix, *args):
    """Accept checkpoints written by the authors' DTR code: their persistent
    ``<unit>.routing._unit_mapping`` tables are checked against ours and dropped."""
    units = {u.path: u for u in module.dtr_plan.units}
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("." + FOREIGN_MASK_SUFFIX)]:
        path = key[len(prefix): -len(FOREIGN_MASK_SUFFIX) - 1]
        theirs = state_dict.pop(key)
        if path not in units:
            raise CheckpointError(f"checkpoint key {key!r}: {path!r} is not a routed unit of this model "
                                  f"(routed: {', '.join(list(units)[:4])}, ...)")
        ours = module.get_submodule(path).dtr_mask
        theirs = theirs.detach().to("cpu") != 0
        if theirs.shape != ours.shape:
            raise CheckpointError(f"checkpoint key {key!r}: mask table of shape {tuple(theirs.shape)}, "
                                  f"this spec builds {tuple(ours.shape)} for {path!r}")
        bad = (theirs != ours.cpu()).any(dim=1).nonzero()
        if len(bad):
            raise CheckpointError(f"checkpoint key {key!r}: mask table differs from this spec's for {path!r} "
                                  f"at {len(bad)} task(s), first task {int(bad[0])}; check channel_ratio, "
                                  "task_weights and num_tasks")


def _register_foreign_mask_hook(model: nn.Module) -> None:
    register = getattr(model, "register_load_state_dict_pre_hook", None)
    if register is not None:
        register(_foreign_mask_hook)
    else:
        model._register_load_state_dict_pre_hook(_foreign_mask_hook, with_module=True)
