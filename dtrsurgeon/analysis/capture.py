"""Capture pass: the model's forward as an ATen-level torch.fx graph.

Plain ``torch.fx.symbolic_trace`` fails on real backbones (``int()`` of a
Proxy, Python control flow on shapes, iterating a Proxy), so capture uses
``torch.export.export(..., strict=False)``: the model's own Python runs on fake
tensors, shapes are concrete, and every node keeps ``nn_module_stack`` (which
module it belongs to) and ``stack_trace`` (file and line).  The captured graph
is only analysed; the model that trains is the user's own code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree

from dtrsurgeon.analysis.callsites import live_frames
from dtrsurgeon.errors import CaptureError


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
    # (operator, module path, modules inside) of sub-graph regions left opaque (torch.cond, ...): not analysed
    opaque: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


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


def capture(model: nn.Module, args: tuple, kwargs: dict) -> Capture:
    """Export ``model(*args, **kwargs)`` in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    paths = _module_paths(model)
    callers: dict[str, list] = {}

    returns_tensor: dict[str, bool] = {}
    output_shapes: dict[str, tuple] = {}

    def record_caller(module, _inputs):
        path = paths.get(id(module))
        if path is not None and path not in callers:
            callers[path] = _user_frames(model, live_frames(sys._getframe(1)))

    def record_output(module, _inputs, output):
        path = paths.get(id(module))
        if path is not None and path not in returns_tensor:
            returns_tensor[path] = type(output) in (torch.Tensor, FakeTensor) or isinstance(output, torch.nn.Parameter)
            if isinstance(output, tuple):
                output_shapes[path] = tuple(tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in output)

    # One eager call records who calls each module (export may run copies of the
    # modules, so it cannot tell); then export gives the graph.
    handles = [nn.modules.module.register_module_forward_pre_hook(record_caller),
               nn.modules.module.register_module_forward_hook(record_output)]
    stage = "eager"
    try:
        _recording_run(model, args, kwargs, (callers, returns_tensor))
        for h in handles:
            h.remove()
        stage = "export"
        with _quiet_torch_logs():
            ep = torch.export.export(model, tuple(args), dict(kwargs), strict=False)
    except Exception as exc:  # every capture failure becomes one actionable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("The model failed on the example inputs themselves: check them (pass example_inputs=, "
                "CLI --example-inputs FILE.pt)." if stage == "eager" else
                "Capture runs the forward on fake tensors, so data-dependent Python (if on tensor values, "
                ".item(), .tolist(), numpy) cannot be followed: make that code shape-only, or route the "
                "blocks below it by calling dtrsurgeon on that submodule.")
        raise CaptureError(
            f"cannot capture {type(model).__name__}.forward: {type(exc).__name__}: {first[:300]} -- "
            f"stopped in {_where_capture_stopped(paths, exc)}. {hint}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    sig = ep.graph_signature
    params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    graph, opaque = inline_subgraphs(ep.graph_module)
    for op, path, inside in opaque:
        where = f"module {path!r} ({named_class(model, path)})" if path else f"{type(model).__name__}.forward"
        warnings.warn(
            f"dtrsurgeon: a {op} region in {where} is a sub-graph the analysis does not enter; residual blocks "
            f"that run inside it ({', '.join(inside) if inside else 'none found'}) are not routed",
            OpaqueRegionWarning, stacklevel=3)
    return Capture(graph=graph, args=tuple(args), kwargs=dict(kwargs), callers=callers, params=params,
                   returns_tensor=returns_tensor, output_shapes=output_shapes, opaque=tuple(opaque))


def _recording_run(model: nn.Module, args: tuple, kwargs: dict, records: tuple[dict, ...]) -> None:
    """One forward for the recording hooks, on fake tensors (shapes only, no arithmetic: a real forward
    of DiT-XL/2 was most of plan()'s time on CPU); where the model's Python needs real values (``.item()``,
    branching on a tensor) it runs again on the real inputs.  Attributes a module sets on itself during
    the fake run are put back, so no fake tensor stays in the model."""
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake_args, fake_kwargs = pytree.tree_map_only(torch.Tensor, mode.from_tensor, (tuple(args), dict(kwargs)))
            model(*fake_args, **fake_kwargs)
    except Exception:
        for record in records:
            record.clear()
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for module, attrs, params, buffers in saved:
            module.__dict__.clear()
            module.__dict__.update(attrs)
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)


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
