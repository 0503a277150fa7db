"""Lower a :class:`~dtrsurgeon.plan.Plan` into the :class:`~dtrsurgeon.emit.editplan.EditPlan`
every emitter consumes.

The steps: decide which function needs what (:func:`~dtrsurgeon.emit.edits.collect_edits` and the
source-decided additions), then find the exact calls in each file
(:class:`~dtrsurgeon.emit.locate.CallLocator`), and write it all down as plain data::

    edit_plan(model, plan, Form.SOURCE, "dit.py").functions[0]
    -> FunctionEdits(file="/src/dit.py", qualname="DiT.forward", line=270, edits=(
           Edit(COMPUTE_TASK, text=("dtr_task = dtr_task_index(t, 0.0, 999.0, 1000, False)",)),
           Edit(PASS_TASK, line=281, span=(281, 16, 281, 27)), ...))
"""

from __future__ import annotations

import os

from torch import nn

from dtrsurgeon.emit.editplan import Edit, EditKind, EditPlan, Form, FunctionEdits
from dtrsurgeon.emit.edits import FunctionEdit, collect_edits, passthrough_edits, route_unseen_calls, wrapped_units
from dtrsurgeon.emit.locate import CallLocator, unit_call_filter
from dtrsurgeon.emit.resolve import (
    class_names,
    defined_in,
    forward_of,
    functions_by_qualname,
    is_editable,
    parse_file,
    root_init,
)
from dtrsurgeon.errors import EmitError
from dtrsurgeon.plan import Plan


def edit_plan(model: nn.Module, plan: Plan, form: Form | str = Form.MODULE, model_py: str | None = None) -> EditPlan:
    """Every source edit that routing ``model`` as ``plan`` says takes, in ``form``; changes nothing::

        edits = dtrsurgeon.edit_plan(model, dtrsurgeon.plan(model, "dit-paper"))
        print(edits.table())       # or edits.to_json()

    ``"module"``: what :func:`dtrsurgeon.transform` compiles (block-mode units on their input are
    wrapped, not edited); ``"source"``: the routed copy of ``model_py`` (default: the file of the
    root's ``__init__``) that ``dtrsurgeon apply`` writes; ``"library"``: its file of subclasses.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"edit_plan(): plan must be a dtrsurgeon.Plan (from dtrsurgeon.plan(model, spec)), "
                        f"got {type(plan).__name__}")
    if str(form) not in {f.value for f in Form}:
        raise ValueError(f"edit_plan(): form {form!r} is not one of {', '.join(f.value for f in Form)}")
    form = Form(form)
    if form == Form.SOURCE and model_py is None:
        model_py = defined_in(root_init(model))
    named = dict(model.named_modules())
    wrapped = wrapped_units(plan) if form == Form.MODULE else ()
    functions = functions_by_qualname(model)
    edits = collect_edits(plan, lambda path: forward_of(type(named[path])), wrapped)
    route_unseen_calls(model, plan, edits, functions)
    if form == Form.SOURCE:
        edits = _source_edits(model, plan, edits, os.path.abspath(model_py))
    elif form == Form.LIBRARY:
        names = class_names(model)
        edits = {f: dict(by_name) for f, by_name in edits.items() if by_name}
        passthrough_edits(model, plan, edits, is_editable, lambda cls: names[cls])
    is_unit_call = unit_call_filter(functions)
    lowered = []
    for file, by_name in edits.items():
        locator = CallLocator(file, by_name, lambda q, c, f=file: is_unit_call(f, q, c))
        parse_file(file).visit(locator)
        lowered += [FunctionEdits(file, qual, locator.lines.get(qual, 0),
                                  _function_edits(edit) + locator.located.get(qual, ()))
                    for qual, edit in by_name.items()]
    return EditPlan(form, tuple(sorted(lowered, key=lambda f: (f.file, f.line, f.qualname))), tuple(wrapped))


def edited_files(model: nn.Module, plan: Plan) -> set[str]:
    """The absolute files whose functions the source forms edit (the root's ``__init__`` aside)."""
    named = dict(model.named_modules())
    return {f for f, by_name in collect_edits(plan, lambda path: forward_of(type(named[path]))).items() if by_name}


def _source_edits(model: nn.Module, plan: Plan, edits, file: str) -> dict[str, dict[str, FunctionEdit]]:
    """The edits of the routed copy of one file: everything is in ``file``; the root's ``__init__``
    attaches the masks; modules of the file called on a unit's call line accept ``dtr_task=None``."""
    others = sorted({f for f, by_name in edits.items() if by_name} - {file})
    if others:
        raise EmitError(f"{file}: routing {type(model).__qualname__} also edits {others[0]}; the source form "
                        "rewrites one file, use the library form (one file of subclasses) for this model")
    merged: dict[str, FunctionEdit] = {}
    for by_name in edits.values():
        merged.update(by_name)
    merged.setdefault(root_init(model).__qualname__, FunctionEdit()).append_stmt = "dtr_attach_masks(self)"
    edits = {file: merged}
    passthrough_edits(model, plan, edits, lambda cls: defined_in(cls.forward) == file, lambda cls: cls.__name__)
    return edits


def _function_edits(edit: FunctionEdit) -> tuple[Edit, ...]:
    """The edits of ``edit`` that concern the function as a whole or a line of it (the calls are
    anchored by :class:`CallLocator`)."""
    out = []
    if edit.task_param:
        out.append(Edit(EditKind.TAKE_TASK, required=edit.task_param == "required"))
    if edit.task_stmt:
        out.append(Edit(EditKind.COMPUTE_TASK, text=(edit.task_stmt,)))
    if edit.fold_stmt:
        out.append(Edit(EditKind.FOLD_TASK, text=(edit.fold_stmt,)))
    if edit.block_stmts:
        out.append(Edit(EditKind.ROUTE_STREAM, text=tuple(edit.block_stmts)))
    out += [Edit(EditKind.ROUTE_STREAM, line=line, text=tuple(stmts)) for line, stmts in sorted(edit.insert_after.items())]
    if edit.return_wrap:
        out.append(Edit(EditKind.MERGE_RETURN, line=edit.merge_after, text=(edit.return_wrap,), var=edit.merge_var))
    out += [Edit(EditKind.MASK_BRANCH, line=line, var=edit.stream_var, axis=edit.stream_axis)
            for line in sorted(edit.branch_lines)]
    out += [Edit(EditKind.MASK_LOADS, line=line, var=edit.stream_var, axis=edit.stream_axis)
            for line in sorted(edit.load_lines)]
    if edit.append_stmt:
        out.append(Edit(EditKind.ATTACH_MASKS, text=(edit.append_stmt,)))
    return tuple(out)
