"""Unit pass: from residual chains to routed units, i.e. to a :class:`Plan`.

A unit is a module whose own forward holds a residual chain (DiT: each
``DiTBlock``; ADM: each ``ResBlock`` and ``AttentionBlock``; the root itself is
never a unit).  For each unit the pass decides where the mask acts:

* block: the chain starts at the unit's input (maybe through a reshape) and
  its output has the input's shape: ``y = unit(x*m) + x*(1-m)``; or the chain
  starts inside the unit (U-ViT after its long-skip merge): the same, from the
  line that makes the stream;
* branch: the skip is a projection (channels change) or the spec asks for it:
  every branch reads ``x*m``, every skip reads ``x``;
* pre_output: the input of each branch's last projection is masked.

It also records the stream's channel axis and width and the source frames
that call the unit.
"""

from __future__ import annotations

import ast
import fnmatch
import inspect
import itertools
import os
import sys
import warnings
from dataclasses import dataclass, replace

import networkx as nx
import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from dtrsurgeon.analysis.callsites import (
    Frame,
    is_frame_of,
    parse_stack_trace,
    resolve_function,
)
from dtrsurgeon.analysis.capture import capture
from dtrsurgeon.analysis.inputs import example_inputs as guess_inputs
from dtrsurgeon.analysis.sources import absolute, statement_at
from dtrsurgeon.analysis.residuals import (
    PROJECTIONS,
    SHAPE_OPS,
    ResidualAdd,
    ResidualChain,
    data_inputs,
    dataflow_graph,
    find_residual_adds,
    group_chains,
    uncast,
)
from dtrsurgeon.analysis.streams import (
    _CHANNEL_FIRST,
    FoundStream,
    NoStreams,
    assigned_item,
    batch_layouts,
    channel_axis,
    fold_of,
    identifier,
    returned_place,
    tuple_streams,
)
from dtrsurgeon.analysis.streams import inside as _inside
from dtrsurgeon.analysis.streams import op_name as _op_name
from dtrsurgeon.analysis.streams import origin as _origin
from dtrsurgeon.analysis.targets import check_overrides, select_units
from dtrsurgeon.errors import CaptureError, EmitError, SpecError
from dtrsurgeon.masks import active_channels, check_table_size
from dtrsurgeon.plan import MaskSite, Plan, RoutedUnit, SourceLine, Stream
from dtrsurgeon.spec import Spec, load_spec

_ADDMM = torch.ops.aten.addmm.default
_PLAIN_ADDS = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}


def _qualname(cls: type) -> str:
    """``package.module.Class``, the name the class is found under: a class a class decorator made
    (``persistent_class.<locals>.Decorator``, named after the class it wraps) by its module's name for it."""
    if "<locals>" in cls.__qualname__ and getattr(sys.modules.get(cls.__module__), cls.__name__, None) is cls:
        return f"{cls.__module__}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _source_line(frame: Frame, owner: type) -> SourceLine:
    _, func = resolve_function(frame, owner)
    name = func.__qualname__ if func is not None else frame.function
    return SourceLine(file=frame.file, line=frame.line, function=name, code=frame.code)


def _frame_in(node: fx.Node, unit: nn.Module) -> Frame | None:
    """The frame of ``unit``'s own forward that produced ``node``."""
    fwd = type(unit).forward
    return next((f for f in reversed(parse_stack_trace(node.meta.get("stack_trace"))) if is_frame_of(f, fwd)), None)


def _params_of(unit: nn.Module) -> list[str]:
    return [n for n, p in inspect.signature(unit.forward).parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _stream_arg(unit: nn.Module, residual_code: str) -> str:
    """The forward parameter that carries the stream into the first residual add."""
    params = _params_of(unit)
    try:
        tree = ast.parse(residual_code.strip().removeprefix("return ").rstrip(":"))
        names = [n.id for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
                 for n in (node.left, node.right) if isinstance(n, ast.Name)]
    except SyntaxError:
        names = []
    return next((n for n in names if n in params), params[0] if params else "")


def _assigned_name(code: str) -> str | None:
    try:
        stmt = ast.parse(code.strip()).body[0]
    except (SyntaxError, IndexError):
        return None
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _leaving(node: fx.Node, path: str) -> fx.Node:
    """Follow ``node`` forward through reshapes to the value that leaves the unit."""
    while True:
        nxt = [u for u in node.users if u.op == "call_function" and u.target in SHAPE_OPS and _inside(u, path)]
        if len(nxt) != 1:
            return node
        node = nxt[0]


def _stream_nodes(add: ResidualAdd, path: str, params: set[str]) -> set[fx.Node]:
    """The nodes that hold the stream of ``add`` inside the unit: the stream, the reshapes it is made
    by, and the casts the skip is made by (the graph chains a float32 ``x.float()`` onto the last
    cast of ``x``, so the branch may read the stream at one of them)."""
    sources = {add.stream, *add.skip_casts}
    node = add.stream
    while node.op == "call_function" and node.target in SHAPE_OPS and _inside(node, path):
        ins = data_inputs(node, params)
        if len(ins) != 1:
            break
        node = ins[0]
        sources.add(node)
    return sources


def _branch_lines(chain: ResidualChain, unit: nn.Module, path: str, flow: nx.DiGraph, params: set[str]) -> list[SourceLine]:
    """Lines of the unit's forward where a branch first reads the stream."""
    lines = []
    for add in chain.adds:
        sources = _stream_nodes(add, path, params)
        skip_side = set(nx.ancestors(flow, add.skip)) | {add.skip} if add.projection else set()
        for src in sources:
            for user in src.users:
                if user is add.node or user in skip_side or user in sources:
                    continue
                if user is add.branch or nx.has_path(flow, user, add.branch):
                    frame = _frame_in(user, unit)
                    if frame is not None:
                        lines.append(_source_line(frame, type(unit)))
    return lines


def _projection_site(add, unit: nn.Module, path: str, flow, params, param_names, callers, named) -> MaskSite:
    """pre_output: the last conv/linear on the branch, and where the unit calls it."""
    node = add.branch
    for _ in range(8):
        if node.op == "call_function" and node.target in PROJECTIONS:
            break
        ins = [n for n in data_inputs(node, params) if nx.has_path(flow, add.stream, n) or n is add.stream]
        if not ins:
            node = None
            break
        node = ins[0]
    else:
        node = None
    if node is None:
        raise EmitError(f"pre_output: no conv/linear ends the residual branch of {path!r} "
                        f"({_frame_in(add.node, unit) or 'unknown line'}); use routing.mode 'block' or 'branch'")
    fqn = _weight_parameter(node, flow, param_names)
    module_path = fqn.rsplit(".", 1)[0] if "." in fqn else ""
    if not module_path or module_path not in named:
        at = _frame_in(node, unit)
        raise EmitError(f"pre_output: the last projection of {path!r}{f' ({at.file}:{at.line})' if at else ''} "
                        "takes no module's weight (a functional call); use routing.mode 'block' or 'branch'")
    frames = callers.get(module_path, [])
    fwd = type(unit).forward
    idx = next((i for i in range(len(frames) - 1, -1, -1) if is_frame_of(frames[i], fwd)), None)
    if idx is None:
        raise EmitError(f"pre_output: {module_path!r} is not called from {type(unit).__qualname__}.forward "
                        f"(it runs inside {frames[-1] if frames else 'another module'}); pre_output masks "
                        "projections the unit calls itself: use routing.mode 'block' or 'branch'")
    idx = _helper_frame(frames, idx, unit) or idx
    inner = frames[idx + 1:]
    if any(not f.file.endswith(os.path.join("nn", "modules", "container.py")) for f in inner):
        other = next(f for f in inner if not f.file.endswith(os.path.join("nn", "modules", "container.py")))
        raise EmitError(f"pre_output: {module_path!r} is called from {other.function} ({other.file}:{other.line}), "
                        f"not from {type(unit).__qualname__}.forward; pre_output masks projections the unit calls itself")
    via = "sequential" if inner else "call"
    if via == "sequential":
        parent_path, _, last = module_path.rpartition(".")
        parent = named.get(parent_path)
        if not isinstance(parent, nn.Sequential) or str(len(parent) - 1) != last:
            raise EmitError(f"pre_output: {module_path!r} is reached through {frames[idx]} but is not the last "
                            "module of its Sequential; use routing.mode 'branch'")
    inp = data_inputs(node, params)[0]
    axis = 1 if _op_name(node) in _CHANNEL_FIRST else inp.meta["val"].dim() - 1
    return MaskSite(module=module_path, call=_source_line(frames[idx], type(unit)), via=via,
                    channel_axis=axis, channels=int(inp.meta["val"].shape[axis]))


def _frames_at(node: fx.Node, path: str, cap) -> list[Frame]:
    """The source frames that computed ``node`` inside unit ``path``: the live frames of the call of
    the unit's submodule that computed it, which keep the helper methods the graph's stack traces
    can drop (U-ViT's ``self._forward``), else the graph's stack trace."""
    stack = [p for p, _ in (node.meta.get("nn_module_stack") or {}).values()]
    child = next((p for p in stack if p.startswith(path + ".")), None)
    if child is not None and cap.callers.get(child):
        return cap.callers[child]
    return parse_stack_trace(node.meta.get("stack_trace"))


def _helper_frame(frames: list[Frame], forward_at: int, unit: nn.Module) -> int | None:
    """Where code of the unit runs in a helper method that its forward hands on by name
    (guided-diffusion, U-ViT: ``return checkpoint(self._forward, x, ...)``): the index of the
    helper's frame, else None.  The emitters bind ``dtr_task`` to that reference."""
    cls = type(unit)
    for i in range(len(frames) - 1, forward_at, -1):
        owner, func = resolve_function(frames[i], cls)
        if func is None or func is inspect.unwrap(cls.forward) or owner.__module__.split(".")[0] == "torch":
            continue
        name = func.__name__
        try:
            handed_on = f"self.{name}" in inspect.getsource(cls.forward)
        except (OSError, TypeError):
            handed_on = False
        if not handed_on:
            raise EmitError(f"{frames[i].function} ({frames[i].file}:{frames[i].line}) runs code of unit class "
                            f"{cls.__qualname__}, but {cls.__qualname__}.forward does not refer to self.{name}; "
                            "the task index cannot be handed to it")
        return i
    return None


def _weight_parameter(node: fx.Node, flow: nx.DiGraph, param_names: dict[str, str]) -> str:
    """The name of the parameter a conv/linear's weight comes from: the weight itself, or the one
    parameter it is computed from (EDM casts it, ``self.weight.to(x.dtype)``; EDM2 normalises and
    scales it), else ""."""
    weight = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], fx.Node) else None
    if node.target is _ADDMM:  # addmm(bias, input, weight.t())
        weight = node.args[2] if isinstance(node.args[2], fx.Node) else None
    if weight is None:
        return ""
    if weight.name in param_names:
        return param_names[weight.name]
    sources = {param_names[n.name] for n in nx.ancestors(flow, weight) if n.op == "placeholder" and n.name in param_names}
    inputs = [n for n in nx.ancestors(flow, weight) if n.op == "placeholder" and n.name not in param_names]
    weights = [name for name in sources if name.endswith("weight")] or list(sources)
    return weights[0] if len(weights) == 1 and not inputs else ""


def _adds_in(code: str) -> bool:
    """Does this source line itself add (``+``, ``+=``, ``.add``, ``.lerp``)?"""
    try:
        tree = ast.parse(code.strip().removeprefix("return ").rstrip(":") or "0")
    except SyntaxError:  # the first line of a longer statement
        return any(op in code for op in ("+", ".add(", ".lerp("))
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add) or isinstance(n, ast.AugAssign)
               or isinstance(n, ast.Attribute) and n.attr in ("add", "add_", "lerp", "lerp_") for n in ast.walk(tree))


def _resolve_args(model: nn.Module, spec: Spec) -> Spec:
    """The spec with timestep.arg checked against, or found in, the root's forward signature, and
    sample.arg, where it is given, checked against it."""
    params = list(inspect.signature(model.forward).parameters)
    owner = f"{type(model).__name__}.forward"
    spec = replace(spec, timestep=spec.timestep.resolved(params, owner))
    if spec.sample is not None and spec.sample not in params:
        raise SpecError("/sample/arg", f"{spec.sample!r} is not an argument of {owner}({', '.join(params)}); set "
                        "sample.arg to the argument that carries the sample")
    if spec.sample is not None and spec.sample == spec.timestep.arg:
        raise SpecError("/sample/arg", f"{spec.sample!r} is the timestep argument of {owner}; set sample.arg to "
                        "the argument that carries the sample")
    return spec


def _inputs(model, spec, example_inputs):
    if example_inputs is None:
        return guess_inputs(model, spec.timestep.arg, (spec.timestep.t0, spec.timestep.t1))
    if isinstance(example_inputs, dict):
        return (), example_inputs
    if isinstance(example_inputs, tuple) and len(example_inputs) == 2 and isinstance(example_inputs[1], dict):
        return example_inputs
    return tuple(example_inputs), {}


def build_plan(model: nn.Module, spec, example_inputs=None) -> Plan:
    """Analyse ``model`` and return the plan for ``spec``; changes nothing."""
    given = load_spec(spec)
    spec = _resolve_args(model, given)
    args, kwargs = _inputs(model, spec, example_inputs)
    sample_name, batch = _sample_input(model, args, kwargs, spec)
    cap = capture(model, args, kwargs, timestep_arg=spec.timestep.arg)
    params = set(cap.params)
    flow = dataflow_graph(cap.graph)
    chains = [c for c in group_chains(find_residual_adds(cap.graph, params, flow)) if "@" not in c.module_key]
    named = dict(model.named_modules())
    order = list(named)
    skipped: list[tuple[str, str]] = []
    holders, streams, made, caller_adds = _holders(chains, cap, named, params, flow, skipped)
    samples = [n for name in cap.inputs.get(sample_name, (sample_name,)) if (n := _placeholder(cap.graph, name))]
    _drop_conditioning(holders, streams, sample_name, samples, flow, params, spec.include, skipped)
    candidates = sorted(holders, key=order.index)
    chosen = select_units(candidates, spec.include, spec.exclude)
    outer = set(chosen)
    for path in list(chosen):
        parent = next((p for p in outer if path.startswith(p + ".")), None)
        if parent is not None:
            skipped.append((path, f"inside the routed unit {parent!r}"))
            chosen.remove(path)
    check_overrides(chosen, [o.match for o in spec.overrides])

    layouts = batch_layouts(cap.graph, params, batch) if batch else {}

    def make(path: str, force_branch: bool = False) -> RoutedUnit:
        if path in caller_adds:
            unit, node = _caller_add_unit(path, named[path], holders[path][0], spec, cap, named, model,
                                          owner=type(named[caller_adds[path]]))
        elif path in made:
            unit, node = _made_stream_unit(path, named[path], holders[path], made[path], spec, cap, flow, params,
                                           named, model)
        elif path in streams:
            unit, node = _multi_stream_unit(path, named[path], holders[path], streams[path], spec, sample_name,
                                            cap, named, model)
        else:
            unit = _unit(path, named[path], holders[path], spec, cap, flow, params, named, model, force_branch)
            node = _stream_node(path, holders[path], params)
        return _with_fold(unit, node, layouts, batch)

    units = []
    for path in chosen:
        try:
            units.append(make(path))
        except _NotRoutable as e:
            skipped.append((path, str(e)))
    # One class has one forward: where block mode fell back to branch for some instances
    # (projection skips), all instances of that class use branch, so both emitters agree.
    fell_back = {u.cls for u in units if u.mode == "branch" and u.mode_note}
    for i, u in enumerate(list(units)):
        if u.mode == "block" and u.cls in fell_back:
            try:
                units[i] = make(u.path, force_branch=True)
            except _NotRoutable as e:
                units[i] = None
                skipped.append((u.path, str(e)))
    units = [u for u in units if u is not None]
    units = _one_mode_per_class(units, skipped)
    units = _one_edit_set_per_class(units, skipped, cap, named)
    units = _one_fold_per_class(units, skipped)
    if chosen and not units:
        raise EmitError(f"none of the {len(chosen)} selected units can be routed: {skipped[-1][0]}: {skipped[-1][1]}")
    unroutable = [p for p, _ in skipped if p in set(chosen)]
    if unroutable:
        warnings.warn(f"{len(unroutable)} selected unit(s) left unrouted ({', '.join(unroutable[:3])}"
                      f"{', ...' if len(unroutable) > 3 else ''}): {dict(skipped)[unroutable[0]]}", stacklevel=3)
    unit_paths = {u.path for u in units}
    threads = _threads(units, cap, named, model)
    call_lines = {(sl.file, sl.line) for u in units for sl in u.call_path}
    call_lines |= {(sl.file, sl.line) for _, lines in threads for sl in lines}
    passthrough = tuple(
        (p, frames[-1].file, frames[-1].line) for p, frames in cap.callers.items()
        if p and p not in unit_paths and p not in dict(threads) and frames and (frames[-1].file, frames[-1].line) in call_lines
    )
    unmatched = []
    for path in candidates:
        if path not in unit_paths:
            start = holders[path][0].start
            unmatched.append((path, int(start.meta["val"].shape[channel_axis(start)])))
    seen = tuple(sorted({(absolute(f.file), f.line) for frames in cap.callers.values() for f in frames}))
    return Plan(model=_qualname(type(model)), timestep=spec.timestep, spec_sha256=given.sha256,
                units=tuple(units), skipped=tuple(skipped), passthrough=passthrough, unmatched=tuple(unmatched),
                threads=threads, seen=seen)


def _holders(chains, cap, named, params, flow, skipped) -> tuple[dict[str, list[ResidualChain]],
                                                                dict[str, list[FoundStream]], dict[str, int], dict[str, str]]:
    """The modules that may be units: (path -> their residual chains, path -> the streams of those
    that return a tuple, path -> the place in the returned tuple of the stream that such a unit makes
    inside itself, path -> the module whose forward adds its input back: the root, or a
    container such as a ViT's ``Transformer``).  Tuple-returning modules whose streams cannot be
    told apart are skipped with the reason."""
    holders: dict[str, list[ResidualChain]] = {}
    for chain in chains:
        holders.setdefault(chain.module, []).append(chain)
    calls = _caller_calls(holders.pop("", []), holders, cap)
    owners = dict.fromkeys(calls, "")
    for path in [p for p in holders if _container(holders[p], p)]:
        found = _caller_calls(holders[path], holders, cap)
        if found and _covers(found, holders[path]):
            del holders[path]
            calls.update(found)
            owners.update(dict.fromkeys(found, path))
    streams: dict[str, list[FoundStream]] = {}
    made: dict[str, int] = {}
    for path in [p for p in holders if cap.returns_tensor.get(p) is False]:
        module = named[path]
        starts = [(c.start, _chain_frame(c, path, module, params)) for c in holders[path]]
        try:
            streams[path] = tuple_streams(path, module, [(n, _statement(f)) for n, f in starts],
                                          cap.output_shapes.get(path, ()), params, cap.input_shapes.get(path, ()))
        except NoStreams as e:
            try:
                made[path], holders[path] = _made_stream_place(path, module, holders[path], starts, cap, params, flow)
            except NoStreams as inner:
                skipped.append((path, f"{e}; {inner}; residual blocks inside it are routed"))
                del holders[path]
    holders.update(calls)
    return holders, streams, made, owners


def _made_stream_place(path, module, chains, starts, cap, params, flow) -> tuple[int, list[ResidualChain]]:
    """(the place in the returned tuple, the residual chains) of the one stream a tuple-returning unit
    makes inside itself; :class:`NoStreams` when it holds several chains or returns no stream it makes.
    A stream made by adding a projected control input to a parameter starts where that add assigns it:
    the add, whose other operand does not read the parameter, is where the stream is made, not one of
    its residual adds::

        control = self.proj_in(control) + x     # the chain x -> control -> ... is cut here
        control = control + self.fc(control)    # the residual chain of the stream "control"
        return hint, control                    # -> (1, [that chain])
    """
    if len(chains) != 1:
        raise NoStreams("nor does it make one stream inside itself")
    chain, frame = chains[0], starts[0][1]
    if not _inside(_origin(chain.start, path, params), path):
        made = _frame_in(chain.adds[0].node, module)
        if len(chain.adds) < 2 or made is None or _computed_from(chain.adds[0].branch, [chain.adds[0].skip], flow):
            raise NoStreams("nor does it make one stream inside itself")
        chain, frame = ResidualChain(module=chain.module, module_key=chain.module_key, adds=chain.adds[1:]), made
    var = (_assigned_name(frame.code) if frame else None) or ""
    shape = tuple(chain.start.meta["val"].shape)
    return returned_place(type(module), var, shape, cap.output_shapes.get(path, ())), [chain]


def _chain_frame(chain: ResidualChain, path: str, module: nn.Module, params: set[str]) -> Frame | None:
    """The line of ``module``'s forward that makes the stream of ``chain`` when it is made inside the
    unit, else the line of its first residual add (a frame of the same forward run by the unit before,
    which a stream of repeated blocks comes from, is not this unit's line)."""
    start = _origin(chain.start, path, params)
    return (_inside(start, path) and _frame_in(start, module)) or _frame_in(chain.adds[0].node, module)


def _statement(frame: Frame | None) -> str:
    """The code of ``frame``'s whole statement (a stack trace shows its first line only)."""
    if frame is None:
        return ""
    return statement_at(frame.file, frame.line) or frame.code


def _container(chains: list[ResidualChain], path: str) -> bool:
    """Is module ``path`` a container of residual blocks rather than one: no chain of it reaches its
    output (a ViT's ``Transformer`` runs ``x = attn(x) + x`` in a loop, then returns ``self.norm(x)``)?
    Routing it whole would merge the bypass into the final norm's output.

        for attn, ff in self.layers:       # the adds are the container's, the blocks its callees
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)
    """
    ends = [_leaving(c.end, path) for c in chains]
    return all(end.users and all(_inside(u, path) for u in end.users) for end in ends)


def _covers(found: dict[str, list[ResidualChain]], chains: list[ResidualChain]) -> bool:
    """Does every residual add of ``chains`` become one of the callee units ``found``?  Only then is
    the module a container: a post-norm block (``x = self.norm(x + self.ff(x))``) with one such add
    among others stays one unit, so none of its adds is left unrouted."""
    taken = {c.adds[0].node for chains_ in found.values() for c in chains_}
    return all(add.node in taken for chain in chains for add in chain.adds)


def _caller_calls(chains: list[ResidualChain], holders, cap) -> dict[str, list[ResidualChain]]:
    """Residual adds written in the root's (or a container's) forward whose branch is one
    submodule's output computed from the skip (``x = attn(x) + x``): that submodule -> the chain.
    It becomes a unit that routes its input only (the add is the caller's); other adds there (long
    skips) are no units.  A cast the caller writes on the output (``out = self.adapter(x).to(device=x.device);
    x = out + x``) is looked through: the branch is still that submodule's output."""
    found: dict[str, list[ResidualChain]] = {}
    for chain in chains:
        for add in chain.adds:
            if add.projection or add.node.target not in _PLAIN_ADDS:
                continue
            inner = f"{chain.module}." if chain.module else ""
            branch = _caller_uncast(add.branch, inner)
            stack = _inner_stack(branch, inner)
            callee = stack[0] if stack else ""
            if (not callee or callee in holders or callee in found or cap.returns_tensor.get(callee) is not True
                    or any(_inside(u, callee) for u in branch.users)
                    or not any(_inside(u, callee) for u in add.stream.users)):
                continue
            found[callee] = [ResidualChain(module=callee, module_key="", adds=[add])]
    return found


def _inner_stack(node: fx.Node, inner: str) -> list[str]:
    """The paths of the modules below the caller (prefix ``inner``) that ``node`` was computed in."""
    return [p for p, _ in (node.meta.get("nn_module_stack") or {}).values() if p and p.startswith(inner)]


def _caller_uncast(node: fx.Node, inner: str) -> fx.Node:
    """Look through the casts the caller writes on a callee's output (``self.attn(x).to(x.device)``),
    never through those the callee ends with (``return out.to(dtype)``): the callee's value is the
    branch, whatever its last op."""
    while not _inner_stack(node, inner) and uncast(node) is not node:
        node = node.args[0]
    return node


def _placeholder(graph: fx.Graph, name: str) -> fx.Node | None:
    return next((n for n in graph.nodes if n.op == "placeholder" and n.name == name), None)


def _drop_conditioning(holders, streams, sample_name: str, samples: list[fx.Node], flow, params, include,
                       skipped) -> None:
    """Networks that only process the timestep or the conditioning (mapping networks, embedding
    MLPs with residual layers) are no units: none of their streams is computed from the sample
    (argument ``sample_name``, placeholders ``samples``: one, or one per item of a list of per-sample
    tensors).  A first block on learned queries
    (``q = self.queries.expand(B, -1, -1)``) starts from parameters only and adds what it reads
    from the sample, ``q + attn(norm(q), context)``: it is a unit.  A text refiner whose stream starts
    from the text input, ``c = c + attn(norm(c), cat([norm(c), x]))``, reads the sample too, yet its
    stream is the conditioning's: no unit.
    An include pattern that names one routes it all the same."""
    if not samples:
        return
    inputs = [n for n in samples[0].graph.nodes if n.op == "placeholder" and n.name not in params]
    for path in list(holders):
        starts = [s.node for s in streams[path]] if path in streams else [c.start for c in holders[path]]
        if any(_computed_from(n, samples, flow) for n in starts):
            continue
        if (not any(_computed_from(n, inputs, flow) for n in starts)
                and any(_computed_from(c.end, samples, flow) for c in holders[path])):
            continue
        if any(fnmatch.fnmatchcase(path, p) for p in include):
            continue
        skipped.append((path, f"it processes only the timestep or the conditioning (no stream of it is computed "
                              f"from the sample {sample_name!r}); name it in targets.include to route it"))
        del holders[path]
        streams.pop(path, None)


def _computed_from(node: fx.Node, sources: list[fx.Node], flow) -> bool:
    """Is ``node`` one of ``sources`` or computed from one of them?"""
    return any(node is s or (s in flow and node in flow and nx.has_path(flow, s, node)) for s in sources)


def _sample_input(model: nn.Module, args: tuple, kwargs: dict, spec: Spec) -> tuple[str, int]:
    """(name, batch size) of the root's sample: the argument ``sample.arg`` names, else the first named
    argument other than the timestep's that is a tensor with a batch axis, else the first that is a list
    of tensors, one per sample (:func:`_samples_in`; a list of conditions before the sample does not win
    over it).  A packed-sequence model takes a list, one tensor per sample::

        forward(x=[x0, x1, x2], t=t, cap_feats=[c0, c1, c2])   # x_i: [C, F, H, W], t: [3]
        -> ("x", 3)      (not t, the first tensor: the blocks on the image tokens are no conditioning)
    """
    signature = inspect.signature(model.forward)
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = {}
    t = bound.get(spec.timestep.arg)
    steps = int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() == 1 else None
    if spec.sample is None:
        named = {name: v for name, v in bound.items() if name != spec.timestep.arg
                 and signature.parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
        tensors = ((n, v) for n, v in named.items() if isinstance(v, torch.Tensor))  # a plain sample first,
        lists = ((n, v) for n, v in named.items() if isinstance(v, (list, tuple)))  # then a packed one
        return next(((name, found) for name, v in itertools.chain(tensors, lists)
                     if (found := _samples_in(v, steps)) is not None), ("", 0))
    found = _samples_in(bound.get(spec.sample), steps)
    if found is None:
        raise SpecError("/sample/arg", f"{spec.sample!r} of {type(model).__name__}.forward gets "
                        f"{_described(bound.get(spec.sample))} in the example inputs, not samples (a tensor [B, ...] "
                        f"or a list of {steps or 'B'} tensors, one per sample); set sample.arg to the argument that "
                        "carries the sample")
    return spec.sample, found


def _described(value) -> str:
    """What an example input is, in a few words: ``a list of 3 items``, ``a tensor of shape [2]``."""
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return "nothing (its default)" if value is None else f"a {type(value).__name__}"


def _samples_in(value, steps: int | None) -> int | None:
    """The batch size where ``value`` holds samples: a tensor with a batch axis, or a list or tuple of
    tensors (nested lists too), one per sample: as many as the timestep tensor holds."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() > 0 else None
    if not isinstance(value, (list, tuple)) or not value or (steps is not None and len(value) != steps):
        return None
    leaves = pytree.tree_leaves(value)
    return len(value) if leaves and all(isinstance(v, torch.Tensor) for v in leaves) else None


def _stream_node(path: str, chains: list[ResidualChain], params: set[str]) -> fx.Node:
    """The stream a unit routes: its input (through reshapes), or where the chain starts inside it."""
    start = _origin(chains[0].start, path, params)
    return start if not _inside(start, path) else chains[0].start


def _with_fold(unit: RoutedUnit, node: fx.Node, layouts: dict, batch: int) -> RoutedUnit:
    """``unit`` with the layout of its stream's batch axis (frames folded into it), or
    :class:`_NotRoutable` where the analysis cannot tell which rows belong to which sample."""
    if not batch:
        return unit
    known, fold = fold_of(node, layouts, batch)
    rows = int(node.meta["val"].shape[0])
    if not known:
        raise _NotRoutable(f"its stream has {rows} rows for the {batch} samples of the example inputs, and the "
                           "analysis cannot tell which rows belong to which sample (frames or positions are folded "
                           "into the batch by ops it does not follow)")
    if fold is None:
        return unit
    if not unit.stream_arg:
        raise _NotRoutable(f"its stream holds {rows // batch} rows per sample (folded into the batch) and starts "
                           "inside the unit; the task index is expanded on entry, from a stream it is called with")
    return replace(unit, fold=fold)


def _one_fold_per_class(units: list[RoutedUnit], skipped: list) -> list[RoutedUnit]:
    """Both emitters expand the task index once per class forward, so the instances of a class
    whose streams hold folded batches must fold them the same way; the others are skipped."""
    folds: dict[str, str] = {}
    for u in units:
        if u.fold is not None:
            folds.setdefault(u.cls, u.fold)
    kept = []
    for u in units:
        if u.fold is not None and folds[u.cls] != u.fold:
            skipped.append((u.path, f"its batch holds frames as {str(u.fold)!r} while other {u.cls.rsplit('.', 1)[-1]} "
                                    f"units hold them as {str(folds[u.cls])!r}, and one class has one forward"))
        else:
            kept.append(u)
    return kept


def _caller_add_unit(path, module, chain: ResidualChain, spec, cap, named, model, owner: type) -> tuple[RoutedUnit, fx.Node]:
    """A module whose caller (of class ``owner``: the root, or a container) adds its input back
    (``x = attn(x) + x``): block semantics route its input and leave the add to the caller,
    attn(x * m) + x."""
    node = chain.start
    axis = channel_axis(node)
    channels = int(node.meta["val"].shape[axis])
    mask = spec.mask_params_for(path)
    params = _params_of(module)
    note = "" if spec.mode == "block" else (f"{spec.mode} mode falls back to block semantics: the residual add "
                                            "is in the caller")
    frames = parse_stack_trace(chain.adds[0].node.meta.get("stack_trace"))
    residual_lines = (_source_line(frames[-1], owner),) if frames else ()
    unit = RoutedUnit(
        path=path, cls=_qualname(type(module)), mode="block", mode_note=note, channel_axis=axis,
        rank=node.meta["val"].dim(), channels=channels, active=active_channels(channels, mask.channel_ratio),
        mask=mask, stream_arg=params[0] if params else "", stream_var=params[0] if params else "", stream_line=None,
        masked_at=f"unit input ({params[0] if params else '?'}); the caller adds the skip",
        call_path=_call_path(path, cap, named, model), residual_lines=residual_lines, merge=False,
    )
    return unit, node


def _multi_stream_unit(path, module, chains, streams: list[FoundStream], spec, sample_name, cap, named,
                       model) -> tuple[RoutedUnit, fx.Node]:
    """A unit returning several streams (MMDiT joint blocks), routed in block mode: each chosen
    stream is routed on entry and merged with its bypass where it is returned.  The routed
    stream is the one named like the root's sample, as the forward's parameter or, for one that comes
    in through ``*args``, where the caller unpacks the returned tuple (else the first);
    ``routing.streams`` "all" adds the others, each with its own table.  Returns the unit and its
    routed stream's node."""
    call = _statement(cap.callers[path][-1]) if cap.callers.get(path) else ""
    primary = next((s for s in streams if s.arg == sample_name
                    or (s.position >= 0 and assigned_item(call, s.out_index) == sample_name)), streams[0])
    others = [s for s in streams if s is not primary] if spec.streams == "all" else []
    mask = spec.mask_params_for(path)
    note = "" if spec.mode == "block" else (f"{spec.mode} mode falls back to block semantics: the unit returns "
                                            "several streams")

    def record(s: FoundStream) -> Stream:
        axis = channel_axis(s.node)
        channels = int(s.node.meta["val"].shape[axis])
        return Stream(arg=s.arg, buffer=f"dtr_mask_{identifier(s.arg)}", out_index=s.out_index, channel_axis=axis,
                      rank=s.node.meta["val"].dim(), channels=channels,
                      active=active_channels(channels, mask.channel_ratio))

    main = record(primary)
    residual_lines = tuple(dict.fromkeys(
        _source_line(parse_stack_trace(a.node.meta.get("stack_trace"))[-1], type(module)) for c in chains for a in c.adds))
    unit = RoutedUnit(
        path=path, cls=_qualname(type(module)), mode="block", mode_note=note, channel_axis=main.channel_axis,
        rank=main.rank, channels=main.channels, active=main.active, mask=mask, stream_arg=primary.arg,
        stream_var=primary.arg, stream_line=None,
        masked_at="unit inputs (" + ", ".join(s.arg for s in [primary, *others]) + ")",
        call_path=_call_path(path, cap, named, model), residual_lines=residual_lines,
        out_index=primary.out_index, streams=tuple(record(s) for s in others),
    )
    return unit, primary.node


def _made_stream_unit(path, module, chains, out_index: int, spec, cap, flow, params, named,
                      model) -> tuple[RoutedUnit, fx.Node]:
    """A tuple-returning unit that makes its one stream inside itself (a first control block:
    ``control = self.proj_in(control) + x``, then ``return hint, control``).  Block mode routes the
    stream after the line that makes it and merges it at its place ``out_index`` in the returned
    tuple, the other items passing through; branch and pre_output modes mask inside the unit and
    leave the return as it is.  :class:`_NotRoutable` when block mode finds no line to route after."""
    unit = _unit(path, module, chains, spec, cap, flow, params, named, model)
    if unit.mode != "block":
        return unit, _stream_node(path, chains, params)
    if unit.stream_line is None:
        raise _NotRoutable(f"it returns a tuple and makes its stream inside itself, and block mode finds no line "
                           f"that makes it ({unit.mode_note.split(': ', 1)[-1] or 'the stream is its input'})")
    return replace(unit, out_index=out_index), _stream_node(path, chains, params)


def _call_path(path: str, cap, named, model) -> tuple[SourceLine, ...]:
    """The source lines from the root's forward down to the call of module ``path``."""
    prefix = cap.callers.get(path, [])
    if not prefix:
        raise CaptureError(f"module {path!r}: no source frame calls it; cannot thread the task index to it")
    ancestors = [named[p] for p in named if p == "" or path.startswith(p + ".") or p == path]
    owners = [next((type(m) for m in ancestors if resolve_function(f, type(m))[1] is not None), type(model))
              for f in prefix]
    return tuple(_source_line(f, o) for f, o in zip(prefix, owners))


def _threads(units, cap, named, model) -> tuple[tuple[str, tuple[SourceLine, ...]], ...]:
    """Call paths of the non-unit modules that must receive dtr_task too: other instances of the
    units' classes (left out by the targets: identity tables) and every instance of a class whose
    forward threads the task to a unit, wherever they are called.  Without them a rewritten forward
    would be called without its dtr_task argument (U-Net containers, U-ViT blocks outside the targets)."""
    unit_paths = {u.path for u in units}
    takes_task = {(os.path.abspath(sl.file), sl.function) for u in units for sl in u.call_path[1:]}
    unit_classes = {type(named[u.path]) for u in units}
    threads: dict[str, tuple[SourceLine, ...]] = {}
    grew = True
    while grew:
        grew = False
        for path, frames in cap.callers.items():
            if not path or path in unit_paths or path in threads or not frames:
                continue
            cls = type(named[path])
            defined = inspect.unwrap(cls.forward)  # behind decorators (functools.wraps)
            forward = getattr(defined, "__code__", None)
            key = (os.path.abspath(forward.co_filename), defined.__qualname__) if forward else None
            if cls in unit_classes or key in takes_task:
                threads[path] = _call_path(path, cap, named, model)
                takes_task |= {(os.path.abspath(sl.file), sl.function) for sl in threads[path][1:]}
                grew = True
    order = list(named)
    return tuple(sorted(threads.items(), key=lambda kv: order.index(kv[0])))


def _one_mode_per_class(units: list[RoutedUnit], skipped: list) -> list[RoutedUnit]:
    """Both emitters rewrite a class's forward once, so its units must share one mode.  Where forcing
    branch semantics on a class fell back to block for some instances (their residual adds run in a
    helper the forward calls, e.g. ``checkpoint(self._forward, ...)``), the instances that need branch
    semantics cannot be routed: they are skipped with the reason."""
    modes: dict[str, set[str]] = {}
    for u in units:
        modes.setdefault(u.cls, set()).add(u.mode)
    mixed = {cls for cls, m in modes.items() if {"block", "branch"} <= m}
    kept = []
    for u in units:
        if u.cls in mixed and u.mode == "branch":
            why = u.mode_note.split(": ", 1)[-1] if u.mode_note else "the spec's mode"
            skipped.append((u.path, f"needs branch semantics ({why}) while other "
                                    f"{u.cls.rsplit('.', 1)[-1]} units can only use block semantics, and one class has one forward"))
        else:
            kept.append(u)
    return kept


def _lines_run(path: str, module: nn.Module, graph: fx.Graph) -> set[tuple[str, int]]:
    """The lines of ``module``'s own forward that computed something in the captured graph."""
    lines = set()
    for node in graph.nodes:
        if node.op == "call_function" and _inside(node, path) and (frame := _frame_in(node, module)) is not None:
            lines.add((os.path.abspath(frame.file), frame.line))
    return lines


def _one_edit_set_per_class(units: list[RoutedUnit], skipped: list, cap, named) -> list[RoutedUnit]:
    """Branch mode masks lines of a class's forward, and every instance runs the one rewritten
    forward: the masks of all its units land on the lines found in any of them.  A unit that runs
    one of those lines without its own analysis marking it (its residual chain was found
    differently) would mask a stream the plan did not measure: it is skipped with the reason."""
    by_class: dict[str, list[RoutedUnit]] = {}
    for u in units:
        if u.mode == "branch":
            by_class.setdefault(u.cls, []).append(u)
    drop = set()
    for members in by_class.values():
        own = {u.path: {(os.path.abspath(sl.file), sl.line) for sl in u.branch_lines} for u in members}
        union = set().union(*own.values())
        if all(lines == union for lines in own.values()):
            continue
        for u in members:
            extra = (_lines_run(u.path, named[u.path], cap.graph) & union) - own[u.path]
            if extra:
                file, line = min(extra)
                why = (f"runs {file}:{line}, where other {u.cls.rsplit('.', 1)[-1]} units mask their residual branch, "
                       "but no residual branch of its own starts there; one class has one forward")
                skipped.append((u.path, why))
                drop.add(u.path)
    return [u for u in units if u.path not in drop]


class _NotRoutable(Exception):
    """A unit the spec's mode cannot route (nothing to mask, or no single mask width): it is
    reported in ``plan.skipped`` with the reason instead."""


@dataclass(frozen=True)
class _Chains:
    """What the placement decisions need to know about a unit's residual chains."""

    first: ResidualChain
    from_input: bool  # the stream is the unit's input (through reshapes), not made inside it
    stream: fx.Node  # the routed stream
    projection: bool  # some skip is a projection
    count: int  # number of chains
    same_shape_out: bool  # the value leaving the unit is shaped like the stream
    residual_lines: tuple[SourceLine, ...]
    stream_arg: str

    @property
    def block_possible(self) -> bool:
        return self.from_input and not self.projection and self.count == 1 and self.same_shape_out


def _chains_facts(path, module, chains, params) -> _Chains:
    first = chains[0]
    start = _origin(first.start, path, params)
    from_input = not _inside(start, path)
    stream = start if from_input else first.start
    residual_lines = tuple(dict.fromkeys(
        _source_line(parse_stack_trace(a.node.meta.get("stack_trace"))[-1], type(module)) for c in chains for a in c.adds))
    return _Chains(first=first, from_input=from_input, stream=stream,
                   projection=any(a.projection for c in chains for a in c.adds), count=len(chains),
                   same_shape_out=_leaving(first.end, path).meta["val"].shape == stream.meta["val"].shape,
                   residual_lines=residual_lines,
                   stream_arg=_stream_arg(module, residual_lines[0].code) if from_input else "")


def _block_placement(facts: _Chains, path, module, cap, force_branch) -> tuple[str, SourceLine | None, str]:
    """Block mode: (why it must fall back to branch semantics or "", the line inside the unit that
    makes the stream when it is not the unit's input, the stream variable)."""
    why = ("its skip is a projection (the stream changes shape inside the unit)" if facts.projection
           else f"it holds {facts.count} residual chains" if facts.count > 1
           else "its output is not shaped like its input" if facts.from_input and not facts.same_shape_out
           else "")
    stream_line, stream_var = None, facts.stream_arg
    if not facts.from_input and not why:
        frames = _frames_at(facts.first.start, path, cap)
        forward_at = next((i for i in range(len(frames) - 1, -1, -1) if is_frame_of(frames[i], type(module).forward)), None)
        helper = _helper_frame(frames, forward_at, module) if forward_at is not None else None
        frame = frames[helper] if helper is not None else _frame_in(facts.first.start, module)
        name = _assigned_name(frame.code) if frame else None
        if name is None:
            why = "its stream starts inside the unit on a line that assigns no single variable"
        else:
            stream_line, stream_var = _source_line(frame, type(module)), name
    if force_branch and not why:
        why = f"other {type(module).__name__} units need branch semantics and one class has one forward"
    return why, stream_line, stream_var


def _branch_placement(facts: _Chains, path, module, chains, flow, params, stream_var, note):
    """Branch mode: (stream variable, the line that makes it when it starts inside the unit, the
    lines where a branch first reads it); :class:`_NotRoutable` when one mask cannot serve."""
    stream_line = None
    if not facts.from_input:
        frame = _frame_in(facts.first.start, module)
        stream_var = (_assigned_name(frame.code) if frame else None) or ""
        stream_line = _source_line(frame, type(module)) if frame else None
    widths = sorted({int(a.stream.meta["val"].shape[channel_axis(a.stream)]) for c in chains for a in c.adds})
    if len(widths) > 1:
        raise _NotRoutable(f"its residual adds run on streams of {' and '.join(map(str, widths))} channels (a projection "
                           "skip changes the width before the next residual add) and one mask has one width: "
                           "use routing.mode 'pre_output' for such units")
    branch_lines = tuple(dict.fromkeys(
        sl for c in chains for sl in _branch_lines(c, module, path, flow, params) if sl not in facts.residual_lines))
    if not stream_var:
        lines = facts.residual_lines
        at = f" ({lines[0].file}:{lines[0].line})" if lines else ""
        raise _NotRoutable(f"branch mode finds no stream variable to mask{at}: {note or 'the stream starts inside the unit'}")
    return stream_var, stream_line, branch_lines


def _unit(path, module, chains, spec, cap, flow, params, named, model, force_branch=False) -> RoutedUnit:
    """The placement of one single-stream unit: the spec's mode, or the mode it falls back to
    (``mode_note`` says why), with what that mode needs."""
    facts = _chains_facts(path, module, chains, params)
    val = facts.stream.meta["val"]
    axis = channel_axis(facts.stream)
    residual_lines = facts.residual_lines
    stream_var, stream_line, note = facts.stream_arg, None, ""

    mode = spec.mode
    if mode == "block":
        why, stream_line, stream_var = _block_placement(facts, path, module, cap, force_branch)
        if why:
            mode, note = "branch", f"block mode falls back to branch semantics: {why}"
            stream_var = facts.stream_arg or stream_var
    if mode == "branch" and facts.block_possible and not all(_adds_in(sl.code) for sl in residual_lines):
        mode, note = "block", ("branch mode needs the residual adds in the unit's own forward; they run in code it "
                               f"calls ({residual_lines[0].code!r}): using block semantics")
    sites: tuple[MaskSite, ...] = ()
    if mode == "pre_output":
        try:
            sites = tuple(_projection_site(a, module, path, flow, params, cap.params, cap.callers, named)
                          for c in chains for a in c.adds)
        except EmitError as e:
            if not facts.block_possible:
                raise
            mode, note = "block", f"pre_output is not possible here ({e}); using block semantics"
    branch_lines: tuple[SourceLine, ...] = ()
    if mode == "branch":
        stream_var, stream_line, branch_lines = _branch_placement(facts, path, module, chains, flow, params,
                                                                  stream_var, note)
        masked_at = f"branch inputs ({stream_var})"
    elif mode == "pre_output":
        if len({s.channels for s in sites}) != 1:
            raise EmitError(f"pre_output: the projections of {path!r} read different widths "
                            f"({', '.join(f'{s.module}: {s.channels}' for s in sites)}); use 'block' or 'branch'")
        axis = sites[0].channel_axis
        masked_at = "input of " + ", ".join(s.module[len(path) + 1:] for s in sites)
    else:
        masked_at = f"unit input ({stream_var})" if stream_line is None else f"{stream_var} after line {stream_line.line}"
    channels = sites[0].channels if sites else int(val.shape[axis])
    mask = spec.mask_params_for(path)
    check_table_size(mask, channels, path)
    return RoutedUnit(
        path=path, cls=_qualname(type(module)), mode=mode, mode_note=note, channel_axis=axis, rank=val.dim(),
        channels=channels, active=active_channels(channels, mask.channel_ratio), mask=mask,
        stream_arg=facts.stream_arg, stream_var=stream_var, stream_line=stream_line, masked_at=masked_at,
        call_path=_call_path(path, cap, named, model),
        residual_lines=residual_lines, branch_lines=branch_lines, sites=sites,
    )
