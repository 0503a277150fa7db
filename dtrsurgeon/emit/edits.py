"""LibCST edits shared by both emitters.

One transformer, :class:`RouteFunctions`, applies per-function edits named by
qualified name (``"DiT.forward"``); everything else in the file comes out
byte-identical.  The edits, on DiT::

    def forward(self, x, t, y):                def forward(self, x, t, y):
        x = self.x_embedder(x) + ...      ->       dtr_task = dtr_task_index(t, 0.0, 999.0, 1000, False)
        for block in self.blocks:                  x = self.x_embedder(x) + ...
            x = block(x, c)                        for block in self.blocks:
                                                       x = block(x, c, dtr_task=dtr_task)

A function between the root and a unit gains a ``dtr_task=None`` parameter and
passes it on; in branch mode the unit's residual lines mask their branch input::

    x = x + gate * self.attn(norm(x))   ->   x = x + gate * self.attn(norm(dtr_masked(x, ...)))
"""

from __future__ import annotations

import ast
import builtins
import inspect
import pydoc
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import libcst as cst
import torch
from libcst.metadata import MetadataWrapper, PositionProvider
from torch import nn

from dtrsurgeon.analysis.sources import absolute, require_source
from dtrsurgeon.errors import EmitError
from dtrsurgeon.plan import Plan

TASK = "dtr_task"
KEEP = "dtr_keep"


@dataclass
class FunctionEdit:
    """What to change in one function."""

    task_stmt: str | None = None  # root: statement computing the task index
    task_param: str = ""  # "required": gains a dtr_task parameter; "optional": dtr_task=None; "": none
    call_lines: set[int] = field(default_factory=set)  # lines whose unit call gets dtr_task=dtr_task
    call_spans: dict[int, set[tuple[int, int, int, int]]] = field(default_factory=dict)  # line -> recorded call spans
    branch_lines: set[int] = field(default_factory=set)  # residual adds whose branch input gets masked
    stream_var: str = ""  # the residual stream's variable name
    stream_axis: int = 1  # its channel axis
    block_stmts: tuple[str, ...] = ()  # block mode (source): mask the stream on entry ...
    return_wrap: str = ""  # ... and pass every returned value (__out__) through this call
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


def parse_file(path: str, mtime: float | None = None) -> MetadataWrapper:  # noqa: ARG001 - kept for callers
    """The parsed text of ``path``: the file, or the notebook cell :mod:`linecache` holds for it."""
    return _parse_text(path, require_source(path, "cannot rewrite the model's code"))


@lru_cache(maxsize=64)
def _parse_text(path: str, source: str) -> MetadataWrapper:
    try:
        return MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError as e:
        raise EmitError(f"{path}:{e.raw_line}:{e.raw_column}: cannot parse: {e.message}") from None


def _code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def _first_name(expr: cst.BaseExpression) -> str | None:
    while isinstance(expr, (cst.Attribute, cst.Subscript, cst.Call)):
        expr = expr.value if not isinstance(expr, cst.Call) else expr.func
    return expr.value if isinstance(expr, cst.Name) else None


# tensor attributes that read no values: ``x.shape[0]`` needs no masked copy of x
_METADATA = frozenset({"shape", "dtype", "device", "ndim", "size", "dim", "numel", "layout", "is_cuda", "requires_grad"})


class _MaskStream(cst.CSTTransformer):
    """Replace every load of ``var`` (or of a plain alias of it) with
    ``dtr_masked(name, self.dtr_mask, dtr_task, axis)``; ``count`` says how many.
    Reads of metadata (``x.shape``, ``x.dtype``) are left alone::

        q = self.qkv(self.norm2(x)).reshape(x.shape[0], -1)
        ->  q = self.qkv(self.norm2(dtr_masked(x, ...))).reshape(x.shape[0], -1)
    """

    def __init__(self, var: str, axis: int, aliases: frozenset[str] = frozenset()):
        self.names = {var} | set(aliases)
        self.axis = axis
        self.count = 0
        self._metadata_reads: set[int] = set()

    def visit_Attribute(self, node):
        if isinstance(node.value, cst.Name) and node.attr.value in _METADATA:
            self._metadata_reads.add(id(node.value))

    def leave_Name(self, original, updated):
        if updated.value not in self.names or id(original) in self._metadata_reads:
            return updated
        self.count += 1
        return cst.parse_expression(f"dtr_masked({updated.value}, self.dtr_mask, {TASK}, {self.axis})")


def _aliases(func: cst.FunctionDef, var: str) -> frozenset[str]:
    """Names bound to ``var`` by plain assignment (``h = x``) in ``func``'s body,
    so a branch that starts ``h = x; h = norm(h)`` is found on the norm line."""
    names = {var}
    for stmt in func.body.body:
        if isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if (isinstance(small, cst.Assign) and len(small.targets) == 1
                        and isinstance(small.targets[0].target, cst.Name) and isinstance(small.value, cst.Name)
                        and small.value.value in names):
                    names.add(small.targets[0].target.value)
    return frozenset(names - {var})


class RouteFunctions(cst.CSTTransformer):
    """Apply :class:`FunctionEdit` records to the functions they name.

    ``is_unit_call(qualname, call_code)`` says whether a call on a call line may
    reach a unit (it rules out ``torch.cat``, ``F.silu``, helpers and
    non-module attributes); exactly one candidate per call line is required.
    """

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, path: str, edits: dict[str, FunctionEdit], is_unit_call: Callable[[str, str], bool]):
        super().__init__()
        self.path = path
        self.edits = edits
        self.is_unit_call = is_unit_call
        self.scope: list[str] = []
        self.active: list[tuple[str, FunctionEdit | None, dict]] = []
        self.done: dict[str, cst.FunctionDef] = {}
        self.ranges_of: dict[str, list[tuple[int, int]]] = {}
        self.aliases: dict[str, frozenset[str]] = {}

    # -- scope tracking
    def visit_ClassDef(self, node):
        self.scope.append(node.name.value)

    def leave_ClassDef(self, original, updated):
        self.scope.pop()
        return updated

    def visit_FunctionDef(self, node):
        qual = ".".join(self.scope + [node.name.value])
        self.scope.append(node.name.value)
        edit = self.edits.get(qual)
        found: dict[int, list[cst.Call]] = {}
        if edit is not None:
            self._collect_calls(node, edit, found)
            self.ranges_of[qual] = self.ranges
            if edit.stream_var:
                self.aliases[qual] = _aliases(node, edit.stream_var)
        self.active.append((qual, edit, found))

    def _collect_calls(self, node, edit: FunctionEdit, found) -> None:
        qual = ".".join(self.scope)
        self.ranges = [(self.get_metadata(PositionProvider, st).start.line, self.get_metadata(PositionProvider, st).end.line)
                       for st in node.body.body]
        for line, (via, axis, hint) in edit.site_calls.items():
            calls = [c for c in _calls_in(node) if self.get_metadata(PositionProvider, c).start.line <= line
                     <= self.get_metadata(PositionProvider, c).end.line and _code(c.func).split(".")[0] != "torch"]
            named = [c for c in calls if _code(c.func).split(".")[-1].split("[")[0] == hint] or calls
            if len(named) != 1:
                raise EmitError(f"{self.path}:{line}: cannot tell which call on this line runs {hint!r} "
                                f"({len(named)} candidates); put it on its own line")
            found[id(named[0])] = ("site", via, axis)
        bare = _statement_level_calls(node)
        for line in edit.call_lines:
            spans = edit.call_spans.get(line, set())
            exact = [self._call_at(node, span) for span in sorted(spans)]
            if spans and all(c is not None for c in exact):
                # capture recorded the very call that reached the unit: rewrite that one (or those:
                # different units reached through different calls on one line), no other
                chosen = list(dict.fromkeys(exact))
            else:
                chosen = [self._call_by_text(node, qual, line)]
            for call in chosen:
                found[id(call)] = ("task", edit.call_guards.get(line, ()), id(call) in bare)
        self._collect_checkpointed_calls(node, found, bare)
        if edit.pass_if_given:
            self._collect_helper_calls(node, found)
        if edit.owners:
            self._collect_unseen_calls(node, edit, found, bare)
        calls, refs = _method_refs(node, edit.bind_methods)
        found.update((id(c), ("task", (), id(c) in bare)) for c in calls)
        found.update((id(r), ("bind",)) for r in refs)

    def _collect_checkpointed_calls(self, node, found, bare) -> None:
        """The other branch of ``if torch.is_grad_enabled() and self.gradient_checkpointing:`` (diffusers),
        which the example inputs did not take: calls of a module that gets ``dtr_task`` elsewhere in the
        function get it too, and ``checkpoint(block, h, ...)`` / ``self._gradient_checkpointing_func(block, h, ...)``
        take the block with its task bound, since checkpoint functions need not pass keywords on
        (diffusers' does not): ``checkpoint(dtr_bind_task(block, dtr_task), h, ...)``.  Calls are matched
        with their ``isinstance`` dispatch: where one loop variable runs over blocks of several classes
        (``if isinstance(block, ResBlock): ... elif isinstance(block, AttnBlock): ...``), only the calls
        under the tests whose twin calls took the task get it."""
        context = _isinstance_context(node)

        def routed_in(scope) -> set[tuple[str, tuple]]:
            return {(_code(c.func), context.get(id(c), ())) for c in _calls_in(scope)
                    if found.get(id(c), ("",))[0] == "task" and not found[id(c)][1]
                    and isinstance(c.func, (cst.Name, cst.Attribute))}

        for branch in _checkpointing_ifs(node):
            other = branch.orelse.body if isinstance(branch.orelse, cst.Else) else None
            if other is None:
                continue
            routed = routed_in(other) | routed_in(branch.body)
            for call in _calls_in(branch.body) + _calls_in(other):
                if id(call) in found:
                    continue
                where = context.get(id(call), ())
                if (_code(call.func), where) in routed:  # the same module, called on the other branch's own line
                    found[id(call)] = ("task", (), id(call) in bare)
                    continue
                first = _first_arg(call)
                if _is_checkpoint_call(call) and first is not None and (_code(first), where) in routed:
                    found[id(call)] = ("bind",)

    def _collect_helper_calls(self, node, found) -> None:
        """In a module-level helper that calls the unit it is handed (``def checkpoint(fn, *args)``), the
        branch the example inputs did not take hands that unit to a checkpoint function: bind the task
        there too (``torch.utils.checkpoint.checkpoint(dtr_bind_task(fn, dtr_task), *args)``)."""
        routed = {_code(c.func) for c in _calls_in(node) if found.get(id(c), ("",))[0] == "task"}
        for call in _calls_in(node):
            first = _first_arg(call)
            if id(call) not in found and _is_checkpoint_call(call) and first is not None and _code(first) in routed:
                found[id(call)] = ("bind",)

    def _collect_unseen_calls(self, node, edit: FunctionEdit, found, bare) -> None:
        """Calls the example inputs did not reach (a training-only branch), decided from the source: a
        call whose callee can only be modules that take ``dtr_task`` (``self.side(...)``, ``blk(...)`` in
        ``for blk in self.blocks[:2]:``) gets it, with an ``isinstance`` guard where the callee may also
        be a module that does not take it and their classes tell them apart."""
        loops = _loop_variables(node)
        scope = edit.globals
        context = _isinstance_context(node)
        for call in _calls_in(node):
            start, end = self.get_metadata(PositionProvider, call).start.line, self.get_metadata(PositionProvider, call).end.line
            if id(call) in found or any(start <= line <= end for line in edit.seen_lines):
                continue  # the example call ran this line: capture decided it
            modules = _narrowed(_denoted(call.func, loops, edit.owners), call.func, context.get(id(call), ()), scope)
            taking = [m for m in modules or () if id(m) in edit.takes_task]
            if not taking:
                continue
            if len(taking) == len(modules):
                found[id(call)] = ("task", (), id(call) in bare)
                continue
            classes = sorted({type(m) for m in taking}, key=lambda c: c.__name__)
            if any(type(m) in classes for m in modules if id(m) not in edit.takes_task):
                continue  # one class on both sides: no guard can tell them apart
            if all(scope.get(c.__name__) is c for c in classes):  # the guard names them as the file does
                found[id(call)] = ("task", tuple(c.__name__ for c in classes), id(call) in bare)

    def _call_at(self, func: cst.FunctionDef, span: tuple[int, int, int, int]) -> cst.Call | None:
        """The call whose callee starts at ``span``'s start and that ends at its end
        (Python's positions of a call expression exclude its own parentheses)."""
        line, col, end_line, end_col = span
        starting = [c for c in _calls_in(func) if self._start(c.func) == (line, col)]
        ending = [c for c in starting if self._end(c) == (end_line, end_col)]
        if len(ending) == 1:
            return ending[0]
        return starting[0] if not ending and len(starting) == 1 else None

    def _start(self, node) -> tuple[int, int]:
        pos = self.get_metadata(PositionProvider, node).start
        return pos.line, pos.column + sum(len(_code(p)) for p in getattr(node, "lpar", ()))

    def _end(self, node) -> tuple[int, int]:
        pos = self.get_metadata(PositionProvider, node).end
        return pos.line, pos.column - sum(len(_code(p)) for p in getattr(node, "rpar", ()))

    def _call_by_text(self, func: cst.FunctionDef, qual: str, line: int) -> cst.Call:
        """No recorded span: the one call on ``line`` that can reach a unit (narrowest wins)."""
        candidates = []
        for call in _calls_in(func):
            pos = self.get_metadata(PositionProvider, call)
            if pos.start.line <= line <= pos.end.line and self.is_unit_call(qual, _code(call.func)):
                candidates.append((pos.end.line - pos.start.line, call))
        if not candidates:
            raise EmitError(f"{self.path}:{line}: found no call that can reach the routed unit in {qual}")
        narrowest = min(span for span, _ in candidates)
        best = [c for span, c in candidates if span == narrowest]
        if len(best) != 1:
            raise EmitError(
                f"{self.path}:{line}: {len(best)} calls on this line could reach the routed unit "
                f"({', '.join(_code(c.func) for c in best)}); put the unit call on its own line"
            )
        return best[0]

    def leave_Attribute(self, original, updated):
        """``self._forward`` handed to a checkpoint function -> ``dtr_bind_task(self._forward, dtr_task)``."""
        if self.active and self.active[-1][2].get(id(original)) == ("bind",):
            return cst.parse_expression(f"dtr_bind_task({_code(updated)}, {TASK})")
        return updated

    def leave_Call(self, original, updated):
        if not self.active or id(original) not in self.active[-1][2]:
            return updated
        what = self.active[-1][2][id(original)]
        if what[0] == "site":
            return _mask_call_input(updated, what[1], what[2])
        if what[0] == "bind":
            unit = _code(updated.args[0].value)
            bound = cst.parse_expression(f"dtr_bind_task({unit}, {TASK})" if not self.active[-1][1].pass_if_given
                                         else f"(dtr_bind_task({unit}, {TASK}) if {TASK} is not None else {unit})")
            return updated.with_changes(args=[updated.args[0].with_changes(value=bound), *updated.args[1:]])
        if any(a.keyword and a.keyword.value == TASK for a in updated.args):
            return updated
        args = list(updated.args)
        if args and args[-1].comma is cst.MaybeSentinel.DEFAULT:
            args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        kw = cst.Arg(keyword=cst.Name(TASK), value=cst.Name(TASK), equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))
        with_task = updated.with_changes(args=args + [kw])
        guards, bare = what[1], what[2]
        tests = []
        if guards:
            classes = guards[0] if len(guards) == 1 else "(" + ", ".join(guards) + ")"
            tests.append(f"isinstance({_code(updated.func)}, {classes})")
        if self.active[-1][1].pass_if_given:  # a helper other callers call without a task
            tests.append(f"{TASK} is not None")
        if not tests:
            return with_task
        test = cst.parse_expression(" and ".join(tests))
        guarded = cst.IfExp(test=test, body=with_task, orelse=updated)
        # inside a larger expression (`block(x, emb) if isinstance(...) else block(x)`) the guard needs parentheses
        return guarded if bare else guarded.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])

    def _on_lines(self, node, lines) -> bool:
        if not lines:
            return False
        pos = self.get_metadata(PositionProvider, node)
        return any(pos.start.line <= ln <= pos.end.line for ln in lines)

    def leave_Assign(self, original, updated):
        edit = self.active[-1][1] if self.active else None
        if edit is None or not self._on_lines(original, edit.load_lines):
            return updated
        if isinstance(updated.value, cst.Name):
            return updated  # `h = x`: an alias, masked where it is read
        mask = _MaskStream(edit.stream_var, edit.stream_axis, self.aliases.get(self.active[-1][0], frozenset()))
        value = updated.value.visit(mask)
        if mask.count == 0:
            pos = self.get_metadata(PositionProvider, original)
            raise EmitError(f"{self.path}:{pos.start.line}: branch mode found no read of {edit.stream_var!r} to mask "
                            "on this line; use routing.mode 'block' or 'pre_output' for this unit")
        return updated.with_changes(value=value)

    def _in_branch_line(self, node) -> bool:
        edit = self.active[-1][1] if self.active else None
        if edit is None or not edit.branch_lines:
            return False
        pos = self.get_metadata(PositionProvider, node)
        return any(pos.start.line <= ln <= pos.end.line for ln in edit.branch_lines)

    def leave_BinaryOperation(self, original, updated):
        if not isinstance(updated.operator, cst.Add) or not self._in_branch_line(original):
            return updated
        var = self.active[-1][1].stream_var
        if isinstance(updated.left, cst.Name) and updated.left.value == var:
            return updated.with_changes(right=updated.right.visit(_MaskStream(var, self.active[-1][1].stream_axis)))
        if isinstance(updated.right, cst.Name) and updated.right.value == var:
            return updated.with_changes(left=updated.left.visit(_MaskStream(var, self.active[-1][1].stream_axis)))
        return updated

    def leave_Return(self, original, updated):
        edit = self.active[-1][1] if self.active else None
        if edit is None or not edit.return_wrap:
            return updated
        several = edit.return_wrap.startswith("dtr_merge_outputs(")
        if updated.value is None or (isinstance(updated.value, cst.Tuple) and not several):
            pos = self.get_metadata(PositionProvider, original)
            raise EmitError(f"{self.path}:{pos.start.line}: block mode needs the unit to return its stream, "
                            "found a bare or tuple return; use routing.mode 'branch' for this unit")
        value = updated.value
        if isinstance(value, cst.Tuple) and not value.lpar:
            value = value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        wrap = cst.parse_expression(edit.return_wrap)
        return updated.with_changes(value=wrap.with_changes(
            args=[wrap.args[0].with_changes(value=value), *wrap.args[1:]]))

    def leave_AugAssign(self, original, updated):
        if isinstance(updated.operator, cst.AddAssign) and self._in_branch_line(original):
            var = self.active[-1][1].stream_var
            if isinstance(updated.target, cst.Name) and updated.target.value == var:
                return updated.with_changes(value=updated.value.visit(_MaskStream(var, self.active[-1][1].stream_axis)))
        return updated

    def leave_FunctionDef(self, original, updated):
        qual, edit, _ = self.active.pop()
        self.scope.pop()
        if edit is None:
            return updated
        if edit.task_param:
            updated = updated.with_changes(params=_with_task_param(updated.params, edit.task_param == "required"))
        stmts = [s for s in (edit.task_stmt, *edit.block_stmts) if s]
        body = list(updated.body.body)
        if edit.insert_after:
            ranges = self.ranges_of[qual]
            new_body = []
            for stmt, (first, last) in zip(body, ranges):
                new_body.append(stmt)
                for line, extra in edit.insert_after.items():
                    if first <= line <= last:
                        new_body += [cst.parse_statement(x + "\n") for x in extra]
            body = new_body
        if stmts:
            at = 1 if body and _is_docstring(body[0]) else 0
            body = body[:at] + [cst.parse_statement(s + "\n") for s in stmts] + body[at:]
        if edit.append_stmt:
            body.append(cst.parse_statement(edit.append_stmt + "\n"))
        if stmts or edit.append_stmt or edit.insert_after:
            updated = updated.with_changes(body=updated.body.with_changes(body=body))
        self.done[qual] = updated
        return updated


def _mask_call_input(call: cst.Call, via: str, axis: int) -> cst.Call:
    """``f(h)`` -> ``f(dtr_masked(h, ...))``; for a Sequential ending in the
    projection, ``f(h)`` -> ``f[-1](dtr_masked(f[:-1](h), ...))``."""
    first, rest = call.args[0], list(call.args[1:])
    func = _code(call.func)
    if via == "sequential":
        inner = cst.parse_expression(f"{func}[:-1]({_code(first.value)})")
        masked = cst.parse_expression(f"dtr_masked(__x__, self.dtr_mask, {TASK}, {axis})")
        masked = masked.with_changes(args=[masked.args[0].with_changes(value=inner), *masked.args[1:]])
        return call.with_changes(func=cst.parse_expression(f"{func}[-1]"), args=[first.with_changes(value=masked)] + rest)
    masked = cst.parse_expression(f"dtr_masked(__x__, self.dtr_mask, {TASK}, {axis})")
    masked = masked.with_changes(args=[masked.args[0].with_changes(value=first.value), *masked.args[1:]])
    return call.with_changes(args=[first.with_changes(value=masked)] + rest)


_PASS_THROUGH_CALLS = (torch.utils.checkpoint.checkpoint,)
_CHECKPOINT_CALLS = ("checkpoint", "_gradient_checkpointing_func")  # call their first argument with the rest  # call their first argument with the rest


def functions_by_qualname(model: nn.Module) -> dict[tuple[str, str], object]:
    """(file, qualname) -> function, over the MROs of all the model's classes, and the module-level
    functions of the files that define them (helpers such as ``checkpoint(fn, *args)``)."""
    found = {}
    modules = set()
    for module in model.modules():
        for cls in type(module).__mro__:
            modules.add(cls.__module__)
            for value in vars(cls).values():
                func = unwrapped(value)
                code = getattr(func, "__code__", None)
                if code is not None:
                    found.setdefault((absolute(code.co_filename), func.__qualname__), func)
    for name in modules - {"builtins"}:
        if name.split(".")[0] == "torch" or name not in sys.modules:
            continue
        for value in vars(sys.modules[name]).values():
            code = getattr(value, "__code__", None)
            if inspect.isfunction(value) and value.__module__ == name and value.__qualname__ == value.__name__:
                found.setdefault((absolute(code.co_filename), value.__qualname__), value)
    return found


def unwrapped(value):
    """The function behind a method, staticmethod or decorator (``functools.wraps``)."""
    func = getattr(value, "__func__", value)
    return inspect.unwrap(func) if callable(func) else func


def unit_call_filter(functions):
    """is_unit_call(qualname, call code) for RouteFunctions: rule out globals that
    are plain functions (torch.cat, F.silu, helpers) and non-module attributes."""

    def is_unit_call(file: str, qual: str, code: str) -> bool:
        func = functions.get((file, qual))
        name = _first_name(cst.parse_expression(code))
        if name is None or hasattr(builtins, name):
            return False
        if name == "self":
            return True
        g = getattr(func, "__globals__", {})
        if name in g:
            obj = g[name]
            return any(obj is f for f in _PASS_THROUGH_CALLS) or isinstance(obj, nn.Module)
        # a local: a loop variable over a ModuleList (`block(x)`) or an item of one (`blocks[i](x)`);
        # a method of a local (`skips.pop()`) is not a module call
        return "." not in code.split("[")[0]

    return is_unit_call



def _first_arg(call: cst.Call) -> cst.BaseExpression | None:
    return call.args[0].value if call.args and call.args[0].keyword is None and not call.args[0].star else None


def _is_checkpoint_call(call: cst.Call) -> bool:
    return _code(call.func).split(".")[-1] in _CHECKPOINT_CALLS


def _isinstance_context(func: cst.FunctionDef) -> dict[int, tuple[tuple[str, bool], ...]]:
    """id of each call -> the ``isinstance`` tests of the ``if`` statements around it, each with
    whether the call is in its body (True) or its ``else``/``elif`` part (False)."""
    context: dict[int, tuple] = {}
    stack: list[tuple[str, bool]] = []

    def dispatch(node: cst.If) -> str | None:
        test = node.test
        is_dispatch = isinstance(test, cst.Call) and isinstance(test.func, cst.Name) and test.func.value == "isinstance"
        return _code(test) if is_dispatch else None

    class _V(cst.CSTVisitor):
        def visit_FunctionDef(self, n):
            return n is func

        def visit_Call(self, n):
            context[id(n)] = tuple(stack)

        def visit_If_body(self, n):
            stack.append((dispatch(n), True))

        def leave_If_body(self, n):
            stack.pop()

        def visit_If_orelse(self, n):
            stack.append((dispatch(n), False))

        def leave_If_orelse(self, n):
            stack.pop()

    func.visit(_V())
    return {k: tuple(t for t in v if t[0] is not None) for k, v in context.items()}


def _narrowed(modules, callee, tests, scope: dict):
    """``modules`` that pass the ``isinstance`` tests around a call of ``callee``: in the body of
    ``if isinstance(block, ConvRes):`` only ConvRes instances, in its ``else`` the others."""
    if not modules or not isinstance(callee, cst.Name):
        return modules
    for test, in_body in tests:
        call = cst.parse_expression(test)
        if len(call.args) != 2 or _code(call.args[0].value) != callee.value:
            continue
        names = call.args[1].value
        names = [e.value for e in names.elements] if isinstance(names, cst.Tuple) else [names]
        classes = tuple(scope.get(n.value) for n in names if isinstance(n, cst.Name))
        if len(classes) != len(names) or not all(isinstance(c, type) for c in classes):
            continue
        modules = [m for m in modules if isinstance(m, classes) == in_body]
    return modules


def _loop_variables(func: cst.FunctionDef) -> dict[str, cst.BaseExpression]:
    """``for blk in self.blocks[:2]:`` -> {"blk": self.blocks[:2]}; ``for i, blk in enumerate(E)`` -> E."""
    loops: dict[str, cst.BaseExpression] = {}

    class _V(cst.CSTVisitor):
        def visit_FunctionDef(self, n):
            return n is func

        def visit_For(self, n):
            target, source = n.target, n.iter
            if (isinstance(source, cst.Call) and isinstance(source.func, cst.Name) and source.func.value == "enumerate"
                    and source.args and isinstance(target, cst.Tuple) and len(target.elements) == 2):
                target, source = target.elements[1].value, source.args[0].value
            if (isinstance(source, cst.Call) and isinstance(source.func, cst.Attribute) and not source.args
                    and source.func.attr.value in ("items", "values")):  # a ModuleDict's modules
                if source.func.attr.value == "items":
                    if not (isinstance(target, cst.Tuple) and len(target.elements) == 2):
                        return
                    target = target.elements[1].value
                source = source.func.value
            if isinstance(target, cst.Name):
                loops[target.value] = source

    func.visit(_V())
    return loops


def _literal_index(node) -> int | slice | None:
    """The integer or slice a subscript writes with literals (``[0]``, ``[:2]``, ``[-1]``), else None."""
    def number(expr) -> int | None:
        if expr is None:
            return None
        try:
            value = ast.literal_eval(_code(expr))
        except (ValueError, SyntaxError):
            raise LookupError from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise LookupError
        return value

    try:
        if isinstance(node, cst.Index):
            return number(node.value)
        if isinstance(node, cst.Slice):
            return slice(number(node.lower), number(node.upper), number(node.step))
    except LookupError:
        return None
    return None


def _children(module: nn.Module) -> list[nn.Module]:
    return list(module.children())


def _denoted(expr: cst.BaseExpression, loops: dict, owners: tuple) -> list[nn.Module] | None:
    """The modules ``expr`` can denote when the method runs on any of ``owners``, or None where the
    source does not say (a local, a call result, a non-module attribute)."""
    if isinstance(expr, cst.Name):
        if expr.value == "self":
            return list(owners)
        if expr.value in loops:
            return _elements(loops[expr.value], loops, owners)
        return None
    if isinstance(expr, cst.Attribute):
        parents = _denoted(expr.value, loops, owners)
        if parents is None:
            return None
        found = [m._modules.get(expr.attr.value) for m in parents]
        return found if found and all(isinstance(m, nn.Module) for m in found) else None
    if isinstance(expr, cst.Subscript) and len(expr.slice) == 1:
        parents = _denoted(expr.value, loops, owners)
        if parents is None:
            return None
        index = _literal_index(expr.slice[0].slice)
        if isinstance(index, slice):
            return None  # a slice of a container is a container: called, it is not one module
        out = []
        for m in parents:
            items = _children(m)
            out += [items[index]] if isinstance(index, int) and -len(items) <= index < len(items) else items
        return out
    return None


def _elements(source: cst.BaseExpression, loops: dict, owners: tuple) -> list[nn.Module] | None:
    """The modules a ``for`` loop over ``source`` binds: the children of a container, or of a slice of one."""
    if isinstance(source, cst.Subscript) and len(source.slice) == 1:
        index = _literal_index(source.slice[0].slice)
        containers = _denoted(source.value, loops, owners)
        if isinstance(index, slice) and containers is not None:
            return [m for c in containers for m in _children(c)[index]]
    containers = _denoted(source, loops, owners)
    if containers is None:
        return None
    return [m for c in containers for m in _children(c)]


def route_unseen_calls(model: nn.Module, plan: Plan, edits: dict[str, dict[str, FunctionEdit]], functions) -> None:
    """Prepare ``edits`` for calls the example inputs did not run.

    * every edited method learns the modules it runs on and which modules take ``dtr_task``, so
      RouteFunctions routes calls of those modules on other paths (a masked-training branch);
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
    node = _function_nodes(wrapper.module).get(qual)
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


def _function_nodes(module: cst.Module) -> dict[str, cst.FunctionDef]:
    """qualname -> FunctionDef of every function in ``module``."""
    found: dict[str, cst.FunctionDef] = {}
    scope: list[str] = []

    class _V(cst.CSTVisitor):
        def visit_ClassDef(self, n):
            scope.append(n.name.value)

        def leave_ClassDef(self, n):
            scope.pop()

        def visit_FunctionDef(self, n):
            scope.append(n.name.value)
            found[".".join(scope)] = n

        def leave_FunctionDef(self, n):
            scope.pop()

    module.visit(_V())
    return found

def _statement_level_calls(func: cst.FunctionDef) -> set[int]:
    """ids of calls that are a whole statement's value (``x = f(x)``, ``return f(x)``, ``f(x)``)."""
    bare: set[int] = set()

    class _V(cst.CSTVisitor):
        def visit_FunctionDef(self, n):
            return n is func

        def _add(self, value):
            if isinstance(value, cst.Call) and not value.lpar:
                bare.add(id(value))

        def visit_Assign(self, n):
            self._add(n.value)

        def visit_AnnAssign(self, n):
            self._add(n.value)

        def visit_AugAssign(self, n):
            self._add(n.value)

        def visit_Return(self, n):
            self._add(n.value)

        def visit_Expr(self, n):
            self._add(n.value)

    func.visit(_V())
    return bare


def _calls_in(node: cst.CSTNode) -> list[cst.Call]:
    calls: list[cst.Call] = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n):
            calls.append(n)

        def visit_FunctionDef(self, n):
            return n is node  # do not enter nested functions

    node.visit(_V())
    return calls


def _checkpointing_ifs(func: cst.FunctionDef) -> list[cst.If]:
    """``if ... gradient_checkpointing ...:`` statements (with an else) in ``func``."""
    found = []

    class _V(cst.CSTVisitor):
        def visit_If(self, n):
            if "checkpoint" in _code(n.test).lower():
                found.append(n)

        def visit_FunctionDef(self, n):
            return n is func

    func.visit(_V())
    return found


def _is_docstring(stmt) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


def _with_task_param(params: cst.Parameters, required: bool) -> cst.Parameters:
    """Add ``dtr_task`` (required, or ``=None``) where Python allows it:
    last positional parameter if that is legal, else keyword-only."""
    if any(p.name.value == TASK for p in list(params.params) + list(params.kwonly_params)):
        return params
    eq = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))
    new = cst.Param(cst.Name(TASK)) if required else cst.Param(cst.Name(TASK), default=cst.Name("None"), equal=eq)
    has_default = any(p.default is not None for p in params.params)
    if isinstance(params.star_arg, cst.Param) or params.kwonly_params or (required and has_default):
        star = params.star_arg if isinstance(params.star_arg, cst.Param) else cst.ParamStar()
        return params.with_changes(star_arg=star, kwonly_params=list(params.kwonly_params) + [new])
    return params.with_changes(params=list(params.params) + [new])




def _method_refs(func: cst.FunctionDef, names: set[str]) -> tuple[list[cst.Call], list[cst.Attribute]]:
    """Calls ``self.<name>(...)`` and other references ``self.<name>`` to the methods ``names`` in ``func``."""
    calls: list[cst.Call] = []
    refs: list[cst.Attribute] = []
    if not names:
        return calls, refs

    def is_ref(node) -> bool:
        return (isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self"
                and node.attr.value in names)

    class _Refs(cst.CSTVisitor):
        def visit_Call(self, node):
            if is_ref(node.func):
                calls.append(node)

        def visit_Attribute(self, node):
            if is_ref(node) and not any(c.func is node for c in calls):
                refs.append(node)

    func.visit(_Refs())
    return calls, refs


def class_forward(cls_name: str) -> tuple[str, str] | None:
    """(file, qualname) of the ``forward`` that class ``cls_name`` ("package.module.Class") runs."""
    cls = pydoc.locate(cls_name)
    func = unwrapped(getattr(cls, "forward", None)) if isinstance(cls, type) else None
    code = getattr(func, "__code__", None)
    return (code.co_filename, func.__qualname__) if code is not None else None


def collect_edits(plan: Plan, block_in_source: bool = False) -> dict[str, dict[str, FunctionEdit]]:
    """file -> function qualname -> edit, for every function the plan touches.

    Block-mode units whose stream is their input need no source edit in the
    module emitter (a generic wrapper routes them); ``block_in_source`` asks
    for the inline form the source emitter writes.
    """
    ts = plan.timestep
    edits: dict[str, dict[str, FunctionEdit]] = defaultdict(dict)
    for call_path in [u.call_path for u in plan.units] + [lines for _, lines in plan.threads]:
        for i, sl in enumerate(call_path):
            edit = edits[sl.file].setdefault(sl.function, FunctionEdit())
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
    # classes whose forward (or the helper it hands on) routes every instance after a line inside
    # it (U-ViT's long-skip merge): their units that route on entry share that placement
    routed_inside = {u.cls for u in plan.units if u.mode == "block" and u.stream_line is not None}
    class_streams = streams_by_class(plan)
    for unit in plan.units:
        if unit.mode == "block" and unit.stream_line is None and (not block_in_source or unit.cls in routed_inside):
            continue
        if unit.mode == "pre_output":
            _collect_sites(unit, edits)
            if unit.fold is not None:
                forward_file, forward = class_forward(unit.cls)
                edits[forward_file].setdefault(forward, FunctionEdit()).block_stmts = (_fold_stmt(unit),)
            continue
        owner = unit.residual_lines[0]
        own_forward = class_forward(unit.cls) if unit.mode == "block" and unit.stream_line is None else None
        if own_forward is not None:
            # block mode on the unit's input: the mask goes on entry of the unit's own forward and the
            # merge on its return, wherever the adds run (guided-diffusion: inside checkpoint(self._forward))
            owner_file, owner_function = own_forward
        elif unit.mode == "block":
            # the stream starts inside: route after that line and merge on the return of the function
            # that holds it (the forward, or a helper it hands on: U-ViT's _forward after the long-skip merge)
            owner_file, owner_function = unit.stream_line.file, unit.stream_line.function
            _hand_task_to(owner_function, unit.cls, edits)
        else:
            bad = [sl for sl in unit.residual_lines
                   if sl.function != owner.function or not sl.function.endswith("forward")]
            if bad:
                raise EmitError(f"{bad[0].file}:{bad[0].line}: the residual add of unit {unit.path!r} is in "
                                f"{bad[0].function}, not in the unit's forward: use dtrsurgeon.transform in block mode")
            owner_file, owner_function = owner.file, owner.function
            _hand_task_to(owner_function, unit.cls, edits)
        edit = edits[owner_file].setdefault(owner_function, FunctionEdit())
        edit.task_param = "required"
        var, axis = unit.stream_var, unit.channel_axis
        if unit.mode == "block":
            stmts, edit.return_wrap = _block_edit(unit, class_streams.get(unit.cls, ()))
            if unit.stream_line is None:
                edit.block_stmts = stmts
            else:
                edit.insert_after[unit.stream_line.line] = stmts
        elif unit.mode == "branch":
            if unit.fold is not None:
                edit.block_stmts = (_fold_stmt(unit),)
            edit.branch_lines |= {sl.line for sl in unit.residual_lines}
            edit.load_lines |= {sl.line for sl in unit.branch_lines}
            edit.stream_var, edit.stream_axis = var, axis
    return edits


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
    return f"{TASK} = dtr_fold_task({TASK}, {unit.stream_arg}, {unit.fold!r})"


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
              f"{var}, dtr_skip = dtr_route({var}, {KEEP})"]
    if unit.out_index is None:
        return tuple(stmts), f"dtr_merge(__out__, dtr_skip, {KEEP})"
    merges = [f"({unit.out_index}, dtr_skip, {KEEP})"]
    for s in streams:
        keep, skip = f"{KEEP}_{s.arg}", f"dtr_skip_{s.arg}"
        stmts += [f"{keep} = dtr_channel_mask(self.{s.buffer}, {TASK}, {s.arg}, {s.channel_axis})",
                  f"{s.arg}, {skip} = dtr_route({s.arg}, {keep})"]
        merges.append(f"({s.out_index}, {skip}, {keep})")
    return tuple(stmts), f"dtr_merge_outputs(__out__, ({', '.join(merges)},))"


def _collect_sites(unit, edits) -> None:
    """pre_output: mask each projection's input where it is called: in the unit's forward, or in a
    helper method the forward hands on (``checkpoint(self._forward, ...)``), which then gets dtr_task
    bound: ``checkpoint(dtr_bind_task(self._forward, dtr_task), ...)``."""
    for site in unit.sites:
        edit = edits[site.call.file].setdefault(site.call.function, FunctionEdit())
        edit.task_param = "required"
        edit.site_calls[site.call.line] = (site.via, site.channel_axis,
                                           site.module.rsplit(".", 1)[-1] if site.via == "call" else "")
        _hand_task_to(site.call.function, unit.cls, edits)


def _hand_task_to(function: str, cls: str, edits) -> None:
    """Where a unit's edits are in a helper method rather than its forward, the forward takes
    dtr_task and hands it on with the helper: ``self._forward(x, dtr_task=dtr_task)``, or
    ``checkpoint(dtr_bind_task(self._forward, dtr_task), x)`` where it passes the method itself."""
    forward_file, forward = class_forward(cls)
    if function != forward:
        outer = edits[forward_file].setdefault(forward, FunctionEdit())
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
