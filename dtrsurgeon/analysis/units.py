"""Unit pass: from residual chains to routed units, i.e. to a :class:`Plan`.

A unit is a module whose own forward holds a residual chain (DiT: each
``DiTBlock``; the root itself is never a unit).  For each unit the pass finds
the stream's channel axis and width, decides whether block semantics are
possible (the chain starts at one of the unit's inputs) or falls back to
branch semantics, and records the source frames that call it.
"""

from __future__ import annotations

import ast
import inspect

from torch import nn

from dtrsurgeon.analysis.callsites import Frame, parse_stack_trace, resolve_function
from dtrsurgeon.analysis.capture import capture, example_inputs as guess_inputs
from dtrsurgeon.analysis.residuals import find_residual_adds, group_chains
from dtrsurgeon.analysis.targets import check_overrides, select_units
from dtrsurgeon.errors import CaptureError, SpecError
from dtrsurgeon.masks import active_channels
from dtrsurgeon.plan import Plan, RoutedUnit, SourceLine
from dtrsurgeon.spec import Spec, load_spec


def channel_axis(rank: int) -> int:
    """Tokens [B, L, C] -> last axis; feature maps [B, C, H, W] (and [B, C]) -> 1."""
    return rank - 1 if rank == 3 else 1


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _source_line(frame: Frame, owner: type) -> SourceLine:
    cls, func = resolve_function(frame, owner)
    name = func.__qualname__ if func is not None else frame.function
    return SourceLine(file=frame.file, line=frame.line, function=name, code=frame.code)


def _owner_of_frames(model: nn.Module, frames: list[Frame], modules: list[nn.Module]) -> list[type]:
    """For each frame, the class whose MRO defines its function (for naming)."""
    owners = []
    for frame in frames:
        owner = next((type(m) for m in modules if resolve_function(frame, type(m))[1] is not None), type(model))
        owners.append(owner)
    return owners


def _stream_arg(unit: nn.Module, residual_code: str) -> str:
    """The forward parameter that carries the stream into the first residual add."""
    params = [n for n, p in inspect.signature(unit.forward).parameters.items()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    try:
        tree = ast.parse(residual_code.strip().removeprefix("return ").rstrip(":"))
        names = [n.id for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
                 for n in (node.left, node.right) if isinstance(n, ast.Name)]
    except SyntaxError:
        names = []
    for name in names:
        if name in params:
            return name
    return params[0] if params else ""


def _check_timestep_arg(model: nn.Module, spec: Spec) -> None:
    params = inspect.signature(model.forward).parameters
    if spec.timestep.arg not in params:
        raise SpecError(
            "/timestep/arg",
            f"{spec.timestep.arg!r} is not an argument of {type(model).__name__}.forward"
            f"({', '.join(params)}); set timestep.arg to the argument that carries timesteps",
        )


def build_plan(model: nn.Module, spec, example_inputs=None) -> Plan:
    """Analyse ``model`` and return the plan for ``spec``; changes nothing."""
    spec = load_spec(spec)
    _check_timestep_arg(model, spec)
    if example_inputs is None:
        args, kwargs = guess_inputs(model, spec.timestep.arg, (spec.timestep.t0, spec.timestep.t1))
    elif isinstance(example_inputs, dict):
        args, kwargs = (), example_inputs
    elif isinstance(example_inputs, tuple) and len(example_inputs) == 2 and isinstance(example_inputs[1], dict):
        args, kwargs = example_inputs
    else:
        args, kwargs = tuple(example_inputs), {}
    cap = capture(model, args, kwargs)
    chains = [c for c in group_chains(find_residual_adds(cap.graph)) if "@" not in c.module_key]
    callers = cap.callers

    holders: dict[str, list] = {}
    for chain in chains:
        holders.setdefault(chain.module, []).append(chain)
    skipped = []
    if "" in holders:
        skipped.append(("", "the root's own forward holds residual adds; only submodules are routed"))
        del holders[""]
    candidates = sorted(holders, key=lambda p: list(dict(model.named_modules())).index(p))
    chosen = select_units(candidates, spec.include, spec.exclude)
    check_overrides(chosen, [o.match for o in spec.overrides])
    named = dict(model.named_modules())

    units = []
    for path in chosen:
        module = named[path]
        unit_chains = holders[path]
        inside_unit = [c for c in unit_chains if c.start.meta.get("nn_module_stack")
                       and path in [p for p, _ in c.start.meta["nn_module_stack"].values()]]
        from_input = [c for c in unit_chains if c not in inside_unit]
        stream = (from_input or unit_chains)[0]
        val = stream.start.meta["val"]
        rank = val.dim()
        axis = channel_axis(rank)
        channels = int(val.shape[axis])
        params = spec.mask_params_for(path)

        mode, note = spec.mode, ""
        if spec.mode == "block" and (len(from_input) != 1 or len(unit_chains) != 1):
            mode = "branch"
            note = ("block mode needs one residual chain that starts at the unit's input; "
                    + ("its skip is a projection computed inside the unit" if not from_input else
                       f"found {len(unit_chains)} chains") + ": using branch semantics")

        ancestors = [named[p] for p in named if p == "" or path.startswith(p + ".") or p == path]
        prefix = callers.get(path, [])
        if not prefix:
            raise CaptureError(f"module {path!r}: no source frame calls it; cannot thread the task index to it")
        owners = _owner_of_frames(model, prefix, ancestors)
        call_path = tuple(_source_line(f, o) for f, o in zip(prefix, owners))
        residual_lines = []
        for chain in unit_chains:
            for add in chain.adds:
                frames = parse_stack_trace(add.node.meta.get("stack_trace"))
                residual_lines.append(_source_line(frames[-1], type(module)))
        units.append(RoutedUnit(
            path=path,
            cls=_qualname(type(module)),
            mode=mode,
            mode_note=note,
            channel_axis=axis,
            rank=rank,
            channels=channels,
            active=active_channels(channels, params.channel_ratio),
            mask=params,
            stream_arg=_stream_arg(module, residual_lines[0].code),
            call_path=call_path,
            residual_lines=tuple(dict.fromkeys(residual_lines)),
        ))
    unit_paths = {u.path for u in units}
    call_lines = {(u.call_path[-1].file, u.call_path[-1].line) for u in units}
    passthrough = tuple(
        p for p, frames in callers.items()
        if p and p not in unit_paths and frames and (frames[-1].file, frames[-1].line) in call_lines
    )
    unmatched = []
    for path in candidates:
        if path not in unit_paths:
            start = holders[path][0].start.meta["val"]
            unmatched.append((path, int(start.shape[channel_axis(start.dim())])))
    return Plan(model=_qualname(type(model)), timestep=spec.timestep, spec_sha256=spec.sha256,
                units=tuple(units), skipped=tuple(skipped), passthrough=passthrough, unmatched=tuple(unmatched))
