"""Capture pass: the model's forward as an ATen-level torch.fx graph.

Plain ``torch.fx.symbolic_trace`` fails on real backbones (``int()`` of a
Proxy, Python control flow on shapes, iterating a Proxy), so capture uses
``torch.export.export(..., strict=False)``: the model's own Python runs on fake
tensors, shapes are concrete, and every node keeps ``nn_module_stack`` (which
module it belongs to) and ``stack_trace`` (file and line).  Module hooks active
while export runs that Python record the live frames of each module's call (the
call's column span and the helper frames the graph's stack traces drop), so the
capture costs one export and no forward on real tensors.  The captured graph is
only analysed; the model that trains is the user's own code.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import io
import logging
import operator
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import fx, nn

from torch.utils import _pytree as pytree

from dtrsurgeon.analysis.callsites import live_frames
from dtrsurgeon.analysis.sources import check_current
from dtrsurgeon.errors import CaptureError, SpecError


@dataclass
class Capture:
    graph: fx.Graph
    args: tuple
    kwargs: dict
    callers: dict[str, list]  # module path -> source frames that led to its first call (root.forward first)
    params: dict[str, str]  # placeholder name -> parameter / buffer / constant name
    returns_tensor: dict[str, bool]  # module path -> whether its first call returned a plain tensor
    # module path -> shapes of the items of the tuple its first call returned (None: not a tensor)
    output_shapes: dict[str, tuple] = field(default_factory=dict)
    # module path -> shapes of the positional arguments of that call, for the same modules
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    # (operator, module path, modules inside) of sub-graph regions left opaque (torch.cond, ...): not analysed
    opaque: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    method: str = "export"  # or "real-tensor trace": export could not follow the forward
    # forward argument -> the placeholders of its tensors, in order: one for a tensor, one per item for a
    # list of per-sample tensors (export names them x_0, x_1, ...; a trace argN_M)
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)


class OpaqueRegionWarning(UserWarning):
    """Part of the captured forward sits in a sub-graph the analysis cannot see into."""


def _module_paths(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def _where_capture_stopped(paths: dict[int, str], exc: BaseException) -> str:
    """'module path (file:line: code)' of the innermost user frame that ran
    inside one of the model's modules when ``exc`` was raised."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        filename = frame.f_code.co_filename
        if owner is None or id(owner) not in paths or "/torch/" in filename:
            continue
        found = (paths[id(owner)] or "<root>", type(owner).__name__, filename, lineno)
    if found is None:
        return "outside the model's modules"
    path, cls, filename, lineno = found
    import linecache

    code = linecache.getline(filename, lineno).strip()
    return f"module {path!r} ({cls}) at {filename}:{lineno}: {code}"


def capture(model: nn.Module, args: tuple, kwargs: dict, timestep_arg: str | None = None) -> Capture:
    """The forward's graph, and who calls each module, from one run of the model's Python:
    ``torch.export`` on fake tensors, else a trace of a call on real tensors (data-dependent Python).

    Module hooks record the calls while that run executes the model's own code, so no separate
    forward is made.  The model is left as it was: export puts back whatever the forward stores
    (attributes, cache dicts), and the modules' ``training`` flags are set off for the capture and
    restored, without calling ``train()``/``eval()`` (which some models override to re-parameterise).
    ``timestep_arg``: the forward argument the spec reads timesteps from, checked to be one.
    """
    paths = _module_paths(model)
    if timestep_arg is not None:
        check_timestep_input(model, args, kwargs, timestep_arg)
    with _inference_flags(model), _memoised_methods_reset(model), _helper_objects_kept(model):
        gm, params, inputs, method, calls = _graph(model, args, kwargs, paths)
    _check_sources(model, calls.callers)
    if timestep_arg is not None:
        _check_timestep_used(gm, inputs, timestep_arg, type(model).__name__)
    graph, opaque = inline_subgraphs(gm)
    for op, path, inside in opaque:
        where = f"module {path!r} ({named_class(model, path)})" if path else f"{type(model).__name__}.forward"
        warnings.warn(
            f"dtrsurgeon: a {op} region in {where} is a sub-graph the analysis does not enter; residual blocks "
            f"that run inside it ({', '.join(inside) if inside else 'none found'}) are not routed",
            OpaqueRegionWarning, stacklevel=3)
    return Capture(graph=graph, args=tuple(args), kwargs=dict(kwargs), callers=calls.callers, params=params,
                   returns_tensor=calls.returns_tensor, output_shapes=calls.output_shapes,
                   input_shapes=calls.input_shapes, opaque=tuple(opaque), method=method, inputs=inputs)


@contextlib.contextmanager
def _inference_flags(model: nn.Module):
    """Every module's ``training`` flag off, restored afterwards; ``train()``/``eval()`` are not called."""
    flags = [(m, m.training) for m in model.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _memoised_methods_reset(model: nn.Module):
    """Methods of the model's classes memoised with ``functools.lru_cache`` (plain, static or class
    methods: a rotary table keyed by the image size) keep what the capture's call computed, fake
    tensors; a cache that missed during the capture is cleared afterwards, so the next real call
    computes its values again."""
    methods = (getattr(f, "__func__", f) for m in model.modules() for cls in type(m).__mro__ for f in vars(cls).values())
    caches = {id(f): f for f in methods
              if callable(getattr(f, "cache_clear", None)) and callable(getattr(f, "cache_info", None))}
    misses = {key: f.cache_info().misses for key, f in caches.items()}
    try:
        yield
    finally:
        for key, f in caches.items():
            if f.cache_info().misses != misses[key]:
                f.cache_clear()


@contextlib.contextmanager
def _helper_objects_kept(model: nn.Module):
    """Plain objects the modules hold (no module, no tensor: a rotary-table maker that keeps its table
    after the first call) get their attributes back after the capture, which would leave fake tensors
    in them: ``self.rope_embedder.freqs_cis``; and so do the dicts, lists and sets they hold, at any
    depth, in place (a cache filled during the forward, ``self.tables[length] = (cos, sin)``)."""
    helpers = {id(v): v for m in model.modules() for v in vars(m).values()
               if not isinstance(v, (nn.Module, torch.Tensor, type)) and type(v).__module__ != "builtins"
               and isinstance(getattr(v, "__dict__", None), dict)}
    saved = [(v, dict(vars(v))) for v in helpers.values()]
    seen: set[int] = set()
    contents = [(c, copy.copy(c)) for v in helpers.values() for attr in vars(v).values()
                for c in _containers_in(attr, seen)]
    try:
        yield
    finally:
        for v, attrs in saved:
            vars(v).clear()
            vars(v).update(attrs)
        for container, items in contents:
            _put_back(container, items)


def _put_back(container: dict | list | set, items: dict | list | set) -> None:
    """``container`` holding ``items`` again, the same object (others may hold it too)."""
    container.clear()
    if isinstance(container, list):
        container.extend(items)
    else:
        container.update(items)


def _containers_in(value, seen: set[int]) -> Iterator[dict | list | set]:
    """The dicts, lists and sets in ``value`` (itself, and inside those and tuples), each once; walked
    with a stack of its own, so a deeply nested one (a linked list of pairs) needs no recursion."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, (dict, list, set)) and id(value) not in seen:
            seen.add(id(value))
            yield value
            stack.extend(reversed(list(value.values() if isinstance(value, dict) else value)))
        elif isinstance(value, tuple):
            stack.extend(reversed(value))


@dataclass
class ModuleCalls:
    """What hooks saw of each module's first call while the capture ran the forward."""

    callers: dict[str, list] = field(default_factory=dict)  # path -> source frames, root.forward first
    returns_tensor: dict[str, bool] = field(default_factory=dict)  # path -> returned a plain tensor
    output_shapes: dict[str, tuple] = field(default_factory=dict)  # path -> shapes of a returned tuple
    input_shapes: dict[str, tuple] = field(default_factory=dict)  # path -> shapes of its positional arguments


def _shapes(values: tuple) -> tuple:
    return tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in values)


@contextlib.contextmanager
def _recording_calls(model: nn.Module, paths: dict[int, str]) -> Iterator[ModuleCalls]:
    """Global module hooks for the duration of one traced forward: the live frames of each
    module's first call (with the column span of the call, which the graph's stack traces lack,
    and the helper frames they drop), and what it returned (fake tensors under export)."""
    calls = ModuleCalls()

    def record_caller(module, _inputs):
        path = paths.get(id(_traced_base(module)))
        if path is not None and path not in calls.callers:
            calls.callers[path] = _user_frames(model, live_frames(sys._getframe(1)))

    def record_output(module, _inputs, output):
        path = paths.get(id(_traced_base(module)))
        if path is not None and path not in calls.returns_tensor:
            calls.returns_tensor[path] = isinstance(output, torch.Tensor)
            if isinstance(output, tuple):
                calls.output_shapes[path] = _shapes(output)
                calls.input_shapes[path] = _shapes(_inputs)

    handles = [nn.modules.module.register_module_forward_pre_hook(record_caller),
               nn.modules.module.register_module_forward_hook(record_output)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _traced_base(module: nn.Module) -> nn.Module:
    """The model's own module behind a stand-in that export calls in its place: where a model
    holds one module under two names (ADM), export's tracer calls a proxy of each module that
    records the path it was reached by (``_AttrProxy``; ``get_base()`` is the module)."""
    while isinstance(module, _ATTR_PROXY) and hasattr(module, "get_base"):
        module = module.get_base()
    return module


def _check_sources(model: nn.Module, callers: dict[str, list]) -> None:
    """The functions on the recorded call paths, and the forwards of the model's own classes,
    must have source text that is the code running (see :mod:`dtrsurgeon.analysis.sources`)."""
    codes = {getattr(inspect.unwrap(type(module).forward), "__code__", None) for module in model.modules()
             if not isinstance(module, fx.GraphModule)}  # a GraphModule's forward is generated code
    codes |= {frame.code_object for frames in callers.values() for frame in frames}
    for code in sorted((c for c in codes if c is not None), key=lambda c: (c.co_filename, c.co_firstlineno)):
        if not code.co_filename.startswith(_TORCH_DIR):
            check_current(code)


def _graph(model, args, kwargs, paths) -> tuple[fx.GraphModule, dict[str, str], dict[str, tuple[str, ...]], str,
                                                ModuleCalls]:
    """(graph module, placeholder -> parameter/buffer name, argument name -> its placeholders, method,
    the module calls recorded while it ran)."""
    try:
        with _quiet_torch_logs(), _recording_calls(model, paths) as calls, torch.no_grad():
            ep = torch.export.export(model, tuple(args), dict(kwargs), strict=False)
    except Exception as exported:
        if on_meta(model, args, kwargs):
            raise _capture_error(model, paths, exported, "A model on the meta device is captured by torch.export "
                                 "alone (a trace on real tensors needs values): plan it on a real device, or pass "
                                 "example_inputs= that export can follow.") from exported
        try:
            with _quiet_torch_logs(), _recording_calls(model, paths) as calls:
                return (*trace_real(model, args, kwargs), "real-tensor trace", calls)
        except Exception as traced:
            raise _capture_error(model, paths, traced, f"Capture exports the forward on fake tensors and, failing "
                                 f"that, traces it on the real example inputs; both failed (export: "
                                 f"{_first_line(exported)[:200]}): check the example inputs (pass example_inputs=, "
                                 "CLI --example-inputs FILE.pt), or route the blocks below this code by calling "
                                 "dtrsurgeon on that submodule.") from traced
    sig = ep.graph_signature
    params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    return ep.graph_module, params, _exported_inputs(ep, model), "export", calls


def _exported_inputs(ep, model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Forward argument -> the placeholders of its tensors.  Export flattens the call's arguments
    into one placeholder per tensor and names it after the argument and the item, which can
    collide with another argument's name; the call's tree of arguments, refilled with the
    placeholders, says which is which::

        forward(x=[a, b], t=t, x_0=c)  ->  placeholders x_0, x_1, t, x_0_1
                                       ->  {"x": ("x_0", "x_1"), "t": ("t",), "x_0": ("x_0_1",)}
    """
    names = {n.name for n in ep.graph_module.graph.nodes if n.op == "placeholder"}
    specs = [s for s in ep.graph_signature.input_specs if s.kind is torch.export.graph_signature.InputKind.USER_INPUT]
    leaves = [name if (name := getattr(s.arg, "name", None)) in names else None for s in specs]
    in_spec = ep.call_spec.in_spec
    if in_spec is None or in_spec.num_leaves != len(leaves):
        return {}
    call_args, call_kwargs = pytree.tree_unflatten(leaves, in_spec)
    bound = _bound(model, call_args, call_kwargs)
    return {arg: found for arg, value in bound.items()
            if (found := tuple(v for v in pytree.tree_leaves(value) if isinstance(v, str)))}


def _bound(model: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The forward's arguments by name, as this call binds them ({} when it does not fit)."""
    try:
        return dict(inspect.signature(model.forward).bind(*args, **kwargs).arguments)
    except TypeError:
        return {}


def on_meta(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> bool:
    """Does the model hold, or the call pass, tensors on the meta device (shapes without storage)?"""
    leaves = pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    tensors = [*model.parameters(), *model.buffers(), *(x for x in leaves if isinstance(x, torch.Tensor))]
    return any(t.is_meta for t in tensors)


def trace_real(model: nn.Module, args: tuple, kwargs: dict) -> tuple[fx.GraphModule, dict[str, str], dict[str, str]]:
    """The forward traced while it runs on the real example inputs (``make_fx``, real tracing mode),
    for code ``torch.export`` cannot follow on fake tensors: ``len(set(lengths))``, ``.numpy()``,
    ``.tolist()``, ``if x.sum() > 0``.  Python takes the branches these inputs take; nodes carry the
    same ``nn_module_stack``, ``stack_trace`` and ``val`` as exported ones.  Parameters and buffers
    enter as placeholders (through ``functional_call``), so the analysis tells them from activations.
    Returns (graph module, placeholder -> parameter/buffer name, argument -> its placeholders)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    class Forward:  # make_fx records module paths for a callable whose ``_orig_mod`` is the root
        _orig_mod = model

        def __call__(self, params, buffers, tensors):
            values = list(leaves)
            for i, tensor in zip(at, tensors):
                values[i] = tensor
            call_args, call_kwargs = pytree.tree_unflatten(values, spec)
            return torch.func.functional_call(model, (params, buffers), call_args, call_kwargs)

    with torch.no_grad():
        gm = make_fx(Forward(), tracing_mode="real", pre_dispatch=True, record_module_stack=True,
                     record_stack_traces=True, _error_on_data_dependent_ops=False)(params, buffers, [leaves[i] for i in at])
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    names = list(params) + list(buffers)
    inputs: dict[str, tuple[str, ...]] = {}
    owners = _tensor_owners(model, args, kwargs)
    for j, i in enumerate(at):
        if id(leaves[i]) in owners:
            arg = owners[id(leaves[i])]
            inputs[arg] = (*inputs.get(arg, ()), placeholders[len(names) + j])
    return gm, dict(zip(placeholders, names)), inputs


def _tensor_owners(model, args, kwargs) -> dict[int, str]:
    """id of each tensor the call passes -> the forward argument that holds it (itself, or in a list)."""
    return {id(leaf): k for k, v in reversed(_bound(model, args, kwargs).items())
            for leaf in pytree.tree_leaves(v) if isinstance(leaf, torch.Tensor)}


def check_timestep_input(model: nn.Module, args: tuple, kwargs: dict, arg: str) -> None:
    """timestep.arg must carry timesteps: a real or integer tensor of shape [B] (B the samples'
    batch) or 0-d, or a Python number.  Raises SpecError at /timestep/arg otherwise."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except TypeError:
        return  # the eager call reports inputs that do not fit the forward
    value = bound.get(arg)
    owner = f"{type(model).__name__}.forward"
    batches = {int(v.shape[0]) for k, v in bound.items() if k != arg and isinstance(v, torch.Tensor) and v.dim() >= 2}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if not isinstance(value, torch.Tensor):
        got = "nothing (its default)" if value is None else f"a {type(value).__name__}"
        raise SpecError("/timestep/arg", f"{arg!r} of {owner} gets {got} in the example inputs, not timesteps; set "
                        "timestep.arg to the argument that carries the timesteps")
    if value.dtype == torch.bool or value.is_complex() or value.dim() > 1 or (
            value.dim() == 1 and batches and int(value.shape[0]) not in batches):
        want = f"[{'/'.join(map(str, sorted(batches)))}]" if batches else "[B]"
        raise SpecError("/timestep/arg", f"{arg!r} of {owner} is a {str(value.dtype).removeprefix('torch.')} tensor "
                        f"of shape {list(value.shape)}, not timesteps (a real or integer tensor of shape {want} or a "
                        "0-d one); set timestep.arg to the argument that carries the timesteps")


def _check_timestep_used(gm: fx.GraphModule, inputs: dict[str, tuple[str, ...]], arg: str, owner: str) -> None:
    """The timestep tensor must reach the computation (an unused input cannot pick the tasks' masks
    for what the model computes)."""
    name = next(iter(inputs.get(arg, ())), None)
    node = next((n for n in gm.graph.nodes if n.op == "placeholder" and n.name == name), None)
    if node is not None and not node.users:
        raise SpecError("/timestep/arg", f"{arg!r} of {owner}.forward is not used by the forward on the example "
                        "inputs, so it cannot be the timestep; set timestep.arg to the argument that carries the timesteps")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _capture_error(model, paths, exc: BaseException, hint: str) -> CaptureError:
    """Every capture failure becomes one actionable line."""
    return CaptureError(f"cannot capture {type(model).__name__}.forward: {_first_line(exc)[:300]} -- "
                        f"stopped in {_where_capture_stopped(paths, exc)}. {hint}")


def named_class(model: nn.Module, path: str) -> str:
    module = dict(model.named_modules()).get(path)
    return type(module).__name__ if module is not None else "?"


# Higher-order ops that only run their sub-graph under a mode (grad mode, autocast) or call it
# once (invoke_subgraph): their body is inlined into the analysed graph.  Value: the index of the
# sub-graph argument and of the first operand.  torch.export (strict=False) turns every switch of
# grad mode inside the forward (``with torch.no_grad():`` in guided-diffusion's checkpoint
# Function) into ``wrap_with_set_grad_enabled(enabled, submod, *operands)``.
_INLINED_HOPS = {
    "wrap_with_set_grad_enabled": (1, 2),
    "wrap_with_autocast": (4, 5),
    "invoke_subgraph": (0, 2),
}


def _hop_name(node: fx.Node) -> str | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.HigherOrderOperator):
        return None
    return node.target.name()


def _innermost_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def inline_subgraphs(gm: fx.GraphModule) -> tuple[fx.Graph, list]:
    """A flat copy of ``gm``'s graph: the bodies of grad-mode, autocast and
    invoke_subgraph wrappers are copied in place of the wrapper (their nodes keep
    their metadata: module stack, stack trace, fake values), and the wrapper's
    ``getitem`` outputs become the body's outputs.  Other higher-order ops with
    sub-graphs (``torch.cond``, ``map``, loops) stay opaque and are returned as
    ``(op, module path, module paths inside)``.
    """
    graph = fx.Graph()
    opaque: list = []

    def sub_module(owner: fx.GraphModule, arg) -> fx.GraphModule | None:
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            value = getattr(owner, arg.target, None)
            return value if isinstance(value, fx.GraphModule) else None
        return None

    def modules_inside(owner: fx.GraphModule, node: fx.Node) -> list[str]:
        paths = []
        for arg in node.args:
            sub = sub_module(owner, arg)
            if sub is not None:
                for n in sub.graph.nodes:
                    paths.append(_innermost_path(n))
                    if _hop_name(n):
                        paths += modules_inside(sub, n)
        return paths

    def copy(owner: fx.GraphModule, env: dict) -> object:
        """Copy ``owner``'s nodes into ``graph`` with placeholders already in ``env``; returns the output value."""
        inlined: dict[fx.Node, object] = {}  # wrapper node -> its body's output value
        for node in owner.graph.nodes:
            if node.op == "placeholder":
                if node not in env:
                    env[node] = graph.node_copy(node)
                continue
            if node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: env[n])
            if node.op == "call_function" and node.target is operator.getitem and node.args[0] in inlined:
                out = inlined[node.args[0]]
                env[node] = out[node.args[1]] if isinstance(out, (tuple, list)) else out
                continue
            name = _hop_name(node)
            if name in _INLINED_HOPS:
                at, first = _INLINED_HOPS[name]
                sub = sub_module(owner, node.args[at]) if len(node.args) > at else None
                if sub is not None:
                    phs = [n for n in sub.graph.nodes if n.op == "placeholder"]
                    operands = list(node.args[first:])
                    if len(operands) == len(phs):
                        inner = {ph: fx.node.map_arg(op, lambda n: env[n]) for ph, op in zip(phs, operands)}
                        inlined[node] = copy(sub, inner)
                        env[node] = inlined[node]  # used by getitem (above) or, single output, directly
                        continue
            if name is not None and any(sub_module(owner, a) is not None for a in node.args):
                inside = [p for p in dict.fromkeys(modules_inside(owner, node)) if p]
                opaque.append((name, _innermost_path(node), tuple(inside)))
            env[node] = graph.node_copy(node, lambda n: env[n])
        return None

    graph.output(copy(gm, {}))
    for node in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:
        graph.erase_node(node)  # sub-graphs of inlined wrappers
    return graph, opaque


@contextlib.contextmanager
def _quiet_torch_logs():
    """Export logs and prints its partial graph when it fails; our one-line error says it all."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


_TORCH_DIR = os.path.dirname(torch.__file__)
_ATTR_PROXY = getattr(importlib.import_module("torch.fx.experimental.proxy_tensor"), "_AttrProxy", ())
_CONTAINERS = os.path.join(_TORCH_DIR, "nn", "modules", "container.py")


def _user_frames(model: nn.Module, stack: list) -> list:
    """The frames from the root's forward down to a module call: the model's
    own code and torch's containers (nn.Sequential calls its children), not
    torch's machinery (``_call_impl``, export, checkpoint internals)."""
    from dtrsurgeon.analysis.callsites import is_frame_of

    frames = list(stack)
    root = next((i for i, f in enumerate(frames) if is_frame_of(f, type(model).forward)), None)
    if root is None:
        return []
    return [f for f in frames[root:] if not f.file.startswith(_TORCH_DIR) or f.file == _CONTAINERS]
