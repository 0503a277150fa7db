"""Which function of which file gets which edit, decided from the plan.

:func:`collect_edits` walks the plan's call paths and units and records, per function, what it
needs as a :class:`FunctionEdit`: the root computes the task index, functions on a call path take
it and pass it on at their call lines, a unit's forward routes its stream (block mode), masks its
branches (branch mode) or the inputs of its projections (pre_output).  :func:`route_unseen_calls`
and :func:`passthrough_edits` add what the source decides beyond the example call.  The records
are lowered into the plain-data :class:`~dtrsurgeon.emit.editplan.EditPlan` by
:mod:`dtrsurgeon.emit.lower`; on DiT::

    def forward(self, x, t, y):                def forward(self, x, t, y):
        x = self.x_embedder(x) + ...      ->       dtr_task = dtr_task_index(t, 0.0, 999.0, 1000, False)
        for block in self.blocks:                  x = self.x_embedder(x) + ...
            x = block(x, c)                        for block in self.blocks:
                                                       x = block(x, c, dtr_task=dtr_task)
"""

from __future__ import annotations

import builtins
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import libcst as cst
from libcst.metadata import PositionProvider
from torch import nn

from dtrsurgeon.analysis.sources import absolute
from dtrsurgeon.analysis.streams import identifier
from dtrsurgeon.emit.locate import _calls_in, _code, _elements, _loop_variables
from dtrsurgeon.emit.resolve import defined_in, parse_file, unwrapped
from dtrsurgeon.emit.transformers import function_nodes
from dtrsurgeon.errors import EmitError
from dtrsurgeon.plan import Mode, Plan

TASK = "dtr_task"
KEEP = "dtr_keep"


@dataclass
class FunctionEdit:
    """What to change in one function, before the calls are found in its source (see
    :class:`~dtrsurgeon.emit.locate.CallLocator`)."""

    task_stmt: str | None = None  # root: statement computing the task index
    task_param: str = ""  # "required": gains a dtr_task parameter; "optional": dtr_task=None; "": none
    call_lines: set[int] = field(default_factory=set)  # lines whose unit call gets dtr_task=dtr_task
    call_spans: dict[int, set[tuple[int, int, int, int]]] = field(default_factory=dict)  # line -> recorded call spans
    branch_lines: set[int] = field(default_factory=set)  # residual adds whose branch input gets masked
    stream_var: str = ""  # the residual stream's variable name
    stream_axis: int = 1  # its channel axis
    fold_stmt: str | None = None  # a folded batch: expand the task index on entry
    block_stmts: tuple[str, ...] = ()  # block mode (source): mask the stream on entry ...
    return_wrap: str = ""  # ... and pass every returned value (__out__) through this call
    merge_var: str = ""  # ... or, in a returned tuple, the item that is this variable (the stream)
    merge_after: int = 0  # ... which holds the stream after this line (0: from entry)
    append_stmt: str | None = None  # statement appended to the body (root __init__)
    insert_after: dict[int, tuple[str, ...]] = field(default_factory=dict)  # line -> statements after its statement
    load_lines: set[int] = field(default_factory=set)  # lines whose reads of stream_var get masked
    site_calls: dict[int, tuple[str, int, str]] = field(default_factory=dict)  # line -> (via, axis, name hint)
    call_guards: dict[int, tuple[str, ...]] = field(default_factory=dict)  # line -> classes that take dtr_task
    bind_methods: set[str] = field(default_factory=set)  # self.<name> handed on (or called) with dtr_task
    pass_if_given: bool = False  # a module-level helper: passes dtr_task on only when its caller gave one
    owners: tuple = ()  # the model's modules this method runs on (for calls the example inputs did not reach)
    takes_task: frozenset = frozenset()  # ids of the model's modules whose forward takes dtr_task
    globals: dict = field(default_factory=dict)  # the method's module globals (class names for guards)
    seen_lines: frozenset = frozenset()  # lines of its file on which the example call called a module


def wrapped_units(plan: Plan) -> tuple[str, ...]:
    """Block-mode units the live module routes with a generic wrapper forward around its class's own
    (``y = unit(x * m) + x * (1 - m)``): those whose stream is their input, unless another unit of
    their class starts its stream inside the forward (U-ViT's out-blocks, after the long-skip merge),
    which rewrites that forward to route every instance there."""
    inside = _routed_inside(plan)
    return tuple(u.path for u in plan.units if u.mode == Mode.BLOCK and u.stream_line is None and u.cls not in inside)


def _routed_inside(plan: Plan) -> set[str]:
    """Classes whose forward (or the helper it hands on) routes every instance after a line inside it."""
    return {u.cls for u in plan.units if u.mode == Mode.BLOCK and u.stream_line is not None}


def collect_edits(plan: Plan, forward_of: Callable[[str], tuple[str, str]],
                  wrapped: tuple[str, ...] = ()) -> dict[str, dict[str, FunctionEdit]]:
    """absolute file -> function qualname -> edit, for every function the plan touches.

    ``forward_of(unit path)``: (file, qualname) of the forward the unit runs.  ``wrapped``: block-mode
    units a generic wrapper routes (the live module), whose class's code needs no edit; the source
    forms route every unit inline.
    """
    edits = _Edits()
    _thread_task(plan, edits)
    inside = _routed_inside(plan)
    class_streams = streams_by_class(plan)
    for unit in plan.units:
        if unit.path in wrapped or (unit.mode == Mode.BLOCK and unit.stream_line is None and unit.cls in inside):
            continue
        if unit.mode == Mode.PRE_OUTPUT:
            _collect_sites(unit, edits, forward_of)
            if unit.fold is not None:
                edits.of(*forward_of(unit.path)).fold_stmt = _fold_stmt(unit)
            continue
        edit = edits.of(*_owner(unit, edits, forward_of))
        edit.task_param = "required"
        if unit.mode == Mode.BLOCK:
            stmts, edit.return_wrap = _block_edit(unit, class_streams.get(unit.cls, ()))
            edit.merge_var = unit.stream_var if edit.return_wrap.startswith("dtr_merge(") else ""
            edit.merge_after = unit.stream_line.line if unit.stream_line is not None else 0
            if unit.stream_line is None:
                edit.block_stmts = stmts
            else:
                edit.insert_after[unit.stream_line.line] = stmts
        elif unit.mode == Mode.BRANCH:
            if unit.fold is not None:
                edit.fold_stmt = _fold_stmt(unit)
            edit.branch_lines |= {sl.line for sl in unit.residual_lines}
            edit.load_lines |= {sl.line for sl in unit.branch_lines}
            edit.stream_var, edit.stream_axis = unit.stream_var, unit.channel_axis
    return edits.by_file


class _Edits:
    """file -> qualname -> FunctionEdit, files made absolute."""

    def __init__(self):
        self.by_file: dict[str, dict[str, FunctionEdit]] = defaultdict(dict)

    def of(self, file: str, qual: str) -> FunctionEdit:
        return self.by_file[absolute(file)].setdefault(qual, FunctionEdit())


def _thread_task(plan: Plan, edits: _Edits) -> None:
    """The root's forward computes the task index; every function on a call path to a unit (or to a
    module that passes the task on) takes it and passes it on at the line of the path."""
    ts = plan.timestep
    for call_path in [u.call_path for u in plan.units] + [lines for _, lines in plan.threads]:
        for i, sl in enumerate(call_path):
            edit = edits.of(sl.file, sl.function)
            edit.call_lines.add(sl.line)
            if sl.span is not None:
                edit.call_spans.setdefault(sl.line, set()).add(sl.span)
            if i == 0:
                edit.task_stmt = f"{TASK} = dtr_task_index({ts.arg}, {ts.t0!r}, {ts.t1!r}, {ts.num_tasks}, {ts.reverse})"
            elif "." not in sl.function:  # a module-level helper (checkpoint(fn, *args)): others call it too
                edit.task_param = edit.task_param or "optional"
                edit.pass_if_given = True
            else:
                edit.task_param = "required"


def _owner(unit, edits: _Edits, forward_of) -> tuple[str, str]:
    """(file, qualname) of the function that holds a block- or branch-mode unit's routing."""
    if unit.mode == Mode.BLOCK and unit.stream_line is None:
        # block mode on the unit's input: the mask goes on entry of the unit's own forward and the
        # merge on its return, wherever the adds run (guided-diffusion: inside checkpoint(self._forward))
        return forward_of(unit.path)
    if unit.mode == Mode.BLOCK:
        # the stream starts inside: route after that line and merge on the return of the function
        # that holds it (the forward, or a helper it hands on: U-ViT's _forward after the long-skip merge)
        _hand_task_to(unit.stream_line.function, unit.path, edits, forward_of)
        return unit.stream_line.file, unit.stream_line.function
    owner = unit.residual_lines[0]
    bad = [sl for sl in unit.residual_lines if sl.function != owner.function or not sl.function.endswith("forward")]
    if bad:
        raise EmitError(f"{bad[0].file}:{bad[0].line}: the residual add of unit {unit.path!r} is in "
                        f"{bad[0].function}, not in the unit's forward: use dtrsurgeon.transform in block mode")
    _hand_task_to(owner.function, unit.path, edits, forward_of)
    return owner.file, owner.function


def streams_by_class(plan: Plan) -> dict[str, tuple]:
    """class -> the further streams (beyond the first) its units route, in order: one class has one
    forward, which routes them all; an instance that does not route one holds no table for it."""
    found: dict[str, dict[str, object]] = {}
    for unit in plan.units:
        for stream in unit.streams:
            found.setdefault(unit.cls, {}).setdefault(stream.arg, stream)
    return {cls: tuple(streams.values()) for cls, streams in found.items()}


def _fold_stmt(unit) -> str:
    """Rows of a folded batch get their sample's task (see dtrsurgeon.runtime.dtr_fold_task)."""
    return f"{TASK} = dtr_fold_task({TASK}, {unit.stream_arg}, {str(unit.fold)!r})"


def _block_edit(unit, streams) -> tuple[tuple[str, ...], str]:
    """Block mode in source: statements that route each stream on entry, and the call every
    returned value (``__out__``) goes through::

        dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, hidden_states, 2)
        hidden_states, dtr_skip = dtr_route(hidden_states, dtr_keep)
        ...
        return dtr_merge_outputs(__out__, ((1, dtr_skip, dtr_keep),))   # a unit returning a tuple
    """
    var = unit.stream_var
    stmts = [_fold_stmt(unit)] if unit.fold is not None else []
    if not unit.merge:  # the caller adds the skip: only the input is routed
        return (*stmts, f"{var} = dtr_masked({var}, self.dtr_mask, {TASK}, {unit.channel_axis})"), ""
    stmts += [f"{KEEP} = dtr_channel_mask(self.dtr_mask, {TASK}, {var}, {unit.channel_axis})",
              *_route_stmts(var, "dtr_skip", KEEP)]
    if unit.out_index is None or (unit.stream_line is not None and not streams):
        # a stream made inside: each returned tuple has its item merged by name (see MergeReturn)
        return tuple(stmts), f"dtr_merge(__out__, dtr_skip, {KEEP})"
    merges = [f"({unit.out_index}, dtr_skip, {KEEP})"]
    for s in streams:
        keep, skip = f"{KEEP}_{identifier(s.arg)}", f"dtr_skip_{identifier(s.arg)}"
        stmts += [f"{keep} = dtr_channel_mask(self.{s.buffer}, {TASK}, {s.arg}, {s.channel_axis})",
                  *_route_stmts(s.arg, skip, keep)]
        merges.append(f"({s.out_index}, {skip}, {keep})")
    return tuple(stmts), f"dtr_merge_outputs(__out__, ({', '.join(merges)},))"


def _route_stmts(var: str, skip: str, keep: str) -> tuple[str, ...]:
    """Route the stream in ``var``; one that came in through ``*args`` (``args[1]``) goes back into a new tuple::

        args_1, dtr_skip = dtr_route(args[1], dtr_keep)
        args = (*args[:1], args_1, *args[2:])
    """
    rest, _, index = var.partition("[")
    if not index:
        return (f"{var}, {skip} = dtr_route({var}, {keep})",)
    i = int(index.rstrip("]"))
    return (f"{identifier(var)}, {skip} = dtr_route({var}, {keep})",
            f"{rest} = (*{rest}[:{i}], {identifier(var)}, *{rest}[{i + 1}:])")


def _collect_sites(unit, edits: _Edits, forward_of) -> None:
    """pre_output: mask each projection's input where it is called: in the unit's forward, or in a
    helper method the forward hands on (``checkpoint(self._forward, ...)``), which then gets dtr_task
    bound: ``checkpoint(dtr_bind_task(self._forward, dtr_task), ...)``."""
    for site in unit.sites:
        edit = edits.of(site.call.file, site.call.function)
        edit.task_param = "required"
        edit.site_calls[site.call.line] = (site.via, site.channel_axis,
                                           site.module.rsplit(".", 1)[-1] if site.via == "call" else "")
        _hand_task_to(site.call.function, unit.path, edits, forward_of)


def _hand_task_to(function: str, unit_path: str, edits: _Edits, forward_of) -> None:
    """Where a unit's edits are in a helper method rather than its forward, the forward takes
    dtr_task and hands it on with the helper: ``self._forward(x, dtr_task=dtr_task)``, or
    ``checkpoint(dtr_bind_task(self._forward, dtr_task), x)`` where it passes the method itself."""
    forward_file, forward = forward_of(unit_path)
    if function != forward:
        outer = edits.of(forward_file, forward)
        outer.task_param = "required"
        outer.bind_methods.add(function.rsplit(".", 1)[-1])


def unrouted_instances(model: nn.Module, plan: Plan) -> dict[str, str]:
    """Instances of the units' classes that are no units but are called, so run the class's routed
    forward: path -> why.  They get no mask table and compute what the original forward does."""
    named = dict(model.named_modules())
    unit_classes = {type(named[u.path]) for u in plan.units}
    why = {p: "left out by the spec's targets" for p, _ in plan.unmatched if type(named[p]) in unit_classes}
    why.update((p, f"not routed: {reason}") for p, reason in plan.skipped if p in why)
    for path, _ in plan.threads:
        if type(named[path]) in unit_classes and path not in why:
            why[path] = "no residual chain recognised in it"
    units = {u.path for u in plan.units}
    for path, module in named.items():
        if type(module) in unit_classes and path not in units and path not in why:
            why[path] = "not called by the example inputs"
    order = list(named)
    return {p: why[p] for p in sorted(why, key=order.index)}


def passthrough_edits(model: nn.Module, plan: Plan, edits: dict[str, dict[str, FunctionEdit]],
                      editable: Callable[[type], bool], class_name: Callable[[type], str]) -> None:
    """Modules called on a unit's call line: classes whose source is rewritten (``editable``) accept
    ``dtr_task=None``; the others (``nn.Conv2d``) are called without it, behind an ``isinstance``
    guard naming the classes that take it (by ``class_name``).  ``edits``: file -> qualname -> edit."""
    named = dict(model.named_modules())

    def edit_of(func, create=False):
        file, qual = defined_in(func), unwrapped(func).__qualname__
        if create:
            return edits.setdefault(file, {}).setdefault(qual, FunctionEdit())
        return edits.get(file, {}).get(qual, FunctionEdit())

    unit_classes = {type(named[u.path]) for u in plan.units}
    at_line: dict[tuple[str, int], set[type]] = {}  # classes called on each unit call line
    for unit in plan.units:
        at_line.setdefault((os.path.abspath(unit.call_path[-1].file), unit.call_path[-1].line), set()).add(type(named[unit.path]))
    foreign_lines = set()
    for path, pfile, line in plan.passthrough:
        cls = type(named[path])
        if cls in unit_classes or (editable(cls) and edit_of(cls.forward).task_param):
            continue  # a unit the targets leave out, or a container on the path: it takes dtr_task already
        if editable(cls):
            edit_of(cls.forward, create=True).task_param = "optional"
            at_line.setdefault((os.path.abspath(pfile), line), set()).add(cls)
        else:
            foreign_lines.add((os.path.abspath(pfile), line))
    for unit in plan.units:
        call = unit.call_path[-1]
        key = (os.path.abspath(call.file), call.line)
        if key in foreign_lines:  # e.g. nn.Conv2d called on the same line: call it without dtr_task
            edits[key[0]][call.function].call_guards[call.line] = tuple(sorted(class_name(c) for c in at_line[key]))


def route_unseen_calls(model: nn.Module, plan: Plan, edits: dict[str, dict[str, FunctionEdit]], functions) -> None:
    """Prepare ``edits`` for calls the example inputs did not run.

    * every edited method learns the modules it runs on and which modules take ``dtr_task``, so
      CallLocator routes calls of those modules on other paths (a masked-training branch);
    * a method that gains ``dtr_task`` but also runs on modules the capture never saw called (or saw
      called without the task) takes it as ``dtr_task=None``: such a call runs unrouted with a
      warning (see ``dtr_channel_mask``) instead of failing on a missing argument.
    """
    named = dict(model.named_modules())
    taking = {u.path for u in plan.units} | {p for p, _ in plan.threads}
    takes_task = frozenset(id(named[p]) for p in taking if p in named)
    for file, by_name in edits.items():
        for qual, edit in by_name.items():
            func = functions.get((absolute(file), qual))
            if func is None or "." not in qual:
                continue
            owners = tuple(m for m in named.values() if any(unwrapped(v) is func for c in type(m).__mro__
                                                            for v in vars(c).values()))
            edit.owners, edit.takes_task, edit.globals = owners, takes_task, func.__globals__
            edit.seen_lines = frozenset(line for f, line in plan.seen if f == absolute(file))
            if edit.task_param == "required" and not edit.task_stmt and any(id(m) not in takes_task for m in owners):
                edit.task_param = "optional"
    if any(_undecided_calls(file, qual, edit) for file, by_name in edits.items() for qual, edit in by_name.items()
           if edit.owners):
        for by_name in edits.values():
            for edit in by_name.values():
                if edit.task_param == "required" and not edit.task_stmt:
                    edit.task_param = "optional"


def _undecided_calls(file: str, qual: str, edit: FunctionEdit) -> list[str]:
    """Calls in a routed method whose callee the source does not name (a local: ``order[i](x)``,
    ``fn(x)``): they may reach a routed unit without its task."""
    wrapper = parse_file(absolute(file))
    node = function_nodes(wrapper.module).get(qual)
    if node is None:
        return []
    positions = wrapper.resolve(PositionProvider)
    loops = _loop_variables(node)
    undecided = []
    for call in _calls_in(node):
        where = positions[call]
        if any(where.start.line <= line <= where.end.line for line in edit.seen_lines):
            continue  # the example call ran it: capture decided it
        root = call.func
        while isinstance(root, cst.Subscript):
            root = root.value
        if not isinstance(root, cst.Name) or root.value == "self":
            continue
        name = root.value
        if name in loops:
            if _elements(loops[name], loops, edit.owners) is None:
                undecided.append(_code(call.func))
        elif not hasattr(builtins, name) and name not in edit.globals:
            undecided.append(_code(call.func))
    return undecided
