"""One LibCST transformer per kind of edit in an :class:`~dtrsurgeon.emit.editplan.EditPlan`.

Each transformer applies the edits of its kind to the functions they name and leaves every other
byte of the file as it was; it decides nothing (the edit plan names the lines and call spans).
:func:`apply_edits` runs them all in one pass over the file, so every anchor refers to the text
as written.  One transformer alone, on one function::

    before = "def forward(self, x):\\n    return self.block(x)\\n"
    edits = FunctionEdits("m.py", "forward", 1, (Edit(EditKind.TAKE_TASK),))
    MetadataWrapper(cst.parse_module(before)).visit(TakeTask("m.py", [edits])).code
    -> "def forward(self, x, dtr_task):\\n    return self.block(x)\\n"
"""

from __future__ import annotations

from typing import Iterable

import libcst as cst
import libcst.matchers
from libcst.metadata import MetadataWrapper, PositionProvider

from dtrsurgeon.emit.editplan import Edit, EditKind, FunctionEdits
from dtrsurgeon.errors import EmitError

TASK = "dtr_task"

# tensor attributes that read no values: ``x.shape[0]`` needs no masked copy of x
_METADATA = frozenset({"shape", "dtype", "device", "ndim", "size", "dim", "numel", "layout", "is_cuda", "requires_grad"})


def node_span(transformer: cst.MetadataDependent, node: cst.CSTNode) -> tuple[int, int, int, int]:
    pos = transformer.get_metadata(PositionProvider, node)
    return pos.start.line, pos.start.column, pos.end.line, pos.end.column


def _code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


class FunctionEditTransformer(cst.CSTTransformer):
    """Tracks which function (by qualified name) is being visited and hands each transformer
    the edits of its ``KIND`` for the innermost one; nested functions have their own edits."""

    METADATA_DEPENDENCIES = (PositionProvider,)
    KIND: EditKind

    def __init__(self, path: str, functions: Iterable[FunctionEdits]):
        super().__init__()
        self.path = path
        self.edits = {f.qualname: f.of(self.KIND) for f in functions}
        self.scope: list[str] = []
        self.stack: list[tuple[Edit, ...]] = []

    @property
    def current(self) -> tuple[Edit, ...]:
        return self.stack[-1] if self.stack else ()

    def visit_ClassDef(self, node):
        self.scope.append(node.name.value)

    def leave_ClassDef(self, original, updated):
        self.scope.pop()
        return updated

    def visit_FunctionDef(self, node):
        self.scope.append(node.name.value)
        self.stack.append(self.edits.get(".".join(self.scope), ()))
        self.enter_function(node)

    def leave_FunctionDef(self, original, updated):
        edits = self.stack.pop()
        self.scope.pop()
        return self.edit_function(original, updated, edits) if edits else updated

    def enter_function(self, node: cst.FunctionDef) -> None:
        """Called on entering every function (``self.current`` holds its edits)."""

    def edit_function(self, original: cst.FunctionDef, updated: cst.FunctionDef, edits) -> cst.FunctionDef:
        return updated

    def at_span(self, node: cst.CSTNode) -> Edit | None:
        """The edit of the current function anchored at ``node``'s exact span."""
        if not self.current:
            return None
        span = node_span(self, node)
        return next((e for e in self.current if e.span == span), None)

    def on_line(self, node: cst.CSTNode) -> Edit | None:
        """The edit of the current function anchored at a line ``node`` spans."""
        if not self.current:
            return None
        pos = self.get_metadata(PositionProvider, node)
        return next((e for e in self.current if pos.start.line <= e.line <= pos.end.line), None)


def _is_docstring(stmt) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


def _insert_on_entry(func: cst.FunctionDef, statements: Iterable[str]) -> cst.FunctionDef:
    """``statements`` first in ``func``'s body, after its docstring."""
    body = list(func.body.body)
    at = 1 if body and _is_docstring(body[0]) else 0
    body = body[:at] + [cst.parse_statement(s + "\n") for s in statements] + body[at:]
    return func.with_changes(body=func.body.with_changes(body=body))


class TakeTask(FunctionEditTransformer):
    """``def forward(self, x, c):`` -> ``def forward(self, x, c, dtr_task):`` (or ``dtr_task=None``)."""

    KIND = EditKind.TAKE_TASK

    def edit_function(self, original, updated, edits):
        return updated.with_changes(params=_with_task_param(updated.params, edits[0].required))


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


class ComputeTask(FunctionEditTransformer):
    """The root's forward first computes the task index:
    ``dtr_task = dtr_task_index(t, 0.0, 999.0, 1000, False)``."""

    KIND = EditKind.COMPUTE_TASK

    def edit_function(self, original, updated, edits):
        return _insert_on_entry(updated, [s for e in edits for s in e.text])


class FoldTask(FunctionEditTransformer):
    """A unit whose stream folds frames into the batch first expands its task index:
    ``dtr_task = dtr_fold_task(dtr_task, x, 'interleave')``."""

    KIND = EditKind.FOLD_TASK

    def edit_function(self, original, updated, edits):
        return _insert_on_entry(updated, [s for e in edits for s in e.text])


class AttachMasks(FunctionEditTransformer):
    """The root's ``__init__`` ends with ``dtr_attach_masks(self)``."""

    KIND = EditKind.ATTACH_MASKS

    def edit_function(self, original, updated, edits):
        body = list(updated.body.body) + [cst.parse_statement(s + "\n") for e in edits for s in e.text]
        return updated.with_changes(body=updated.body.with_changes(body=body))


class RouteStream(FunctionEditTransformer):
    """Block mode: route the stream on entry, or after the statement holding a line (U-ViT: after
    the long-skip merge)::

        def forward(self, x, c):            def forward(self, x, c, dtr_task):
            x = x + self.attn(x)       ->       dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 2)
                                                x, dtr_skip = dtr_route(x, dtr_keep)
                                                x = x + self.attn(x)
    """

    KIND = EditKind.ROUTE_STREAM

    def edit_function(self, original, updated, edits):
        after = [e for e in edits if e.line]
        if after:
            ranges = [(self.get_metadata(PositionProvider, st).start.line, self.get_metadata(PositionProvider, st).end.line)
                      for st in original.body.body]
            body = []
            for stmt, (first, last) in zip(updated.body.body, ranges):
                body.append(stmt)
                for edit in after:
                    if first <= edit.line <= last:
                        body += [cst.parse_statement(s + "\n") for s in edit.text]
            updated = updated.with_changes(body=updated.body.with_changes(body=body))
        entry = [s for e in edits if not e.line for s in e.text]
        return _insert_on_entry(updated, entry) if entry else updated


#: ``x += f(x)``, ``x *= gate``: the variable still holds the stream, its shape kept (``x @= w`` need not)
_STREAM_KEEPING_AUGMENTS = (cst.AddAssign, cst.SubtractAssign, cst.MultiplyAssign, cst.DivideAssign)


class MergeReturn(FunctionEditTransformer):
    """Block mode: every returned value goes through the merge:
    ``return x`` -> ``return dtr_merge(x, dtr_skip, dtr_keep)``.  A single-stream merge that meets a
    tuple return (a branch the example call did not take, such as a ControlNet copy that also
    returns a hint) merges the one item that is the stream's variable (the edit's ``var``) and
    passes the others through::

        return x, self.hint(x)   ->   return (dtr_merge(x, dtr_skip, dtr_keep), self.hint(x))

    That item is the stream only while every assignment to ``var`` after the line the stream is
    routed after (the edit's ``line``) is a residual add; one that may change what the variable
    holds (``enc, x = x[:, :n], x[:, n:]``) refuses the return with its line."""

    KIND = EditKind.MERGE_RETURN

    def enter_function(self, node):
        self.bindings.append([])

    def leave_FunctionDef(self, original, updated):
        self.bindings.pop()
        return super().leave_FunctionDef(original, updated)

    def visit_Module(self, node):
        self.bindings: list[list[tuple[int, bool]]] = []

    def visit_Assign(self, node):
        self._bind(node, [t.target for t in node.targets], _keeps_stream(node, self._var()))

    def visit_AnnAssign(self, node):
        self._bind(node, [node.target], False)

    def visit_AugAssign(self, node):
        self._bind(node, [node.target], isinstance(node.operator, _STREAM_KEEPING_AUGMENTS))

    def visit_For(self, node):
        self._bind(node, [node.target], False)

    def visit_WithItem(self, node):
        if node.asname is not None:
            self._bind(node, [node.asname.name], False)

    def visit_NamedExpr(self, node):
        self._bind(node, [node.target], False)

    def visit_Del(self, node):
        self._bind(node, [node.target], False)

    def leave_Return(self, original, updated):
        if not self.current:
            return updated
        edit = self.current[0]
        several = edit.text[0].startswith("dtr_merge_outputs(")
        value = updated.value
        if isinstance(value, cst.Tuple) and not several:
            return updated.with_changes(value=self._merge_stream_item(original, value, edit))
        if value is None:
            pos = self.get_metadata(PositionProvider, original)
            raise EmitError(f"{self.path}:{pos.start.line}: block mode needs the unit to return its stream, "
                            "found a bare return; use routing.mode 'branch' for this unit")
        if isinstance(value, cst.Tuple) and not value.lpar:
            value = value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        return updated.with_changes(value=_wrapped(edit.text[0], value))

    def _var(self) -> str:
        return self.current[0].var if self.current else ""

    def _bind(self, node, targets, keeps: bool) -> None:
        """Record an assignment of the current function that binds its stream variable."""
        var = self._var()
        if var and self.bindings and any(var in _target_names(t) for t in targets):
            self.bindings[-1].append((self.get_metadata(PositionProvider, node).start.line, keeps))

    def _merge_stream_item(self, original, value: cst.Tuple, edit: Edit) -> cst.Tuple:
        """``value`` with its item named ``edit.var`` merged; an EmitError naming the line when the
        tuple holds that variable as no item or as several, or when it may no longer hold the stream."""
        line = self.get_metadata(PositionProvider, original).start.line
        places = [i for i, el in enumerate(value.elements)
                  if isinstance(el, cst.Element) and isinstance(el.value, cst.Name) and el.value.value == edit.var]
        rebound = [at for at, keeps in (self.bindings[-1] if self.bindings else []) if edit.line < at < line and not keeps]
        if not edit.var or len(places) != 1 or rebound:
            held = (f"holds the stream variable {edit.var!r} {len(places)} times" if edit.var and len(places) != 1
                    else f"returns {edit.var!r}, which line {rebound[0]} may have rebound to something other than the "
                         "stream" if rebound else "has no stream variable")
            raise EmitError(f"{self.path}:{line}: block mode merges the stream where the unit returns it, "
                            f"but this returned tuple {held}; use routing.mode 'branch' for this unit")
        items = list(value.elements)
        items[places[0]] = items[places[0]].with_changes(value=_wrapped(edit.text[0], items[places[0]].value))
        return value.with_changes(elements=items, lpar=value.lpar or [cst.LeftParen()],
                                  rpar=value.rpar or [cst.RightParen()])


def _target_names(target: cst.BaseExpression) -> set[str]:
    """The names an assignment target binds: ``x`` -> {x}; ``enc, (x, *rest)`` -> {enc, x, rest}."""
    if isinstance(target, cst.Name):
        return {target.value}
    if isinstance(target, (cst.Tuple, cst.List)):
        return {n for el in target.elements for n in _target_names(el.value)}
    if isinstance(target, cst.StarredElement):
        return _target_names(target.value)
    return set()


_CASTS = frozenset({"float", "half", "bfloat16", "double", "to", "type", "type_as", "contiguous", "clip", "clamp"})


def _uncast(node: cst.BaseExpression) -> cst.BaseExpression:
    """Through the calls that keep a tensor's shape: ``(x.float() + y).type_as(x)`` -> ``x.float() + y``;
    ``x.clip(-m, m)`` -> ``x``."""
    while isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in _CASTS:
        node = node.func.value
    return node


def _keeps_stream(node: cst.Assign, var: str) -> bool:
    """Is ``node`` a residual add on ``var`` (``x = x + f(x)``, ``x = (x.float() + a * g).type_as(x)``) or a
    cast of it (``x = x.clip(-m, m)``), after which ``var`` still holds the stream?"""
    if len(node.targets) != 1 or not isinstance(node.targets[0].target, cst.Name):
        return False
    value = _uncast(node.value)
    if isinstance(value, cst.Name):
        return value.value == var
    return (isinstance(value, cst.BinaryOperation) and isinstance(value.operator, (cst.Add, cst.Subtract))
            and any(isinstance(side, cst.Name) and side.value == var for side in (_uncast(value.left), _uncast(value.right))))


def _wrapped(wrap_text: str, value: cst.BaseExpression) -> cst.Call:
    """The merge call ``wrap_text`` with ``value`` in place of its first argument (``__out__``)."""
    wrap = cst.parse_expression(wrap_text)
    return wrap.with_changes(args=[wrap.args[0].with_changes(value=value), *wrap.args[1:]])


def _statement_values(module: cst.Module) -> set[int]:
    """ids of the calls that are a whole statement's value (``x = f(x)``, ``return f(x)``, ``f(x)``)."""
    found: set[int] = set()

    class _V(cst.CSTVisitor):
        def _add(self, value):
            if isinstance(value, cst.Call) and not value.lpar:
                found.add(id(value))

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

    module.visit(_V())
    return found


class PassTask(FunctionEditTransformer):
    """The call at the edit's span passes the task on: ``block(x, c)`` -> ``block(x, c, dtr_task=dtr_task)``;
    with guards, ``(block(x, c, dtr_task=dtr_task) if isinstance(block, DiTBlock) else block(x, c))``."""

    KIND = EditKind.PASS_TASK

    def visit_Module(self, node):
        self.statement_values = _statement_values(node)

    def leave_Call(self, original, updated):
        edit = self.at_span(original)
        if edit is None or any(a.keyword and a.keyword.value == TASK for a in updated.args):
            return updated
        args = list(updated.args)
        if args and args[-1].comma is cst.MaybeSentinel.DEFAULT:
            args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        kw = cst.Arg(keyword=cst.Name(TASK), value=cst.Name(TASK), equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))
        with_task = updated.with_changes(args=args + [kw])
        tests = []
        if edit.guards:
            classes = edit.guards[0] if len(edit.guards) == 1 else "(" + ", ".join(edit.guards) + ")"
            tests.append(f"isinstance({_code(updated.func)}, {classes})")
        if edit.if_given:  # a helper other callers call without a task
            tests.append(f"{TASK} is not None")
        if not tests:
            return with_task
        guarded = cst.IfExp(test=cst.parse_expression(" and ".join(tests)), body=with_task, orelse=updated)
        # inside a larger expression (`block(x, emb) if isinstance(...) else block(x)`) the guard needs parentheses
        if id(original) in self.statement_values:
            return guarded
        return guarded.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


class BindTask(FunctionEditTransformer):
    """A checkpoint call handed a unit binds the task to it, since checkpoint functions need not pass
    keywords on: ``checkpoint(block, h)`` -> ``checkpoint(dtr_bind_task(block, dtr_task), h)``."""

    KIND = EditKind.BIND_TASK

    def leave_Call(self, original, updated):
        edit = self.at_span(original)
        if edit is None:
            return updated
        unit = _code(updated.args[0].value)
        bound = cst.parse_expression(f"(dtr_bind_task({unit}, {TASK}) if {TASK} is not None else {unit})"
                                     if edit.if_given else f"dtr_bind_task({unit}, {TASK})")
        return updated.with_changes(args=[updated.args[0].with_changes(value=bound), *updated.args[1:]])


class BindChildren(FunctionEditTransformer):
    """checkpoint_sequential calls each child of the Sequential it is handed, not the Sequential's forward:
    ``checkpoint_sequential(self.blocks, 2, x)`` -> ``checkpoint_sequential(dtr_bind_children(self.blocks,
    dtr_task), 2, x)`` (the children that take the task get it bound; with no task, the Sequential as is)."""

    KIND = EditKind.BIND_CHILDREN

    def leave_Call(self, original, updated):
        if self.at_span(original) is None:
            return updated
        bound = cst.parse_expression(f"dtr_bind_children({_code(updated.args[0].value)}, {TASK})")
        return updated.with_changes(args=[updated.args[0].with_changes(value=bound), *updated.args[1:]])


class BindMethod(FunctionEditTransformer):
    """A helper method handed on with its task bound:
    ``checkpoint(self._forward, x)`` -> ``checkpoint(dtr_bind_task(self._forward, dtr_task), x)``."""

    KIND = EditKind.BIND_METHOD

    def leave_Attribute(self, original, updated):
        if self.at_span(original) is None:
            return updated
        return cst.parse_expression(f"dtr_bind_task({_code(updated)}, {TASK})")


class MaskSite(FunctionEditTransformer):
    """pre_output mode: the projection's input is masked where it is called: ``self.proj(h)`` ->
    ``self.proj(dtr_masked(h, self.dtr_mask, dtr_task, 1))``; for a Sequential ending in the
    projection, ``self.out(h)`` -> ``self.out[-1](dtr_masked(self.out[:-1](h), ...))``."""

    KIND = EditKind.MASK_SITE

    def leave_Call(self, original, updated):
        edit = self.at_span(original)
        return updated if edit is None else _mask_call_input(updated, edit.via, edit.axis)


def _mask_call_input(call: cst.Call, via: str, axis: int) -> cst.Call:
    first, rest = call.args[0], list(call.args[1:])
    func = _code(call.func)
    masked = cst.parse_expression(f"dtr_masked(__x__, self.dtr_mask, {TASK}, {axis})")
    if via == "sequential":
        inner = cst.parse_expression(f"{func}[:-1]({_code(first.value)})")
        masked = masked.with_changes(args=[masked.args[0].with_changes(value=inner), *masked.args[1:]])
        return call.with_changes(func=cst.parse_expression(f"{func}[-1]"), args=[first.with_changes(value=masked)] + rest)
    masked = masked.with_changes(args=[masked.args[0].with_changes(value=first.value), *masked.args[1:]])
    return call.with_changes(args=[first.with_changes(value=masked)] + rest)


class _MaskStream(cst.CSTTransformer):
    """Replace every load of ``var`` (or of a plain alias of it) with
    ``dtr_masked(name, self.dtr_mask, dtr_task, axis)``; ``count`` says how many.
    Reads of metadata (``x.shape``, ``x.dtype``) are left alone::

        q = self.qkv(self.norm2(x)).reshape(x.shape[0], -1)
        ->  q = self.qkv(self.norm2(dtr_masked(x, ...))).reshape(x.shape[0], -1)
    """

    def __init__(self, var: str, axis: int, aliases: frozenset[str] = frozenset()):
        super().__init__()
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


class MaskBranch(FunctionEditTransformer):
    """Branch mode: the residual add on the edit's line masks its branch:
    ``x = x + self.attn(norm(x))`` -> ``x = x + self.attn(norm(dtr_masked(x, self.dtr_mask, dtr_task, 2)))``."""

    KIND = EditKind.MASK_BRANCH

    def leave_BinaryOperation(self, original, updated):
        edit = self.on_line(original) if isinstance(updated.operator, cst.Add) else None
        if edit is None:
            return updated
        if isinstance(updated.left, cst.Name) and updated.left.value == edit.var:
            return updated.with_changes(right=updated.right.visit(_MaskStream(edit.var, edit.axis)))
        if isinstance(updated.right, cst.Name) and updated.right.value == edit.var:
            return updated.with_changes(left=updated.left.visit(_MaskStream(edit.var, edit.axis)))
        return updated

    def leave_AugAssign(self, original, updated):
        edit = self.on_line(original) if isinstance(updated.operator, cst.AddAssign) else None
        if edit is not None and isinstance(updated.target, cst.Name) and updated.target.value == edit.var:
            return updated.with_changes(value=updated.value.visit(_MaskStream(edit.var, edit.axis)))
        return updated


class MaskLoads(FunctionEditTransformer):
    """Branch mode: the assignment on the edit's line reads the stream masked, through plain aliases
    too: ``h = self.norm(x)`` -> ``h = self.norm(dtr_masked(x, self.dtr_mask, dtr_task, 1))``.
    An alias that a loop holding the edit's line rebinds is masked where it is bound, once, not at
    every iteration::

        out = x                          out = dtr_masked(x, self.dtr_mask, dtr_task, 1)
        for block in self.blocks:   ->   for block in self.blocks:
            out = block(out)                 out = block(out)
    """

    KIND = EditKind.MASK_LOADS

    def __init__(self, path: str, functions: Iterable[FunctionEdits]):
        super().__init__(path, functions)
        self.aliases: list[frozenset[str]] = []
        self.carried: list[dict[str, int]] = []  # loop-carried alias -> the channel axis to mask it on
        self.sources: list[frozenset[str]] = []  # the stream and its aliases: what a carried alias is bound to

    def enter_function(self, node):
        aliases = _aliases(node, self.current[0].var) if self.current else frozenset()
        carried = self._loop_carried(node, aliases)
        self.aliases.append(aliases - set(carried))
        self.carried.append(carried)
        self.sources.append(aliases | {self.current[0].var} if self.current else frozenset())

    def _loop_carried(self, func: cst.FunctionDef, aliases: frozenset[str]) -> dict[str, int]:
        carried = {}
        for loop in cst.matchers.findall(func, cst.matchers.For() | cst.matchers.While()):
            pos = self.get_metadata(PositionProvider, loop)
            edits = [e for e in self.current if pos.start.line <= e.line <= pos.end.line]
            if edits:
                carried.update((name, edits[0].axis) for name in _bound_names(loop) & aliases)
        return carried

    def leave_FunctionDef(self, original, updated):
        self.aliases.pop()
        self.carried.pop()
        self.sources.pop()
        return super().leave_FunctionDef(original, updated)

    def leave_Assign(self, original, updated):
        carried = self.carried[-1] if self.carried else {}
        target = updated.targets[0].target if len(updated.targets) == 1 else None
        if (isinstance(target, cst.Name) and target.value in carried and isinstance(updated.value, cst.Name)
                and updated.value.value in self.sources[-1]):
            return updated.with_changes(value=cst.parse_expression(
                f"dtr_masked({updated.value.value}, self.dtr_mask, {TASK}, {carried[target.value]})"))
        edit = self.on_line(original)
        if edit is None or isinstance(updated.value, cst.Name):
            return updated  # `h = x`: an alias, masked where it is read
        mask = _MaskStream(edit.var, edit.axis, self.aliases[-1])
        value = updated.value.visit(mask)
        if mask.count == 0 and _reads(updated.value, set(carried)):
            return updated  # reads the loop-carried alias, masked where it is bound
        if mask.count == 0:
            pos = self.get_metadata(PositionProvider, original)
            raise EmitError(f"{self.path}:{pos.start.line}: branch mode found no read of {edit.var!r} to mask "
                            "on this line; use routing.mode 'block' or 'pre_output' for this unit")
        return updated.with_changes(value=value)


def _bound_names(node: cst.CSTNode) -> set[str]:
    """Names that plain assignments inside ``node`` bind."""
    return {t.target.value for a in cst.matchers.findall(node, cst.matchers.Assign())
            for t in a.targets if isinstance(t.target, cst.Name)}


def _reads(node: cst.CSTNode, names: set[str]) -> bool:
    return any(n.value in names for n in cst.matchers.findall(node, cst.matchers.Name()))


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


# One pass applies them all; at each node they run in this order.  RouteStream comes before the
# other statement inserters: it places statements by the original body's line ranges, and the
# entry statements inserted last come first (the task index before the stream is routed).
TRANSFORMERS: tuple[type[FunctionEditTransformer], ...] = (
    TakeTask, PassTask, BindTask, BindChildren, BindMethod, MaskSite, MaskBranch, MaskLoads, MergeReturn,
    RouteStream, FoldTask, ComputeTask, AttachMasks,
)


class _AllKinds(cst.CSTTransformer):
    """The transformers of :data:`TRANSFORMERS` as one: each node goes through each of them in turn."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, members: list[FunctionEditTransformer]):
        super().__init__()
        self.members = members

    def on_visit(self, node):
        if isinstance(node, cst.Module):
            for member in self.members:
                member.metadata = self.metadata
        for member in self.members:
            member.on_visit(node)
        return True

    def on_leave(self, original, updated):
        for member in self.members:
            updated = member.on_leave(original, updated)
        return updated

    def on_visit_attribute(self, node, attribute):
        for member in self.members:
            member.on_visit_attribute(node, attribute)

    def on_leave_attribute(self, original, attribute):
        for member in self.members:
            member.on_leave_attribute(original, attribute)


def apply_edits(path: str, wrapper: MetadataWrapper, functions: Iterable[FunctionEdits]) -> cst.Module:
    """``wrapper``'s module (the text of ``path``) with every edit of ``functions`` applied."""
    functions = list(functions)
    return wrapper.visit(_AllKinds([kind(path, functions) for kind in TRANSFORMERS]))


def function_nodes(module: cst.Module) -> dict[str, cst.FunctionDef]:
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
