"""Which exact call of a function each edit reaches.

A :class:`~dtrsurgeon.emit.edits.FunctionEdit` says *what* a function needs (pass the task on at
line 243, mask the projection called at line 88, bind the task into the checkpoint call the
example inputs did not take); :class:`CallLocator` finds the calls in its source and anchors each
edit at the call's exact span, so the transformers decide nothing::

    for block in self.blocks:              FunctionEdit(call_lines={244})
        x = block(x, c)                ->  Edit(PASS_TASK, span=(244, 16, 244, 27))

Calls are found from the capture's recorded spans where it has them, else from the text: the one
call on the line that can reach a module (``torch.cat`` and helpers cannot).  Calls the example
inputs did not run are decided from the source (loop variables over module lists, ``isinstance``
dispatch, ``if ... gradient_checkpointing:`` branches).
"""

from __future__ import annotations

import ast
import builtins
from typing import Callable

import libcst as cst
import torch
from libcst.metadata import PositionProvider
from torch import nn

from dtrsurgeon.emit.editplan import Edit, EditKind
from dtrsurgeon.errors import EmitError


def _code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def _first_name(expr: cst.BaseExpression) -> str | None:
    while isinstance(expr, (cst.Attribute, cst.Subscript, cst.Call)):
        expr = expr.value if not isinstance(expr, cst.Call) else expr.func
    return expr.value if isinstance(expr, cst.Name) else None


class CallLocator(cst.CSTVisitor):
    """Anchor the call-level edits of ``edits`` (qualname -> FunctionEdit) in the file ``path``.

    ``is_unit_call(qualname, call_code)`` says whether a call on a call line may reach a unit (it
    rules out ``torch.cat``, ``F.silu``, helpers and non-module attributes); exactly one candidate
    per call line is required.  After visiting: ``located`` (qualname -> edits anchored at spans)
    and ``lines`` (qualname -> the line of its ``def``).
    """

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, path: str, edits: dict, is_unit_call: Callable[[str, str], bool]):
        super().__init__()
        self.path = path
        self.edits = edits
        self.is_unit_call = is_unit_call
        self.scope: list[str] = []
        self.located: dict[str, tuple[Edit, ...]] = {}
        self.lines: dict[str, int] = {}

    def visit_ClassDef(self, node):
        self.scope.append(node.name.value)

    def leave_ClassDef(self, node):
        self.scope.pop()

    def visit_FunctionDef(self, node):
        self.scope.append(node.name.value)
        qual = ".".join(self.scope)
        edit = self.edits.get(qual)
        if edit is not None:
            found: dict[int, tuple] = {}
            self._collect_calls(node, edit, found)
            self.lines[qual] = self.get_metadata(PositionProvider, node.name).start.line
            self.located[qual] = self._anchored(node, found, edit.pass_if_given)

    def leave_FunctionDef(self, node):
        self.scope.pop()

    def _anchored(self, func: cst.FunctionDef, found: dict[int, tuple], if_given: bool) -> tuple[Edit, ...]:
        """The decisions in ``found`` (id of a call or reference -> what) as edits at spans."""
        edits = []
        for node in _own_nodes(func):
            what = found.get(id(node))
            if what is None:
                continue
            pos = self.get_metadata(PositionProvider, node)
            span = (pos.start.line, pos.start.column, pos.end.line, pos.end.column)
            code = " ".join(_code(node).split())
            code = code if len(code) <= 60 else code[:57] + "..."
            if what[0] == "site":
                edits.append(Edit(EditKind.MASK_SITE, line=span[0], span=span, via=what[1], axis=what[2], code=code))
            elif what[0] == "bind" and _is_sequential_checkpoint(node):
                edits.append(Edit(EditKind.BIND_CHILDREN, line=span[0], span=span, code=code))
            elif what[0] == "bind":
                kind = EditKind.BIND_TASK if isinstance(node, cst.Call) else EditKind.BIND_METHOD
                edits.append(Edit(kind, line=span[0], span=span, if_given=if_given and kind == EditKind.BIND_TASK, code=code))
            else:
                edits.append(Edit(EditKind.PASS_TASK, line=span[0], span=span, guards=tuple(what[1]), if_given=if_given,
                                  code=code))
        return tuple(edits)

    def _collect_calls(self, node, edit, found) -> None:
        """Every call and reference of function ``node`` that ``edit`` changes, into ``found``."""
        self._collect_site_calls(node, edit, found)
        self._collect_unit_calls(node, edit, found)
        self._collect_checkpointed_calls(node, found)
        self._collect_sequential_checkpoints(node, found)
        if edit.pass_if_given:
            self._collect_helper_calls(node, found)
        if edit.owners:
            self._collect_unseen_calls(node, edit, found)
        calls, refs = _method_refs(node, edit.bind_methods)
        found.update((id(c), ("task", ())) for c in calls)
        found.update((id(r), ("bind",)) for r in refs)

    def _collect_site_calls(self, node, edit, found) -> None:
        """The call on each masked line that runs the site's module (``self.proj_out(h)``), told from the
        line's other calls by the name capture recorded; a line with two such calls is refused."""
        for line, (via, axis, hint) in edit.site_calls.items():
            calls = [c for c in _calls_in(node) if self.get_metadata(PositionProvider, c).start.line <= line
                     <= self.get_metadata(PositionProvider, c).end.line and _code(c.func).split(".")[0] != "torch"]
            named = [c for c in calls if _code(c.func).split(".")[-1].split("[")[0] == hint] or calls
            if len(named) != 1:
                raise EmitError(f"{self.path}:{line}: cannot tell which call on this line runs {hint!r} "
                                f"({len(named)} candidates); put it on its own line")
            found[id(named[0])] = ("site", via, axis)

    def _collect_unit_calls(self, node, edit, found) -> None:
        """The calls capture saw reach a unit: each gets ``dtr_task=dtr_task`` (under the guards of its line),
        or, for ``checkpoint_sequential(units, ...)``, which calls each unit itself, its children bound."""
        qual = ".".join(self.scope)
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
                found[id(call)] = ("bind",) if _is_sequential_checkpoint(call) else ("task", edit.call_guards.get(line, ()))

    def _collect_checkpointed_calls(self, node, found) -> None:
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
                    found[id(call)] = ("task", ())
                    continue
                first = _first_arg(call)
                if _is_checkpoint_call(call) and first is not None and (_code(first), where) in routed:
                    found[id(call)] = ("bind",)

    @staticmethod
    def _collect_sequential_checkpoints(node, found) -> None:
        """Every ``checkpoint_sequential(seq, ...)`` of a function that holds ``dtr_task``, also on a branch
        the example inputs did not take (``if self.grad_checkpointing: x = checkpoint_sequential(self.blocks,
        2, x)`` with ``for blk in self.blocks: x = blk(x)`` otherwise): ``dtr_bind_children`` binds the task to
        the children that take it and hands the others, or everything without a task, on as they are."""
        for call in _calls_in(node):
            if id(call) not in found and _is_sequential_checkpoint(call):
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

    def _collect_unseen_calls(self, node, edit, found) -> None:
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
                found[id(call)] = ("task", ())
                continue
            classes = sorted({type(m) for m in taking}, key=lambda c: c.__name__)
            if any(type(m) in classes for m in modules if id(m) not in edit.takes_task):
                continue  # one class on both sides: no guard can tell them apart
            if all(scope.get(c.__name__) is c for c in classes):  # the guard names them as the file does
                found[id(call)] = ("task", tuple(c.__name__ for c in classes))

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


_PASS_THROUGH_CALLS = (torch.utils.checkpoint.checkpoint, torch.utils.checkpoint.checkpoint_sequential)
_CHECKPOINT_CALLS = ("checkpoint", "_gradient_checkpointing_func")  # call their first argument with the rest
_SEQUENTIAL_CHECKPOINT_CALLS = ("checkpoint_sequential",)  # call each child of their first argument



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
    return _code(call.func).split(".")[-1] in _CHECKPOINT_CALLS + _SEQUENTIAL_CHECKPOINT_CALLS


def _is_sequential_checkpoint(node) -> bool:
    return isinstance(node, cst.Call) and _code(node.func).split(".")[-1] in _SEQUENTIAL_CHECKPOINT_CALLS


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
    """The modules a ``for`` loop over ``source`` binds: the children of a container, or of a slice of one;
    the items of a list written in the loop (``for stage in [self.down, self.up]``) or held in a plain
    list attribute (``self.stages = [self.down, self.up]`` in ``__init__``)."""
    if isinstance(source, (cst.List, cst.Tuple)):
        items = [_denoted(e.value, loops, owners) if isinstance(e, cst.Element) else None for e in source.elements]
        return None if any(i is None for i in items) else [m for i in items for m in i]
    if isinstance(source, cst.Attribute) and (held := _plain_list(source, loops, owners)) is not None:
        return held
    if isinstance(source, cst.Subscript) and len(source.slice) == 1:
        index = _literal_index(source.slice[0].slice)
        containers = _denoted(source.value, loops, owners)
        if isinstance(index, slice) and containers is not None:
            return [m for c in containers for m in _children(c)[index]]
    containers = _denoted(source, loops, owners)
    if containers is None:
        return None
    return [m for c in containers for m in _children(c)]


def _plain_list(attr: cst.Attribute, loops: dict, owners: tuple) -> list[nn.Module] | None:
    """The modules in the plain list or tuple attribute ``attr`` names on every module it may be read
    from, else None (not such an attribute: a registered container, a property, other values)."""
    parents = _denoted(attr.value, loops, owners)
    held = [vars(m).get(attr.attr.value) for m in parents or ()]
    if not held or not all(isinstance(h, (list, tuple)) and all(isinstance(m, nn.Module) for m in h) for h in held):
        return None
    return [m for h in held for m in h]


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


def _own_nodes(func: cst.FunctionDef) -> list[cst.CSTNode]:
    """The calls and attributes of ``func`` outside the functions nested in it, in source order."""
    nodes: list[cst.CSTNode] = []

    class _V(cst.CSTVisitor):
        def visit_FunctionDef(self, n):
            return n is func

        def visit_Call(self, n):
            nodes.append(n)

        def visit_Attribute(self, n):
            nodes.append(n)

    func.visit(_V())
    return nodes
